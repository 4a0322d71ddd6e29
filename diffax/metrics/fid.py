"""Sample-quality metrics from feature arrays: Fréchet distance, Inception Score, precision/recall.

Everything here works on plain arrays of network features, so the metrics can be computed and
tested without any network:

- Fréchet distance (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule", eq. 6)
  between Gaussians fitted to two feature sets; NumPy, float64.
- Inception Score (Salimans et al. 2016, "Improved Techniques for Training GANs", sec. 4),
  exp(E_x KL(p(y|x) || p(y))), averaged over splits as in their released code; NumPy, float64.
- Improved precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric
  for Assessing Generative Models", sec. 2): `diffax.metrics.manifold`, as guided-diffusion's
  evaluator computes them.

guided-diffusion's `evaluations/evaluator.py` (the ADM and DiT papers' numbers) uses the same
Fréchet distance (there with scipy's sqrtm of S1 S2; the two agree to 1e-8 relative or better) and
this Inception Score with `split_size=5000`.
"""

import os

import numpy as np

from diffax.metrics import manifold

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
    logits_or_probs: np.ndarray,
    num_splits: int = 10,
    from_logits: bool | None = None,
    split_size: int | None = None,
) -> tuple[float, float]:
    """Returns (mean, std) over splits of exp(E_x KL(p(y|x) || p(y))); >= 1.

    Input is [N, K] class logits or probabilities. `from_logits=None` detects probabilities
    (non-negative rows summing to 1); pass True/False to force. Splits are consecutive chunks of
    the N rows: `num_splits` near-equal ones, as in the Salimans et al. 2016 code, or with
    `split_size` chunks of that many rows and a shorter last one, as guided-diffusion's evaluator
    (split_size=5000, whose figure is the mean).
    """
    values = np.asarray(logits_or_probs, dtype=np.float64)  # [N, K]
    if values.ndim != 2:
        raise ValueError(f"Expected [N, K] logits or probabilities, got shape {values.shape}")
    n = values.shape[0]
    if split_size is not None:
        if split_size < 1:
            raise ValueError(f"split_size must be >= 1, got {split_size}")
        bounds = [(start, min(start + split_size, n)) for start in range(0, n, split_size)]
    elif num_splits < 1 or num_splits > n:
        raise ValueError(f"num_splits must be in [1, N={n}], got {num_splits}")
    else:
        bounds = [(s * n // num_splits, (s + 1) * n // num_splits) for s in range(num_splits)]
    if from_logits is None:
        from_logits = not _looks_like_probabilities(values)
    if from_logits:
        shifted = values - values.max(axis=-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))  # [N, K]
    else:
        with np.errstate(divide="ignore"):
            log_probs = np.log(values)  # [N, K], -inf where p = 0
    probs = np.exp(log_probs)  # [N, K]
    scores = []
    for start, stop in bounds:
        part_probs, part_log_probs = probs[start:stop], log_probs[start:stop]
        # 0 * log 0 = 0: where p(y|x) = 0 the KL term vanishes (so does p(y) only there).
        with np.errstate(divide="ignore", invalid="ignore"):
            log_marginal = np.log(part_probs.mean(axis=0, keepdims=True))  # [1, K]
            kl_terms = np.where(part_probs > 0, part_probs * (part_log_probs - log_marginal), 0.0)
        scores.append(np.exp(kl_terms.sum(axis=-1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


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
        metrics.update(manifold.precision_recall(np.asarray(real_features), fake_features, k=k))
    return metrics
