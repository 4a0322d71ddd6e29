"""Improved precision and recall (Kynkäänniemi et al. 2019), guided-diffusion's evaluator's way.

The ADM (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis") and DiT (Peebles &
Xie 2023) papers report precision and recall computed by guided-diffusion's
`evaluations/evaluator.py` (its `ManifoldEstimator` and `DistanceBlock`). These definitions are
taken from it, as facts:

- Distances are SQUARED Euclidean distances, max(|u|^2 - 2 u.v + |v|^2, 0), computed in float16:
  the features are cast to float16 and every operation's result is float16. A block whose float16
  distances are not all finite (float16 ends at 65504) is computed again in float32.
- Blocks are 10000 rows x 10000 columns (`row_batch_size`, `col_batch_size`): the float16 or
  float32 choice is made per block.
- A point's radius is its squared distance to its k-th nearest neighbour (k = 3) within its own set:
  the (k+1)-th smallest of its row of distances, which includes the point itself.
- Precision: the fraction of sample rows within (<=) the radius of at least one reference row.
  Recall: the fraction of reference rows within the radius of at least one sample row. Distances
  between the two sets are computed with the reference rows as u, the sample rows as v.
- `clamp_to_percentile` (None in the evaluator, so no clamping): radii above that percentile of a
  set's radii are set to 0.

The float16 arithmetic is emulated in float32 with an explicit rounding after each operation, so
no compiler can keep excess precision: products of float16 values are exact in float32, and the two
sums (squared norms, the matrix product) accumulate in float32 and round once. TensorFlow leaves the
order of those float16 sums to the device, so the evaluator's own distances differ by one float16
step between devices; on features whose sums are exact in float16 all agree (docs/evaluation.md).
"""

import jax
import jax.numpy as jnp
import numpy as np

NEIGHBOURHOOD_SIZE = 3  # k of the evaluator's ManifoldEstimator (nhood_sizes=(3,)).
ROW_BATCH_SIZE = 10000
COL_BATCH_SIZE = 10000

_FLOAT16_MAX_BITS = 0x477FE000  # 65504 as a float32 bit pattern.
_FLOAT16_MIN_NORMAL = 2.0**-14


def round_to_float16(x: jax.Array) -> jax.Array:
    """Returns float32 x rounded to the nearest float16 value (ties to even; inf past 65504)."""
    x = jnp.asarray(x, jnp.float32)
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    sign = bits & jnp.uint32(0x80000000)
    magnitude = bits & jnp.uint32(0x7FFFFFFF)
    # float32 keeps 23 mantissa bits, float16 10: round away the low 13, to nearest, ties to even.
    lowest_kept = (magnitude >> 13) & jnp.uint32(1)
    rounded = (magnitude + jnp.uint32(0xFFF) + lowest_kept) & jnp.uint32(0xFFFFE000)
    rounded = jnp.where(rounded > _FLOAT16_MAX_BITS, jnp.uint32(0x7F800000), rounded)
    normal = jax.lax.bitcast_convert_type(rounded | sign, jnp.float32)
    # Below 2**-14 float16 values are subnormal, multiples of 2**-24 (exact in float32).
    subnormal = jnp.round(x * 2.0**24) * 2.0**-24
    rounded_x = jnp.where(jnp.abs(x) < _FLOAT16_MIN_NORMAL, subnormal, normal)
    return jnp.where(jnp.isfinite(x), rounded_x, x)


def _squared_norms(x: jax.Array, float16: bool) -> jax.Array:
    """Returns [N] sums of squares of rows [N, D]; in float16, each square and the sum rounded."""
    if not float16:
        return jnp.sum(x * x, axis=-1)
    return round_to_float16(jnp.sum(round_to_float16(x * x), axis=-1))


def _distances(u: jax.Array, v: jax.Array, float16: bool) -> jax.Array:
    """Returns [R, C] max(|u|^2 - 2 u.v + |v|^2, 0), in that order, in float16 or float32."""
    cross = jnp.matmul(u, v.T, precision=jax.lax.Precision.HIGHEST)  # [R, C]
    norms_u, norms_v = _squared_norms(u, float16), _squared_norms(v, float16)
    if not float16:
        return jnp.maximum(norms_u[:, None] - 2.0 * cross + norms_v[None, :], 0.0)
    r16 = round_to_float16
    twice_cross = r16(2.0 * r16(cross))  # inf where float16 overflows
    return jnp.maximum(r16(r16(norms_u[:, None] - twice_cross) + norms_v[None, :]), 0.0)


@jax.jit
def squared_distances(u: jax.Array, v: jax.Array) -> jax.Array:
    """Returns float32 [R, C] squared distances of rows u [R, D] to rows v [C, D] as one evaluator
    block: in float16, or in float32 when any float16 entry is inf or NaN."""
    u, v = jnp.asarray(u, jnp.float32), jnp.asarray(v, jnp.float32)
    in_float16 = _distances(round_to_float16(u), round_to_float16(v), float16=True)
    # jnp.maximum propagates NaN (inf - inf), so an overflow anywhere is seen here.
    return jax.lax.cond(
        jnp.all(jnp.isfinite(in_float16)),
        lambda: in_float16,
        lambda: _distances(u, v, float16=False),
    )


@jax.jit
def _smallest(distances: jax.Array, running: jax.Array) -> jax.Array:
    """Returns [R, m] the m smallest of each row of [distances, running] (m = running's width)."""
    both = jnp.concatenate([running, distances], axis=1)
    return -jax.lax.top_k(-both, running.shape[1])[0]


def _blocks(num_rows: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, num_rows)) for start in range(0, num_rows, size)]


def manifold_radii(
    features: np.ndarray,
    k: int = NEIGHBOURHOOD_SIZE,
    row_batch_size: int = ROW_BATCH_SIZE,
    col_batch_size: int = COL_BATCH_SIZE,
    clamp_to_percentile: float | None = None,
) -> np.ndarray:
    """Returns float32 [N] squared distances from each row of features [N, D] to its k-th nearest
    neighbour in the set (the (k+1)-th smallest of its distances, itself included)."""
    features = jnp.asarray(features, jnp.float32)
    num_rows = features.shape[0]
    if features.ndim != 2 or num_rows <= k:
        raise ValueError(
            f"k={k} nearest neighbours need [N > {k}, D] features, got {features.shape}"
        )
    radii = []
    for rows in _blocks(num_rows, row_batch_size):
        smallest = jnp.full((rows.stop - rows.start, k + 1), jnp.inf, jnp.float32)
        for cols in _blocks(num_rows, col_batch_size):
            smallest = _smallest(squared_distances(features[rows], features[cols]), smallest)
        radii.append(np.asarray(smallest[:, k]))
    radii = np.concatenate(radii)
    if clamp_to_percentile is not None:
        radii[radii > np.percentile(radii, clamp_to_percentile)] = 0.0
    return radii


@jax.jit
def _block_coverage(distances, reference_radii, sample_radii):
    """Returns ([R] reference rows within some sample radius, [C] samples within some reference
    radius) of one [R, C] block of reference-to-sample distances."""
    reference_in = jnp.any(distances <= sample_radii[None, :], axis=1)
    sample_in = jnp.any(distances <= reference_radii[:, None], axis=0)
    return reference_in, sample_in


def precision_recall(
    reference_features: np.ndarray,
    sample_features: np.ndarray,
    k: int = NEIGHBOURHOOD_SIZE,
    row_batch_size: int = ROW_BATCH_SIZE,
    col_batch_size: int = COL_BATCH_SIZE,
    clamp_to_percentile: float | None = None,
) -> dict[str, float]:
    """Returns {"precision", "recall"} in [0, 1] of sample features [M, D] against reference
    features [N, D] (the evaluator's definitions: module doc)."""
    reference = jnp.asarray(reference_features, jnp.float32)  # [N, D]
    samples = jnp.asarray(sample_features, jnp.float32)  # [M, D]
    if reference.ndim != 2 or samples.ndim != 2 or reference.shape[1] != samples.shape[1]:
        raise ValueError(
            f"precision/recall need [N, D] and [M, D] features, got {reference.shape} and "
            f"{samples.shape}"
        )
    radii = {}
    for name, features in (("reference", reference), ("samples", samples)):
        radii[name] = jnp.asarray(
            manifold_radii(features, k, row_batch_size, col_batch_size, clamp_to_percentile)
        )
    reference_in = np.zeros(reference.shape[0], bool)
    sample_in = np.zeros(samples.shape[0], bool)
    for rows in _blocks(reference.shape[0], row_batch_size):
        for cols in _blocks(samples.shape[0], col_batch_size):
            block_reference_in, block_sample_in = _block_coverage(
                squared_distances(reference[rows], samples[cols]),
                radii["reference"][rows],
                radii["samples"][cols],
            )
            reference_in[rows] |= np.asarray(block_reference_in)
            sample_in[cols] |= np.asarray(block_sample_in)
    return {"precision": float(np.mean(sample_in)), "recall": float(np.mean(reference_in))}
