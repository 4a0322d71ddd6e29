"""Tests for diffax.metrics.sample_batches: guided-diffusion's batch files, read and checked, and
the evaluator's five numbers from features (no network: the Inception end to end is in
score_images_test)."""

import numpy as np
import pytest
import scipy.linalg

from diffax.metrics import fid, manifold, sample_batches


def _pixels(rng, n, size=6):
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def _stats(rng, dim):
    factor = rng.normal(size=(dim, dim + 3))
    return rng.normal(size=dim), factor @ factor.T / dim


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_batches_stream_the_stored_images_in_order(tmp_path, save):
    images = _pixels(np.random.default_rng(0), 11)
    path = str(tmp_path / "samples.npz")
    save(path, images, np.arange(11))  # arr_0, arr_1
    batch = sample_batches.open_sample_batch(path)
    assert batch.shape == (11, 6, 6, 3)
    chunks = list(batch.batches(4))
    assert [len(chunk) for chunk in chunks] == [4, 4, 3]
    np.testing.assert_array_equal(np.concatenate(chunks), images)


def _expect_error(path_and_arrays, match, opener=sample_batches.open_sample_batch):
    path, arrays = path_and_arrays
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=match):
        opener(path)


def test_wrong_sample_batches_name_the_file_and_key(tmp_path):
    rng = np.random.default_rng(1)
    path = str(tmp_path / "bad.npz")
    images = _pixels(rng, 5)
    _expect_error((path, {"images": images}), r"bad\.npz.*lacks key 'arr_0'.*\['images'\]")
    floats = images.astype(np.float32)
    _expect_error((path, {"arr_0": floats}), r"bad\.npz.*'arr_0' must be uint8.*float32")
    _expect_error((path, {"arr_0": images[..., :1]}), r"'arr_0' must be uint8.*\[5, 6, 6, 1\]")
    _expect_error((path, {"arr_0": images[:3]}), r"'arr_0' must be uint8 images \[N >= 4")
    labels = {"arr_0": images, "arr_1": np.zeros(4, np.int64)}
    _expect_error((path, labels), r"bad\.npz.*'arr_1' must be integer labels \[5\].*\[4\]")
    text = tmp_path / "not.npz"
    text.write_text("not a zip")
    with pytest.raises(ValueError, match=r"not\.npz.*\.npz"):
        sample_batches.open_sample_batch(str(text))


def test_wrong_reference_batches_name_the_file_and_key(tmp_path):
    rng = np.random.default_rng(2)
    path = str(tmp_path / "ref.npz")
    images = _pixels(rng, 5)
    mu, sigma = _stats(rng, 2048)
    open_reference = sample_batches.open_reference_batch
    partial = {"arr_0": images, "mu": mu, "sigma": sigma}
    _expect_error((path, partial), r"ref\.npz.*lacks key 'mu_s' \[2023\]", open_reference)
    wrong = partial | {"mu_s": np.zeros(2023), "sigma_s": np.zeros((2023, 2022))}
    _expect_error((path, wrong), r"ref\.npz.*'sigma_s' must be \[2023, 2023\]", open_reference)
    no_images = {"mu": mu, "sigma": sigma, "mu_s": np.zeros(2023), "sigma_s": np.eye(2023)}
    _expect_error((path, no_images), r"ref\.npz.*lacks key 'arr_0'.*precision", open_reference)
    assert sample_batches.is_reference_batch(path)  # has mu_s: a reference batch, if a bad one


def test_a_reference_batch_gives_its_stored_statistics_unchanged(tmp_path):
    rng = np.random.default_rng(3)
    path = str(tmp_path / "ref.npz")
    mu, sigma = _stats(rng, 2048)
    mu_s, sigma_s = _stats(rng, 2023)
    images = _pixels(rng, 7)
    np.savez(path, images, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)
    reference_images, stats = sample_batches.open_reference_batch(path)
    np.testing.assert_array_equal(np.concatenate(list(reference_images.batches(3))), images)
    for key, value in {"mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s}.items():
        np.testing.assert_array_equal(stats[key], value)
    np.savez(path, images)
    assert sample_batches.open_reference_batch(path)[1] is None
    np.savez(path, mu=mu, sigma=sigma)  # A plain FID statistics file is not a reference batch.
    assert not sample_batches.is_reference_batch(path)


def _features(rng, n, shift=0.0):
    return sample_batches.Features(
        pool=rng.normal(size=(n, 5)).astype(np.float32) + shift,
        logits=rng.normal(size=(n, 4)).astype(np.float32) * 3,
        spatial=rng.normal(size=(n, 3)).astype(np.float32) - shift,
    )


def _frechet(features, mu, sigma):
    """Heusel et al. eq. 6 with scipy's sqrtm, as the evaluator computes it."""
    features = features.astype(np.float64)
    mean, cov = features.mean(0), np.cov(features, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov @ sigma).real
    return np.sum((mean - mu) ** 2) + np.trace(cov + sigma - 2 * covmean)


def test_stored_reference_statistics_are_used_as_given():
    rng = np.random.default_rng(4)
    samples, reference = _features(rng, 40), _features(rng, 30, shift=0.5)
    mu, sigma = _stats(rng, 5)
    mu_s, sigma_s = _stats(rng, 3)
    stored = {"mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s}
    scores = sample_batches.evaluator_scores(samples, reference, stored)
    assert list(scores) == ["Inception Score", "FID", "sFID", "Precision", "Recall"]
    np.testing.assert_allclose(scores["FID"], _frechet(samples.pool, mu, sigma), rtol=1e-8)
    np.testing.assert_allclose(scores["sFID"], _frechet(samples.spatial, mu_s, sigma_s), rtol=1e-8)
    # Not the reference features' own statistics, which give other distances.
    own = sample_batches.evaluator_scores(samples, reference, None)
    pool = reference.pool.astype(np.float64)
    own_mu, own_sigma = pool.mean(0), np.cov(pool, rowvar=False)
    np.testing.assert_allclose(own["FID"], _frechet(samples.pool, own_mu, own_sigma), rtol=1e-8)
    assert abs(own["FID"] - scores["FID"]) > 0.1 and abs(own["sFID"] - scores["sFID"]) > 0.1
    # Precision/recall always use the reference features (the stored statistics cannot).
    pr = manifold.precision_recall(reference.pool, samples.pool)
    assert (scores["Precision"], scores["Recall"]) == (pr["precision"], pr["recall"])
    assert (own["Precision"], own["Recall"]) == (pr["precision"], pr["recall"])


def test_inception_score_is_one_split_of_softmax_below_5000_samples():
    rng = np.random.default_rng(5)
    samples = _features(rng, 40)
    scores = sample_batches.evaluator_scores(samples, _features(rng, 30), None)
    logits = samples.logits.astype(np.float64)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)  # softmax over all classes
    kl = np.sum(probs * (np.log(probs) - np.log(probs.mean(0))), axis=1)
    np.testing.assert_allclose(scores["Inception Score"], np.exp(kl.mean()), rtol=1e-6)


def test_samples_equal_to_the_reference_score_zero_distance_and_full_coverage():
    features = _features(np.random.default_rng(6), 25)
    scores = sample_batches.evaluator_scores(features, features, None)
    assert scores["FID"] == pytest.approx(0, abs=1e-9)
    assert scores["sFID"] == pytest.approx(0, abs=1e-9)
    assert (scores["Precision"], scores["Recall"]) == (1.0, 1.0)


def test_score_reads_both_batches_through_the_feature_function(tmp_path):
    rng = np.random.default_rng(7)
    sample_images, reference_images = _pixels(rng, 9), _pixels(rng, 8)
    np.savez(tmp_path / "samples.npz", sample_images)
    np.savez(tmp_path / "ref.npz", reference_images)
    seen = []

    def feature_fn(pixels):
        """A stand-in network: per-image channel means and spreads."""
        seen.append(pixels.shape[0])
        flat = pixels.reshape(len(pixels), -1, 3).astype(np.float32)
        return flat.mean(1), flat.std(1), flat.max(1) - flat.min(1)

    samples = sample_batches.open_sample_batch(str(tmp_path / "samples.npz"))
    reference = sample_batches.open_reference_batch(str(tmp_path / "ref.npz"))
    scores = sample_batches.score(samples, *reference, feature_fn, batch_size=4)
    assert seen == [4, 4, 4, 4, 1]  # 8 reference images, then 9 samples, in batches of 4
    expected = sample_batches.evaluator_scores(
        sample_batches.Features(*feature_fn(sample_images)),
        sample_batches.Features(*feature_fn(reference_images)),
        None,
    )
    assert scores == pytest.approx(expected)
    # In-memory uint8 samples (diffax's own sample files) give the same.
    same = sample_batches.score(sample_images, *reference, feature_fn, batch_size=4)
    assert same == pytest.approx(scores)
    ref_stats = fid.compute_statistics(feature_fn(reference_images)[0])
    assert scores["FID"] == pytest.approx(
        fid.frechet_distance(
            *fid.compute_statistics(feature_fn(sample_images)[0]).values(), *ref_stats.values()
        )
    )
