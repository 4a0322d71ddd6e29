"""Sample-quality metrics from feature arrays: Fréchet distance, Inception Score, precision/recall.

Everything here works on plain arrays of network features, so the metrics can be computed and
tested without any network:

- Fréchet distance (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule", eq. 6)
  between Gaussians fitted to two feature sets; NumPy, float64.
- Inception Score (Salimans et al. 2016, "Improved Techniques for Training GANs", sec. 4),
  exp(E_x KL(p(y|x) || p(y))), averaged over splits as in their released code; NumPy, float64.
- Improved precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric
  for Assessing Generative Models", sec. 2); JAX, batched pairwise distances, jit-able.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

STATISTICS_KEYS = ("mu", "sigma")


def compute_statistics(features: np.ndarray) -> dict[str, np.ndarray]:
    """Returns {"mu": [D], "sigma": [D, D]}: float64 mean and unbiased covariance of [N, D]."""
    features = np.asarray(features, dtype=np.float64)  # [N, D]
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be [N, D] with N >= 2, got shape {features.shape}")
    mu = features.mean(axis=0)  # [D]
    # rowvar=False: rows are samples. ddof=1 matches the TTUR and pytorch-fid reference code.
    sigma = np.cov(features, rowvar=False)  # [D, D]
    return {"mu": mu, "sigma": np.atleast_2d(sigma)}


def save_statistics(path: str, stats: dict[str, np.ndarray]) -> None:
    """Writes {"mu", "sigma"} to an .npz file at `path` (float64)."""
    np.savez(path, **{key: np.asarray(stats[key], dtype=np.float64) for key in STATISTICS_KEYS})


def load_statistics(path: str) -> dict[str, np.ndarray]:
    """Returns {"mu": [D], "sigma": [D, D]} (float64) from an .npz written by save_statistics."""
    try:
        with np.load(path, allow_pickle=False) as data:
            stats = {key: np.asarray(data[key], dtype=np.float64) for key in STATISTICS_KEYS}
    except (OSError, KeyError, ValueError) as error:
        raise ValueError(
            f"Cannot read Fréchet statistics from {path!r}: expected an .npz file with keys "
            f"{list(STATISTICS_KEYS)} (mu [D], sigma [D, D]); got error: {error}"
        ) from error
    dim = stats["mu"].shape
    if stats["mu"].ndim != 1 or stats["sigma"].shape != dim + dim:
        raise ValueError(
            f"Bad Fréchet statistics in {path!r}: expected keys {list(STATISTICS_KEYS)} with "
            f"mu [D] and sigma [D, D], got mu {stats['mu'].shape}, sigma {stats['sigma'].shape}"
        )
    return stats


def _symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Returns the PSD square root of a symmetric matrix, negative eigenvalues clipped to 0."""
    eigvals, eigvecs = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Returns ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) (float64, squared feature units)."""
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, np.float64)),
        np.atleast_1d(np.asarray(mu2, np.float64)),
    )
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(
            f"Shape mismatch: mu1 {mu1.shape}, mu2 {mu2.shape}, sigma1 {sigma1.shape}, "
            f"sigma2 {sigma2.shape}"
        )
    # S1 S2 is similar to sqrt(S1) S2 sqrt(S1) (conjugate by sqrt(S1)), which is symmetric PSD, so
    # Tr((S1 S2)^(1/2)) = sum of square roots of its eigenvalues. Unlike a general sqrtm this needs
    # only symmetric eigendecompositions and never produces complex parts or NaNs for singular S1.
    sqrt_sigma1 = _symmetric_sqrt(sigma1)  # [D, D]
    inner = sqrt_sigma1 @ sigma2 @ sqrt_sigma1  # [D, D]
    inner_eigvals = np.linalg.eigvalsh((inner + inner.T) / 2)  # [D]
    trace_sqrt_product = np.sqrt(np.clip(inner_eigvals, 0.0, None)).sum()
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product
    # Round-off can give tiny negatives for identical statistics; the distance is >= 0.
    return float(max(distance, 0.0))


def _looks_like_probabilities(values: np.ndarray) -> bool:
    return bool(np.all(values >= 0) and np.allclose(values.sum(axis=-1), 1.0, atol=1e-4))


def inception_score(
    logits_or_probs: np.ndarray, num_splits: int = 10, from_logits: bool | None = None
) -> tuple[float, float]:
    """Returns (mean, std) over `num_splits` splits of exp(E_x KL(p(y|x) || p(y))); >= 1.

    Input is [N, K] class logits or probabilities. `from_logits=None` detects probabilities
    (non-negative rows summing to 1); pass True/False to force. Splits are consecutive chunks of
    the N rows, as in the Salimans et al. 2016 code.
    """
    values = np.asarray(logits_or_probs, dtype=np.float64)  # [N, K]
    if values.ndim != 2:
        raise ValueError(f"Expected [N, K] logits or probabilities, got shape {values.shape}")
    if num_splits < 1 or num_splits > values.shape[0]:
        raise ValueError(f"num_splits must be in [1, N={values.shape[0]}], got {num_splits}")
    if from_logits is None:
        from_logits = not _looks_like_probabilities(values)
    if from_logits:
        shifted = values - values.max(axis=-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))  # [N, K]
    else:
        with np.errstate(divide="ignore"):
            log_probs = np.log(values)  # [N, K], -inf where p = 0
    probs = np.exp(log_probs)  # [N, K]
    n = values.shape[0]
    scores = []
    for split in range(num_splits):
        start, stop = split * n // num_splits, (split + 1) * n // num_splits
        part_probs, part_log_probs = probs[start:stop], log_probs[start:stop]
        # 0 * log 0 = 0: where p(y|x) = 0 the KL term vanishes (so does p(y) only there).
        with np.errstate(divide="ignore", invalid="ignore"):
            log_marginal = np.log(part_probs.mean(axis=0, keepdims=True))  # [1, K]
            kl_terms = np.where(part_probs > 0, part_probs * (part_log_probs - log_marginal), 0.0)
        scores.append(np.exp(kl_terms.sum(axis=-1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def _squared_distances(query: jax.Array, reference: jax.Array) -> jax.Array:
    """Returns [Q, R] squared Euclidean distances, clipped at 0 against round-off."""
    query_sq = jnp.sum(query * query, axis=-1)[:, None]  # [Q, 1]
    reference_sq = jnp.sum(reference * reference, axis=-1)[None, :]  # [1, R]
    cross = jnp.matmul(query, reference.T, precision=jax.lax.Precision.HIGHEST)  # [Q, R]
    return jnp.maximum(query_sq + reference_sq - 2.0 * cross, 0.0)


def _map_in_batches(fn, query: jax.Array, batch_size: int) -> jax.Array:
    """Applies fn to [batch_size, D] row chunks of query (zero-padded) and concatenates [Q, ...]."""
    num_rows = query.shape[0]
    num_batches = -(-num_rows // batch_size)
    padded = jnp.pad(query, ((0, num_batches * batch_size - num_rows), (0, 0)))
    chunks = padded.reshape(num_batches, batch_size, query.shape[-1])  # [NB, b, D]
    out = jax.lax.map(fn, chunks)  # [NB, b, ...]
    return out.reshape((num_batches * batch_size,) + out.shape[2:])[:num_rows]


def _squared_knn_radii(features: jax.Array, k: int, batch_size: int) -> jax.Array:
    """Returns [N] squared distance from each point to its k-th nearest other point in the set."""

    def radii(chunk):
        distances = _squared_distances(chunk, features)  # [b, N]
        # The k+1 smallest include the point itself at distance 0 (paper: "k-th nearest neighbour").
        smallest = -jax.lax.top_k(-distances, k + 1)[0]  # [b, k+1]
        return smallest[:, k]

    return _map_in_batches(radii, features, batch_size)


def _fraction_in_manifold(
    query: jax.Array, reference: jax.Array, reference_radii_sq: jax.Array, batch_size: int
) -> jax.Array:
    """Returns the fraction of query rows within the k-NN radius of at least one reference row."""

    def inside(chunk):
        distances = _squared_distances(chunk, reference)  # [b, R]
        return jnp.any(distances <= reference_radii_sq[None, :], axis=-1)  # [b]

    return jnp.mean(_map_in_batches(inside, query, batch_size).astype(jnp.float32))


@functools.partial(jax.jit, static_argnames=("k", "batch_size"))
def precision_recall(
    real_features: jax.Array, fake_features: jax.Array, k: int = 3, batch_size: int = 1024
) -> dict[str, jax.Array]:
    """Returns {"precision", "recall"} in [0, 1] (improved P/R, Kynkäänniemi et al. 2019).

    precision: fraction of fake rows inside the real manifold (union of k-NN balls of real rows);
    recall: fraction of real rows inside the fake manifold. Pairwise distances are computed in
    [batch_size, N] blocks so memory is O(batch_size * N).
    """
    real = jnp.asarray(real_features, jnp.float32)  # [N, D]
    fake = jnp.asarray(fake_features, jnp.float32)  # [M, D]
    real_radii_sq = _squared_knn_radii(real, k, batch_size)  # [N]
    fake_radii_sq = _squared_knn_radii(fake, k, batch_size)  # [M]
    return {
        "precision": _fraction_in_manifold(fake, real, real_radii_sq, batch_size),
        "recall": _fraction_in_manifold(real, fake, fake_radii_sq, batch_size),
    }


def sample_metrics(
    fake_features: np.ndarray,
    fake_logits: np.ndarray | None,
    reference_stats: dict[str, np.ndarray] | str | os.PathLike | None,
    real_features: np.ndarray | None = None,
    num_splits: int = 10,
    k: int = 3,
) -> dict[str, float]:
    """Returns the computable subset of {"fid", "is_mean", "is_std", "precision", "recall"}.

    fid needs reference_stats (a dict or an .npz path); is_* need fake_logits; precision/recall
    need real_features. Features are [N, D], logits [N, K].
    """
    metrics: dict[str, float] = {}
    fake_features = np.asarray(fake_features)
    if reference_stats is not None:
        if not isinstance(reference_stats, dict):
            reference_stats = load_statistics(os.fspath(reference_stats))
        fake_stats = compute_statistics(fake_features)
        metrics["fid"] = frechet_distance(
            fake_stats["mu"], fake_stats["sigma"], reference_stats["mu"], reference_stats["sigma"]
        )
    if fake_logits is not None:
        splits = min(num_splits, np.asarray(fake_logits).shape[0])
        metrics["is_mean"], metrics["is_std"] = inception_score(
            fake_logits, num_splits=splits, from_logits=True
        )
    if real_features is not None:
        pr = precision_recall(np.asarray(real_features), fake_features, k=k)
        metrics["precision"] = float(pr["precision"])
        metrics["recall"] = float(pr["recall"])
    return metrics
