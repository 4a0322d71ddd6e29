"""Tests of diffax.sample_quality: the eval split's reference statistics, cached; a user's .npz."""

import os

import chex
import numpy as np
import pytest

from diffax import input_pipeline, sample_quality
from diffax.datasets import digits
from diffax.metrics import fid


def _eval_images(config):
    return lambda num_examples: input_pipeline.eval_split_images(config.data, num_examples)


def _no_eval_images(num_examples):
    raise AssertionError("a user's reference file must not read the eval split")


def _mean_std_features(images):
    """A feature function independent of any network: per-image mean and std, [N, 2]."""
    flat = np.asarray(images, np.float64).reshape(len(images), -1)
    return np.stack([flat.mean(axis=1), flat.std(axis=1)], axis=1)


def test_reference_statistics_match_the_test_split_and_are_cached(
    tiny_config, data_dir, digits_split
):
    digits.prepare_digits(data_dir)
    config = tiny_config()
    stats = sample_quality.reference_statistics(config, _mean_std_features, _eval_images(config))
    # Independent: the same 360 test digits from scikit-learn via load_digits_split.
    expected = _mean_std_features(digits_split[2])  # [360, 2]
    chex.assert_trees_all_close(stats["mu"], expected.mean(axis=0), rtol=1e-5)
    chex.assert_trees_all_close(stats["sigma"], np.cov(expected, rowvar=False), rtol=1e-5)
    path = sample_quality.default_statistics_path(config)
    assert path == os.path.join(data_dir, "diffax_fid_stats", "inception_digits_test_8x8x1.npz")
    assert os.path.exists(path)

    def must_not_run(images):
        raise AssertionError("cached statistics must not be recomputed")

    cached = sample_quality.reference_statistics(config, must_not_run, _eval_images(config))
    chex.assert_trees_all_equal(cached, stats)


def test_reference_cache_key_includes_size_split_and_limit(tiny_config, data_dir):
    config = tiny_config(**{"eval.num_reference_examples": 100})
    config.data.eval_split = "test[:50%]"
    config.data.image_size = 16
    name = os.path.basename(sample_quality.default_statistics_path(config, network="digits"))
    assert name == "digits_digits_test_50_16x16x1_first100.npz"


def test_user_statistics_file_is_used_as_is(tiny_config, tmp_path):
    path = str(tmp_path / "stats.npz")
    stats = {"mu": np.arange(3.0), "sigma": np.eye(3) * 2}
    fid.save_statistics(path, stats)
    config = tiny_config(**{"eval.reference_stats": path})
    loaded = sample_quality.reference_statistics(config, _mean_std_features, _eval_images(config))
    chex.assert_trees_all_equal(loaded, stats)


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_user_images_file_gives_their_feature_statistics(tiny_config, tmp_path, dtype):
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, size=(12, 5, 5, 3)).astype(np.uint8)
    unit = pixels.astype(np.float64) / 255 * 2 - 1
    path = str(tmp_path / "images.npz")
    np.savez(path, images=pixels if dtype == "uint8" else unit.astype(np.float32))
    config = tiny_config(**{"eval.reference_stats": path})
    stats = sample_quality.reference_statistics(config, _mean_std_features, _eval_images(config))
    expected = _mean_std_features(unit)
    chex.assert_trees_all_close(stats["mu"], expected.mean(axis=0), atol=1e-6)
    chex.assert_trees_all_close(stats["sigma"], np.cov(expected, rowvar=False), atol=1e-6)


def test_bad_reference_files_raise_naming_the_file(tiny_config, tmp_path):
    wrong_keys = str(tmp_path / "wrong_keys.npz")
    np.savez(wrong_keys, features=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="wrong_keys.npz.*neither FID statistics.*features"):
        sample_quality.reference_statistics(
            tiny_config(**{"eval.reference_stats": wrong_keys}), np.asarray, _no_eval_images
        )
    not_npz = tmp_path / "not_npz.npz"
    not_npz.write_text("hello")
    with pytest.raises(ValueError, match="not_npz.npz"):
        sample_quality.reference_statistics(
            tiny_config(**{"eval.reference_stats": str(not_npz)}), np.asarray, _no_eval_images
        )
    out_of_range = str(tmp_path / "out_of_range.npz")
    np.savez(out_of_range, images=np.full((4, 2, 2, 1), 255.0, np.float32))
    with pytest.raises(ValueError, match="out_of_range.npz.*\\[-1, 1\\]"):
        sample_quality.reference_statistics(
            tiny_config(**{"eval.reference_stats": out_of_range}), np.asarray, _no_eval_images
        )
