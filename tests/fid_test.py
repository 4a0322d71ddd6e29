"""Tests for diffax.metrics.fid against closed forms and scipy."""

import chex
import numpy as np
import pytest
import scipy.linalg

from diffax.metrics import fid


def _random_covariance(rng: np.random.Generator, dim: int) -> np.ndarray:
    factor = rng.normal(size=(dim, 2 * dim))
    return factor @ factor.T / (2 * dim) + 0.01 * np.eye(dim)


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    var1, var2 = rng.uniform(0.1, 3.0, size=5), rng.uniform(0.1, 3.0, size=5)
    # Commuting (diagonal) covariances: Tr(S1 + S2 - 2 sqrt(S1 S2)) = sum (sqrt(a) - sqrt(b))^2.
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    got = fid.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_frechet_distance_matches_scipy_sqrtm_for_full_covariances():
    rng = np.random.default_rng(1)
    dim = 16
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    sigma1, sigma2 = _random_covariance(rng, dim), _random_covariance(rng, dim)
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2.0 * covmean)
    got = fid.frechet_distance(mu1, sigma1, mu2, sigma2)
    np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_frechet_distance_is_zero_for_identical_stats_and_symmetric():
    rng = np.random.default_rng(2)
    stats1 = fid.compute_statistics(rng.normal(size=(200, 8)))
    stats2 = fid.compute_statistics(rng.normal(loc=0.5, size=(150, 8)))
    assert fid.frechet_distance(stats1["mu"], stats1["sigma"], stats1["mu"], stats1["sigma"]) < 1e-9
    forward = fid.frechet_distance(stats1["mu"], stats1["sigma"], stats2["mu"], stats2["sigma"])
    backward = fid.frechet_distance(stats2["mu"], stats2["sigma"], stats1["mu"], stats1["sigma"])
    assert forward > 0.1
    np.testing.assert_allclose(forward, backward, rtol=1e-9)


def test_frechet_distance_handles_singular_covariance():
    rng = np.random.default_rng(3)
    # Fewer samples than dimensions: rank-deficient covariance, as with small eval sets.
    stats1 = fid.compute_statistics(rng.normal(size=(5, 12)))
    stats2 = fid.compute_statistics(rng.normal(size=(6, 12)))
    value = fid.frechet_distance(stats1["mu"], stats1["sigma"], stats2["mu"], stats2["sigma"])
    assert np.isfinite(value) and value > 0


def test_compute_statistics_matches_numpy_mean_and_unbiased_covariance():
    rng = np.random.default_rng(4)
    features = rng.normal(size=(50, 3)).astype(np.float32)
    stats = fid.compute_statistics(features)
    chex.assert_shape(stats["mu"], (3,))
    chex.assert_shape(stats["sigma"], (3, 3))
    assert stats["sigma"].dtype == np.float64
    centered = features.astype(np.float64) - features.astype(np.float64).mean(0)
    np.testing.assert_allclose(stats["sigma"], centered.T @ centered / 49, rtol=1e-10)


def test_statistics_round_trip_and_bad_file_error(tmp_path):
    rng = np.random.default_rng(5)
    stats = fid.compute_statistics(rng.normal(size=(20, 4)))
    path = str(tmp_path / "stats.npz")
    fid.save_statistics(path, stats)
    loaded = fid.load_statistics(path)
    chex.assert_trees_all_close(loaded, stats)
    bad_path = str(tmp_path / "bad.npz")
    np.savez(bad_path, mean=stats["mu"])
    with pytest.raises(ValueError, match=r"bad\.npz.*mu.*sigma"):
        fid.load_statistics(bad_path)


def test_inception_score_of_uniform_logits_is_one():
    mean, std = fid.inception_score(np.zeros((100, 7)), num_splits=5)
    np.testing.assert_allclose(mean, 1.0, rtol=1e-12)
    np.testing.assert_allclose(std, 0.0, atol=1e-12)


@pytest.mark.parametrize("from_logits", [False, True])
def test_inception_score_of_confident_even_classes_is_num_classes(from_logits):
    num_classes, per_class = 8, 10
    labels = np.tile(np.arange(num_classes), per_class)  # each split of 8 rows covers all classes
    one_hot = np.eye(num_classes)[labels]
    inputs = 50.0 * one_hot if from_logits else one_hot
    mean, std = fid.inception_score(inputs, num_splits=per_class, from_logits=from_logits)
    np.testing.assert_allclose(mean, num_classes, rtol=1e-6)
    np.testing.assert_allclose(std, 0.0, atol=1e-6)


def test_inception_score_matches_direct_kl_formula():
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(30, 5)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    marginal = probs.mean(0)
    expected = np.exp(np.mean(np.sum(probs * np.log(probs / marginal), axis=-1)))
    mean, _ = fid.inception_score(logits, num_splits=1)
    np.testing.assert_allclose(mean, expected, rtol=1e-10)


def test_inception_score_with_split_size_averages_consecutive_chunks():
    # guided-diffusion's evaluator: chunks of split_size rows (the last shorter), mean of scores.
    # Chunk 1: 4 confident rows, one per class: 4. Chunk 2: one class only: 1. Chunk 3 (2 rows):
    # two classes: 2.
    classes = [0, 1, 2, 3, 5, 5, 5, 5, 6, 7]
    probs = np.eye(8)[classes]
    mean, _ = fid.inception_score(probs, split_size=4)
    np.testing.assert_allclose(mean, (4 + 1 + 2) / 3, rtol=1e-12)
    # 5000 (the evaluator's split size) > N: one split. p(y) is 4/10 for class 5, 1/10 for six
    # others; a one-hot row's KL is log(1 / p(y)): IS = exp(0.6 log 10 + 0.4 log 2.5).
    one_split, _ = fid.inception_score(probs, split_size=5000)
    np.testing.assert_allclose(one_split, 10**0.6 * 2.5**0.4, rtol=1e-12)
    with pytest.raises(ValueError, match="split_size"):
        fid.inception_score(probs, split_size=0)


def test_sample_metrics_combines_available_metrics(tmp_path):
    rng = np.random.default_rng(10)
    real = rng.normal(size=(40, 4))
    fake = rng.normal(size=(30, 4))
    path = str(tmp_path / "ref.npz")
    fid.save_statistics(path, fid.compute_statistics(real))
    metrics = fid.sample_metrics(fake, np.zeros((30, 3)), path, real_features=real)
    assert set(metrics) == {"fid", "is_mean", "is_std", "precision", "recall"}
    real_stats, fake_stats = fid.compute_statistics(real), fid.compute_statistics(fake)
    expected_fid = np.sum((real_stats["mu"] - fake_stats["mu"]) ** 2) + np.trace(
        real_stats["sigma"]
        + fake_stats["sigma"]
        - 2 * scipy.linalg.sqrtm(real_stats["sigma"] @ fake_stats["sigma"]).real
    )
    np.testing.assert_allclose(metrics["fid"], expected_fid, rtol=1e-8)
    np.testing.assert_allclose(metrics["is_mean"], 1.0)
    only_fid = fid.sample_metrics(fake, None, fid.compute_statistics(real))
    assert set(only_fid) == {"fid"}
