"""Tests for diffax.sampling against closed forms for Gaussian data x0 ~ N(MEAN, STD^2).

For such data x0 | x_t is Gaussian, so the optimal eps predictor, the exact reverse variance and
the affine maps realised by DDPM / DDIM steps are all known in closed form. The schedule arrays
below are recomputed here in float64 from the betas, independently of diffax.diffusion.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import diffusion, sampling, schedules

MEAN, STD = 0.3, 0.2
T_FULL = 1000
SAMPLE_SHAPE = (512, 4, 4, 2)  # 16384 i.i.d. scalars per sampler run


class GaussianOracle:
    """Closed-form posterior quantities for x0 ~ N(MEAN, STD^2) under the process with `betas`."""

    def __init__(self, betas: np.ndarray):
        self.betas = np.asarray(betas, np.float64)
        self.abar = np.cumprod(1.0 - self.betas)
        self.abar_prev = np.append(1.0, self.abar[:-1])
        self.posterior_variance = self.betas * (1.0 - self.abar_prev) / (1.0 - self.abar)
        self.coef1 = self.betas * np.sqrt(self.abar_prev) / (1.0 - self.abar)
        self.coef2 = (1.0 - self.abar_prev) * np.sqrt(1.0 - self.betas) / (1.0 - self.abar)

    @staticmethod
    def x0_posterior(x, abar):
        """Returns (E[x0 | x_t], Var(x0 | x_t)) for x_t at noise level abar (np or jnp)."""
        marginal_var = abar * STD**2 + 1.0 - abar
        mean = MEAN + abar**0.5 * STD**2 * (x - abar**0.5 * MEAN) / marginal_var
        return mean, STD**2 * (1.0 - abar) / marginal_var

    def _table(self, values, t, x):
        return jnp.asarray(values, jnp.float32)[t].reshape((-1,) + (1,) * (x.ndim - 1))

    def eps_model(self, x, t):
        """Returns the optimal eps prediction; t holds original timesteps [B]."""
        abar = self._table(self.abar, t, x)
        x0_mean, _ = self.x0_posterior(x, abar)
        return (x - jnp.sqrt(abar) * x0_mean) / jnp.sqrt(1.0 - abar)

    def eps_and_log_variance_model(self, x, t):
        """Returns [eps, log Var(x_{t-1} | x_t)] along channels: the exact learned variance."""
        abar = self._table(self.abar, t, x)
        _, x0_var = self.x0_posterior(x, abar)
        variance = self._table(self.posterior_variance, t, x) + (
            self._table(self.coef1, t, x) ** 2 * x0_var
        )
        log_variance = jnp.broadcast_to(jnp.log(variance), x.shape)
        return jnp.concatenate([self.eps_model(x, t), log_variance], axis=-1)


def _cosine_betas(num_timesteps):
    return schedules.get_named_beta_schedule("cosine", num_timesteps)


def _ddim_gain(abar, abar_prev):
    """Returns g: x_{t-1} - sqrt(abar_prev) MEAN = g (x_t - sqrt(abar) MEAN) in one DDIM step."""
    cross = np.sqrt(abar_prev * abar) * STD**2 + np.sqrt((1.0 - abar_prev) * (1.0 - abar))
    return cross / (abar * STD**2 + 1.0 - abar)


def _ddim_closed_form(abar, x_T, num_steps):
    """Returns x after the first num_steps deterministic DDIM steps (t = T-1, T-2, ...) from x_T."""
    abar_prev = np.append(1.0, abar[:-1])
    x = np.asarray(x_T, np.float64)
    for t in range(len(abar) - 1, len(abar) - 1 - num_steps, -1):
        gain = _ddim_gain(abar[t], abar_prev[t])
        x = np.sqrt(abar_prev[t]) * MEAN + gain * (x - np.sqrt(abar[t]) * MEAN)
    return x


def _assert_moments(samples, expected_mean, expected_std, num_se=5.0):
    """Asserts sample mean / std match within num_se standard errors (samples are i.i.d.)."""
    samples = np.asarray(samples, np.float64).ravel()
    n = samples.size
    assert abs(samples.mean() - expected_mean) < num_se * expected_std / np.sqrt(n)
    assert abs(samples.std() - expected_std) < num_se * expected_std / np.sqrt(2 * n)


def test_ddpm_with_exact_learned_variance_reproduces_gaussian_data():
    oracle = GaussianOracle(_cosine_betas(T_FULL))
    d = diffusion.GaussianDiffusion.create(oracle.betas, mean_type="eps", var_type="learned")
    out = sampling.ddpm_sample(
        d,
        oracle.eps_and_log_variance_model,
        SAMPLE_SHAPE,
        jax.random.PRNGKey(0),
        clip_denoised=False,
    )
    chex.assert_shape(out["sample"], SAMPLE_SHAPE)
    chex.assert_tree_all_finite(out)
    # Each step samples the exact Gaussian q(x_{t-1} | x_t); propagate mean / variance from N(0, 1).
    mu, var = 0.0, 1.0
    for t in range(T_FULL - 1, -1, -1):
        abar = oracle.abar[t]
        slope = np.sqrt(abar) * STD**2 / (abar * STD**2 + 1.0 - abar)  # d E[x0|x_t] / d x_t
        x0_var = STD**2 * (1.0 - abar) / (abar * STD**2 + 1.0 - abar)
        a = oracle.coef1[t] * slope + oracle.coef2[t]
        b = oracle.coef1[t] * (MEAN - slope * np.sqrt(abar) * MEAN)
        noise_var = oracle.posterior_variance[t] + oracle.coef1[t] ** 2 * x0_var if t > 0 else 0.0
        mu, var = a * mu + b, a**2 * var + noise_var
    assert abs(mu - MEAN) < 1e-3 and abs(np.sqrt(var) - STD) < 1e-3
    _assert_moments(out["sample"], mu, np.sqrt(var))


@pytest.mark.parametrize("respacing", [None, "ddim50"])
def test_ddim_eta0_with_optimal_eps_reproduces_gaussian_data(respacing):
    oracle = GaussianOracle(_cosine_betas(T_FULL))
    d = diffusion.GaussianDiffusion.create(oracle.betas, mean_type="eps", var_type="fixed_small")
    abar = oracle.abar
    if respacing is not None:
        use = schedules.space_timesteps(T_FULL, respacing)
        d = d.respace(use)
        abar = oracle.abar[sorted(use)]  # respacing keeps these alphas_cumprod
    assert d.num_timesteps == len(abar)
    out = sampling.ddim_sample(
        d, oracle.eps_model, SAMPLE_SHAPE, jax.random.PRNGKey(1), eta=0.0, clip_denoised=False
    )
    chex.assert_tree_all_finite(out)
    # DDIM is affine in x_T here: x0 = MEAN + G (x_T - sqrt(abar_{T-1}) MEAN), with x_T ~ N(0, 1).
    gain = np.prod(_ddim_gain(abar, np.append(1.0, abar[:-1])))
    expected_mean = MEAN - gain * np.sqrt(abar[-1]) * MEAN
    _assert_moments(out["sample"], expected_mean, gain)
    # The probability-flow ODE maps N(0, 1) to the data marginal; Euler (DDIM) steps shrink the
    # spread slightly: 0.4% with 1000 steps, 6% with 50 steps for STD = 0.2 on the cosine schedule.
    # ddim50 ends at t = 980 (abar = 9e-4, not ~0), so starting from N(0, 1) biases the mean by
    # G sqrt(abar_980) MEAN = 0.0017.
    std_tolerance = 0.005 if respacing is None else 0.07
    mean_tolerance = 1e-3 if respacing is None else 3e-3
    np.testing.assert_allclose(expected_mean, MEAN, atol=mean_tolerance)
    np.testing.assert_allclose(gain, STD, rtol=std_tolerance)


@pytest.mark.parametrize("every", [10, 15])
def test_ddim_intermediates_match_closed_form_states(every):
    oracle = GaussianOracle(_cosine_betas(T_FULL))
    use = schedules.space_timesteps(T_FULL, "ddim50")
    d = diffusion.GaussianDiffusion.create(oracle.betas, var_type="fixed_small").respace(use)
    abar = oracle.abar[sorted(use)]
    shape = (3, 2, 2, 1)
    x_T = jax.random.normal(jax.random.PRNGKey(2), shape)
    out = sampling.ddim_sample(
        d,
        oracle.eps_model,
        shape,
        jax.random.PRNGKey(3),
        clip_denoised=False,
        return_every=every,
        noise=x_T,
    )
    # Intermediates are the states after steps every, 2 every, ...; the remaining 50 % every
    # steps still run before the final sample.
    chex.assert_shape(out["intermediates"], (50 // every,) + shape)
    for i in range(50 // every):
        expected = _ddim_closed_form(abar, x_T, (i + 1) * every)
        np.testing.assert_allclose(out["intermediates"][i], expected, atol=1e-4, rtol=1e-4)
    expected_sample = _ddim_closed_form(abar, x_T, 50)
    np.testing.assert_allclose(out["sample"], expected_sample, atol=1e-4, rtol=1e-4)
    if 50 % every == 0:
        chex.assert_trees_all_equal(out["intermediates"][-1], out["sample"])


def test_ddpm_intermediates_have_shape_and_last_equals_sample():
    oracle = GaussianOracle(_cosine_betas(12))
    d = diffusion.GaussianDiffusion.create(oracle.betas, var_type="fixed_large")
    shape = (2, 3, 3, 1)
    out = sampling.ddpm_sample(d, oracle.eps_model, shape, jax.random.PRNGKey(4), return_every=4)
    chex.assert_shape(out["intermediates"], (3,) + shape)
    chex.assert_trees_all_equal(out["intermediates"][-1], out["sample"])
    # Intermediates are distinct states along the chain, not copies of the final sample.
    assert not np.allclose(out["intermediates"][0], out["sample"])


def test_ddim_reverse_then_sample_reconstructs_x0():
    oracle = GaussianOracle(_cosine_betas(T_FULL))
    d = diffusion.GaussianDiffusion.create(oracle.betas, var_type="fixed_small")
    shape = (64, 2, 2, 1)
    x0 = MEAN + STD * jax.random.normal(jax.random.PRNGKey(5), shape)
    encoded = sampling.ddim_reverse(d, oracle.eps_model, x0)["sample"]
    decoded = sampling.ddim_sample(
        d, oracle.eps_model, shape, jax.random.PRNGKey(6), clip_denoised=False, noise=encoded
    )["sample"]
    # Closed form: encoding steps (t -> t+1, with alphas_cumprod_next) and decoding are affine.
    abar = oracle.abar
    abar_next = np.append(abar[1:], 0.0)
    encode_gain = np.prod(_ddim_gain(abar, abar_next))  # same formula, noise level abar_next
    expected_encoding = encode_gain * (np.asarray(x0, np.float64) - np.sqrt(abar[0]) * MEAN)
    np.testing.assert_allclose(encoded, expected_encoding, rtol=1e-4, atol=1e-4)
    expected_decoding = _ddim_closed_form(abar, expected_encoding, T_FULL)
    np.testing.assert_allclose(decoded, expected_decoding, rtol=1e-4, atol=1e-4)
    # Encode-then-decode is the identity up to DDIM's discretisation error (0.8% of |x0 - MEAN|).
    np.testing.assert_allclose(decoded, x0, atol=0.01 * np.abs(np.asarray(x0) - MEAN).max())


def test_p_sample_adds_no_noise_at_t0_and_posterior_noise_elsewhere():
    oracle = GaussianOracle(_cosine_betas(20))
    d = diffusion.GaussianDiffusion.create(oracle.betas, var_type="fixed_small")
    keys = jax.random.split(jax.random.PRNGKey(7), 3)
    x_t = jax.random.normal(keys[0], (4, 2, 2, 1))
    t = jnp.array([0, 3, 0, 17])
    noise = jax.random.normal(keys[1], x_t.shape)
    with_noise = sampling.p_sample(d, oracle.eps_model, x_t, t, noise, clip_denoised=False)
    without = sampling.p_sample(d, oracle.eps_model, x_t, t, jnp.zeros_like(x_t), False)
    # Mean: coef1 E[x0 | x_t] + coef2 x_t (Ho et al. eq. 7).
    ti = np.asarray(t)[:, None, None, None]
    x0_mean, _ = oracle.x0_posterior(np.asarray(x_t, np.float64), oracle.abar[ti])
    expected_mean = oracle.coef1[ti] * x0_mean + oracle.coef2[ti] * np.asarray(x_t)
    np.testing.assert_allclose(without["sample"], expected_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(without["pred_x0"], x0_mean, rtol=1e-4, atol=1e-5)
    added = np.asarray(with_noise["sample"] - without["sample"])
    expected_scale = np.where(ti == 0, 0.0, np.sqrt(oracle.posterior_variance[ti]))
    chex.assert_trees_all_equal(added[np.asarray(t) == 0], np.zeros_like(added[:2]))
    np.testing.assert_allclose(added, expected_scale * np.asarray(noise), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_ddim_step_sigma_matches_song_et_al_formula(eta):
    oracle = GaussianOracle(_cosine_betas(20))
    d = diffusion.GaussianDiffusion.create(oracle.betas, var_type="fixed_small")
    keys = jax.random.split(jax.random.PRNGKey(8), 2)
    x_t = jax.random.normal(keys[0], (3, 2, 2, 1))
    t = jnp.array([1, 9, 19])
    noise = jax.random.normal(keys[1], x_t.shape)
    noisy = sampling.ddim_step(d, oracle.eps_model, x_t, t, noise, eta, clip_denoised=False)
    clean = sampling.ddim_step(d, oracle.eps_model, x_t, t, jnp.zeros_like(x_t), eta, False)
    ti = np.asarray(t)[:, None, None, None]
    abar, abar_prev = oracle.abar[ti], oracle.abar_prev[ti]
    sigma = eta * np.sqrt((1 - abar_prev) / (1 - abar)) * np.sqrt(1 - abar / abar_prev)
    if eta == 1.0:
        # eta = 1 gives the DDPM posterior variance beta_t (1 - abar_{t-1}) / (1 - abar_t).
        np.testing.assert_allclose(sigma**2, oracle.posterior_variance[ti], rtol=1e-10)
    added = np.asarray(noisy["sample"] - clean["sample"])
    np.testing.assert_allclose(added, sigma * np.asarray(noise), rtol=1e-3, atol=1e-6)
    # Noise-free part, Song et al. eq. 12: sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - s^2) eps.
    x = np.asarray(x_t, np.float64)
    x0_mean, _ = oracle.x0_posterior(x, abar)
    eps = (x - np.sqrt(abar) * x0_mean) / np.sqrt(1 - abar)
    expected = np.sqrt(abar_prev) * x0_mean + np.sqrt(1 - abar_prev - sigma**2) * eps
    np.testing.assert_allclose(clean["sample"], expected, rtol=1e-4, atol=1e-5)


def test_ddim_step_rederives_eps_from_clipped_pred_x0():
    oracle = GaussianOracle(_cosine_betas(20))
    d = diffusion.GaussianDiffusion.create(oracle.betas, var_type="fixed_small")
    x_t = jnp.linspace(-2.0, 2.0, 8).reshape(2, 2, 2, 1)
    t = jnp.array([5, 12])

    def far_eps(x, t):
        return jnp.full_like(x, -3.0)  # pred_x0 = (x_t + 3 sqrt(1 - abar)) / sqrt(abar), mostly > 1

    out = sampling.ddim_step(d, far_eps, x_t, t, jnp.zeros_like(x_t), 0.0, clip_denoised=True)
    ti = np.asarray(t)[:, None, None, None]
    abar, abar_prev = oracle.abar[ti], oracle.abar_prev[ti]
    x = np.asarray(x_t, np.float64)
    pred_x0 = np.clip((x + 3.0 * np.sqrt(1 - abar)) / np.sqrt(abar), -1.0, 1.0)
    assert np.any(pred_x0 == 1.0)  # the clip is active, so eps must differ from the model's -3
    eps = (x - np.sqrt(abar) * pred_x0) / np.sqrt(1 - abar)
    expected = np.sqrt(abar_prev) * pred_x0 + np.sqrt(1 - abar_prev) * eps
    np.testing.assert_allclose(out["pred_x0"], pred_x0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["sample"], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("num_timesteps", [10, 40])
def test_jitted_ddpm_sample_traces_model_once_for_any_num_timesteps(num_timesteps):
    chex.clear_trace_counter()
    oracle = GaussianOracle(_cosine_betas(num_timesteps))
    d = diffusion.GaussianDiffusion.create(oracle.betas, var_type="fixed_small")
    model_traces = []

    @chex.assert_max_traces(n=1)
    def model_fn(x, t):
        model_traces.append(x.shape)
        return oracle.eps_model(x, t)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def sample(d, key):
        return sampling.ddpm_sample(d, model_fn, (2, 2, 2, 1), key)["sample"]

    first = sample(d, jax.random.PRNGKey(0))
    second = sample(d, jax.random.PRNGKey(1))
    # One trace of the model however many steps: the loop is a lax.scan, not a Python loop.
    assert model_traces == [(2, 2, 2, 1)]
    assert not np.allclose(first, second)


def _toy_conditional_model(x, t, y):
    """Returns [2 x + 0.1 t + y, 3 x + 0.5 y]: mean channels then variance channels (2C)."""
    t_b = t.astype(x.dtype)[:, None, None, None]
    y_b = y.astype(x.dtype)[:, None, None, None]
    return jnp.concatenate([2.0 * x + 0.1 * t_b + y_b, 3.0 * x + 0.5 * y_b], axis=-1)


def test_classifier_free_guidance_with_zero_scale_is_the_conditional_model():
    x = jax.random.normal(jax.random.PRNGKey(9), (3, 2, 2, 2))
    t, labels = jnp.array([4, 5, 6]), jnp.array([1, 2, 3])
    guided = sampling.classifier_free_guidance(_toy_conditional_model, labels, 10, 0.0)
    chex.assert_trees_all_equal(guided(x, t), _toy_conditional_model(x, t, labels))


def test_classifier_free_guidance_matches_linear_closed_form_and_keeps_variance():
    x = jax.random.normal(jax.random.PRNGKey(10), (3, 2, 2, 2))
    t, labels = jnp.array([4, 5, 6]), jnp.array([1, 2, 3])
    w, null = 1.5, 10
    guided = sampling.classifier_free_guidance(_toy_conditional_model, labels, null, w)(x, t)
    chex.assert_shape(guided, (3, 2, 2, 4))
    y = np.asarray(labels, np.float64)[:, None, None, None]
    tb = np.asarray(t, np.float64)[:, None, None, None]
    xn = np.asarray(x, np.float64)
    # (1 + w)(2x + 0.1t + y) - w(2x + 0.1t + null) = 2x + 0.1t + (1 + w) y - w null.
    np.testing.assert_allclose(guided[..., :2], 2 * xn + 0.1 * tb + (1 + w) * y - w * null, 1e-5)
    np.testing.assert_allclose(guided[..., 2:], 3 * xn + 0.5 * y, rtol=1e-6)


def test_classifier_free_guidance_of_the_first_channels_only_as_dits_code():
    x = jax.random.normal(jax.random.PRNGKey(12), (3, 2, 2, 2))
    t, labels = jnp.array([4, 5, 6]), jnp.array([1, 2, 3])
    w, null = 1.5, 10
    guided = sampling.classifier_free_guidance(
        _toy_conditional_model, labels, null, w, guided_channels=1
    )(x, t)
    everything = sampling.classifier_free_guidance(_toy_conditional_model, labels, null, w)(x, t)
    conditional = _toy_conditional_model(x, t, labels)
    chex.assert_trees_all_equal(guided[..., :1], everything[..., :1])  # Guided.
    chex.assert_trees_all_equal(guided[..., 1:], conditional[..., 1:])  # The rest: conditional.


def test_classifier_free_guidance_without_variance_channels_returns_guided_eps():
    x = jax.random.normal(jax.random.PRNGKey(11), (2, 2, 2, 2))
    t, labels = jnp.array([0, 1]), jnp.array([1, 2])

    def eps_only(x, t, y):
        return _toy_conditional_model(x, t, y)[..., :2]

    guided = sampling.classifier_free_guidance(eps_only, labels, 0, 2.0)(x, t)
    expected = 3.0 * eps_only(x, t, labels) - 2.0 * eps_only(x, t, jnp.zeros_like(labels))
    chex.assert_trees_all_close(guided, expected, rtol=1e-5)


def test_classifier_free_guidance_calls_model_once_per_step_with_doubled_batch():
    oracle = GaussianOracle(_cosine_betas(8))
    d = diffusion.GaussianDiffusion.create(oracle.betas, var_type="fixed_small")
    labels, null = jnp.array([1, 2]), 7
    calls = []

    def conditional_model(x, t, y):
        calls.append((x.shape[0], t.shape[0], y.shape[0]))
        return oracle.eps_model(x, t) + 0.01 * (y == null).astype(x.dtype)[:, None, None, None]

    guided = sampling.classifier_free_guidance(conditional_model, labels, null, 3.0)
    x = jax.random.normal(jax.random.PRNGKey(12), (2, 2, 2, 1))
    guided(x, jnp.array([3, 3]))
    assert calls == [(4, 4, 4)]
    calls.clear()
    out = sampling.ddim_sample(d, guided, (2, 2, 2, 1), jax.random.PRNGKey(13))
    chex.assert_tree_all_finite(out)
    assert calls == [(4, 4, 4)]  # one batched call, traced once inside the scan over 8 steps


def test_classifier_free_guidance_on_caption_tokens_doubles_with_the_empty_caption():
    """The condition may be tokens [B, L] with a null row [L]: w = 0 is the conditional model and
    the second half of the doubled batch sees the null row in every example."""
    x = jax.random.normal(jax.random.PRNGKey(11), (2, 2, 2, 1))
    t = jnp.array([4, 5])
    tokens = jnp.array([[1, 7, 9, 0], [1, 3, 0, 0]])
    null = jnp.array([1, 0, 0, 0])
    seen = []

    def model(x, t, c):
        seen.append(c)
        return x * jnp.sum(c, axis=1).astype(x.dtype)[:, None, None, None]

    chex.assert_trees_all_equal(
        sampling.classifier_free_guidance(model, tokens, null, 0.0)(x, t), model(x, t, tokens)
    )
    np.testing.assert_array_equal(seen[0][2:], [null, null])
    guided = sampling.classifier_free_guidance(model, tokens, null, 2.0)(x, t)
    chex.assert_trees_all_close(guided, 3.0 * model(x, t, tokens) - 2.0 * x * 1.0)


def test_guided_ddim_shifts_the_eps_of_the_clipped_x0_and_does_not_clip_again():
    # Dhariwal & Nichol's Algorithm 2 in guided-diffusion's order (condition_score): eps from
    # the clipped pred_x0, eps' = eps - s sqrt(1 - abar) grad, pred_x0' from eps' unclipped.
    d = diffusion.GaussianDiffusion.create(_cosine_betas(10), mean_type="eps")
    x = jnp.full((2, 2, 2, 1), 3.0)  # Far outside [-1, 1]: the clipping matters.
    t = jnp.array([6, 6])
    model_fn = lambda x_t, model_t: -0.5 * x_t  # noqa: E731  (predicts eps = -x/2)
    grad = jnp.full_like(x, 0.7)
    guidance = lambda x_t, model_t: grad  # noqa: E731
    scale = 2.0
    out = sampling.ddim_step(d, model_fn, x, t, jnp.zeros_like(x), 0.0, True, guidance, scale)
    abar, abar_prev = float(d.alphas_cumprod[6]), float(d.alphas_cumprod_prev[6])
    raw_x0 = (3.0 - np.sqrt(1 - abar) * -1.5) / np.sqrt(abar)
    x0 = np.clip(raw_x0, -1.0, 1.0)
    eps = (3.0 - np.sqrt(abar) * x0) / np.sqrt(1 - abar) - scale * np.sqrt(1 - abar) * 0.7
    x0 = (3.0 - np.sqrt(1 - abar) * eps) / np.sqrt(abar)  # Not clipped again.
    expected = np.sqrt(abar_prev) * x0 + np.sqrt(1 - abar_prev) * eps
    assert raw_x0 > 1.0
    np.testing.assert_allclose(out["pred_x0"], x0, rtol=1e-5)
    np.testing.assert_allclose(out["sample"], expected, rtol=1e-5)
    unguided = sampling.ddim_step(d, model_fn, x, t, jnp.zeros_like(x), 0.0, True, guidance, 0)
    np.testing.assert_allclose(unguided["pred_x0"], 1.0)  # A Python 0: the clipped step.
