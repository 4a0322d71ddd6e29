"""Tests for diffax.diffusion against float64 closed forms, Bayes' rule and Monte Carlo."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from scipy.stats import norm

from diffax import diffusion, schedules


def _process64(betas: np.ndarray) -> dict[str, np.ndarray]:
    """Float64 reference coefficients written out from Ho et al. eqs. 4 and 7."""
    alphas_cumprod = np.cumprod(1.0 - betas)
    prev = np.concatenate([[1.0], alphas_cumprod[:-1]])
    return dict(
        alphas_cumprod=alphas_cumprod,
        prev=prev,
        posterior_variance=betas * (1.0 - prev) / (1.0 - alphas_cumprod),
        coef1=betas * np.sqrt(prev) / (1.0 - alphas_cumprod),
        coef2=(1.0 - prev) * np.sqrt(1.0 - betas) / (1.0 - alphas_cumprod),
    )


def _x_shape(batch: int) -> tuple[int, int, int, int]:
    return (batch, 2, 2, 3)


class ProcessMathTest(chex.TestCase):
    """Cheap pure functions, run with and without jit."""

    def setUp(self):
        super().setUp()
        self.betas = schedules.get_named_beta_schedule("cosine", 50)
        self.ref = _process64(self.betas)
        rng = np.random.default_rng(0)
        self.x0 = rng.uniform(-1, 1, _x_shape(4))
        self.noise = rng.normal(size=_x_shape(4))
        self.t = np.array([0, 1, 17, 49], np.int32)

    def _diffusion(self, **kwargs):
        return diffusion.GaussianDiffusion.create(self.betas, **kwargs)

    @chex.variants(with_jit=True, without_jit=True)
    def test_q_sample_and_predictions_match_closed_forms(self):
        d = self._diffusion()
        abar = self.ref["alphas_cumprod"][self.t][:, None, None, None]
        expected_xt = np.sqrt(abar) * self.x0 + np.sqrt(1 - abar) * self.noise
        expected_v = np.sqrt(abar) * self.noise - np.sqrt(1 - abar) * self.x0

        @self.variant
        def run(d, x0, t, noise):
            x_t = diffusion.q_sample(d, x0, t, noise)
            v = diffusion.v_target(d, x0, t, noise)
            return dict(
                x_t=x_t,
                v=v,
                x0_from_eps=diffusion.predict_x0_from_eps(d, x_t, t, noise),
                eps_from_x0=diffusion.predict_eps_from_x0(d, x_t, t, x0),
                x0_from_v=diffusion.predict_x0_from_v(d, x_t, t, v),
            )

        out = run(d, jnp.float32(self.x0), jnp.asarray(self.t), jnp.float32(self.noise))
        chex.assert_trees_all_close(
            out,
            dict(
                x_t=expected_xt,
                v=expected_v,
                x0_from_eps=self.x0,
                eps_from_x0=self.noise,
                x0_from_v=self.x0,
            ),
            atol=2e-4,
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_posterior_matches_bayes_rule(self):
        d = self._diffusion()
        t = np.array([1, 2, 30, 49], np.int32)
        x_t = np.random.default_rng(1).normal(size=_x_shape(4))
        beta = self.betas[t][:, None, None, None]
        abar_prev = self.ref["prev"][t][:, None, None, None]
        # q(x_{t-1} | x_t, x0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x0); as a function of x_{t-1} the
        # first factor is N(x_t / sqrt(1 - beta), beta / (1 - beta)): a product of two Gaussians.
        precision1, mean1 = (1 - beta) / beta, x_t / np.sqrt(1 - beta)
        precision2, mean2 = 1 / (1 - abar_prev), np.sqrt(abar_prev) * self.x0
        variance = 1 / (precision1 + precision2)
        mean = variance * (precision1 * mean1 + precision2 * mean2)

        mean_got, var_got, log_var_got = self.variant(diffusion.q_posterior_mean_variance)(
            d, jnp.float32(self.x0), jnp.float32(x_t), jnp.asarray(t)
        )
        chex.assert_trees_all_close(mean_got, mean, atol=1e-4, rtol=1e-4)
        chex.assert_trees_all_close(var_got, np.broadcast_to(variance, x_t.shape), rtol=1e-4)
        chex.assert_trees_all_close(log_var_got, np.log(var_got), rtol=1e-4, atol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_posterior_at_t0_is_x0_with_log_variance_clipped_to_t1(self):
        d = self._diffusion()
        t = jnp.zeros((4,), jnp.int32)
        x_t = np.random.default_rng(2).normal(size=_x_shape(4))
        mean, var, log_var = self.variant(diffusion.q_posterior_mean_variance)(
            d, jnp.float32(self.x0), jnp.float32(x_t), t
        )
        chex.assert_trees_all_close(mean, self.x0, atol=1e-6)
        chex.assert_trees_all_close(var, np.zeros(x_t.shape), atol=1e-12)
        expected = np.log(self.ref["posterior_variance"][1])
        chex.assert_trees_all_close(log_var, np.full(x_t.shape, expected), rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        ("fixed_small", "fixed_small"),
        ("fixed_large", "fixed_large"),
        ("learned", "learned"),
        ("learned_range", "learned_range"),
    )
    def test_p_variance_matches_closed_form(self, var_type):
        d = self._diffusion(var_type=var_type)
        rng = np.random.default_rng(3)
        x_t = rng.normal(size=_x_shape(4))
        var_output = rng.uniform(-1, 1, _x_shape(4))
        output = np.concatenate([self.noise, var_output], -1) if d.learn_sigma else self.noise
        pv = self.ref["posterior_variance"]
        clipped = np.log(np.concatenate([[pv[1]], pv[1:]]))[self.t][:, None, None, None]
        log_beta = np.log(self.betas)[self.t][:, None, None, None]
        expected = {
            "fixed_small": clipped,
            "fixed_large": np.log(np.concatenate([[pv[1]], self.betas[1:]]))[self.t][
                :, None, None, None
            ],
            "learned": var_output,
            # Nichol & Dhariwal eq. 15 with v in [-1, 1] mapped to frac = (v + 1) / 2.
            "learned_range": (var_output + 1) / 2 * log_beta + (1 - var_output) / 2 * clipped,
        }[var_type]
        fn = functools.partial(diffusion.p_mean_variance, clip_denoised=False)
        out = self.variant(fn)(d, jnp.float32(output), jnp.float32(x_t), jnp.asarray(self.t))
        expected = np.broadcast_to(expected, x_t.shape)
        chex.assert_trees_all_close(out["log_variance"], expected, atol=1e-5, rtol=1e-5)
        chex.assert_trees_all_close(out["variance"], np.exp(expected), rtol=1e-4)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(("eps", "eps"), ("x0", "x0"), ("v", "v"))
    def test_p_mean_is_posterior_mean_of_clipped_prediction(self, mean_type):
        d = self._diffusion(mean_type=mean_type, var_type="fixed_small")
        rng = np.random.default_rng(4)
        x_t = rng.normal(size=_x_shape(4))
        output = 1.5 * rng.normal(size=_x_shape(4))
        abar = self.ref["alphas_cumprod"][self.t][:, None, None, None]
        pred_x0 = {
            "eps": (x_t - np.sqrt(1 - abar) * output) / np.sqrt(abar),
            "x0": output,
            "v": np.sqrt(abar) * x_t - np.sqrt(1 - abar) * output,
        }[mean_type]
        pred_x0 = np.clip(pred_x0, -1, 1)
        c1 = self.ref["coef1"][self.t][:, None, None, None]
        c2 = self.ref["coef2"][self.t][:, None, None, None]
        out = self.variant(diffusion.p_mean_variance)(
            d, jnp.float32(output), jnp.float32(x_t), jnp.asarray(self.t)
        )
        chex.assert_trees_all_close(out["pred_x0"], pred_x0, atol=1e-4)
        chex.assert_trees_all_close(out["mean"], c1 * pred_x0 + c2 * x_t, atol=1e-4)

    @chex.variants(with_jit=True, without_jit=True)
    def test_prior_bpd_is_kl_to_standard_normal_in_bits(self):
        d = self._diffusion()
        abar = self.ref["alphas_cumprod"][-1]
        mean, var = np.sqrt(abar) * self.x0, 1 - abar
        kl = 0.5 * (var + mean**2 - 1 - np.log(var))
        got = self.variant(diffusion.prior_bpd)(d, jnp.float32(self.x0))
        chex.assert_trees_all_close(got, kl.mean(axis=(1, 2, 3)) / math.log(2), rtol=1e-4)


def test_create_arrays_match_float64_closed_forms():
    betas = schedules.get_named_beta_schedule("linear", 1000)
    ref = _process64(betas)
    d = diffusion.GaussianDiffusion.create(betas)
    assert d.num_timesteps == 1000 and d.original_num_timesteps == 1000
    assert d.betas.dtype == jnp.float32 and d.timestep_map.dtype == jnp.int32
    np.testing.assert_array_equal(d.timestep_map, np.arange(1000))
    np.testing.assert_allclose(d.alphas_cumprod, ref["alphas_cumprod"], rtol=1e-6)
    np.testing.assert_allclose(d.alphas_cumprod_prev, ref["prev"], rtol=1e-6)
    np.testing.assert_allclose(d.alphas_cumprod_next[:-1], ref["alphas_cumprod"][1:], rtol=1e-6)
    assert float(d.alphas_cumprod_next[-1]) == 0.0
    np.testing.assert_allclose(d.posterior_variance, ref["posterior_variance"], rtol=1e-5)
    np.testing.assert_allclose(d.posterior_mean_coef1, ref["coef1"], rtol=1e-5)
    np.testing.assert_allclose(d.posterior_mean_coef2, ref["coef2"], rtol=1e-5)
    np.testing.assert_allclose(
        d.sqrt_recipm1_alphas_cumprod, np.sqrt(1 / ref["alphas_cumprod"] - 1), rtol=1e-5
    )


def test_q_marginal_matches_iterated_markov_chain():
    betas = schedules.get_named_beta_schedule("linear", 100)
    d = diffusion.GaussianDiffusion.create(betas)
    x0 = np.array([0.8, -0.5, 0.1])
    rng = np.random.default_rng(6)
    samples = np.broadcast_to(x0, (100_000, 3)).copy()
    checkpoints = {}
    for step, beta in enumerate(betas):  # x_t = sqrt(1 - b_t) x_{t-1} + sqrt(b_t) eps
        samples = np.sqrt(1 - beta) * samples + np.sqrt(beta) * rng.normal(size=samples.shape)
        if step in (0, 9, 99):
            checkpoints[step] = (samples.mean(0), samples.var(0))
    for step, (mc_mean, mc_var) in checkpoints.items():
        mean, var, log_var = diffusion.q_mean_variance(
            d, jnp.float32(x0[None]), jnp.array([step], jnp.int32)
        )
        np.testing.assert_allclose(mean[0], mc_mean, atol=0.01)
        np.testing.assert_allclose(var[0], mc_var, rtol=0.02)
        np.testing.assert_allclose(np.exp(log_var[0]), mc_var, rtol=0.02)


def test_respace_keeps_alphas_cumprod_and_composes_timestep_map():
    betas = schedules.get_named_beta_schedule("linear", 100)
    base = diffusion.GaussianDiffusion.create(betas, var_type="learned_range", loss_type="hybrid")
    kept = sorted(schedules.space_timesteps(100, "10"))
    spaced = base.respace(kept)
    abar = np.cumprod(1 - betas)
    assert spaced.num_timesteps == 10 and spaced.original_num_timesteps == 100
    assert spaced.var_type == "learned_range" and spaced.loss_type == "rescaled_mse"
    np.testing.assert_allclose(spaced.alphas_cumprod, abar[kept], rtol=1e-5)
    np.testing.assert_array_equal(spaced.timestep_map, kept)
    # Betas follow from consecutive kept alphas_cumprod ratios.
    ratios = abar[kept] / np.concatenate([[1.0], abar[kept][:-1]])
    np.testing.assert_allclose(spaced.betas, 1 - ratios, rtol=1e-5)
    twice = spaced.respace({0, 4, 9})
    np.testing.assert_array_equal(twice.timestep_map, np.asarray(kept)[[0, 4, 9]])
    np.testing.assert_allclose(twice.alphas_cumprod, abar[np.asarray(kept)[[0, 4, 9]]], rtol=1e-5)
    assert twice.original_num_timesteps == 100
    with pytest.raises(ValueError, match="use_timesteps"):
        spaced.respace({10})


@pytest.mark.parametrize(
    "alias, canonical", [("simple", "mse"), ("hybrid", "rescaled_mse"), ("vlb", "rescaled_kl")]
)
def test_loss_aliases_map_to_canonical_names(alias, canonical):
    betas = np.full(10, 0.1)
    assert diffusion.GaussianDiffusion.create(betas, loss_type=alias).loss_type == canonical


@pytest.mark.parametrize("field", ["mean_type", "var_type", "loss_type"])
def test_bad_enum_value_raises_naming_the_field(field):
    with pytest.raises(ValueError, match=f"{field}.*'bogus'"):
        diffusion.GaussianDiffusion.create(np.full(10, 0.1), **{field: "bogus"})


@pytest.mark.parametrize("betas", [np.zeros(3), np.array([0.1, 1.5]), np.ones((2, 2)) * 0.1])
def test_bad_betas_raise(betas):
    with pytest.raises(ValueError, match="betas"):
        diffusion.GaussianDiffusion.create(betas)


# Continuous data x0 ~ N(m, s^2) per dimension has an exact Gaussian reverse process:
# x0 | x_t ~ N(m + a s^2 / V (x_t - a m), s^2 (1 - abar) / V) with a = sqrt(abar),
# V = abar s^2 + 1 - abar, and p(x_{t-1} | x_t) = N(posterior mean at E[x0 | x_t],
# posterior_variance + coef1^2 Var[x0 | x_t]).
_DATA_MEAN, _DATA_STD, _LEVELS, _T = 0.2, 0.3, 256, 1000


def _exact_gaussian_model(betas: np.ndarray):
    """Returns (model_fn with var_type="learned" channels, float64 Var[x0 | x_t] [T])."""
    ref = _process64(betas)
    abar = ref["alphas_cumprod"]
    marginal_var = abar * _DATA_STD**2 + 1 - abar
    x0_var = _DATA_STD**2 * (1 - abar) / marginal_var
    reverse_log_var = np.log(ref["posterior_variance"] + ref["coef1"] ** 2 * x0_var)
    gain = np.sqrt(abar) * _DATA_STD**2 / marginal_var
    consts = {
        k: jnp.float32(v) for k, v in dict(abar=abar, gain=gain, logv=reverse_log_var).items()
    }

    def model_fn(x_t, timesteps):  # [B, H, W, C], [B] -> [B, H, W, 2C]
        col = lambda v: v[timesteps][:, None, None, None]
        sqrt_abar = jnp.sqrt(col(consts["abar"]))
        x0_mean = _DATA_MEAN + col(consts["gain"]) * (x_t - sqrt_abar * _DATA_MEAN)
        eps = (x_t - sqrt_abar * x0_mean) / jnp.sqrt(1 - col(consts["abar"]))
        log_var = jnp.broadcast_to(col(consts["logv"]), x_t.shape)
        return jnp.concatenate([eps, log_var], axis=-1)

    return model_fn, x0_var


@pytest.fixture(scope="module")
def gaussian_bound():
    """calc_bpd of the exact reverse model on 256-level discretized Gaussian data."""
    betas = schedules.get_named_beta_schedule("linear", _T)
    d = diffusion.GaussianDiffusion.create(betas, var_type="learned", loss_type="hybrid")
    model_fn, x0_var = _exact_gaussian_model(betas)
    rng = np.random.default_rng(7)
    levels = np.round((rng.normal(_DATA_MEAN, _DATA_STD, (64, 8, 8, 4)) + 1) / 2 * (_LEVELS - 1))
    levels = np.clip(levels, 0, _LEVELS - 1)
    x0 = levels / (_LEVELS - 1) * 2 - 1
    # True NLL of each bin: outer bins are open-ended, half-width 1 / (L - 1).
    half = 1 / (_LEVELS - 1)
    lower = np.where(levels == 0, -np.inf, x0 - half)
    upper = np.where(levels == _LEVELS - 1, np.inf, x0 + half)
    bin_prob = norm.cdf((upper - _DATA_MEAN) / _DATA_STD) - norm.cdf(
        (lower - _DATA_MEAN) / _DATA_STD
    )
    true_nll_bpd = -np.log2(bin_prob).mean(axis=(1, 2, 3))  # [B]
    bpd_fn = jax.jit(lambda x, key: diffusion.calc_bpd(d, model_fn, x, key, clip_denoised=False))
    out = jax.device_get(bpd_fn(jnp.float32(x0), jax.random.PRNGKey(0)))
    return dict(out=out, true_nll_bpd=true_nll_bpd, x0_var=x0_var, betas=betas)


def test_bound_of_exact_reverse_model_matches_true_discrete_nll(gaussian_bound):
    out, true_nll = gaussian_bound["out"], gaussian_bound["true_nll_bpd"]
    chex.assert_shape(out["total_bpd"], (64,))
    chex.assert_tree_all_finite(out)
    # The bound can only be looser than the NLL; its gap here (dequantization at t=0, prior) is
    # ~1e-3 bits/dim, and the one-sample Monte Carlo noise of the mean is ~0.01 bits/dim.
    gap = float(np.mean(out["total_bpd"] - true_nll))
    assert -0.03 < gap < 0.05, (gap, float(np.mean(true_nll)))
    np.testing.assert_allclose(out["total_bpd"], out["vb"].sum(1) + out["prior_bpd"], rtol=1e-5)
    assert float(np.max(out["prior_bpd"])) < 1e-4


def test_bound_terms_of_exact_reverse_model_match_closed_form(gaussian_bound):
    out, x0_var, betas = gaussian_bound["out"], gaussian_bound["x0_var"], gaussian_bound["betas"]
    ref = _process64(betas)
    abar = ref["alphas_cumprod"]
    t = np.array([1, 2, 10, 100, 500])
    # E[KL(q(x_{t-1}|x_t,x0) || p)] = 0.5 log(1 + coef1^2 Var[x0|x_t] / posterior_variance) for
    # the exact reverse model (the squared-error part cancels the variance ratio in expectation).
    ratio = ref["coef1"][t] ** 2 * x0_var[t] / ref["posterior_variance"][t]
    expected_kl_bits = 0.5 * np.log1p(ratio) / math.log(2)
    np.testing.assert_allclose(out["vb"].mean(0)[t], expected_kl_bits, rtol=0.05)
    # Column t is timestep t: E[(pred_x0 - x0)^2] = Var[x0 | x_t] and
    # E[(eps_hat - eps)^2] = abar / (1 - abar) Var[x0 | x_t].
    t = np.array([0, 1, 10, 100, 500, 999])
    np.testing.assert_allclose(out["xstart_mse"].mean(0)[t], x0_var[t], rtol=0.1)
    eps_var = abar[t] / (1 - abar[t]) * x0_var[t]
    np.testing.assert_allclose(out["mse"].mean(0)[t], eps_var, rtol=0.1)


def _toy_model(learn_sigma: bool):
    """Returns model_fn(params, x_t, timesteps) whose mean and variance channels have own params."""

    def model_fn(params, x_t, timesteps):
        mean = params["mean"] * x_t + 1e-3 * timesteps[:, None, None, None]
        if not learn_sigma:
            return mean
        return jnp.concatenate([mean, jnp.tanh(params["var"] * x_t)], axis=-1)

    return model_fn


_PARAMS = {"mean": jnp.float32(0.3), "var": jnp.float32(0.5)}


@pytest.mark.parametrize(
    "mean_type, var_type, loss_type",
    [
        ("eps", "fixed_large", "mse"),
        ("x0", "fixed_small", "mse"),
        ("v", "learned_range", "hybrid"),
        ("eps", "learned_range", "mse"),
        ("eps", "learned", "kl"),
        ("eps", "fixed_large", "rescaled_kl"),
    ],
)
def test_training_losses_follow_the_documented_objective(mean_type, var_type, loss_type):
    betas = schedules.get_named_beta_schedule("cosine", 20)
    d = diffusion.GaussianDiffusion.create(betas, mean_type, var_type, loss_type)
    rng = np.random.default_rng(8)
    x0 = jnp.float32(rng.uniform(-1, 1, _x_shape(4)))
    noise = jnp.float32(rng.normal(size=_x_shape(4)))
    t = jnp.array([0, 3, 11, 19], jnp.int32)
    model_fn = functools.partial(_toy_model(d.learn_sigma), _PARAMS)
    terms = jax.jit(lambda x0, noise: diffusion.training_losses(d, model_fn, x0, t, noise))(
        x0, noise
    )
    for key in ("loss", "mse", "vb"):
        chex.assert_shape(terms[key], (4,))
    chex.assert_tree_all_finite(terms)

    abar = _process64(betas)["alphas_cumprod"][np.asarray(t)][:, None, None, None]
    x_t = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * noise
    output = model_fn(jnp.float32(x_t), t)
    target = {
        "eps": noise,
        "x0": x0,
        "v": np.sqrt(abar) * noise - np.sqrt(1 - abar) * x0,
    }[mean_type]
    mean_output = np.asarray(output)[..., :3]
    np.testing.assert_allclose(terms["mse"], ((target - mean_output) ** 2).mean((1, 2, 3)), 1e-4)

    vb = jax.jit(diffusion.vb_terms_bpd)(d, output, x0, jnp.float32(x_t), t)["vb"]
    scale = {"mse": 1.0, "rescaled_mse": 20 / 1000, "kl": 1.0, "rescaled_kl": 20.0}[d.loss_type]
    if d.loss_type in ("kl", "rescaled_kl"):
        np.testing.assert_allclose(terms["loss"], scale * vb, rtol=1e-4)
    elif d.learn_sigma:
        np.testing.assert_allclose(terms["vb"], scale * vb, rtol=1e-4)
        np.testing.assert_allclose(terms["loss"], terms["mse"] + terms["vb"], rtol=1e-5)
    else:
        np.testing.assert_allclose(terms["loss"], terms["mse"], rtol=1e-6)
        np.testing.assert_array_equal(terms["vb"], np.zeros(4))


def test_hybrid_loss_trains_the_mean_by_mse_only():
    betas = schedules.get_named_beta_schedule("cosine", 20)
    d = diffusion.GaussianDiffusion.create(betas, var_type="learned_range", loss_type="hybrid")
    rng = np.random.default_rng(9)
    x0 = jnp.float32(rng.uniform(-1, 1, _x_shape(4)))
    noise = jnp.float32(rng.normal(size=_x_shape(4)))
    t = jnp.array([0, 5, 12, 19], jnp.int32)
    model = _toy_model(learn_sigma=True)

    def loss(params, key):
        terms = diffusion.training_losses(d, functools.partial(model, params), x0, t, noise)
        return jnp.mean(terms[key])

    grad_fn = jax.jit(jax.grad(loss), static_argnums=1)
    grad_loss, grad_mse, grad_vb = (grad_fn(_PARAMS, k) for k in ("loss", "mse", "vb"))
    np.testing.assert_allclose(grad_loss["mean"], grad_mse["mean"], rtol=1e-5)
    assert float(grad_vb["mean"]) == 0.0
    assert abs(float(grad_vb["var"])) > 1e-6
    np.testing.assert_allclose(grad_loss["var"], grad_vb["var"], rtol=1e-5)


def test_training_losses_call_the_model_with_original_timesteps():
    betas = schedules.get_named_beta_schedule("linear", 100)
    kept = sorted(schedules.space_timesteps(100, "ddim10"))
    d = diffusion.GaussianDiffusion.create(betas).respace(kept)
    noise = jnp.float32(np.random.default_rng(10).normal(size=_x_shape(3)))
    t = jnp.array([0, 4, 9], jnp.int32)
    model_fn = lambda x_t, ts: jnp.broadcast_to(ts[:, None, None, None] / 100.0, x_t.shape)
    terms = jax.jit(lambda n: diffusion.training_losses(d, model_fn, jnp.zeros_like(n), t, n))(
        noise
    )
    expected_ts = np.asarray(kept)[np.asarray(t)][:, None, None, None] / 100.0
    np.testing.assert_allclose(terms["mse"], ((noise - expected_ts) ** 2).mean((1, 2, 3)), 1e-5)


def test_calc_bpd_compiles_once_and_returns_per_timestep_terms():
    betas = schedules.get_named_beta_schedule("cosine", 12)
    d = diffusion.GaussianDiffusion.create(betas, var_type="learned_range", loss_type="hybrid")
    model_fn = functools.partial(_toy_model(learn_sigma=True), _PARAMS)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def bpd(x0, key):
        return diffusion.calc_bpd(d, model_fn, x0, key)

    x0 = jnp.float32(np.random.default_rng(11).uniform(-1, 1, _x_shape(5)))
    out = bpd(x0, jax.random.PRNGKey(0))
    out2 = bpd(x0, jax.random.PRNGKey(1))
    for key in ("vb", "xstart_mse", "mse"):
        chex.assert_shape(out[key], (5, 12))
    chex.assert_shape([out["total_bpd"], out["prior_bpd"]], (5,))
    chex.assert_tree_all_finite(out)
    assert not np.allclose(out["total_bpd"], out2["total_bpd"])  # the key drives the noise
    np.testing.assert_allclose(out["total_bpd"], out["vb"].sum(1) + out["prior_bpd"], rtol=1e-5)
    np.testing.assert_allclose(out["prior_bpd"], diffusion.prior_bpd(d, x0), atol=1e-7)


def test_continuous_bound_of_exact_reverse_model_matches_the_true_density():
    """num_levels=0 (latents): the bound ends in a Gaussian density and bounds -log2 of the data
    density per dimension (about the differential entropy, 0.5 log2(2 pi e sigma^2))."""
    betas = schedules.get_named_beta_schedule("linear", _T)
    d = diffusion.GaussianDiffusion.create(betas, var_type="learned", loss_type="hybrid")
    model_fn, _ = _exact_gaussian_model(betas)
    x0 = np.random.default_rng(8).normal(_DATA_MEAN, _DATA_STD, (16, 4, 4, 4))
    bpd_fn = jax.jit(
        lambda x, key: diffusion.calc_bpd(d, model_fn, x, key, clip_denoised=False, num_levels=0)
    )
    out = jax.device_get(bpd_fn(jnp.float32(x0), jax.random.PRNGKey(0)))
    true_bpd = -norm.logpdf(x0, _DATA_MEAN, _DATA_STD).mean(axis=(1, 2, 3)) / math.log(2.0)
    entropy = 0.5 * math.log2(2 * math.pi * math.e * _DATA_STD**2)
    assert abs(float(np.mean(true_bpd)) - entropy) < 0.1
    gap = float(np.mean(out["total_bpd"] - true_bpd))
    assert -0.03 < gap < 0.05, (gap, float(np.mean(true_bpd)))
    # The t = 0 term is a density of a narrow Gaussian: a negative NLL, which no discretized
    # decoder (a probability) could give.
    assert float(np.max(out["vb"][:, 0])) < 0
