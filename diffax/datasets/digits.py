"""TFDS builder `digits`: scikit-learn's bundled 8x8 handwritten digits, built offline."""

import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath, epy
from tensorflow_datasets.core import constants as tfds_constants

from diffax.datasets import splits

# scikit-learn (with SciPy, ~1 s to import) only when the digits are read from it: a refused run
# or one whose data set is prepared never loads it.
with epy.lazy_imports():
    from sklearn import datasets as sklearn_datasets

NUM_EXAMPLES = 1797  # Images in sklearn.datasets.load_digits().
NUM_TRAIN = 1437  # The first 1437 of the seeded permutation; the remaining 360 are the test split.
NUM_TEST = NUM_EXAMPLES - NUM_TRAIN
NUM_LEVELS = 17  # Pixel values are the integers 0..16 (counts of set pixels in 4x4 blocks).
IMAGE_SIZE = 8  # Images are 8x8 with one channel (grayscale).
NUM_CLASSES = 10  # Labels are the digits 0..9.
SPLIT_SEED = 0  # Seed of the permutation that assigns images to train/test.

_DESCRIPTION = f"""\
The 1797 handwritten digits bundled with scikit-learn (`sklearn.datasets.load_digits()`), a copy of
the test set of the UCI "Optical Recognition of Handwritten Digits" data (Alpaydin & Kaynak, 1998).
Each image is 8x8 with one channel; a pixel counts the set pixels of a 4x4 block of a 32x32 bitmap,
so its values are the integers 0..16 (17 intensity levels). Labels are the digits 0..9.
Splits: `numpy.random.RandomState({SPLIT_SEED}).permutation({NUM_EXAMPLES})`; its first {NUM_TRAIN}
indices form "train" and the last {NUM_TEST} form "test". The example key is the row index in
load_digits(). Nothing is downloaded: the data ship with scikit-learn.
"""

_CITATION = """\
@misc{alpaydin1998optdigits,
  author = {Alpaydin, E. and Kaynak, C.},
  title = {Optical Recognition of Handwritten Digits},
  year = {1998},
  howpublished = {UCI Machine Learning Repository},
  doi = {10.24432/C50P49}
}
"""


def split_indices() -> dict[str, np.ndarray]:
    """Returns the load_digits() row indices of each split: {"train": [1437], "test": [360]}."""
    # RandomState (not Generator) because NumPy keeps its stream fixed across releases.
    permutation = np.random.RandomState(SPLIT_SEED).permutation(NUM_EXAMPLES)
    return {"train": permutation[:NUM_TRAIN], "test": permutation[NUM_TRAIN:]}


def check_config(data_config, latent: bool = False, digits_score: bool = True) -> None:
    """Raises ValueError in one sentence if data_config asks the digits for what they cannot give.

    The digits have NUM_LEVELS levels, the splits "train" and "test", 10 classes, and one channel
    of 8x8 pixels; with latent=True data.image_size and data.num_channels are the latents' and
    are not checked here. The pipeline resizes to any data.image_size, but the digits score
    (digits_score, eval.quality_metrics) brings samples back to 8x8 only from a multiple of 8.
    """
    splits.check_splits(data_config, tuple(split_indices()), "the digits data set")
    if data_config.num_levels != NUM_LEVELS:
        raise ValueError(
            f"data.num_levels={data_config.num_levels!r}: the digits have {NUM_LEVELS} levels "
            f"(pixel values 0..{NUM_LEVELS - 1}); set data.num_levels={NUM_LEVELS}."
        )
    if 0 < data_config.num_classes < NUM_CLASSES:
        raise ValueError(
            f"data.num_classes={data_config.num_classes}: the digits have {NUM_CLASSES} classes; "
            f"set data.num_classes={NUM_CLASSES} (or 0 to ignore the labels)."
        )
    if latent:
        return
    if data_config.num_channels != 1:
        raise ValueError(
            f"data.num_channels={data_config.num_channels!r}: the digits are grayscale; set "
            "data.num_channels=1."
        )
    if digits_score and data_config.image_size % IMAGE_SIZE:
        raise ValueError(
            f"data.image_size={data_config.image_size}: the digits are {IMAGE_SIZE}x{IMAGE_SIZE} "
            f"and their score (eval.quality_metrics) reads samples of a multiple of {IMAGE_SIZE} "
            f"only; use {IMAGE_SIZE}, {2 * IMAGE_SIZE}, {3 * IMAGE_SIZE}, ... or set "
            "eval.quality_metrics=False."
        )


class Digits(tfds.core.GeneratorBasedBuilder):
    """sklearn's 1797 8x8 digits (values 0..16); seeded split of 1437 train / 360 test images.

    Source: `sklearn.datasets.load_digits()` (UCI Optical Recognition of Handwritten Digits, test
    part). The split is `numpy.random.RandomState(0).permutation(1797)`: first 1437 train, last 360
    test. Features: "image" uint8 [8, 8, 1] with values 0..16, "label" ClassLabel(10).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: sklearn load_digits, seeded 1437/360 split."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS derives this path with an isinstance check on `importlib_resources`, an optional
        # dependency of etils that may be absent; this module's file is the same answer.
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # The data ship with scikit-learn; nothing to download.
        bunch = sklearn_datasets.load_digits()
        images = bunch.images.astype(np.uint8)[..., None]  # [1797, 8, 8, 1], values 0..16
        labels = bunch.target.astype(np.int64)  # [1797]
        return {
            name: self._generate_examples(images, labels, indices)
            for name, indices in split_indices().items()
        }

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray):
        for index in indices:
            yield int(index), {"image": images[index], "label": int(labels[index])}


def default_data_dir() -> str:
    """Returns where digits is prepared by default: a "diffax" folder under TFDS's data dir."""
    return os.path.join(tfds_constants.get_default_data_dir(), "diffax")


def prepare_digits(data_dir: str | None = None) -> Digits:
    """Returns the digits builder in data_dir (default: default_data_dir()), prepared offline."""
    data_dir = data_dir or default_data_dir()
    builder = Digits(data_dir=data_dir)
    if builder.is_prepared():
        return builder
    logging.info("Preparing the digits dataset (offline, from scikit-learn) in %s.", data_dir)
    # try_download_gcs=False: TFDS would otherwise ask its GCS bucket for a prepared copy.
    config = tfds.download.DownloadConfig(try_download_gcs=False)
    try:
        builder.download_and_prepare(download_config=config)
    except OSError:
        # Another process sharing data_dir may have finished first; its copy is as good as ours.
        builder = Digits(data_dir=data_dir)
        if not builder.is_prepared():
            raise
    return builder
