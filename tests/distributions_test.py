"""Tests for diffax.distributions: Gaussian KL, the normal CDF approximation, the decoder."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized
from scipy.stats import norm

from diffax import distributions


class DistributionsTest(chex.TestCase):
    """Cheap pure functions, run with and without jit."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_normal_kl_matches_monte_carlo(self):
        rng = np.random.default_rng(5)
        m1, lv1, m2, lv2 = np.array([0.3, -1.0, 2.0]), np.array([0.0, -2.0, 1.0]), 0.5, -0.5
        got = self.variant(distributions.normal_kl)(
            jnp.float32(m1), jnp.float32(lv1), jnp.float32(m2), jnp.float32(lv2)
        )
        samples = m1 + np.exp(0.5 * lv1) * rng.normal(size=(400_000, 3))
        log_ratio = norm.logpdf(samples, m1, np.exp(0.5 * lv1)) - norm.logpdf(
            samples, m2, np.exp(0.5 * lv2)
        )
        chex.assert_trees_all_close(got, log_ratio.mean(0), atol=0.02)
        same = self.variant(distributions.normal_kl)(jnp.float32(m1), jnp.float32(lv1), m1, lv1)
        chex.assert_trees_all_close(same, np.zeros(3), atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_approx_standard_normal_cdf_is_close_to_phi(self):
        x = np.linspace(-6, 6, 101)
        got = self.variant(distributions.approx_standard_normal_cdf)(jnp.float32(x))
        chex.assert_trees_all_close(got, norm.cdf(x), atol=3e-4)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(("digits", 17), ("bytes", 256))
    def test_discretized_likelihood_is_a_distribution_over_the_grid(self, num_levels):
        grid = np.linspace(-1, 1, num_levels)  # [L]
        means = np.array([0.0, 0.37, -0.9, 1.0, 2.5, -0.2])
        log_scales = np.log([0.5, 0.02, 0.1, 0.3, 0.2, 1e-3])
        fn = functools.partial(
            distributions.discretized_gaussian_log_likelihood, num_levels=num_levels
        )
        log_probs = self.variant(fn)(
            jnp.float32(grid[:, None]), jnp.float32(means), jnp.float32(log_scales)
        )  # [L, 6]
        chex.assert_shape(log_probs, (num_levels, 6))
        chex.assert_tree_all_finite(log_probs)
        probs = np.exp(np.asarray(log_probs, np.float64))
        np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
        # Against exact Gaussian bin masses: half-width 1/(L-1), outer bins open-ended.
        half = 1 / (num_levels - 1)
        lower = np.where(np.arange(num_levels) == 0, -np.inf, grid - half)[:, None]
        upper = np.where(np.arange(num_levels) == num_levels - 1, np.inf, grid + half)[:, None]
        scales = np.exp(log_scales)
        exact = norm.cdf((upper - means) / scales) - norm.cdf((lower - means) / scales)
        np.testing.assert_allclose(probs, exact, atol=5e-4)

    def test_discretized_likelihood_tails_are_finite_with_gradients(self):
        x = jnp.array([-1.0, 1.0, 0.0, 1.0])
        means = jnp.array([5.0, -5.0, 0.5, 1.0])
        log_scales = jnp.log(jnp.array([0.01, 0.01, 1e-4, 1e-4]))
        value, grads = jax.jit(
            jax.value_and_grad(
                lambda m, s: jnp.sum(distributions.discretized_gaussian_log_likelihood(x, m, s)),
                argnums=(0, 1),
            )
        )(means, log_scales)
        chex.assert_tree_all_finite((value, grads))
        # The last bin is [1 - 1/255, inf): a tiny scale centred on 1 holds ~all the mass.
        got = distributions.discretized_gaussian_log_likelihood(x, means, log_scales)
        np.testing.assert_allclose(got[3], 0.0, atol=1e-6)
        np.testing.assert_allclose(got[0], math.log(1e-12), rtol=1e-6)


def test_gaussian_log_likelihood_is_the_normal_log_density():
    x = np.array([0.0, 0.3, -2.0, 5.0])
    means, log_scales = np.array([0.0, 0.1, -1.0, 4.0]), np.log([1.0, 0.05, 2.0, 0.5])
    got = distributions.gaussian_log_likelihood(
        jnp.float32(x), jnp.float32(means), jnp.float32(log_scales)
    )
    chex.assert_trees_all_close(got, norm.logpdf(x, means, np.exp(log_scales)), rtol=1e-5)
