"""Distributions the variational bound is made of: Gaussian KL, the discretized Gaussian decoder
(images) and the Gaussian density (continuous data such as latents), all in nats, and the
per-example mean over dimensions."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# Probabilities are floored here before the log, as in improved-diffusion, so that one outlier
# dimension costs at most -log(1e-12) ~ 27.6 nats instead of inf.
_MIN_PROB = 1e-12


def mean_flat(x: jax.Array) -> jax.Array:
    """Returns the mean over every axis but the first: [B, ...] -> [B]."""
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def normal_kl(
    mean1: jax.Array, logvar1: jax.Array, mean2: jax.Array, logvar2: jax.Array
) -> jax.Array:
    """Returns KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats."""
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + jnp.exp(logvar1 - logvar2)
        + jnp.square(mean1 - mean2) * jnp.exp(-logvar2)
    )


def _approx_cdf_logit(x: jax.Array) -> jax.Array:
    # 0.5 * (1 + tanh(y)) == sigmoid(2 y): the sigmoid form gives stable logs in both tails.
    return 2.0 * math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)


def approx_standard_normal_cdf(x: jax.Array) -> jax.Array:
    """Returns the tanh approximation 0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) of Phi(x)."""
    return jax.nn.sigmoid(_approx_cdf_logit(x))


def discretized_gaussian_log_likelihood(
    x: jax.Array, means: jax.Array, log_scales: jax.Array, num_levels: int = 256
) -> jax.Array:
    """Returns elementwise log P(bin of x) in nats under N(means, exp(log_scales)^2).

    x lies on a grid of num_levels values in [-1, 1]; each bin has half-width 1/(num_levels-1)
    and the first and last bins extend to -inf and +inf.
    """
    if num_levels < 2:
        raise ValueError(f"num_levels must be >= 2, got {num_levels}.")
    half_width = 1.0 / (num_levels - 1)
    centered = x - means
    inv_std = jnp.exp(-log_scales)
    upper = inv_std * (centered + half_width)
    lower = inv_std * (centered - half_width)
    # Edge bins: log Phi(upper) and log(1 - Phi(lower)) = log Phi(-lower) (the approximation is
    # odd-symmetric), both via log_sigmoid so neither tail underflows to log(0).
    log_cdf_upper = jax.nn.log_sigmoid(_approx_cdf_logit(upper))
    log_sf_lower = jax.nn.log_sigmoid(_approx_cdf_logit(-lower))
    # Interior bins: for a bin right of the mean use Phi(-lower) - Phi(-upper), which avoids the
    # cancellation of two numbers close to 1.
    right = centered > 0
    delta = jnp.where(
        right,
        approx_standard_normal_cdf(-lower) - approx_standard_normal_cdf(-upper),
        approx_standard_normal_cdf(upper) - approx_standard_normal_cdf(lower),
    )
    log_delta = jnp.log(jnp.maximum(delta, _MIN_PROB))
    log_probs = jnp.where(
        x < -1.0 + half_width,
        log_cdf_upper,
        jnp.where(x > 1.0 - half_width, log_sf_lower, log_delta),
    )
    return jnp.maximum(log_probs, math.log(_MIN_PROB))


def gaussian_log_likelihood(x: jax.Array, means: jax.Array, log_scales: jax.Array) -> jax.Array:
    """Returns the elementwise log density in nats of x under N(means, exp(log_scales)^2).

    A density, not a probability: it can be positive. The decoder of continuous data (latents).
    """
    z = (x - means) * jnp.exp(-log_scales)
    return -0.5 * (math.log(2.0 * math.pi) + jnp.square(z)) - log_scales
