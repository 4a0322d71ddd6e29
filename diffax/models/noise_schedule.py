"""VDM's learned noise schedule: a monotone network for gamma(t) = -log SNR(t), t in [0, 1].

Kingma et al. 2021 (Variational Diffusion Models), "noise schedule" section and appendix H:
gamma_eta(t) = gamma_0 + (gamma_1 - gamma_0) (g(t) - g(0)) / (g(1) - g(0)) with
g(t) = l1(t) + l3(phi(l2(l1(t)))), phi the sigmoid, l2 1024 units wide, and every weight of l1,
l2, l3 positive, so g and gamma increase with t whatever the parameters. The endpoints
gamma_0 = gamma(0) and gamma_1 = gamma(1) are parameters of their own (initialised at VDM's -13.3
and 5.0): the continuous-time bound depends on the schedule only through them (VDM's invariance
result for T -> infinity), while the interior shape only changes the variance of the bound's
estimator. `diffax.continuous.train_step` trains the two groups with different gradients.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# The parameters holding gamma(0) and gamma(1); everything else is the interior shape.
ENDPOINT_PARAMS = ("gamma_0", "gamma_1")


def _inverse_softplus(y: float) -> float:
    return math.log(math.expm1(y))


class PositiveDense(nn.Module):
    """Dense layer x @ softplus(kernel) + bias: every weight positive, so it increases in x."""

    features: int
    kernel_init: Any = nn.initializers.constant(_inverse_softplus(1.0))
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
        return x @ jax.nn.softplus(kernel) + bias


class NoiseSchedule(nn.Module):
    """Returns gamma(t) [B] for t [B] in [0, 1], increasing in t; gamma(0), gamma(1) are exact.

    Monotone for every parameter value (positive weights, increasing sigmoid); the normalisation
    by g(1) - g(0) > 0 makes the ends exactly the `gamma_0` and `gamma_1` parameters. Nothing keeps
    gamma_1 > gamma_0 during training (VDM adds no constraint either).
    """

    gamma_min: float = -13.3  # Initial gamma_0 = -log SNR at t = 0 (VDM).
    gamma_max: float = 5.0  # Initial gamma_1 = -log SNR at t = 1 (VDM).
    hidden: int = 1024  # Width of the non-linear branch l2 (VDM appendix H).

    def _g(self, t: jax.Array) -> jax.Array:
        """Returns the unnormalised monotone g(t) [N] for t [N]."""
        h = PositiveDense(1, name="l1")(t[:, None])  # [N, 1]
        # The branch starts small (l3 weights 1/hidden) so the initial schedule is near linear;
        # the raw l2 weights and biases are spread so the sigmoids switch at different times.
        branch = PositiveDense(
            self.hidden,
            kernel_init=nn.initializers.normal(1.0),
            bias_init=nn.initializers.normal(1.0),
            name="l2",
        )(h)
        branch = PositiveDense(
            1,
            kernel_init=nn.initializers.constant(_inverse_softplus(1.0 / self.hidden)),
            name="l3",
        )(jax.nn.sigmoid(branch))
        return (h + branch)[:, 0]

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        t = jnp.asarray(t, jnp.float32)
        gamma_0 = self.param("gamma_0", nn.initializers.constant(self.gamma_min), (), jnp.float32)
        gamma_1 = self.param("gamma_1", nn.initializers.constant(self.gamma_max), (), jnp.float32)
        flat = t.reshape(-1)
        # One pass over [t, 0, 1] so the ends share the parameters of the interior.
        g = self._g(jnp.concatenate([flat, jnp.array([0.0, 1.0], jnp.float32)]))
        g_t, g_0, g_1 = g[:-2], g[-2], g[-1]
        gamma = gamma_0 + (gamma_1 - gamma_0) * (g_t - g_0) / (g_1 - g_0)
        return gamma.reshape(t.shape)


def merge_gradients(bound_grads: Any, variance_grads: Any) -> Any:
    """Returns schedule gradients: ENDPOINT_PARAMS from bound_grads, the interior from the other.

    VDM's variance minimisation (continuous-time section and its appendix): the endpoints follow
    the bound's gradient (the bound depends on them), the interior follows the gradient of the
    squared diffusion loss (only its variance depends on the interior). Both arguments are
    parameter trees of a `NoiseSchedule`.
    """
    merged = dict(variance_grads)
    for name in ENDPOINT_PARAMS:
        merged[name] = bound_grads[name]
    return merged
