"""Tests of diffax.continuous and diffax.models.noise_schedule against closed forms.

Gaussian data x ~ N(mu, s^2) per dimension have the exact noise prediction
eps_hat(z_t) = sigma (z_t - alpha mu) / (alpha^2 s^2 + sigma^2); data on a grid of levels with
masses P_k have eps_hat = (z_t - alpha E[x | z_t]) / sigma, E[x | z_t] a softmax over the levels.
"""

import functools
import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from scipy import special, stats

from diffax import build, continuous, diffusion, schedules, solvers
from diffax.models import layers, noise_schedule
from diffax.tasks import continuous as continuous_task
from diffax.train_state import TrainState

MU, S = 0.2, 0.4
RANGE = (continuous.GAMMA_MIN, continuous.GAMMA_MAX)
LINEAR = continuous.get_gamma_fn("linear_gamma")


def _gamma_of_model_time(model_t, gamma_range=RANGE):
    lo, hi = gamma_range
    return lo + (hi - lo) * model_t / continuous.MODEL_TIME_SCALE


def gaussian_model(z, model_t, mu=MU, s=S):
    """The exact eps-prediction for data N(mu, s^2) per dimension, at the model's time input."""
    gamma = _gamma_of_model_time(model_t).reshape(-1, *(1,) * (z.ndim - 1))
    alpha, sigma = continuous.alpha_sigma(gamma)
    return sigma * (z - alpha * mu) / (alpha**2 * s**2 + sigma**2)


def levels_model(levels, log_probs):
    """The exact eps-prediction for data on `levels` [L] with log-masses `log_probs` [L]."""

    def model(z, model_t):
        gamma = _gamma_of_model_time(model_t).reshape(-1, *(1,) * (z.ndim - 1))
        alpha, sigma = continuous.alpha_sigma(gamma)
        logits = log_probs - 0.5 * jnp.square(
            z[..., None] - alpha[..., None] * levels
        ) / jnp.square(sigma[..., None])
        x0 = jnp.sum(jax.nn.softmax(logits, axis=-1) * levels, axis=-1)
        return (z - alpha * x0) / sigma

    return model


def _gaussian_kl(m1, v1, m2, v2):
    return 0.5 * (np.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1.0)


def _marginal(gamma, x, mu=MU, s=S):
    """Returns (alpha x, sigma^2) of q(z|x) and (alpha mu, alpha^2 s^2 + sigma^2) of q(z)."""
    alpha2 = 1.0 / (1.0 + math.exp(gamma))
    alpha = math.sqrt(alpha2)
    return alpha * x, 1.0 - alpha2, alpha * mu, alpha2 * s**2 + 1.0 - alpha2


def continuous_diffusion_closed_form(x):
    """Returns E[L_inf(x)] [B] in bits/dim for the exact Gaussian model: a KL difference.

    With reverse steps exact for Gaussian data the diffusion loss telescopes to
    KL(q(z_0|x) || q(z_0)) - KL(q(z_1|x) || q(z_1)) (any x, per dimension).
    """
    kl0 = _gaussian_kl(*_marginal(RANGE[0], x))
    kl1 = _gaussian_kl(*_marginal(RANGE[1], x))
    return np.mean(kl0 - kl1, axis=(1, 2, 3)) / math.log(2.0)


def discrete_diffusion_closed_form(x, num_timesteps):
    """Returns E[L_T(x)] [B] in bits/dim for the exact Gaussian model, linear_gamma.

    E_eps (eps - eps_hat)^2 = (alpha^4 s^4 + sigma^2 alpha^2 (x - mu)^2) / v^2, v = alpha^2 s^2 +
    sigma^2, and L_T = 1/2 sum_i expm1(gamma_i - gamma_(i-1)) E_eps(...) at t_i = i / T.
    """
    lo, hi = RANGE
    gamma = lo + (hi - lo) * np.arange(num_timesteps + 1) / num_timesteps  # [T + 1]
    alpha2 = 1.0 / (1.0 + np.exp(gamma[1:]))
    sigma2 = 1.0 - alpha2
    v = alpha2 * S**2 + sigma2
    weight = 0.5 * np.expm1(np.diff(gamma))
    constant = np.sum(weight * alpha2**2 * S**4 / v**2)
    slope = np.sum(weight * sigma2 * alpha2 / v**2)
    total = constant + slope * (x - MU) ** 2
    return np.mean(total, axis=(1, 2, 3)) / math.log(2.0)


class ScheduleTest(parameterized.TestCase):
    @parameterized.parameters(*continuous.FIXED_SCHEDULES)
    def test_schedules_increase_and_derivative_matches_finite_differences(self, name):
        gamma_fn = continuous.get_gamma_fn(name)
        t = jnp.linspace(0.05, 0.95, 19)
        gamma, dgamma = continuous.gamma_and_derivative(gamma_fn, t)
        h = 1e-3
        numeric = (gamma_fn(t + h) - gamma_fn(t - h)) / (2 * h)
        chex.assert_trees_all_close(dgamma, numeric, rtol=2e-3)
        self.assertTrue(np.all(np.diff(np.asarray(gamma_fn(jnp.linspace(0.0, 1.0, 101)))) > 0))

    def test_linear_and_cosine_ends_are_gamma_min_and_max(self):
        for name in ("linear_gamma", "cosine"):
            lo, hi = continuous.conditioning_range(name)
            np.testing.assert_allclose((lo, hi), RANGE, atol=1e-4)

    def test_vp_linear_matches_the_vp_sde(self):
        # Song et al.: alpha^2 = exp(-int_0^s beta), beta = 0.1 + 19.9 s; gamma' = beta / sigma^2.
        t = jnp.linspace(0.0, 1.0, 11)
        s = continuous.VP_T_MIN + (1 - continuous.VP_T_MIN) * np.asarray(t, np.float64)
        integral = 0.1 * s + 0.5 * 19.9 * s**2  # int_0^s beta
        gamma, dgamma = continuous.gamma_and_derivative(continuous.vp_linear_gamma, t)
        np.testing.assert_allclose(jax.nn.sigmoid(-gamma), np.exp(-integral), rtol=1e-4, atol=1e-7)
        beta = (0.1 + 19.9 * s) * (1 - continuous.VP_T_MIN)
        np.testing.assert_allclose(dgamma * jax.nn.sigmoid(gamma), beta, rtol=1e-3)

    def test_cosine_is_alpha_bar_cos_squared(self):
        t = jnp.linspace(0.0, 1.0, 11)
        gamma = continuous.cosine_gamma(t)
        lo, hi = (math.atan(math.exp(g / 2)) for g in RANGE)
        theta = lo + (hi - lo) * np.asarray(t)
        np.testing.assert_allclose(jax.nn.sigmoid(-gamma), np.cos(theta) ** 2, rtol=1e-4)

    def test_low_discrepancy_t_is_a_shifted_even_grid(self):
        t = np.sort(np.asarray(continuous.low_discrepancy_t(jax.random.PRNGKey(0), 8)))
        self.assertTrue(np.all((t >= 0) & (t < 1)))
        np.testing.assert_allclose(np.diff(t), 1 / 8, atol=1e-6)

    def test_fourier_features(self):
        x = jnp.array([0.25, -0.5, 1.0 / 3.0]).reshape(1, 1, 1, 3)
        out = layers.fourier_features(x, exponents=(1, 3))
        chex.assert_shape(out, (1, 1, 1, 15))
        chex.assert_trees_all_close(out[..., :3], x)
        expected_sin = np.concatenate([np.sin(2.0**n * np.pi * np.asarray(x)) for n in (1, 3)], -1)
        chex.assert_trees_all_close(out[..., 3:9], expected_sin, atol=1e-5)
        expected_cos = np.concatenate([np.cos(2.0**n * np.pi * np.asarray(x)) for n in (1, 3)], -1)
        chex.assert_trees_all_close(out[..., 9:], expected_cos, atol=1e-5)


class BoundTest(parameterized.TestCase):
    def test_diffusion_loss_of_exact_gaussian_model_is_the_kl_difference(self):
        # One t per example, evenly spread (low-discrepancy), and 1024 dimensions per example: the
        # batch mean's error is the eps noise's, about 0.02 bits/dim; the loss is ~8.3 bits/dim.
        x0 = MU + S * jax.random.normal(jax.random.PRNGKey(0), (1024, 32, 32, 1))
        t = continuous.low_discrepancy_t(jax.random.PRNGKey(1), 1024)
        noise = jax.random.normal(jax.random.PRNGKey(2), x0.shape)
        out = continuous.vdm_loss(LINEAR, gaussian_model, x0, t, noise, 256)
        expected = continuous_diffusion_closed_form(np.asarray(x0, np.float64))
        self.assertLess(abs(float(jnp.mean(out["diffusion_bpd"])) - expected.mean()), 0.08)

    def test_bound_of_exact_model_is_the_discrete_nll(self):
        # Data on L levels with bin masses of N(mu, s^2). With the exact denoiser the model's
        # marginals are q's, so bound(x) = -log P(x) + [KL(q(z_1|x)||N(0,I)) - KL(q(z_1|x)||q(z_1))]
        # + KL(q(z_0|x) || q(z_0 | x's level alone)) + recon. At gamma(0) = -13.3 the levels'
        # components of q(z_0) are ~100 sigma_0 apart (last two terms ~0) and the prior bracket
        # averages to KL(q(z_1) || N(0, I)) < 1e-4 bits: the bound is the discrete NLL.
        num_levels = 16
        levels = np.linspace(-1, 1, num_levels)
        half = 1.0 / (num_levels - 1)
        upper = np.append(levels[:-1] + half, np.inf)
        lower = np.append(-np.inf, levels[1:] - half)
        probs = stats.norm.cdf((upper - 0.1) / 0.3) - stats.norm.cdf((lower - 0.1) / 0.3)
        log_probs = jnp.asarray(np.log(probs), jnp.float32)
        model = levels_model(jnp.asarray(levels, jnp.float32), log_probs)
        k = jax.random.choice(jax.random.PRNGKey(0), num_levels, (2048, 8, 8, 1), p=probs)
        x0 = jnp.asarray(levels, jnp.float32)[k]
        bound = jax.jit(lambda x, key: continuous.bound_bpd(LINEAR, model, x, key, 32, num_levels))(
            x0, jax.random.PRNGKey(1)
        )
        nll = -np.mean(np.asarray(log_probs)[np.asarray(k)], axis=(1, 2, 3)) / math.log(2.0)
        gap = np.asarray(bound["total_bpd"]) - nll
        self.assertLess(gap.std() / math.sqrt(len(gap)), 0.006)
        self.assertLess(abs(gap.mean()), 0.015)
        self.assertLess(float(jnp.max(bound["recon_bpd"])), 1e-4)

    def test_reconstruction_is_vdms_exact_decoder_summed_over_the_bins(self):
        # -log p(x | z_0) with p(x = v_k | z_0) = q(z_0 | v_k) / sum_j q(z_0 | v_j): the Gaussian
        # densities of z_0 summed directly over every bin, in float64.
        for gamma_0, levels in ((-6.0, 16), (-13.3, 256), (-9.0, 17)):
            x0 = jnp.linspace(-1, 1, levels)[:: max(levels // 16, 1)][:16].reshape(2, 2, 4, 1)
            noise = jax.random.normal(jax.random.PRNGKey(0), x0.shape)
            out = continuous.reconstruction_bpd(jnp.float32(gamma_0), x0, noise, levels)
            alpha = math.sqrt(1 / (1 + math.exp(gamma_0)))
            sigma = math.sqrt(1 / (1 + math.exp(-gamma_0)))
            x = np.asarray(x0, np.float64)
            z = alpha * x + sigma * np.asarray(noise, np.float64)
            values = np.linspace(-1, 1, levels)
            log_q = stats.norm.logpdf(z[..., None], alpha * values, sigma)  # [..., levels]
            index = np.round((x + 1) * (levels - 1) / 2).astype(int)[..., None]
            log_p = np.take_along_axis(log_q, index, -1)[..., 0] - special.logsumexp(log_q, -1)
            expected = -np.mean(log_p, axis=(1, 2, 3)) / math.log(2)
            # float32 bins 1e-7 from the float64 ones move the logits by ~1e-4 at
            # sigma_0 / alpha_0 = 1.3e-3: a few 1e-6 bits/dim.
            np.testing.assert_allclose(out, expected, rtol=1e-3, atol=2e-5)

    def test_reconstruction_at_256_levels_is_as_tight_as_vdms(self):
        # One interior pixel of CIFAR-10-like data, eps_0 = 2 (issue 26): the bin-mass decoder
        # cost 0.237 bits here; VDM's decoder about 2.8e-3.
        x0 = jnp.full((1, 1, 1, 1), 128 / 127.5 - 1)
        out = continuous.reconstruction_bpd(jnp.float32(-13.3), x0, jnp.full_like(x0, 2.0), 256)
        self.assertLess(float(out[0]), 5e-3)
        self.assertGreater(float(out[0]), 1e-3)

    def test_prior_is_the_gaussian_kl(self):
        x0 = jnp.linspace(-1, 1, 8).reshape(2, 2, 2, 1)
        out = continuous.prior_bpd(jnp.float32(2.0), x0)
        m, v, _, _ = _marginal(2.0, np.asarray(x0, np.float64))
        expected = np.mean(_gaussian_kl(m, v, 0.0, 1.0), axis=(1, 2, 3)) / math.log(2)
        np.testing.assert_allclose(out, expected, rtol=1e-4)

    def test_discrete_bound_decreases_towards_the_continuous_one(self):
        batch = 2048
        x0 = MU + S * jax.random.normal(jax.random.PRNGKey(0), (batch, 4, 4, 1))
        noise = jax.random.normal(jax.random.PRNGKey(1), x0.shape)
        t = jax.random.permutation(jax.random.PRNGKey(2), (jnp.arange(batch) + 0.5) / batch)
        loss = functools.partial(continuous.vdm_loss, LINEAR, gaussian_model, x0, t, noise, 256)
        x = np.asarray(x0, np.float64)
        steps = (4, 16, 64, 256, 1024)
        estimates = [float(jnp.mean(loss(num_timesteps=n)["diffusion_bpd"])) for n in steps]
        continuous_estimate = float(jnp.mean(loss()["diffusion_bpd"]))
        self.assertTrue(np.all(np.diff(estimates) < 0), estimates)
        self.assertGreater(estimates[-1], continuous_estimate)
        # Same noise and (nearly) the same t: the gaps to the continuous loss are the closed form's.
        limit = continuous_diffusion_closed_form(x).mean()
        for n, estimate in zip(steps, estimates, strict=True):
            closed = discrete_diffusion_closed_form(x, n).mean()
            np.testing.assert_allclose(
                estimate - continuous_estimate, closed - limit, rtol=0.05, atol=0.02
            )
        self.assertLess(discrete_diffusion_closed_form(x, 1024).mean() - limit, 0.1)

    def test_bound_bpd_averages_time_samples(self):
        x0 = MU + S * jax.random.normal(jax.random.PRNGKey(0), (4, 2, 2, 1))
        out = continuous.bound_bpd(LINEAR, gaussian_model, x0, jax.random.PRNGKey(1), 3, 256)
        for name in ("total_bpd", "prior_bpd", "recon_bpd", "diffusion_bpd"):
            chex.assert_shape(out[name], (4,))
        chex.assert_trees_all_close(
            out["total_bpd"], out["prior_bpd"] + out["recon_bpd"] + out["diffusion_bpd"], rtol=1e-6
        )


class WeightingTest(parameterized.TestCase):
    def setUp(self):
        super().setUp()
        self.x0 = MU + S * jax.random.normal(jax.random.PRNGKey(0), (8, 2, 2, 1))
        self.t = continuous.low_discrepancy_t(jax.random.PRNGKey(1), 8)
        self.noise = jax.random.normal(jax.random.PRNGKey(2), self.x0.shape)
        # A deliberately wrong model, so that every loss is far from 0.
        self.model = lambda z, t: 0.5 * gaussian_model(z, t) + 0.1
        self.losses = functools.partial(
            continuous.training_losses, LINEAR, self.model, self.x0, self.t, self.noise, 256
        )

    def test_min_snr_with_huge_gamma_is_simple(self):
        simple = self.losses(weighting="simple")["loss"]
        min_snr = self.losses(weighting="min_snr", min_snr_gamma=1e9)["loss"]
        chex.assert_trees_all_close(min_snr, simple)
        gamma = LINEAR(self.t)
        expected = np.minimum(np.exp(-gamma), 5.0) / np.exp(-gamma) * simple
        chex.assert_trees_all_close(self.losses(weighting="min_snr")["loss"], expected, rtol=1e-5)

    def test_simple_is_the_eps_mse(self):
        gamma = LINEAR(self.t)[:, None, None, None]
        alpha, sigma = continuous.alpha_sigma(gamma)
        eps_hat = self.model(alpha * self.x0 + sigma * self.noise, 1000 * self.t)
        expected = jnp.mean(jnp.square(eps_hat - self.noise), axis=(1, 2, 3))
        chex.assert_trees_all_close(self.losses(weighting="simple")["loss"], expected, rtol=1e-5)

    def test_elbo_weight_gives_the_vdm_diffusion_loss(self):
        out = self.losses(weighting="elbo")
        gamma, dgamma = continuous.gamma_and_derivative(LINEAR, self.t)
        chex.assert_trees_all_close(
            continuous.elbo_weight(gamma, dgamma) * out["mse"], out["diffusion_bpd"], rtol=1e-6
        )
        # 1/2 gamma'(t) ||eps - eps_hat||^2 summed over dims, in bits per dim.
        expected = 0.5 * 18.3 * out["mse"] / math.log(2)
        chex.assert_trees_all_close(out["diffusion_bpd"], expected, rtol=1e-5)
        chex.assert_trees_all_close(out["loss"], out["vb"])

    def test_v_weighting_with_v_prediction_is_the_v_mse(self):
        v_model = lambda z, t: 0.3 * z - 0.2
        out = continuous.training_losses(
            LINEAR, v_model, self.x0, self.t, self.noise, 256, weighting="v", mean_type="v"
        )
        alpha, sigma = continuous.alpha_sigma(LINEAR(self.t)[:, None, None, None])
        z = alpha * self.x0 + sigma * self.noise
        v = continuous.v_target(self.x0, self.noise, alpha, sigma)
        expected = jnp.mean(jnp.square(v - v_model(z, None)), axis=(1, 2, 3))
        chex.assert_trees_all_close(out["loss"], expected, rtol=1e-4)

    @parameterized.parameters("x0", "v")
    def test_predictions_convert_to_the_same_eps(self, mean_type):
        alpha, sigma = continuous.alpha_sigma(jnp.array([-2.0, 1.0]).reshape(2, 1, 1, 1))
        x0, eps = jnp.ones((2, 1, 1, 1)) * 0.3, jnp.ones((2, 1, 1, 1)) * -1.2
        z = alpha * x0 + sigma * eps
        output = x0 if mean_type == "x0" else continuous.v_target(x0, eps, alpha, sigma)
        chex.assert_trees_all_close(
            continuous.predict_eps(output, z, alpha, sigma, mean_type), eps, rtol=1e-5
        )


class ZeroTerminalSnrTest(parameterized.TestCase):
    def test_rescaled_betas_end_at_zero_snr_and_keep_the_start(self):
        for name in schedules.BETA_SCHEDULES:
            betas = schedules.get_named_beta_schedule(name, 1000)
            rescaled = schedules.rescale_zero_terminal_snr(betas)
            old, new = np.cumprod(1 - betas), np.cumprod(1 - rescaled)
            self.assertEqual(new[-1], 0.0)
            np.testing.assert_allclose(new[0], old[0], rtol=1e-12)
            self.assertTrue(np.all(np.diff(new) < 0))
            # sqrt(alpha_bar) is an affine map of the old one (Lin et al. Algorithm 1).
            slope = np.polyfit(np.sqrt(old), np.sqrt(new), 1)
            np.testing.assert_allclose(np.sqrt(new), np.polyval(slope, np.sqrt(old)), atol=1e-10)

    def test_v_prediction_recovers_x0_at_zero_snr(self):
        betas = schedules.rescale_zero_terminal_snr(
            schedules.get_named_beta_schedule("linear", 100)
        )
        with np.errstate(divide="ignore"):  # 1 / alpha_bar at the last step: eps cannot be used
            d = diffusion.GaussianDiffusion.create(betas, mean_type="v")
        x_t = jnp.ones((1, 1, 1, 1))
        v = -0.7 * jnp.ones_like(x_t)
        t = jnp.array([99])
        chex.assert_trees_all_close(diffusion.predict_x0_from_v(d, x_t, t, v), -v)


class LearnedScheduleTest(parameterized.TestCase):
    def test_monotone_with_exact_ends_for_random_parameters(self):
        schedule = noise_schedule.NoiseSchedule(hidden=64)
        t = jnp.linspace(0.0, 1.0, 257)
        for seed in range(3):
            params = jax.jit(schedule.init)(jax.random.PRNGKey(seed), t)["params"]
            # Random raw weights of any sign and scale, and other ends.
            params = jax.tree.map(
                lambda p, k=seed: p + 3.0 * jax.random.normal(jax.random.PRNGKey(k + 10), p.shape),
                params,
            )
            gamma = jax.jit(schedule.apply)({"params": params}, t)
            self.assertTrue(
                np.all(
                    np.diff(np.asarray(gamma))
                    * np.sign(float(params["gamma_1"] - params["gamma_0"]))
                    > 0
                )
            )
            np.testing.assert_allclose(gamma[0], params["gamma_0"], rtol=1e-5)
            np.testing.assert_allclose(gamma[-1], params["gamma_1"], rtol=1e-5)

    def _setup(self):
        schedule = noise_schedule.NoiseSchedule(hidden=32)
        params = {
            "model": {},
            "schedule": schedule.init(jax.random.PRNGKey(1), jnp.zeros(1))["params"],
        }
        x0 = MU + S * jax.random.normal(jax.random.PRNGKey(0), (256, 2, 2, 1))

        def model_loss_fn(noise, model_params, gamma_t, dgamma_t, gamma_0, gamma_1):
            del model_params
            terms = continuous.bound_terms(
                gaussian_model, x0, noise, gamma_t, dgamma_t, gamma_0, gamma_1, 256
            )
            return jnp.mean(terms["total_bpd"]), terms

        return schedule, params, x0, model_loss_fn

    def test_gradients_are_the_bound_for_ends_and_the_second_moment_for_the_interior(self):
        schedule, params, x0, model_loss_fn = self._setup()
        t = continuous.low_discrepancy_t(jax.random.PRNGKey(2), x0.shape[0])
        noise = jax.random.normal(jax.random.PRNGKey(3), x0.shape)
        grads_fn = functools.partial(continuous_task.learned_schedule_grads, schedule)
        _, _, grads = jax.jit(grads_fn, static_argnums=1)(
            params, functools.partial(model_loss_fn, noise), t
        )

        def terms(sp):
            gamma_fn = lambda tt: schedule.apply({"params": sp}, tt)
            return continuous.vdm_loss(gamma_fn, gaussian_model, x0, t, noise, 256)

        bound = jax.jit(jax.grad(lambda sp: jnp.mean(terms(sp)["total_bpd"])))(params["schedule"])
        second = jax.jit(jax.grad(lambda sp: jnp.mean(terms(sp)["diffusion_bpd"] ** 2)))(
            params["schedule"]
        )
        for name in noise_schedule.ENDPOINT_PARAMS:
            chex.assert_trees_all_close(grads["schedule"][name], bound[name], rtol=1e-3)
        for name in ("l1", "l2", "l3"):
            chex.assert_trees_all_close(grads["schedule"][name], second[name], rtol=2e-3, atol=1e-5)

    def test_variance_steps_lower_the_estimators_variance(self):
        schedule, params, x0, model_loss_fn = self._setup()
        tx = optax.adam(0.1)
        opt_state = tx.init(params["schedule"])

        @jax.jit
        def step(params, opt_state, key):
            t = continuous.low_discrepancy_t(key, x0.shape[0])
            noise = jax.random.normal(jax.random.fold_in(key, 1), x0.shape)
            _, _, grads = continuous_task.learned_schedule_grads(
                schedule, params, functools.partial(model_loss_fn, noise), t
            )
            updates, opt_state = tx.update(grads["schedule"], opt_state)
            updates = {**updates, "gamma_0": 0.0, "gamma_1": 0.0}  # keep the bound's ends
            return {
                "model": {},
                "schedule": optax.apply_updates(params["schedule"], updates),
            }, opt_state

        @jax.jit
        def moments(schedule_params):
            keys = jax.random.split(jax.random.PRNGKey(7), 3)
            x = MU + S * jax.random.normal(keys[0], (8192, 2, 2, 1))
            t = jax.random.uniform(keys[1], (8192,))
            noise = jax.random.normal(keys[2], x.shape)
            gamma_fn = lambda tt: schedule.apply({"params": schedule_params}, tt)
            out = continuous.vdm_loss(gamma_fn, gaussian_model, x, t, noise, 256)
            return jnp.var(out["diffusion_bpd"]), jnp.mean(out["diffusion_bpd"])

        variance_before, mean_before = moments(params["schedule"])
        for i in range(20):
            params, opt_state = step(params, opt_state, jax.random.PRNGKey(100 + i))
        variance_after, mean_after = moments(params["schedule"])
        self.assertLess(float(variance_after), 0.85 * float(variance_before))
        np.testing.assert_allclose(mean_after, mean_before, atol=0.15)  # the bound is invariant


class TinyDenoiser(nn.Module):
    """A two-convolution eps model called like the U-Net: (x, t, y, train)."""

    num_classes: int = 0

    @nn.compact
    def __call__(self, x, t, y=None, train=False):
        emb = nn.Dense(16)(layers.timestep_embedding(t, 16))
        h = nn.Conv(16, (3, 3))(x) + emb[:, None, None, :]
        h = nn.Dense(16)(jnp.concatenate([nn.silu(h), x], axis=-1))
        return nn.Conv(x.shape[-1], (3, 3))(nn.silu(h))


class TrainStepTest(parameterized.TestCase):
    @parameterized.parameters(("cosine", "min_snr"), ("learned", "elbo"))
    def test_train_step_traces_once_and_lowers_the_loss(self, schedule_name, weighting):
        chex.clear_trace_counter()
        config = _tiny_config(schedule_name)
        model = TinyDenoiser()
        params = continuous_task.init_params(jax.random.PRNGKey(0), model, config)
        learned = schedule_name == "learned"
        self.assertEqual(set(params) == {"model", "schedule"}, learned)
        gamma = build.schedule_module(config) if learned else continuous.get_gamma_fn(schedule_name)
        gamma_range = continuous.conditioning_range(schedule_name)
        state = TrainState.create(params, optax.adam(3e-3), (0.99,), jax.random.PRNGKey(1))
        images = jnp.asarray(
            np.random.RandomState(0).randint(0, 17, (16, 4, 4, 1)) / 8.0 - 1.0, jnp.float32
        )
        batch = {"image": images, "label": jnp.zeros((16,), jnp.int32)}

        @jax.jit
        @chex.assert_max_traces(n=1)
        def step(state, batch):
            return continuous_task.train_step(
                state,
                batch,
                model=model,
                gamma=gamma,
                num_levels=17,
                weighting=weighting,
                learned_schedule=learned,
                gamma_range=gamma_range,
            )

        @jax.jit
        def fixed_loss(all_params):
            if learned:
                gamma_fn = lambda t: gamma.apply({"params": all_params["schedule"]}, t)
                params = all_params["model"]
            else:
                gamma_fn, params = gamma, all_params
            t = (jnp.arange(16) + 0.5) / 16
            noise = jax.random.normal(jax.random.PRNGKey(5), images.shape)
            model_fn = lambda x, t: model.apply({"params": params}, x, t)
            out = continuous.training_losses(
                gamma_fn,
                model_fn,
                images,
                t,
                noise,
                17,
                weighting=weighting,
                gamma_range=gamma_range,
            )
            return jnp.mean(out["loss"])

        before = float(fixed_loss(state.params))
        for _ in range(20):
            state, metrics = step(state, batch)
        chex.assert_tree_all_finite(metrics)
        self.assertEqual(int(state.step), 20)
        self.assertEqual(
            set(metrics), {"loss", "mse", "vb", "grad_norm", "skipped", "consecutive_skips"}
        )
        self.assertLess(float(fixed_loss(state.params)), 0.9 * before)

    def test_learned_schedule_refuses_other_weightings(self):
        with pytest.raises(ValueError, match="learned schedule"):
            continuous_task.train_step(
                None,
                {},
                model=None,
                gamma=None,
                num_levels=2,
                weighting="simple",
                learned_schedule=True,
            )


def _tiny_config(schedule_name):
    import ml_collections

    config = ml_collections.ConfigDict()
    config.data = ml_collections.ConfigDict({"image_size": 4, "num_channels": 1, "num_classes": 0})
    config.diffusion = ml_collections.ConfigDict(
        {
            "gamma_schedule": schedule_name,
            "gamma_min": -13.3,
            "gamma_max": 5.0,
            "schedule_hidden": 16,
        }
    )
    return config


class SamplingTest(parameterized.TestCase):
    def test_exact_gaussian_model_samples_the_data_distribution(self):
        grid = continuous.sampling_grid(LINEAR, 200)
        np.testing.assert_allclose(grid.alpha[0] ** 2, jax.nn.sigmoid(-5.0), rtol=1e-5)
        np.testing.assert_allclose(grid.model_t[:2], [1000.0, 995.0], rtol=1e-5)
        self.assertEqual((float(grid.alpha[-1]), float(grid.sigma[-1])), (1.0, 0.0))
        denoise = solvers.denoiser(gaussian_model, grid, "eps", learn_sigma=False)
        out = solvers.sample("ddim", denoise, grid, (4096, 4, 4, 1), jax.random.PRNGKey(0))
        samples = np.asarray(out["sample"])
        # Off by DDIM's discretisation (~1% at 200 steps) and N(0, I) against q(z_1) (~0.3%).
        self.assertLess(abs(samples.mean() - MU), 0.02)
        self.assertLess(abs(samples.std() - S), 0.02)
