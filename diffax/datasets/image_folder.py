"""A folder of images as a labelled dataset: listing, PIL decoding, channel conversion, resizing.

The decoded images are held in host memory as one uint8 array, so a folder (or, with several
processes, one process's share of it) must fit in memory: at 64x64x3 that is 12 KiB an image.
"""

import dataclasses
import os
from collections.abc import Sequence
from concurrent import futures

import numpy as np
from absl import logging
from PIL import Image, ImageOps

from diffax.datasets import splits

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")

# PIL errors a bad file can raise while opening or decoding (SyntaxError: some broken PNG chunks).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclasses.dataclass(frozen=True)
class FolderIndex:
    """The image files of a folder in sorted order, with their labels."""

    paths: tuple[str, ...]  # [N] sorted by path relative to the folder
    labels: tuple[int, ...]  # [N] index of the class subfolder in class_names; 0 for a flat folder
    class_names: tuple[str, ...]  # sorted subfolder names; () for a flat folder


@dataclasses.dataclass(frozen=True)
class DecodedImages:
    """Decoded images of a list of files; bad files left out when skipping was asked for."""

    images: np.ndarray  # [N, S, S, C] uint8
    labels: np.ndarray  # [N] int32
    num_skipped: int  # files that could not be decoded and were skipped


# The one split of a folder: every file. No held-out part is made up (which files, how many): a
# folder is read as given, so data.eval_split names "train" or a slice of it, or the run is refused.
SPLITS = ("train",)


def check_config(data_config) -> None:
    """Raises ValueError in one sentence if data.train_split or data.eval_split reads a split an
    image folder lacks (its only split is "train", every file)."""
    splits.check_splits(
        data_config,
        SPLITS,
        "an image folder",
        hint=(
            " (every file): read 'train' or a slice of it such as 'train[:1000]' "
            "(data.eval_split='train' reports bits/dim on the training images)"
        ),
    )


def _is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _images_under(directory: str) -> list[str]:
    """Returns the image files anywhere under directory, sorted by relative path."""
    found = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(os.path.join(root, f) for f in files if _is_image_file(f))
    return sorted(found, key=lambda p: os.path.relpath(p, directory))


def index_folder(folder: str | None) -> FolderIndex:
    """Returns the folder's images: one class per subfolder (sorted names) or, if flat, label 0."""
    if not folder or not os.path.isdir(folder):
        raise ValueError(f"data.folder={folder!r} does not exist or is not a directory.")
    entries = sorted(e for e in os.listdir(folder) if not e.startswith("."))
    class_names = tuple(e for e in entries if os.path.isdir(os.path.join(folder, e)))
    paths, labels = [], []
    if class_names:
        loose = [e for e in entries if _is_image_file(e)]
        if loose:
            logging.warning(
                "Image folder %s has class subfolders; ignoring %d images at its top level.",
                folder,
                len(loose),
            )
        for label, name in enumerate(class_names):
            class_paths = _images_under(os.path.join(folder, name))
            paths.extend(class_paths)
            labels.extend([label] * len(class_paths))
    else:
        paths = [os.path.join(folder, e) for e in entries if _is_image_file(e)]
        labels = [0] * len(paths)
    if not paths:
        raise ValueError(
            f"data.folder={folder!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}), "
            "neither at its top level nor in class subfolders."
        )
    return FolderIndex(paths=tuple(paths), labels=tuple(labels), class_names=class_names)


def center_crop_resize(image: Image.Image, image_size: int) -> Image.Image:
    """Returns the central square of image resized to [image_size] * 2 (box filter if shrinking)."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side == image_size:
        return image
    # Box filter = area averaging when shrinking; bilinear when enlarging.
    resample = Image.Resampling.BOX if side > image_size else Image.Resampling.BILINEAR
    return image.resize((image_size, image_size), resample=resample)


class _WrongSize(ValueError):
    """An image diffax does not convert: another size where resizing is off, or wide pixels."""


# PIL modes of more than 8 bits per channel: converting them to "L" or "RGB" would clip.
_WIDE_MODES = {
    "I;16": "16-bit",
    "I;16B": "16-bit",
    "I;16L": "16-bit",
    "I;16N": "16-bit",
    "I": "32-bit integer",
    "F": "32-bit float",
}


def load_image(path: str, image_size: int, num_channels: int, resize: bool = True) -> np.ndarray:
    """Returns uint8 [image_size, image_size, num_channels]; ValueError naming path if undecodable.

    resize=False refuses (ValueError naming the path) an image that is not image_size square,
    instead of center-cropping and resizing it.

    Grayscale uses PIL's ITU-R 601-2 luma (L = 0.299 R + 0.587 G + 0.114 B); alpha is dropped, not
    composited; palette images go through their palette; an animation gives its first frame.
    """
    if num_channels not in (1, 3):
        raise ValueError(f"num_channels must be 1 or 3, got {num_channels}.")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in _WIDE_MODES:
                raise _WrongSize(
                    f"Image file {path} has {_WIDE_MODES[image.mode]} pixels (PIL mode "
                    f"{image.mode}); diffax reads 8-bit images: convert it to 8 bits per channel."
                )
            image = ImageOps.exif_transpose(image)  # Camera JPEGs store their rotation in EXIF.
            if image.mode == "P":
                image = image.convert("RGBA")  # Resolve the palette (and its transparency) first.
            image = image.convert("L" if num_channels == 1 else "RGB")
            if not resize and image.size != (image_size, image_size):
                raise _WrongSize(
                    f"Image file {path} is {image.size[0]}x{image.size[1]}, not "
                    f"{image_size}x{image_size}; set data.resize_images=True to center-crop "
                    "and resize it."
                )
            image = center_crop_resize(image, image_size)
            array = np.asarray(image, dtype=np.uint8)
    except _WrongSize:
        raise
    except _DECODE_ERRORS as error:
        raise ValueError(f"Cannot decode image file {path}: {error}") from error
    return array.reshape(image_size, image_size, num_channels)


def load_images(
    paths: Sequence[str],
    labels: Sequence[int],
    image_size: int,
    num_channels: int,
    skip_bad_images: bool = False,
    num_threads: int = 8,
    resize: bool = True,
) -> DecodedImages:
    """Returns the decoded files in order; a bad file raises ValueError unless skip_bad_images."""

    def decode(path: str) -> np.ndarray | ValueError:
        try:
            return load_image(path, image_size, num_channels, resize)
        except ValueError as error:
            if not skip_bad_images:
                raise
            return error

    # PIL releases the GIL while decoding, so threads overlap the work of many files.
    with futures.ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
        decoded = list(pool.map(decode, paths))
    keep = [i for i, item in enumerate(decoded) if not isinstance(item, ValueError)]
    num_skipped = len(decoded) - len(keep)
    if num_skipped:
        first_error = next(item for item in decoded if isinstance(item, ValueError))
        logging.warning(
            "Skipped %d of %d image files that could not be decoded; the first: %s",
            num_skipped,
            len(decoded),
            first_error,
        )
    images = np.zeros((len(keep), image_size, image_size, num_channels), np.uint8)
    for row, i in enumerate(keep):
        images[row] = decoded[i]
    label_array = np.asarray([labels[i] for i in keep], dtype=np.int32).reshape(len(keep))
    return DecodedImages(images=images, labels=label_array, num_skipped=num_skipped)
