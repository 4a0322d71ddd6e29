"""Tests of diffax.datasets: the offline digits builder and the image-folder loader."""

import hashlib
import os
import socket

import chex
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from sklearn import datasets as sklearn_datasets

from diffax.datasets import digits, image_folder


def _forbid_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _split_arrays(builder: tfds.core.DatasetBuilder, split: str) -> tuple[np.ndarray, np.ndarray]:
    examples = list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))
    images = np.stack([e["image"] for e in examples])  # [N, 8, 8, 1]
    labels = np.array([e["label"] for e in examples])  # [N]
    return images, labels


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    data_dir = str(tmp_path_factory.mktemp("digits"))
    with pytest.MonkeyPatch.context() as monkeypatch:
        _forbid_network(monkeypatch)
        digits.prepare_digits(data_dir)
    return data_dir


def test_digits_prepares_offline_with_1437_train_and_360_test(digits_dir):
    builder = digits.Digits(data_dir=digits_dir)  # Prepared by the fixture with sockets refused.
    assert builder.is_prepared()
    assert str(builder.info.version) == "1.0.0"
    assert builder.info.splits["train"].num_examples == 1437
    assert builder.info.splits["test"].num_examples == 360


def test_digits_are_uint8_8x8x1_with_values_0_to_16_and_10_classes(digits_dir):
    builder = digits.Digits(data_dir=digits_dir)
    assert builder.info.features["label"].num_classes == 10
    images, labels = _split_arrays(builder, "train")
    chex.assert_shape(images, (1437, 8, 8, 1))
    assert images.dtype == np.uint8
    assert images.min() == 0 and images.max() == 16
    assert set(labels.tolist()) == set(range(10))


def test_digits_splits_are_disjoint_and_match_sklearn_images_and_labels(digits_dir):
    builder = digits.Digits(data_dir=digits_dir)
    bunch = sklearn_datasets.load_digits()
    # The 1797 sklearn images are pairwise distinct, so bytes identify them.
    truth = {bunch.images[i].astype(np.uint8).tobytes(): bunch.target[i] for i in range(1797)}
    assert len(truth) == 1797
    seen = {}
    for split in ("train", "test"):
        images, labels = _split_arrays(builder, split)
        keys = [image[..., 0].tobytes() for image in images]
        assert not set(keys) & set(seen), f"{split} shares images with an earlier split"
        seen.update(zip(keys, labels.tolist(), strict=True))
    assert seen == truth


def test_digits_test_split_never_changes():
    """Every reported digits figure is on these 360 images: pin them (fails if NumPy's
    RandomState stream or the split code ever changes), and check each class is represented."""
    test = np.asarray(digits.split_indices()["test"], np.int64)
    assert hashlib.sha256(test.tobytes()).hexdigest() == (
        "992e5567d36749bee0ba3977dda35dbba0d921bc4937fcd33711360cee8c46d3"
    )
    counts = np.bincount(sklearn_datasets.load_digits().target[test], minlength=10)
    assert counts.min() >= 25, counts


def test_two_digits_builds_write_identical_data(digits_dir, tmp_path, monkeypatch):
    _forbid_network(monkeypatch)
    first = digits.Digits(data_dir=digits_dir)
    second = digits.prepare_digits(str(tmp_path))
    for split in ("train", "test"):
        for a, b in zip(_split_arrays(first, split), _split_arrays(second, split), strict=True):
            np.testing.assert_array_equal(a, b)


def test_digits_default_data_dir_is_a_diffax_folder_under_tfds_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    assert digits.default_data_dir() == os.path.join(str(tmp_path), "diffax")


# Image folders.


def _save(path, array: np.ndarray, mode: str | None = None, **kwargs) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array, mode).save(path, **kwargs)
    return str(path)


def _gray(value: int, size: int = 4) -> np.ndarray:
    return np.full((size, size), value, np.uint8)


def test_class_subfolders_are_labelled_by_sorted_name(tmp_path):
    _save(tmp_path / "dog" / "b.png", _gray(1))
    _save(tmp_path / "dog" / "nested" / "a.png", _gray(2))
    _save(tmp_path / "cat" / "z.jpg", _gray(3))
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    index = image_folder.index_folder(str(tmp_path))
    assert index.class_names == ("cat", "dog")
    relative = [os.path.relpath(p, tmp_path) for p in index.paths]
    assert relative == ["cat/z.jpg", "dog/b.png", "dog/nested/a.png"]
    assert index.labels == (0, 1, 1)


def test_flat_folder_has_label_zero_and_every_supported_extension(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    for ext in ("png", "jpg", "JPEG", "bmp", "gif", "webp"):
        _save(tmp_path / f"image.{ext}", rgb)
    index = image_folder.index_folder(str(tmp_path))
    assert len(index.paths) == 6 and index.labels == (0,) * 6 and index.class_names == ()
    decoded = image_folder.load_images(index.paths, index.labels, image_size=4, num_channels=3)
    chex.assert_shape(decoded.images, (6, 4, 4, 3))


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_missing_or_empty_folder_raises_naming_the_path(tmp_path, make):
    folder = tmp_path / "images"
    if make == "empty":
        folder.mkdir()
    with pytest.raises(ValueError, match="images"):
        image_folder.index_folder(str(folder))


def test_rgb_to_gray_uses_bt601_luma(tmp_path):
    rgb = np.random.RandomState(0).randint(0, 256, (4, 4, 3)).astype(np.uint8)
    path = _save(tmp_path / "rgb.png", rgb)
    gray = image_folder.load_image(path, image_size=4, num_channels=1)  # [4, 4, 1]
    expected = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    chex.assert_shape(gray, (4, 4, 1))
    # PIL rounds in 16-bit fixed point, so exact .5 ties may land one level off.
    np.testing.assert_allclose(gray[..., 0], np.round(expected), atol=1)


def test_gray_is_replicated_to_rgb_and_rgba_drops_alpha(tmp_path):
    values = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    gray_path = _save(tmp_path / "gray.png", values)
    np.testing.assert_array_equal(
        image_folder.load_image(gray_path, 4, 3), np.repeat(values[..., None], 3, axis=-1)
    )
    rgba = np.random.RandomState(1).randint(0, 256, (4, 4, 4)).astype(np.uint8)
    rgba_path = _save(tmp_path / "rgba.png", rgba)
    np.testing.assert_array_equal(image_folder.load_image(rgba_path, 4, 3), rgba[..., :3])


def test_palette_image_decodes_through_its_palette(tmp_path):
    palette = np.array([[255, 0, 0], [0, 128, 255], [7, 8, 9]], np.uint8)
    indices = np.array([[0, 1, 2, 0], [1, 2, 0, 1], [2, 0, 1, 2], [0, 0, 1, 1]], np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette(palette.reshape(-1).tolist())
    path = str(tmp_path / "palette.png")
    image.save(path)
    np.testing.assert_array_equal(image_folder.load_image(path, 4, 3), palette[indices])


def test_non_square_image_is_center_cropped_then_box_resized(tmp_path):
    # 4 high, 6 wide: the central 4x4 is columns 1..4; shrinking to 2x2 averages 2x2 blocks.
    image = np.zeros((4, 6), np.uint8)
    image[:, 0] = image[:, 5] = 255  # Cropped away.
    image[:2, 1:3], image[:2, 3:5], image[2:, 1:3], image[2:, 3:5] = 10, 20, 30, 40
    image[0, 1] = 14  # Block mean (14 + 3 * 10) / 4 = 11.
    path = _save(tmp_path / "wide.png", image)
    resized = image_folder.load_image(path, image_size=2, num_channels=1)
    np.testing.assert_array_equal(resized[..., 0], [[11, 20], [30, 40]])


def _truncated_png(path) -> str:
    _save(path, np.random.RandomState(2).randint(0, 256, (32, 32, 3)).astype(np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return str(path)


def test_truncated_png_raises_value_error_naming_its_path(tmp_path):
    bad = _truncated_png(tmp_path / "broken.png")
    with pytest.raises(ValueError, match="broken.png"):
        image_folder.load_image(bad, 8, 3)
    good = _save(tmp_path / "good.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="broken.png"):
        image_folder.load_images([good, bad], [0, 0], 8, 3)


def test_skip_bad_images_skips_and_logs_the_count(tmp_path, monkeypatch):
    good = [_save(tmp_path / f"g{i}.png", _gray(50 * i, 8)) for i in range(3)]
    bad = _truncated_png(tmp_path / "broken.png")
    logged = []
    monkeypatch.setattr(image_folder.logging, "warning", lambda msg, *a: logged.append(msg % a))
    decoded = image_folder.load_images(
        [good[0], bad, good[1], good[2]], [0, 1, 2, 3], 8, 1, skip_bad_images=True
    )
    assert decoded.num_skipped == 1
    np.testing.assert_array_equal(decoded.labels, [0, 2, 3])
    np.testing.assert_array_equal(decoded.images[:, 0, 0, 0], [0, 50, 100])
    assert len(logged) == 1 and "Skipped 1 of 4" in logged[0] and "broken.png" in logged[0]


def test_an_image_of_another_size_is_refused_when_resizing_is_off(tmp_path):
    path = _save(tmp_path / "wide.png", np.zeros((6, 10), np.uint8))
    with pytest.raises(ValueError, match=r"wide\.png is 10x6, not 8x8; set data.resize_images"):
        image_folder.load_image(path, 8, 1, resize=False)
    assert image_folder.load_image(path, 8, 1, resize=True).shape == (8, 8, 1)
    exact = _save(tmp_path / "exact.png", np.full((8, 8), 7, np.uint8))
    np.testing.assert_array_equal(image_folder.load_image(exact, 8, 1, resize=False), 7)
