"""Tests of diffax.ode_likelihood: PF-ODE likelihoods of Gaussian data with the exact score.

For x ~ N(mu, Sigma) the forward marginals are q_t = N(alpha mu, alpha^2 Sigma + sigma^2 I), all
diagonal in Sigma's eigenbasis, and the probability-flow ODE is the linear map that keeps each
standardised eigen-coordinate fixed: z_1 = m_1 + C_1^(1/2) C_0^(-1/2) (z_0 - m_0). So
log p_0(z_0) = log N(z_1; 0, I) + 1/2 log det(C_1 C_0^-1) exactly (the prior N(0, I) is not q_1).
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from scipy import stats

from diffax import continuous, diffusion, ode_likelihood, schedules

SHAPE = (4, 4, 1)
DIMS = 16
RANGE = (continuous.GAMMA_MIN, continuous.GAMMA_MAX)
LINEAR = continuous.get_gamma_fn("linear_gamma")


def _covariance(correlated: bool):
    rs = np.random.RandomState(0)
    mu = 0.2 * rs.randn(DIMS)
    if not correlated:
        return 0.5 * mu, 0.15**2 * np.eye(DIMS)
    a = 0.15 * rs.randn(DIMS, DIMS)
    return mu, a @ a.T + 0.02 * np.eye(DIMS)


def gaussian_model(mu, cov, gamma_of_time):
    """Returns the exact eps-prediction model_fn(z [B, 4, 4, 1], model_t [B]) for N(mu, cov)."""
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    q = jnp.asarray(eigenvectors, jnp.float32)
    lam = jnp.asarray(eigenvalues, jnp.float32)
    m = jnp.asarray(mu, jnp.float32)

    def model(z, model_t):
        alpha, sigma = continuous.alpha_sigma(gamma_of_time(model_t))  # [B]
        centred = z.reshape(z.shape[0], -1) - alpha[:, None] * m
        coef = sigma[:, None] / (alpha[:, None] ** 2 * lam + sigma[:, None] ** 2)
        return (((centred @ q) * coef) @ q.T).reshape(z.shape)

    return model


def analytic_log_density(x, mu, cov, gamma_0, gamma_1):
    """Returns log p_0(x) [B] of the flow from N(0, I) at t = 1 (module docstring)."""
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    flat = np.asarray(x, np.float64).reshape(x.shape[0], -1)

    def marginal(gamma):
        alpha2 = 1.0 / (1.0 + math.exp(gamma))
        return math.sqrt(alpha2) * mu, alpha2 * eigenvalues + 1.0 - alpha2

    m0, c0 = marginal(gamma_0)
    m1, c1 = marginal(gamma_1)
    z1 = m1 + ((flat - m0) @ eigenvectors * np.sqrt(c1 / c0)) @ eigenvectors.T
    log_normal = -0.5 * np.sum(z1**2, axis=1) - 0.5 * DIMS * math.log(2 * math.pi)
    return log_normal + 0.5 * np.sum(np.log(c1 / c0))


def _continuous_time(model_t):
    return RANGE[0] + (RANGE[1] - RANGE[0]) * model_t / continuous.MODEL_TIME_SCALE


def _samples(mu, cov, batch, seed=0):
    rs = np.random.RandomState(seed)
    x = mu + rs.randn(batch, DIMS) @ np.linalg.cholesky(cov).T
    return jnp.asarray(x, jnp.float32).reshape(batch, *SHAPE)


class OdeLikelihoodTest(parameterized.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.mu, cls.cov = _covariance(correlated=True)
        model = gaussian_model(cls.mu, cls.cov, _continuous_time)
        cls.model = staticmethod(model)
        gamma_fn, model_time_fn = ode_likelihood.continuous_schedule(LINEAR, RANGE)

        def bpd(x, key, divergence="exact", num_probes=1):
            return ode_likelihood.ode_bpd(
                model,
                x,
                key,
                gamma_fn=gamma_fn,
                model_time_fn=model_time_fn,
                num_levels=256,
                divergence=divergence,
                num_probes=num_probes,
            )

        cls.bpd = staticmethod(jax.jit(bpd, static_argnames=("divergence", "num_probes")))
        # Data on the 256 levels, as the pipeline gives them.
        x = _samples(cls.mu, cls.cov, 8)
        cls.x = jnp.clip(jnp.round((x + 1) * 127.5) / 127.5 - 1, -1, 1)
        cls.key = jax.random.PRNGKey(3)
        cls.out = cls.bpd(cls.x, cls.key)

    def test_exact_score_gives_the_analytic_density_in_bits_per_dim(self):
        self.assertTrue(np.all(self.out["ok"]))
        # The same dequantisation as inside ode_bpd (its first split key).
        x_deq = ode_likelihood.dequantize(self.x, jax.random.split(self.key)[0], 256)
        self.assertTrue(np.all(np.abs(np.asarray(x_deq - self.x)) <= 1 / 255 + 1e-7))
        log_density = analytic_log_density(x_deq, self.mu, self.cov, *RANGE)
        expected = -log_density / (DIMS * math.log(2)) + math.log2(127.5)
        np.testing.assert_allclose(self.out["bpd"], expected, atol=0.02)
        np.testing.assert_allclose(self.out["bpd"], expected, atol=2e-3)  # in fact much closer

    def test_sharded_batch_matches_the_unsharded_result(self):
        mesh = Mesh(np.array(jax.devices()), ("data",))
        x = jax.device_put(self.x, NamedSharding(mesh, PartitionSpec("data")))
        out = self.bpd(x, self.key)
        self.assertEqual(len(out["bpd"].sharding.device_set), len(jax.devices()))
        chex.assert_trees_all_close(out["bpd"], self.out["bpd"], rtol=1e-5, atol=1e-5)

    def test_hutchinson_estimate_averages_to_the_exact_divergence(self):
        gamma_fn, model_time_fn = ode_likelihood.continuous_schedule(LINEAR, RANGE)
        drift = ode_likelihood.pf_ode_drift(self.model, gamma_fn, model_time_fn, "eps")
        z = self.x[0]
        fn = lambda v: drift(v, jnp.float32(0.6))
        exact = ode_likelihood.divergence_exact(fn, z)
        jacobian = jax.jacfwd(lambda v: fn(v.reshape(SHAPE)).reshape(-1))(z.reshape(-1))
        np.testing.assert_allclose(exact, np.trace(np.asarray(jacobian)), rtol=1e-5)
        num_probes = 4000
        probes = ode_likelihood.rademacher_probes(jax.random.PRNGKey(0), SHAPE, num_probes)
        estimate = jax.jit(ode_likelihood.divergence_hutchinson, static_argnums=0)(fn, z, probes)
        # Var(v^T J v) = 2 sum_{i != j} S_ij^2 with S the symmetric part of J (Rademacher v).
        sym = 0.5 * (np.asarray(jacobian) + np.asarray(jacobian).T)
        std = math.sqrt(2 * (np.sum(sym**2) - np.sum(np.diag(sym) ** 2)) / num_probes)
        self.assertGreater(std, 1e-3)  # the Jacobian is not diagonal: probes do vary
        self.assertLess(abs(float(estimate) - float(exact)), 4 * std)

    def test_hutchinson_likelihood_is_unbiased(self):
        x = jnp.tile(self.x[:1], (8, 1, 1, 1))
        out = self.bpd(x, self.key, divergence="hutchinson", num_probes=2)
        x_deq = ode_likelihood.dequantize(x, jax.random.split(self.key)[0], 256)
        expected = -analytic_log_density(x_deq, self.mu, self.cov, *RANGE) / (
            DIMS * math.log(2)
        ) + math.log2(127.5)
        errors = np.asarray(out["bpd"]) - expected
        self.assertLess(abs(errors.mean()), 4 * errors.std() / math.sqrt(8) + 1e-3)
        self.assertGreater(errors.std(), 0.0)


class DiscreteProcessTest(parameterized.TestCase):
    def test_discrete_schedule_interpolates_the_process(self):
        d = diffusion.GaussianDiffusion.create(schedules.get_named_beta_schedule("cosine", 100))
        gamma_fn, model_time_fn = ode_likelihood.discrete_schedule(d)
        knots = jnp.arange(100) / 99
        abar = np.cumprod(1 - np.asarray(d.betas, np.float64))
        np.testing.assert_allclose(gamma_fn(knots), np.log((1 - abar) / abar), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(model_time_fn(knots), np.arange(100), atol=1e-4)
        respaced = d.respace(range(0, 100, 10))
        _, respaced_time = ode_likelihood.discrete_schedule(respaced)
        np.testing.assert_allclose(respaced_time(jnp.arange(10) / 9), np.arange(0, 100, 10))

    def test_exact_score_of_a_discrete_process_gives_the_analytic_density(self):
        d = diffusion.GaussianDiffusion.create(schedules.get_named_beta_schedule("cosine", 100))
        abar = np.cumprod(1 - np.asarray(d.betas, np.float64))
        gammas = np.log1p(-abar) - np.log(abar)
        table = jnp.asarray(gammas, jnp.float32)
        timesteps = jnp.arange(100, dtype=jnp.float32)
        mu, cov = _covariance(correlated=True)
        model = gaussian_model(mu, cov, lambda step: jnp.interp(step, timesteps, table))
        x = _samples(mu, cov, 8, seed=1)
        out = jax.jit(
            lambda x, key: ode_likelihood.discrete_ode_bpd(
                d, model, x, key, num_levels=256, dequantize_data=False
            )
        )(x, jax.random.PRNGKey(0))
        self.assertTrue(np.all(out["ok"]))
        expected = analytic_log_density(x, mu, cov, gammas[0], gammas[-1])
        np.testing.assert_allclose(
            out["bpd"], -expected / (DIMS * math.log(2)) + math.log2(127.5), atol=0.02
        )


class DequantisationTest(parameterized.TestCase):
    def test_dequantised_bpd_matches_the_discrete_nll(self):
        # Independent N(mu_i, 0.15^2) dimensions on 64 levels, far from the edge bins: by Jensen the
        # dequantised bpd is at least -log2 P(bins) / D, with a gap of about (bin / s)^2 / 24 nats
        # (~2e-3 here).
        num_levels = 64
        mu, cov = _covariance(correlated=False)
        model = gaussian_model(mu, cov, _continuous_time)
        gamma_fn, model_time_fn = ode_likelihood.continuous_schedule(LINEAR, RANGE)
        levels = np.linspace(-1, 1, num_levels)
        rs = np.random.RandomState(2)
        x = mu + 0.15 * rs.randn(64, DIMS)
        k = np.clip(np.round((x + 1) * (num_levels - 1) / 2), 0, num_levels - 1).astype(int)
        half = 1 / (num_levels - 1)
        upper = np.where(k == num_levels - 1, np.inf, levels[k] + half)
        lower = np.where(k == 0, -np.inf, levels[k] - half)
        mass = stats.norm.cdf((upper - mu) / 0.15) - stats.norm.cdf((lower - mu) / 0.15)
        nll = -np.mean(np.log2(mass), axis=1)
        out = jax.jit(
            lambda x, key: ode_likelihood.ode_bpd(
                model,
                x,
                key,
                gamma_fn=gamma_fn,
                model_time_fn=model_time_fn,
                num_levels=num_levels,
            )
        )(jnp.asarray(levels[k], jnp.float32).reshape(64, *SHAPE), jax.random.PRNGKey(0))
        gap = np.asarray(out["bpd"]) - nll
        self.assertLess(abs(gap.mean()), 0.02)
        self.assertGreater(gap.mean(), -4 * gap.std() / 8)


if __name__ == "__main__":
    absltest.main()
