"""Sample-quality metrics of saved images: `python -m diffax.tools.score_images --images=PATH ...`.

PATH is an .npz ("images": uint8 or float in [-1, 1], or "levels" + "num_levels" as diffax writes
samples, or guided-diffusion's sample batch "arr_0"; optional "labels" / "arr_1") or a folder of
image files (class subfolders named 0, 1, ... give labels). `--digits` scores 8x8 digits with the
digits classifier (Fréchet distance, class accuracy); `--inception_weights` gives FID (against
`--reference`), IS and precision/recall. When `--reference` is a guided-diffusion reference batch
("arr_0" images, and "mu", "sigma", "mu_s", "sigma_s" if stored; e.g.
VIRTUAL_imagenet256_labeled.npz), the figures are the five of guided-diffusion's evaluator, under
its names: "Inception Score", "FID", "sFID", "Precision", "Recall" (diffax.metrics.sample_batches).
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
from diffax.metrics import quality, reference, sample_batches


def define_flags() -> None:
    """Defines the tool's flags (when run: importing the module defines none)."""
    flags.DEFINE_string("images", None, ".npz of images or a folder of image files.")
    flags.DEFINE_string(
        "reference",
        None,
        "FID reference: .npz of statistics (mu, sigma) or of images, or a guided-diffusion "
        "reference batch (arr_0 and mu, sigma, mu_s, sigma_s: the evaluator's five numbers).",
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
    flags.DEFINE_integer("batch_size", 50, "Inception batch size.", lower_bound=1)


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
    if not digits and reference_path and sample_batches.is_reference_batch(reference_path):
        return _score_against_reference_batch(
            images_path, reference_path, inception_weights, image_size, num_channels, batch_size
        )
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


def _score_against_reference_batch(
    images_path: str,
    reference_path: str,
    inception_weights: str | None,
    image_size: int | None,
    num_channels: int | None,
    batch_size: int,
) -> dict[str, float]:
    """Returns guided-diffusion's evaluator's five numbers; every input is checked first."""
    reference_images, reference_stats = sample_batches.open_reference_batch(reference_path)
    if os.path.isdir(images_path):
        samples = folder_images(images_path, image_size, num_channels or 3)[0]
    elif "arr_0" in images_lib.npz_keys(images_path):
        samples = sample_batches.open_sample_batch(images_path)  # Streamed, never all in memory.
    else:
        samples = images_lib.read_images(images_path)[0]
    if isinstance(samples, np.ndarray):
        if samples.shape[0] <= 3:
            raise ValueError(f"{images_path!r}: precision/recall need more than 3 images")
        pixels = images_lib.to_levels(samples, 256).astype(np.uint8)  # [N, H, W, C]
        samples = np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels
    if not inception_weights:
        raise ValueError(
            f"Scoring against the reference batch {reference_path!r} needs --inception_weights "
            "(the FID Inception-v3 .npz; see diffax/metrics/inception.py)"
        )
    tools.require_files(inception_weights)
    feature_fn = sample_batches.inception_feature_fn(inception_weights, batch_size)
    return sample_batches.score(samples, reference_images, reference_stats, feature_fn, batch_size)


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
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    define_flags()
    tools.run(main, required=["images"])
