"""Tests of sample-quality evaluation: digits FD/accuracy, reference statistics, FID/IS/PR, CLI."""

import json
import logging
import os

import chex
import jax
import numpy as np
import pytest
from PIL import Image

from configs import tiny
from diffax import sample_quality
from diffax.datasets import digits
from diffax.metrics import digits_classifier, fid, inception


@pytest.fixture(scope="module")
def classifier_path(tmp_path_factory):
    """One trained digits classifier (about 10 s) shared by the module's tests."""
    path = str(tmp_path_factory.mktemp("classifier") / "digits_classifier")
    digits_classifier.get_or_train_classifier(path)
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A digits TFDS folder, prepared offline."""
    path = str(tmp_path_factory.mktemp("tfds"))
    digits.prepare_digits(path)
    return path


@pytest.fixture(scope="module")
def digits_split():
    return digits_classifier.load_digits_split()


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """Small random weights for the full FID Inception-v3, saved with inception.save_params."""
    rng = np.random.default_rng(0)

    def fill(path, spec):
        leaf = path[-1].key
        if leaf == "kernel":
            fan_in = int(np.prod(spec.shape[:-1]))
            return rng.normal(size=spec.shape) * np.sqrt(2.0 / fan_in)
        if leaf in ("scale", "var"):
            return rng.uniform(0.5, 1.5, size=spec.shape)
        return rng.normal(size=spec.shape) * 0.1

    variables = jax.tree_util.tree_map_with_path(fill, inception.abstract_variables())
    path = str(tmp_path_factory.mktemp("inception") / "weights.npz")
    inception.save_params(path, variables)
    return path


def _config(data_dir, **eval_fields):
    config = tiny.get_config()
    config.data.data_dir = data_dir
    for key, value in eval_fields.items():
        config.eval[key] = value
    return config


def _mean_std_features(images):
    """A feature function independent of any network: per-image mean and std, [N, 2]."""
    flat = np.asarray(images, np.float64).reshape(len(images), -1)
    return np.stack([flat.mean(axis=1), flat.std(axis=1)], axis=1)


# ------------------------------------------------------------------------------------------------
# Digits.


def test_real_digits_score_near_the_floor_and_are_classified(classifier_path, digits_split):
    train_images, train_labels, test_images, _ = digits_split
    chosen = np.random.default_rng(1).choice(len(train_images), 300, replace=False)
    config = _config(None)
    results = sample_quality.digits_quality(
        train_images[chosen], train_labels[chosen], classifier_path, config
    )
    assert set(results) == {"digits_fd", "digits_fd_test_vs_train", "digits_class_accuracy"}
    assert results["digits_class_accuracy"] >= 0.95
    floor = results["digits_fd_test_vs_train"]
    assert floor > 0
    # Another draw of 300 real digits: within sampling noise of the floor (also 300 train digits).
    assert results["digits_fd"] < 1.5 * floor
    # The test split itself has exactly the reference statistics: distance 0.
    identical = sample_quality.digits_quality(test_images, None, classifier_path, config)
    assert identical["digits_fd"] == pytest.approx(0.0, abs=1e-6 * floor)
    assert "digits_class_accuracy" not in identical


def test_noise_scores_far_above_the_floor_at_chance_accuracy(classifier_path):
    noise = np.random.default_rng(2).uniform(-1, 1, size=(300, 8, 8, 1)).astype(np.float32)
    labels = np.arange(300) % 10
    results = sample_quality.digits_quality(noise, labels, classifier_path, _config(None))
    assert results["digits_fd"] > 10 * results["digits_fd_test_vs_train"]
    # Balanced labels: any labelling that ignores the image is right 10% of the time.
    assert abs(results["digits_class_accuracy"] - 0.1) < 0.1


def test_digits_samples_are_scored_on_the_data_grid(classifier_path, digits_split):
    # Off-grid values that round to the test digits' levels give the test digits' distance: 0.
    test_images = digits_split[2]
    jitter = np.random.default_rng(3).uniform(-0.4, 0.4, test_images.shape) * (2.0 / 16)
    results = sample_quality.digits_quality(
        np.clip(test_images + jitter, -1, 1), None, classifier_path, _config(None)
    )
    assert results["digits_fd"] < 1e-6


def test_quality_metrics_gives_prefixed_plain_floats_for_digits(
    classifier_path, digits_split, tmp_path
):
    config = _config(None, classifier_path=classifier_path)
    images = digits_split[2][:20]
    results = sample_quality.quality_metrics(config, images, digits_split[3][:20], str(tmp_path))
    assert set(results) == {
        "samples/digits_fd",
        "samples/digits_fd_test_vs_train",
        "samples/digits_class_accuracy",
    }
    assert all(type(value) is float for value in results.values())
    json.dumps(results)


def test_quality_metrics_without_inception_weights_is_empty_and_says_why(caplog):
    config = _config(None)
    config.data.dataset = "cifar10"
    with caplog.at_level(logging.INFO):
        assert (
            sample_quality.quality_metrics(config, np.zeros((4, 8, 8, 3)), None, "/nowhere") == {}
        )
    assert "eval.inception_weights" in caplog.text
    assert "diffax/metrics/inception.py" in caplog.text


# ------------------------------------------------------------------------------------------------
# Reference statistics.


def test_reference_statistics_match_the_test_split_and_are_cached(data_dir, digits_split):
    config = _config(data_dir)
    stats = sample_quality.reference_statistics(config, _mean_std_features)
    # Independent: the same 360 test digits from scikit-learn via load_digits_split.
    expected = _mean_std_features(digits_split[2])  # [360, 2]
    chex.assert_trees_all_close(stats["mu"], expected.mean(axis=0), rtol=1e-5)
    chex.assert_trees_all_close(stats["sigma"], np.cov(expected, rowvar=False), rtol=1e-5)
    path = sample_quality.default_statistics_path(config)
    assert path == os.path.join(data_dir, "diffax_fid_stats", "inception_digits_test_8x8x1.npz")
    assert os.path.exists(path)

    def must_not_run(images):
        raise AssertionError("cached statistics must not be recomputed")

    cached = sample_quality.reference_statistics(config, must_not_run)
    chex.assert_trees_all_equal(cached, stats)


def test_eval_split_images_are_the_test_digits_without_padding(data_dir, digits_split):
    config = _config(data_dir)  # eval.batch_size 32 does not divide 360: the last batch is padded
    images = sample_quality.eval_split_images(config)
    expected = digits_split[2]
    chex.assert_shape(images, expected.shape)
    # Same multiset of images (TFDS may store them in another order).
    order = lambda x: x[np.lexsort(x.reshape(len(x), -1).T)]
    np.testing.assert_allclose(order(images), order(expected), atol=1e-6)
    chex.assert_shape(sample_quality.eval_split_images(config, num_examples=50), (50, 8, 8, 1))


def test_reference_cache_key_includes_size_split_and_limit(data_dir):
    config = _config(data_dir, num_reference_examples=100)
    config.data.eval_split = "test[:50%]"
    config.data.image_size = 16
    name = os.path.basename(sample_quality.default_statistics_path(config, network="digits"))
    assert name == "digits_digits_test_50_16x16x1_first100.npz"


def test_user_statistics_file_is_used_as_is(tmp_path):
    path = str(tmp_path / "stats.npz")
    stats = {"mu": np.arange(3.0), "sigma": np.eye(3) * 2}
    fid.save_statistics(path, stats)
    config = _config(None, reference_stats=path)
    loaded = sample_quality.reference_statistics(config, _mean_std_features)
    chex.assert_trees_all_equal(loaded, stats)


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_user_images_file_gives_their_feature_statistics(tmp_path, dtype):
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, size=(12, 5, 5, 3)).astype(np.uint8)
    unit = pixels.astype(np.float64) / 255 * 2 - 1
    path = str(tmp_path / "images.npz")
    np.savez(path, images=pixels if dtype == "uint8" else unit.astype(np.float32))
    config = _config(None, reference_stats=path)
    stats = sample_quality.reference_statistics(config, _mean_std_features)
    expected = _mean_std_features(unit)
    chex.assert_trees_all_close(stats["mu"], expected.mean(axis=0), atol=1e-6)
    chex.assert_trees_all_close(stats["sigma"], np.cov(expected, rowvar=False), atol=1e-6)


def test_bad_reference_files_raise_naming_the_file(tmp_path):
    wrong_keys = str(tmp_path / "wrong_keys.npz")
    np.savez(wrong_keys, features=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="wrong_keys.npz.*neither FID statistics.*features"):
        sample_quality.reference_statistics(_config(None, reference_stats=wrong_keys), np.asarray)
    not_npz = tmp_path / "not_npz.npz"
    not_npz.write_text("hello")
    with pytest.raises(ValueError, match="not_npz.npz"):
        sample_quality.reference_statistics(_config(None, reference_stats=str(not_npz)), np.asarray)
    out_of_range = str(tmp_path / "out_of_range.npz")
    np.savez(out_of_range, images=np.full((4, 2, 2, 1), 255.0, np.float32))
    with pytest.raises(ValueError, match="out_of_range.npz.*\\[-1, 1\\]"):
        sample_quality.reference_statistics(_config(None, reference_stats=out_of_range), np.asarray)


# ------------------------------------------------------------------------------------------------
# Inception (random weights; one batch of 4 tiny images, one compilation). Each FID takes two
# 2048x2048 eigendecompositions (seconds to tens of seconds on 2 busy cores), so there is one.


# ------------------------------------------------------------------------------------------------
# Command line.


def test_cli_on_saved_levels_npz(classifier_path, digits_split, tmp_path, capsys):
    _, _, test_images, test_labels = digits_split
    path = str(tmp_path / "samples.npz")
    levels = np.round((test_images + 1) / 2 * 16).astype(np.uint8)
    np.savez(path, levels=levels, num_levels=17, labels=test_labels)
    argv = ["--images", path, "--digits", "--classifier_path", classifier_path]
    returned = sample_quality.cli_main(argv)
    printed = json.loads(capsys.readouterr().out)
    assert printed == returned
    assert printed["digits_fd"] < 1e-6  # the test split itself
    assert printed["digits_class_accuracy"] >= 0.95


def test_cli_on_image_folder_with_class_subfolders(classifier_path, digits_split, tmp_path):
    _, _, test_images, test_labels = digits_split
    pixels = np.round((test_images[:60, ..., 0] + 1) / 2 * 255).astype(np.uint8)  # [60, 8, 8]
    for i, (image, label) in enumerate(zip(pixels, test_labels[:60], strict=True)):
        os.makedirs(tmp_path / "samples" / str(label), exist_ok=True)
        Image.fromarray(image).save(tmp_path / "samples" / str(label) / f"{i:03d}.png")
    argv = ["--images", str(tmp_path / "samples"), "--digits"]
    results = sample_quality.cli_main(argv + ["--classifier_path", classifier_path])
    # The folder's labels come from its subfolder names; real digits are classified right.
    assert results["digits_class_accuracy"] >= 0.95
    same = sample_quality.digits_quality(
        test_images[:60], test_labels[:60], classifier_path, _config(None)
    )
    assert results == pytest.approx(same)


def test_cli_inception_of_samples_against_themselves(inception_weights, tmp_path, capsys):
    samples = np.random.default_rng(7).integers(0, 256, size=(4, 8, 8, 1)).astype(np.uint8)
    path = str(tmp_path / "samples.npz")
    np.savez(path, images=samples)
    argv = ["--images", path, "--reference", path, "--inception_weights", inception_weights]
    results = sample_quality.cli_main(argv + ["--batch_size", "4"])
    assert json.loads(capsys.readouterr().out) == results
    assert set(results) == {"fid", "is_mean", "is_std", "precision", "recall"}
    chex.assert_tree_all_finite(results)
    # Identical feature sets: zero distance, each set inside the other's manifold.
    assert results["fid"] == pytest.approx(0.0, abs=1e-3)
    assert results["precision"] == 1.0 and results["recall"] == 1.0
    assert results["is_mean"] >= 1.0 - 1e-6
