"""Tests for diffax.metrics.manifold: precision/recall with the definitions of guided-diffusion's
evaluator, against answers worked out by hand and NumPy's own float16 arithmetic."""

import numpy as np
import pytest

from diffax.metrics import manifold


def _square(x, y, side):
    """The 4 corners of a square: with k = 3 each corner's radius is the squared diagonal."""
    return [(x, y), (x + side, y), (x, y + side), (x + side, y + side)]


# Coordinates are multiples of 0.5 below 21, so every float16 step of the distances is exact and
# the answers below hold in any arithmetic.
REFERENCE = np.array(_square(0, 0, 1) + _square(10, 0, 1) + _square(0, 10, 1), np.float32)
SAMPLES = np.array(_square(0, 0, 0.5) + _square(20, 0, 0.5), np.float32)


def test_radii_are_squared_distances_to_the_third_neighbour():
    # Unit squares: each corner's 3 neighbours lie at squared distances 1, 1, 2.
    np.testing.assert_array_equal(manifold.manifold_radii(REFERENCE), np.full(12, 2.0))
    np.testing.assert_array_equal(manifold.manifold_radii(SAMPLES), np.full(8, 0.5))
    # On a line 0..4: rows of squared distances [0 1 4 9 16], [1 0 1 4 9], ...: 4th smallest.
    line = np.array([[0.0], [1.0], [2.0], [3.0], [4.0]], np.float32)
    np.testing.assert_array_equal(manifold.manifold_radii(line), [9, 4, 4, 4, 9])
    np.testing.assert_array_equal(manifold.manifold_radii(line, k=1), [1, 1, 1, 1, 1])


def test_precision_recall_of_hand_worked_point_sets():
    result = manifold.precision_recall(REFERENCE, SAMPLES)
    # Precision: the 4 samples of the half-unit square at the origin lie in the first reference
    # square's balls (radius^2 2); the 4 near x = 20 are 81 or more from any reference point.
    # Recall: of the 12 reference points only the unit square at the origin is within 0.5 of a
    # sample, its corner (1, 1) exactly at 0.5 of (0.5, 0.5): "within" includes the radius.
    assert result == {"precision": 4 / 8, "recall": 4 / 12}
    swapped = manifold.precision_recall(SAMPLES, REFERENCE)
    assert swapped == {"precision": 4 / 12, "recall": 4 / 8}


def test_identical_sets_score_one_and_far_sets_zero():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(70, 6)).astype(np.float32)
    same = manifold.precision_recall(features, features)
    assert same == {"precision": 1.0, "recall": 1.0}
    far = manifold.precision_recall(features, features + 100.0)
    assert far == {"precision": 0.0, "recall": 0.0}


def test_clamping_zeroes_radii_above_the_percentile():
    line = np.array([[0.0], [1.0], [2.0], [3.0], [4.0]], np.float32)
    # Radii [9, 4, 4, 4, 9]; their median is 4, so the two 9s become 0.
    clamped = manifold.manifold_radii(line, clamp_to_percentile=50)
    np.testing.assert_array_equal(clamped, [0, 4, 4, 4, 0])


def test_round_to_float16_matches_numpy():
    rng = np.random.default_rng(1)
    values = np.concatenate(
        [
            rng.normal(size=5000) * 300,
            rng.normal(size=2000) * 1e-5,  # float16 subnormals
            rng.normal(size=500) * 1e-8,  # below the smallest subnormal
            np.arange(1024, 1100, dtype=np.float32) + 0.5,  # ties between float16 neighbours
            [65504, 65519, 65520, 1e6, -1e6, np.inf, -np.inf, 0.0, -0.0, 2.0**-14, 2.0**-25],
        ]
    ).astype(np.float32)
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16).astype(np.float32)
    got = np.asarray(manifold.round_to_float16(values))
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(expected))
    assert np.isnan(np.asarray(manifold.round_to_float16(np.float32(np.nan))))


def _numpy_float16_distances(u, v):
    """Squared distances with NumPy float16 arrays (each operation rounded to float16), the sums
    accumulated in float32, in the evaluator's order |u|^2 - 2 u.v + |v|^2."""
    u16, v16 = u.astype(np.float16), v.astype(np.float16)
    norms_u = np.sum(u16 * u16, axis=1, dtype=np.float32).astype(np.float16)
    norms_v = np.sum(v16 * v16, axis=1, dtype=np.float32).astype(np.float16)
    cross = (u16.astype(np.float32) @ v16.astype(np.float32).T).astype(np.float16)
    distances = norms_u[:, None] - np.float16(2) * cross + norms_v[None, :]
    return np.maximum(distances, np.float16(0)).astype(np.float32)


def _lattice_features(rng, shape):
    # Multiples of 1/8 in [0, 8): float32 sums of their products are exact in any order, so only
    # the float16 roundings (steps of 2 near 4000) separate the two arithmetics.
    return rng.integers(0, 64, size=shape).astype(np.float32) / 8


def test_distances_are_float16_arithmetic():
    rng = np.random.default_rng(2)
    u, v = _lattice_features(rng, (40, 64)), _lattice_features(rng, (30, 64))
    got = np.asarray(manifold.squared_distances(u, v))
    np.testing.assert_array_equal(got, _numpy_float16_distances(u, v))
    exact = np.sum((u[:, None].astype(np.float64) - v[None]) ** 2, axis=-1)
    assert np.mean(got != exact) > 0.5  # float16 changes most entries here


def test_a_block_that_overflows_float16_is_computed_in_float32():
    rng = np.random.default_rng(3)
    u, v = _lattice_features(rng, (6, 64)), _lattice_features(rng, (5, 64))
    big = u.copy()
    big[2] += 300.0  # |u|^2 > 65504: inf in float16
    got = np.asarray(manifold.squared_distances(big, v))
    norms_u, norms_v = np.sum(big * big, 1), np.sum(v * v, 1)
    float32 = np.maximum(norms_u[:, None] - 2 * (big @ v.T) + norms_v[None], 0)
    np.testing.assert_allclose(got, float32, rtol=1e-6)
    assert np.all(np.isfinite(got))
    # The rows without overflow are float32 too (the whole block falls back), unlike on their own.
    alone = np.asarray(manifold.squared_distances(u[:2], v))
    np.testing.assert_array_equal(alone, _numpy_float16_distances(u[:2], v))
    assert np.any(got[:2] != alone)


def test_batch_sizes_change_nothing_without_overflow():
    rng = np.random.default_rng(4)
    reference = _lattice_features(rng, (24, 16))
    samples = _lattice_features(rng, (18, 16)) + 0.25
    whole = manifold.precision_recall(reference, samples)
    # Blocks of 8 x 6: several per set and a short last row block (18 = 8 + 8 + 2).
    blocked = manifold.precision_recall(reference, samples, row_batch_size=8, col_batch_size=6)
    assert whole == blocked
    assert 0 < whole["precision"] < 1 and 0 < whole["recall"] < 1


def test_brute_force_on_the_same_float16_distances():
    rng = np.random.default_rng(5)
    reference = _lattice_features(rng, (30, 8))
    samples = _lattice_features(rng, (25, 8)) * 1.25 + 1.0
    k = 3

    def radii(points):
        return np.sort(_numpy_float16_distances(points, points), axis=1)[:, k]

    distances = _numpy_float16_distances(reference, samples)  # reference rows, as the evaluator
    precision = np.mean(np.any(distances <= radii(reference)[:, None], axis=0))
    recall = np.mean(np.any(distances <= radii(samples)[None, :], axis=1))
    assert 0 < precision < 1 and 0 < recall < 1
    result = manifold.precision_recall(reference, samples, k=k)
    assert result == {"precision": pytest.approx(precision), "recall": pytest.approx(recall)}


def test_too_few_points_or_mismatched_features_say_so():
    with pytest.raises(ValueError, match=r"k=3 .*N > 3"):
        manifold.manifold_radii(np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match=r"\(5, 2\) and \(5, 3\)"):
        manifold.precision_recall(np.zeros((5, 2)), np.zeros((5, 3)))
