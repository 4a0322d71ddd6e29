"""Sample-quality metrics of saved images: `python -m diffax.tools.score_images --images=PATH ...`.

PATH is an .npz ("images": uint8 or float in [-1, 1], or "levels" + "num_levels" as diffax writes
samples; optional "labels") or a folder of image files (class subfolders named 0, 1, ... give
labels). `--digits` scores 8x8 digits with the digits classifier (Fréchet distance, class
accuracy); `--inception_weights` gives FID (against `--reference`), IS and precision/recall.
Prints the metrics as JSON.
"""

import json
import os

import numpy as np
from absl import flags

from diffax import images as images_lib
from diffax import tools
from diffax.datasets import digits as digits_lib
from diffax.datasets import image_folder
from diffax.metrics import quality, reference


def define_flags() -> None:
    """Defines the tool's flags (when run: importing the module defines none)."""
    flags.DEFINE_string("images", None, ".npz of images or a folder of image files.")
    flags.DEFINE_string(
        "reference", None, "FID reference: .npz of statistics (mu, sigma) or of images."
    )
    flags.DEFINE_string(
        "inception_weights", None, "FID Inception-v3 .npz (see diffax.metrics.inception)."
    )
    flags.DEFINE_bool("digits", False, "8x8 digits: classifier FD and class accuracy.")
    flags.DEFINE_string(
        "classifier_path",
        None,
        "Digits classifier checkpoint (trained and saved there if absent; default: beside the "
        "digits data, <TFDS data_dir>/diffax/digits_classifier).",
    )
    flags.DEFINE_integer("image_size", None, "Folder images: side (default: the first's).")
    flags.DEFINE_enum("num_channels", None, ["1", "3"], "Folder images: channels.")
    flags.DEFINE_integer("batch_size", 50, "Inception batch size.")


def folder_images(folder: str, image_size: int | None, num_channels: int):
    """Returns (float32 images [N, S, S, C] in [-1, 1], labels [N] or None) of an image folder."""
    from PIL import Image

    index = image_folder.index_folder(folder)
    if image_size is None:
        with Image.open(index.paths[0]) as first:
            image_size = min(first.size)
    decoded = image_folder.load_images(index.paths, index.labels, image_size, num_channels)
    images = images_lib.from_levels(decoded.images.astype(np.float32), 256)
    labels = None
    # Class subfolders named by integers (0/, 1/, ...) are the conditioning labels.
    if index.class_names and all(name.isdigit() for name in index.class_names):
        labels = np.asarray([int(index.class_names[i]) for i in decoded.labels], np.int64)
    return images, labels


def score(
    images_path: str,
    *,
    digits: bool = False,
    classifier_path: str | None = None,
    inception_weights: str | None = None,
    reference_path: str | None = None,
    image_size: int | None = None,
    num_channels: int | None = None,
    batch_size: int = 50,
) -> dict[str, float]:
    """Returns the metrics of the images at images_path (see the module doc)."""
    channels = num_channels or (1 if digits else 3)
    size = 8 if digits and image_size is None else image_size
    if os.path.isdir(images_path):
        samples, labels = folder_images(images_path, size, channels)
    else:
        samples, labels = images_lib.read_images(images_path)
    if digits:
        path = classifier_path or os.path.join(digits_lib.default_data_dir(), "digits_classifier")
        return quality.digits_quality(samples, labels, path, digits_lib.NUM_LEVELS)
    if inception_weights:
        reference_fn = None
        if reference_path:
            reference_fn = lambda feature_fn: reference.load_reference(reference_path, feature_fn)
        return quality.inception_quality(samples, inception_weights, batch_size, reference_fn)
    raise ValueError("give --inception_weights (FID/IS/PR) or --digits")


def main(argv) -> None:
    """Prints the metrics of --images as JSON."""
    del argv
    metrics = score(
        flags.FLAGS.images,
        digits=flags.FLAGS.digits,
        classifier_path=flags.FLAGS.classifier_path,
        inception_weights=flags.FLAGS.inception_weights,
        reference_path=flags.FLAGS.reference,
        image_size=flags.FLAGS.image_size,
        num_channels=int(flags.FLAGS.num_channels) if flags.FLAGS.num_channels else None,
        batch_size=flags.FLAGS.batch_size,
    )
    print(json.dumps(metrics, indent=2, sort_keys=True))


if __name__ == "__main__":
    define_flags()
    tools.run(main, required=["images"])
