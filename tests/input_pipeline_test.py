"""Tests of diffax.input_pipeline on the digits, tiny TFDS builders and image folders."""

import os
import socket
import subprocess
import sys
import time

import chex
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from configs import digits as digits_configs
from diffax import input_pipeline
from diffax.datasets import digits


def _forbid_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _take(iterator, n: int) -> list[dict[str, np.ndarray]]:
    return [next(iterator) for _ in range(n)]


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Returns a list that grows by one for every example the TFDS source reads from now on."""
    read = []
    real_read = input_pipeline._TfdsSource.read

    def counting_read(self, *args, **kwargs):
        def count(example):
            tick = tf.py_function(lambda: read.append(1) or 0, [], tf.int32)
            with tf.control_dependencies([tick]):
                return {k: tf.identity(v) for k, v in example.items()}

        return real_read(self, *args, **kwargs).map(count)

    monkeypatch.setattr(input_pipeline._TfdsSource, "read", counting_read)
    return read


def _levels(images: np.ndarray, num_levels: int) -> np.ndarray:
    """Inverts x = v / (L - 1) * 2 - 1 to the integer level v."""
    return (images + 1.0) / 2.0 * (num_levels - 1)


def _assert_on_grid(images: np.ndarray, num_levels: int) -> None:
    levels = _levels(images, num_levels)
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
    assert images.min() >= -1.0 and images.max() <= 1.0


@pytest.fixture(scope="module")
def digits_config(tmp_path_factory: pytest.TempPathFactory) -> ml_collections.ConfigDict:
    config = digits_configs.get_config().data
    config.data_dir = str(tmp_path_factory.mktemp("tfds"))
    with pytest.MonkeyPatch.context() as monkeypatch:
        _forbid_network(monkeypatch)
        digits.prepare_digits(config.data_dir)
    return config


def _digits_split(config: ml_collections.ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns the raw uint8 images [N, 8, 8, 1] and labels [N] of a split, read by TFDS."""
    builder = digits.Digits(data_dir=config.data_dir)
    examples = list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))
    return np.stack([e["image"] for e in examples]), np.array([e["label"] for e in examples])


def _keys(images: np.ndarray) -> list[bytes]:
    """Returns one hashable key per digits image [N, 8, 8, 1] in [-1, 1]: its integer levels."""
    return [np.round(_levels(image, 17)).astype(np.uint8).tobytes() for image in images]


# Digits: training.


def test_train_batches_have_shapes_dtypes_grid_values_and_labels(digits_config):
    batch = next(input_pipeline.create_train_iterator(digits_config, batch_size=32, seed=0))
    assert set(batch) == {"image", "label"}
    chex.assert_shape(batch["image"], (32, 8, 8, 1))
    chex.assert_shape(batch["label"], (32,))
    assert batch["image"].dtype == np.float32 and batch["label"].dtype == np.int32
    _assert_on_grid(batch["image"], 17)
    assert batch["label"].min() >= 0 and batch["label"].max() <= 9


def test_train_epochs_are_permutations_of_the_split_and_continue_forever(digits_config):
    raw_images, _ = _digits_split(digits_config, "train")
    expected = sorted(_keys(raw_images / 16.0 * 2.0 - 1.0))
    # 1437 = 3 * 479: three batches are one epoch; six are two epochs, each reshuffled.
    iterator = input_pipeline.create_train_iterator(digits_config, batch_size=479, seed=0)
    batches = _take(iterator, 6)
    epochs = [np.concatenate([b["image"] for b in batches[i : i + 3]]) for i in (0, 3)]
    for epoch in epochs:
        assert sorted(_keys(epoch)) == expected
    assert _keys(epochs[0]) != _keys(epochs[1])


def test_train_order_depends_on_the_seed_only(digits_config):
    def first_labels(seed: int) -> np.ndarray:
        iterator = input_pipeline.create_train_iterator(digits_config, batch_size=64, seed=seed)
        return next(iterator)["label"]

    np.testing.assert_array_equal(first_labels(0), first_labels(0))
    assert not np.array_equal(first_labels(0), first_labels(1))


def test_start_batch_resumes_the_exact_stream_across_an_epoch_boundary(digits_config):
    # 1437 train examples make 22 batches of 64 an epoch: resume inside the second epoch.
    straight = _take(input_pipeline.create_train_iterator(digits_config, 64, seed=0), 26)
    resumed = _take(
        input_pipeline.create_train_iterator(digits_config, 64, seed=0, start_batch=23), 3
    )
    for want, got in zip(straight[23:], resumed, strict=True):
        np.testing.assert_array_equal(want["image"], got["image"])
        np.testing.assert_array_equal(want["label"], got["label"])


def test_cached_examples_give_the_same_stream_and_are_decoded_once(digits_config, monkeypatch):
    read = _count_reads(monkeypatch)
    uncached = ml_collections.ConfigDict(digits_config.to_dict())
    uncached.cache_mib = 0
    straight = _take(input_pipeline.create_train_iterator(uncached, 64, seed=0), 50)
    assert len(read) >= 2 * 1437  # Two epochs and more, each decoded anew.
    read.clear()
    assert digits_config.cache_mib > 0  # The default caches the 92 KiB of digits.
    cached = _take(input_pipeline.create_train_iterator(digits_config, 64, seed=0), 50)
    assert len(read) <= 1437 + 64  # Only the first epoch (and a prefetch) is decoded.
    for want, got in zip(straight, cached, strict=True):
        np.testing.assert_array_equal(want["image"], got["image"])
        np.testing.assert_array_equal(want["label"], got["label"])


def test_resuming_reads_at_most_about_one_epoch(digits_config, monkeypatch):
    """Resume cost is bounded: 1000 batches of 64 are 44 epochs, yet only one is re-read."""
    read = _count_reads(monkeypatch)
    iterator = input_pipeline.create_train_iterator(digits_config, 64, seed=0, start_batch=1000)
    next(iterator)
    epoch = 1437
    # The skipped part of the current epoch plus read-ahead (the shuffle buffer holds an epoch).
    assert len(read) <= 2 * epoch + 64, len(read)
    assert 1000 * 64 > 40 * epoch  # Replaying the stream would have read 64,000.


def test_eval_split_images_are_the_test_digits_without_padding(digits_config):
    images = input_pipeline.eval_split_images(
        digits_config, batch_size=32
    )  # 32 does not divide 360
    expected, _ = _digits_split(digits_config, "test")
    expected = expected.astype(np.float32) / 16 * 2 - 1
    chex.assert_shape(images, expected.shape)
    np.testing.assert_allclose(images, expected, atol=1e-6)  # In the split's order.
    chex.assert_shape(input_pipeline.eval_split_images(digits_config, 50), (50, 8, 8, 1))


def test_start_batch_resumes_the_flips_too(tmp_path):
    _write_ramps(tmp_path, 4)
    config = _folder_config(tmp_path, random_flip=True)
    straight = _take(input_pipeline.create_train_iterator(config, 8, seed=1), 5)
    resumed = _take(input_pipeline.create_train_iterator(config, 8, seed=1, start_batch=3), 2)
    for want, got in zip(straight[3:], resumed, strict=True):
        np.testing.assert_array_equal(want["image"], got["image"])


# Digits: evaluation and sharding.


def test_eval_is_one_ordered_pass_over_the_test_split_with_a_padding_mask(digits_config):
    raw_images, raw_labels = _digits_split(digits_config, "test")
    batches = list(input_pipeline.create_eval_iterator(digits_config, batch_size=128))
    assert len(batches) == 3  # ceil(360 / 128)
    for batch in batches:
        chex.assert_shape(
            [batch["image"], batch["label"], batch["mask"]], [(128, 8, 8, 1)] + [(128,)] * 2
        )
        assert batch["mask"].dtype == np.float32
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == 360 and np.all(mask[:360] == 1) and np.all(mask[360:] == 0)
    images = np.concatenate([b["image"] for b in batches])[:360]
    np.testing.assert_allclose(images, raw_images / 16.0 * 2.0 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:360], raw_labels)
    again = list(input_pipeline.create_eval_iterator(digits_config, batch_size=128))
    for a, b in zip(batches, again, strict=True):
        chex.assert_trees_all_equal(a, b)


def test_eval_shards_of_two_processes_are_disjoint_cover_and_have_equal_batch_counts(
    digits_config,
):
    def real_images(process_index: int, process_count: int) -> tuple[np.ndarray, int]:
        batches = list(
            input_pipeline.create_eval_iterator(
                digits_config,
                32,
                num_examples=101,
                process_index=process_index,
                process_count=process_count,
            )
        )
        images = np.concatenate([b["image"] for b in batches])
        mask = np.concatenate([b["mask"] for b in batches])
        return images[mask == 1], len(batches)

    whole, _ = real_images(0, 1)
    (first, first_batches), (second, second_batches) = real_images(0, 2), real_images(1, 2)
    assert len(whole) == 101 and (len(first), len(second)) == (51, 50)
    assert first_batches == second_batches == 2  # ceil(51 / 32): processes stay in lockstep.
    assert not set(_keys(first)) & set(_keys(second))
    np.testing.assert_array_equal(np.concatenate([first, second]), whole)


def test_num_examples_counts_whole_and_sliced_splits(digits_config):
    assert input_pipeline.num_examples(digits_config, "train") == 1437
    assert input_pipeline.num_examples(digits_config, "test") == 360
    assert input_pipeline.num_examples(digits_config, "train[:10%]") == 144  # round(143.7)
    assert input_pipeline.num_examples(digits_config, "train[:10]+test[-5:]") == 15


# TFDS datasets that are missing, or prepared by the test.


def test_unprepared_tfds_dataset_fails_fast_without_downloading(tmp_path, monkeypatch):
    _forbid_network(monkeypatch)
    config = digits_configs.get_config().data
    config.update(dataset="cifar10", data_dir=str(tmp_path), image_size=32, num_channels=3)
    start = time.monotonic()
    with pytest.raises(ValueError) as error:
        input_pipeline.create_train_iterator(config, batch_size=8, seed=0)
    assert time.monotonic() - start < 10.0
    message = str(error.value)
    assert "cifar10" in message and str(tmp_path) in message and "tfds build cifar10" in message
    assert not any(tmp_path.iterdir()), "nothing may be written (or downloaded) into data_dir"


def test_unknown_dataset_name_raises_a_short_value_error(tmp_path):
    config = digits_configs.get_config().data
    config.update(dataset="no_such_dataset_xyz", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="Unknown dataset 'no_such_dataset_xyz'"):
        input_pipeline.num_examples(config, "train")


def _tiny_rgb(index: int) -> np.ndarray:
    return np.random.RandomState(index).randint(0, 256, (12, 16, 3)).astype(np.uint8)


class DiffaxTestTinyRgb(tfds.core.GeneratorBasedBuilder):
    """Six 12x16 RGB images, image i labelled i, for the resize and channel paths."""

    VERSION = tfds.core.Version("1.0.0")
    # TFDS looks for metadata files beside the builder's package; a test module is no package.
    pkg_dir_path = epath.Path(__file__).parent

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)  # See diffax.datasets.digits.Digits.code_path.

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "image": tfds.features.Image(shape=(12, 16, 3)),
            "label": tfds.features.ClassLabel(num_classes=6),
        }
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(6):
            yield i, {"image": _tiny_rgb(i), "label": i}


class DiffaxTestTinyGray(tfds.core.GeneratorBasedBuilder):
    """Two unlabelled 4x4 grayscale images, for enlarging and the missing label."""

    VERSION = tfds.core.Version("1.0.0")
    pkg_dir_path = epath.Path(__file__).parent

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        features = {"image": tfds.features.Image(shape=(4, 4, 1))}
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {"test": self._generate_examples()}

    def _generate_examples(self):
        for i in range(2):
            yield (
                i,
                {"image": (np.arange(16).reshape(4, 4, 1) * 17 * (i + 1) // 2).astype(np.uint8)},
            )


@pytest.fixture(scope="module")
def tiny_tfds_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    data_dir = str(tmp_path_factory.mktemp("tiny_tfds"))
    config = tfds.download.DownloadConfig(try_download_gcs=False)
    with pytest.MonkeyPatch.context() as monkeypatch:
        _forbid_network(monkeypatch)
        for builder_class in (DiffaxTestTinyRgb, DiffaxTestTinyGray):
            builder_class(data_dir=data_dir).download_and_prepare(download_config=config)
    return data_dir


def _tiny_config(data_dir: str, dataset: str, image_size: int, num_channels: int):
    config = digits_configs.get_config().data
    config.update(
        dataset=dataset,
        data_dir=data_dir,
        image_size=image_size,
        num_channels=num_channels,
        num_levels=256,
        num_classes=6,
        eval_split="train",
    )
    return config


def _expected_rgb(size: int) -> np.ndarray:
    """Returns the six tiny images center-cropped to 12x12 and area-shrunk to [size, size]."""
    crops = np.stack([_tiny_rgb(i)[:, 2:14].astype(np.float64) for i in range(6)])  # [6, 12, 12, 3]
    f = 12 // size
    return crops.reshape(6, size, f, size, f, 3).mean(axis=(2, 4))  # [6, size, size, 3]


def test_tfds_images_are_center_cropped_and_area_resized(tiny_tfds_dir):
    config = _tiny_config(tiny_tfds_dir, "diffax_test_tiny_rgb", image_size=4, num_channels=3)
    batch = next(input_pipeline.create_eval_iterator(config, batch_size=8))
    chex.assert_shape(batch["image"], (8, 4, 4, 3))
    np.testing.assert_array_equal(batch["mask"], [1] * 6 + [0] * 2)
    np.testing.assert_array_equal(np.sort(batch["label"][:6]), np.arange(6))
    images = batch["image"][:6][np.argsort(batch["label"][:6])]  # TFDS orders by hashed key.
    # A mean of 9 integers is never within 1/18 of a .5 tie, so rounding is exact.
    expected = np.round(_expected_rgb(4)) / 255.0 * 2.0 - 1.0
    np.testing.assert_allclose(images, expected, atol=1e-6)


def test_tfds_rgb_becomes_bt601_gray_on_the_256_level_grid(tiny_tfds_dir):
    config = _tiny_config(tiny_tfds_dir, "diffax_test_tiny_rgb", image_size=4, num_channels=1)
    batch = next(input_pipeline.create_eval_iterator(config, batch_size=6))
    chex.assert_shape(batch["image"], (6, 4, 4, 1))
    _assert_on_grid(batch["image"], 256)
    luma = _expected_rgb(4) @ np.array([0.299, 0.587, 0.114])  # [6, 4, 4]
    levels = _levels(batch["image"][np.argsort(batch["label"]), ..., 0], 256)
    np.testing.assert_allclose(levels, luma, atol=0.5 + 1e-3)


def test_tfds_small_gray_images_are_enlarged_tiled_to_rgb_and_labelled_zero(tiny_tfds_dir):
    config = _tiny_config(tiny_tfds_dir, "diffax_test_tiny_gray", image_size=8, num_channels=3)
    config.update(eval_split="test", num_classes=0)
    batch = next(input_pipeline.create_eval_iterator(config, batch_size=2))
    chex.assert_shape(batch["image"], (2, 8, 8, 3))
    _assert_on_grid(batch["image"], 256)
    np.testing.assert_array_equal(batch["label"], [0, 0])
    np.testing.assert_array_equal(batch["image"][..., 0], batch["image"][..., 2])
    # Bilinear enlarging keeps the left-to-right ramp of the source.
    assert np.all(np.diff(batch["image"][:, 4, :, 0], axis=-1) >= 0)
    assert np.all(batch["image"].std(axis=(1, 2, 3)) > 0.1)


def test_tfds_dataset_with_more_classes_than_the_config_is_refused(tiny_tfds_dir):
    config = _tiny_config(tiny_tfds_dir, "diffax_test_tiny_rgb", image_size=4, num_channels=3)
    config.num_classes = 5
    with pytest.raises(ValueError, match="6 classes"):
        input_pipeline.create_eval_iterator(config, batch_size=2)


# Image folders.


def _folder_config(folder, **overrides) -> ml_collections.ConfigDict:
    config = digits_configs.get_config().data
    config.update(
        dataset="image_folder",
        folder=str(folder),
        image_size=8,
        num_channels=1,
        num_levels=256,
        eval_split="train",
        shuffle_buffer=64,
    )
    config.update(overrides)
    return config


def _write_ramps(folder, count: int) -> None:
    """Writes 8x8 images dark on the left and bright on the right, image i a shade brighter."""
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        image = np.zeros((8, 8), np.uint8)
        image[:, 4:] = 100 + 10 * i
        Image.fromarray(image).save(os.path.join(folder, f"{i:02d}.png"))


@pytest.mark.parametrize("random_flip", [False, True])
def test_random_flip_mirrors_some_images_and_only_when_asked(tmp_path, random_flip):
    _write_ramps(tmp_path, 4)
    config = _folder_config(tmp_path, random_flip=random_flip)
    batch = next(input_pipeline.create_train_iterator(config, batch_size=64, seed=3))
    levels = np.round(_levels(batch["image"][..., 0], 256))  # [64, 8, 8]
    originals = np.zeros_like(levels)
    originals[:, :, 4:] = levels.max(axis=(1, 2))[:, None, None]  # The ramp each came from.
    unflipped = np.all(levels == originals, axis=(1, 2))
    flipped = np.all(levels == originals[:, :, ::-1], axis=(1, 2))
    assert np.all(unflipped | flipped)
    if random_flip:  # 64 fair coin flips: all alike with probability 2 ** -63.
        assert unflipped.any() and flipped.any()
    else:
        assert unflipped.all()


def test_folder_percent_slices_follow_the_sorted_file_list(tmp_path):
    _write_ramps(tmp_path, 10)
    config = _folder_config(tmp_path)

    def brightness(split: str) -> list[int]:
        batch = next(input_pipeline.create_eval_iterator(config, batch_size=10, split=split))
        levels = _levels(batch["image"][batch["mask"] == 1][:, 0, 7, 0], 256)
        return np.round(levels).astype(int).tolist()

    assert brightness("train[:80%]") == [100 + 10 * i for i in range(8)]
    assert brightness("train[80%:]") == [180, 190]
    assert input_pipeline.num_examples(config, "train[80%:]") == 2


def test_folder_train_shards_of_two_processes_are_disjoint_and_cover(tmp_path):
    _write_ramps(tmp_path, 6)
    config = _folder_config(tmp_path)
    seen = []
    for process_index in (0, 1):
        iterator = input_pipeline.create_train_iterator(
            config, batch_size=12, seed=0, process_index=process_index, process_count=2
        )
        levels = _levels(next(iterator)["image"][:, 0, 7, 0], 256)
        seen.append(set(np.round(levels).astype(int).tolist()))
    assert seen[0] == {100, 110, 120} and seen[1] == {130, 140, 150}


def test_folder_classes_label_batches_and_rgba_becomes_gray(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255  # Opaque red: luma 0.299 * 200 = 59.8.
    for name in ("b_class", "a_class"):
        os.makedirs(tmp_path / name)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "b_class" / "red.png")
    Image.fromarray(np.full((8, 8), 77, np.uint8)).save(tmp_path / "a_class" / "gray.png")
    config = _folder_config(tmp_path, num_classes=2)
    batch = next(input_pipeline.create_eval_iterator(config, batch_size=2))
    np.testing.assert_array_equal(batch["label"], [0, 1])
    np.testing.assert_allclose(np.round(_levels(batch["image"][:, 0, 0, 0], 256)), [77, 60])


def test_folder_bad_image_fails_or_is_skipped_and_masked(tmp_path):
    _write_ramps(tmp_path, 3)
    data = (tmp_path / "01.png").read_bytes()
    (tmp_path / "01.png").write_bytes(data[: len(data) // 2])
    config = _folder_config(tmp_path)
    with pytest.raises(ValueError, match="01.png"):
        input_pipeline.create_eval_iterator(config, batch_size=4)
    config.skip_bad_images = True
    batch = next(input_pipeline.create_eval_iterator(config, batch_size=4))
    np.testing.assert_array_equal(batch["mask"], [1, 1, 0, 0])


def test_missing_folder_fails_naming_it(tmp_path):
    config = _folder_config(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="nowhere"):
        input_pipeline.create_train_iterator(config, batch_size=4, seed=0)


def test_text_batches_carry_each_label_s_caption_by_a_training_template(digits_config):
    from diffax.datasets import captions
    from diffax.models import text_encoder

    config = ml_collections.ConfigDict(digits_config.to_dict())
    config.text_length = 32
    first = next(input_pipeline.create_train_iterator(config, batch_size=64, seed=0))
    chex.assert_shape(first["tokens"], (64, 32))
    assert first["tokens"].dtype == np.int32
    table = captions.caption_table("train")
    for label, caption in zip(
        first["label"], text_encoder.detokenize(first["tokens"]), strict=True
    ):
        assert caption in [row[label] for row in table]
    assert len(set(text_encoder.detokenize(first["tokens"]))) > 10  # Templates vary.
    again = next(input_pipeline.create_train_iterator(config, batch_size=64, seed=0))
    np.testing.assert_array_equal(first["tokens"], again["tokens"])
    straight = _take(input_pipeline.create_train_iterator(config, 64, seed=0), 25)
    resumed = _take(input_pipeline.create_train_iterator(config, 64, seed=0, start_batch=23), 2)
    for want, got in zip(straight[23:], resumed, strict=True):
        np.testing.assert_array_equal(want["tokens"], got["tokens"])


def _captions_by_image(batches) -> dict[bytes, set[str]]:
    from diffax.models import text_encoder

    seen: dict[bytes, set[str]] = {}
    for batch in batches:
        for image, caption in zip(
            batch["image"], text_encoder.detokenize(batch["tokens"]), strict=True
        ):
            seen.setdefault(image.tobytes(), set()).add(caption)
    return seen


@pytest.mark.parametrize("fixed", [False, True])
def test_an_image_gets_a_new_caption_each_epoch_unless_captions_are_fixed(digits_config, fixed):
    config = ml_collections.ConfigDict(digits_config.to_dict())
    config.text_length = 32
    config.fixed_captions = fixed
    epoch = input_pipeline.num_examples(config, config.train_split)
    batches = _take(input_pipeline.create_train_iterator(config, 64, seed=0), 2 * epoch // 64)
    first = _captions_by_image(batches[: epoch // 64])
    second = _captions_by_image(batches[epoch // 64 :])
    common = first.keys() & second.keys()
    assert len(common) > 0.9 * epoch
    changed = np.mean([first[k] != second[k] for k in common])
    if fixed:
        assert changed == 0.0  # Example i keeps template_indices(seed, i).
    else:
        # 17 templates: the same one is drawn again for about 1 image in 17.
        assert changed > 0.85, changed


LAZY_IMPORTS = """
import sys
from diffax import evaluate, main, train
print("tensorflow" in sys.modules, "sklearn" in sys.modules)
"""


def test_the_jobs_import_without_tensorflow_or_scikit_learn():
    """A refused run, or --mode=sample of a model that reads no data, must not pay TensorFlow's
    (~3 s) or scikit-learn's (~1 s) import; every test that reads data loads them on first use."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, "-c", LAZY_IMPORTS], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["False", "False"]
