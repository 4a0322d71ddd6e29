"""Continuous-time Gaussian diffusion: VDM's bound and training losses, schedules, sampling grids.

The process is z_t = alpha_t x0 + sigma_t eps for t in [0, 1], variance preserving, specified by
gamma(t) = -log SNR(t) = log(sigma_t^2 / alpha_t^2), increasing in t (Kingma et al. 2021, VDM):
alpha_t^2 = sigmoid(-gamma(t)) and sigma_t^2 = sigmoid(gamma(t)). A schedule is a pure elementwise
function gamma_fn(t [B]) -> [B]; its derivative gamma'(t) comes from jax.jvp.

The network is called as model_fn(z_t [B, H, W, C], model_t [B] float32) with
model_t = model_time_scale * (gamma(t) - gamma_lo) / (gamma_hi - gamma_lo) for a fixed
conditioning range (gamma_lo, gamma_hi): like VDM, the network sees the normalised log-SNR times
1000 (the U-Net's sinusoidal embedding multiplies its input, so [0, 1] would use only its lowest
frequencies). For "linear_gamma" with its default ends this is 1000 t. Conditioning on gamma rather
than t makes the continuous bound independent of the schedule's interior (VDM's invariance
result), which the learned schedule's variance-minimising gradient relies on. Use the same range
everywhere (train, bound, sampling grid, ODE): `conditioning_range` gives it for a named schedule.

Training (the train step, the learned schedule's gradients, initialisation) is
`diffax.tasks.continuous`.

Bits/dim everywhere are per example [B]: nats / (D ln 2), D = H W C. Data lie on num_levels values
in [-1, 1] as in `diffax.diffusion`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffax import solvers
from diffax.diffusion import MEAN_TYPES, ModelFn
from diffax.distributions import mean_flat, normal_kl

GammaFn = Callable[[jax.Array], jax.Array]

GAMMA_MIN = -13.3  # VDM's gamma(0): sigma_0 / alpha_0 = exp(-6.65) ~ 1.3e-3.
GAMMA_MAX = 5.0  # VDM's gamma(1): alpha_1^2 = sigmoid(-5) ~ 6.7e-3.
VP_BETA_MIN, VP_BETA_MAX = 0.1, 20.0  # Song et al. 2021 VP-SDE.
VP_T_MIN = 1e-5  # Song et al.'s smallest time for likelihoods; VP's gamma(0) is -inf otherwise.
FIXED_SCHEDULES = ("linear_gamma", "vp_linear", "cosine")
SCHEDULES = (*FIXED_SCHEDULES, "learned")
WEIGHTINGS = ("elbo", "simple", "min_snr", "v")
MODEL_TIME_SCALE = 1000.0
_LOG2 = math.log(2.0)


# ------------------------------------------------------------------------------------- schedules


def linear_gamma(
    t: jax.Array, gamma_min: float = GAMMA_MIN, gamma_max: float = GAMMA_MAX
) -> jax.Array:
    """Returns VDM's baseline gamma(t) = gamma_min + (gamma_max - gamma_min) t, elementwise."""
    return gamma_min + (gamma_max - gamma_min) * jnp.asarray(t, jnp.float32)


def vp_linear_gamma(
    t: jax.Array,
    beta_min: float = VP_BETA_MIN,
    beta_max: float = VP_BETA_MAX,
    t_min: float = VP_T_MIN,
) -> jax.Array:
    """Returns the VP-SDE's gamma(t) = log(expm1(B(s))), B(s) = int_0^s beta, beta linear.

    B(s) = beta_min s + (beta_max - beta_min) s^2 / 2. Song et al. 2021 eq. 11 / app. B: the VP-SDE
    dx = -beta(s)/2 x ds + sqrt(beta(s)) dw has alpha^2 = exp(-B(s)), sigma^2 = 1 - exp(-B(s)), so
    SNR = 1 / (e^B - 1) and -log SNR = log(e^B - 1); then gamma' = beta / sigma^2. Time
    s = t_min + (1 - t_min) t keeps gamma(0) finite (about -13.8); gamma'(0) is then ~1e5, which
    makes the bound's time samples near t = 0 noisy (the VP-SDE's known likelihood-weighting cost).
    """
    s = t_min + (1.0 - t_min) * jnp.asarray(t, jnp.float32)
    integral = beta_min * s + 0.5 * (beta_max - beta_min) * s**2
    return jnp.log(jnp.expm1(integral))


def cosine_gamma(
    t: jax.Array, gamma_min: float = GAMMA_MIN, gamma_max: float = GAMMA_MAX
) -> jax.Array:
    """Returns the cosine schedule gamma(t) = 2 log tan(theta(t)), within [gamma_min, gamma_max].

    Nichol & Dhariwal 2021 eq. 17 in continuous time: alpha_bar = cos^2(theta) with theta growing
    linearly, i.e. SNR = cot^2(theta), -log SNR = 2 log tan(theta). Its ends are -inf and +inf
    (N&D keep them finite with the offset s and a clip of beta at 0.999); here theta runs linearly
    between the angles of gamma_min and gamma_max (theta = arctan(exp(gamma / 2))), the truncation
    of Hoogeboom et al. 2023 (simple diffusion), so gamma(0) and gamma(1) are exactly the ends.
    """
    theta_min = math.atan(math.exp(gamma_min / 2.0))
    theta_max = math.atan(math.exp(gamma_max / 2.0))
    theta = theta_min + (theta_max - theta_min) * jnp.asarray(t, jnp.float32)
    return 2.0 * jnp.log(jnp.tan(theta))


def get_gamma_fn(name: str, gamma_min: float = GAMMA_MIN, gamma_max: float = GAMMA_MAX) -> GammaFn:
    """Returns the fixed schedule `name` (FIXED_SCHEDULES); vp_linear ignores gamma_min/max."""
    if name == "linear_gamma":
        return lambda t: linear_gamma(t, gamma_min, gamma_max)
    if name == "vp_linear":
        return vp_linear_gamma
    if name == "cosine":
        return lambda t: cosine_gamma(t, gamma_min, gamma_max)
    raise ValueError(
        f"diffusion.gamma_schedule={name!r} is not a fixed schedule: one of "
        f'{", ".join(FIXED_SCHEDULES)} ("learned" is diffax.models.noise_schedule).'
    )


def conditioning_range(
    name: str, gamma_min: float = GAMMA_MIN, gamma_max: float = GAMMA_MAX
) -> tuple[float, float]:
    """Returns the fixed (gamma_lo, gamma_hi) the model's time input is normalised by.

    A fixed schedule's own gamma(0), gamma(1) (so model_t spans [0, 1000]); for "learned" the
    initial ends gamma_min, gamma_max (constants, so moving the interior leaves the model's input
    a function of gamma alone).
    """
    if name == "learned":
        return float(gamma_min), float(gamma_max)
    ends = np.asarray(get_gamma_fn(name, gamma_min, gamma_max)(jnp.array([0.0, 1.0])))
    return float(ends[0]), float(ends[1])


def gamma_and_derivative(gamma_fn: GammaFn, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns (gamma(t), gamma'(t)), each like t, by forward mode (gamma_fn elementwise)."""
    t = jnp.asarray(t, jnp.float32)
    return jax.jvp(gamma_fn, (t,), (jnp.ones_like(t),))


def alpha_sigma(gamma: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns (alpha, sigma) = (sqrt(sigmoid(-gamma)), sqrt(sigmoid(gamma)))."""
    return jnp.sqrt(jax.nn.sigmoid(-gamma)), jnp.sqrt(jax.nn.sigmoid(gamma))


def model_time(
    gamma: jax.Array,
    gamma_range: tuple[float, float] = (GAMMA_MIN, GAMMA_MAX),
    model_time_scale: float = MODEL_TIME_SCALE,
) -> jax.Array:
    """Returns the network's float32 time input scale * (gamma - lo) / (hi - lo), like gamma."""
    lo, hi = gamma_range
    return (model_time_scale * (gamma - lo) / (hi - lo)).astype(jnp.float32)


def low_discrepancy_t(key: jax.Array, batch: int) -> jax.Array:
    """Returns t [batch] = (u0 + i / batch) mod 1, u0 ~ U[0, 1): VDM's low-discrepancy sampler.

    Each t is uniform on [0, 1); the batch covers [0, 1) evenly, which lowers the variance of the
    batch-mean bound (VDM appendix, "antithetic" / low-discrepancy time sampling).
    """
    u0 = jax.random.uniform(key, (), jnp.float32)
    return jnp.mod(u0 + jnp.arange(batch, dtype=jnp.float32) / batch, 1.0)


# ------------------------------------------------------------------------ parametrisations


def _bcast(v: jax.Array, x: jax.Array) -> jax.Array:
    """Returns v [B] (or scalar) reshaped to broadcast against x [B, ...]."""
    v = jnp.asarray(v)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def predict_eps(
    output: jax.Array, z: jax.Array, alpha: jax.Array, sigma: jax.Array, mean_type: str
) -> jax.Array:
    """Returns eps_hat from a model output that predicts eps, x0 or v (alpha, sigma like z).

    v = alpha eps - sigma x0 (Salimans & Ho 2022), so eps = sigma z + alpha v for VP processes.
    """
    if mean_type == "eps":
        return output
    if mean_type == "x0":
        return (z - alpha * output) / sigma
    if mean_type == "v":
        return sigma * z + alpha * output
    raise ValueError(f"diffusion.mean_type={mean_type!r} is not one of {', '.join(MEAN_TYPES)}.")


def v_target(x0: jax.Array, noise: jax.Array, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
    """Returns v = alpha eps - sigma x0 (Salimans & Ho 2022 sec. 4)."""
    return alpha * noise - sigma * x0


# ------------------------------------------------------------------------------------ weightings
# Each returns w [B] with loss = w * mean_dims((eps - eps_hat)^2); gamma = -log SNR [B].


def elbo_weight(gamma: jax.Array, dgamma: jax.Array) -> jax.Array:
    """Returns gamma'(t) / (2 ln 2): w * eps-MSE is VDM's continuous diffusion loss in bits/dim.

    VDM eq. 17: L_inf = 1/2 E_t[gamma'(t) ||eps - eps_hat||^2] (nats, summed over dimensions).
    """
    del gamma
    return 0.5 * dgamma / _LOG2


def simple_weight(gamma: jax.Array, dgamma: jax.Array) -> jax.Array:
    """Returns 1: the eps-MSE, Ho et al. 2020's L_simple (eq. 14) at uniform t."""
    del dgamma
    return jnp.ones_like(gamma)


def min_snr_weight(gamma: jax.Array, dgamma: jax.Array, snr_gamma: float = 5.0) -> jax.Array:
    """Returns min(SNR, k) / SNR = min(1, k e^gamma): Hang et al. 2023's Min-SNR-k on eps.

    Their x0-loss weight min(SNR, k) moved onto the eps-MSE (||x0 - x0_hat||^2 = ||eps -
    eps_hat||^2 / SNR); k = inf (or any k above the largest SNR) gives the simple loss.
    """
    del dgamma
    return jnp.minimum(1.0, snr_gamma * jnp.exp(gamma))


def v_weight(gamma: jax.Array, dgamma: jax.Array) -> jax.Array:
    """Returns (1 + SNR) / SNR = 1 + e^gamma: w * eps-MSE is the v-MSE ||v - v_hat||^2.

    eps - eps_hat = alpha (v - v_hat), and 1 / alpha^2 = (1 + SNR) / SNR (Salimans & Ho 2022:
    the v loss is the x0-MSE weighted by SNR + 1).
    """
    del dgamma
    return 1.0 + jnp.exp(gamma)


def loss_weight(
    weighting: str, gamma: jax.Array, dgamma: jax.Array, min_snr_gamma: float = 5.0
) -> jax.Array:
    """Returns the weight [B] of WEIGHTINGS' `weighting` on the eps-MSE."""
    if weighting == "elbo":
        return elbo_weight(gamma, dgamma)
    if weighting == "simple":
        return simple_weight(gamma, dgamma)
    if weighting == "min_snr":
        return min_snr_weight(gamma, dgamma, min_snr_gamma)
    if weighting == "v":
        return v_weight(gamma, dgamma)
    raise ValueError(f"diffusion.weighting={weighting!r} is not one of {', '.join(WEIGHTINGS)}.")


# -------------------------------------------------------------------------------- the bound


def prior_bpd(gamma_1: jax.Array, x0: jax.Array) -> jax.Array:
    """Returns KL(q(z_1 | x0) || N(0, I)) per example [B] in bits/dim (gamma_1 scalar or [B])."""
    gamma_1 = _bcast(gamma_1, x0)
    alpha_1 = jnp.sqrt(jax.nn.sigmoid(-gamma_1))
    kl = normal_kl(alpha_1 * x0, jax.nn.log_sigmoid(gamma_1), 0.0, 0.0)
    return mean_flat(jnp.broadcast_to(kl, x0.shape)) / _LOG2


def reconstruction_bpd(
    gamma_0: jax.Array, x0: jax.Array, noise: jax.Array, num_levels: int
) -> jax.Array:
    """Returns -log p(x0 | z_0) per example [B] in bits/dim, z_0 = alpha_0 x0 + sigma_0 noise.

    VDM's exact discrete decoder (Kingma et al. 2021, sec. 3.3 and appendix; the released code's
    softmax over the bins' `logits`): each dimension's p(x_i = v_k | z_0,i) is proportional to
    q(z_0,i | x_i = v_k) over the num_levels values v_k evenly spaced in [-1, 1], a softmax of
    -(z_0 / alpha_0 - v_k)^2 / (2 (sigma_0 / alpha_0)^2). Its cost is [..., num_levels] logits.
    """
    gamma_0 = _bcast(gamma_0, x0)
    scale = jnp.exp(0.5 * gamma_0)  # sigma_0 / alpha_0
    z_over_alpha = x0 + scale * noise  # z_0 / alpha_0
    values = jnp.linspace(-1.0, 1.0, num_levels, dtype=x0.dtype)
    logits = -0.5 * jnp.square((z_over_alpha[..., None] - values) / scale[..., None])
    index = jnp.round((x0 + 1.0) * (num_levels - 1) / 2.0).astype(jnp.int32)
    log_likelihood = jnp.take_along_axis(
        jax.nn.log_softmax(logits, axis=-1), index[..., None], axis=-1
    )[..., 0]
    return -mean_flat(log_likelihood) / _LOG2


def _eps_error(
    model_fn: ModelFn,
    x0: jax.Array,
    noise: jax.Array,
    gamma_t: jax.Array,
    mean_type: str,
    gamma_range: tuple[float, float],
    model_time_scale: float,
) -> dict[str, jax.Array]:
    """Returns {"mse": mean_dims (eps - eps_hat)^2 [B], "eps_hat", "z_t"} at gamma_t [B]."""
    alpha, sigma = alpha_sigma(_bcast(gamma_t, x0))
    z_t = alpha * x0 + sigma * noise
    output = model_fn(z_t, model_time(gamma_t, gamma_range, model_time_scale))
    eps_hat = predict_eps(output[..., : x0.shape[-1]], z_t, alpha, sigma, mean_type)
    return {"mse": mean_flat(jnp.square(noise - eps_hat)), "eps_hat": eps_hat, "z_t": z_t}


def bound_terms(
    model_fn: ModelFn,
    x0: jax.Array,
    noise: jax.Array,
    gamma_t: jax.Array,
    dgamma_t: jax.Array,
    gamma_0: jax.Array,
    gamma_1: jax.Array,
    num_levels: int,
    *,
    mean_type: str = "eps",
    gamma_range: tuple[float, float] = (GAMMA_MIN, GAMMA_MAX),
    model_time_scale: float = MODEL_TIME_SCALE,
) -> dict[str, jax.Array]:
    """Returns VDM's continuous bound terms [B] in bits/dim from gamma values (not gamma_fn).

    The form `train_step` differentiates with respect to gamma_t, dgamma_t [B] and the scalar ends;
    keys as `vdm_loss`.
    """
    err = _eps_error(model_fn, x0, noise, gamma_t, mean_type, gamma_range, model_time_scale)
    diffusion = elbo_weight(gamma_t, dgamma_t) * err["mse"]
    prior = prior_bpd(gamma_1, x0)
    recon = reconstruction_bpd(gamma_0, x0, noise, num_levels)
    return {
        "prior_bpd": prior,
        "recon_bpd": recon,
        "diffusion_bpd": diffusion,
        "total_bpd": prior + recon + diffusion,
        "mse": err["mse"],
    }


def vdm_loss(
    gamma_fn: GammaFn,
    model_fn: ModelFn,
    x0: jax.Array,
    t: jax.Array,
    noise: jax.Array,
    num_levels: int,
    *,
    num_timesteps: int = 0,
    mean_type: str = "eps",
    gamma_range: tuple[float, float] = (GAMMA_MIN, GAMMA_MAX),
    model_time_scale: float = MODEL_TIME_SCALE,
) -> dict[str, jax.Array]:
    """Returns a one-sample estimate of VDM's bound per example, in bits/dim, each [B].

    Keys: "prior_bpd" (KL to N(0, I) at t = 1, exact), "recon_bpd" (-log p(x0 | z_0) at
    z_0 = alpha_0 x0 + sigma_0 noise), "diffusion_bpd", "total_bpd" (their sum), "mse" (the
    eps-MSE at t). t [B] in [0, 1]; the same noise [B, H, W, C] draws z_t and z_0 (each term is
    unbiased on its own).

    num_timesteps = 0: the continuous-time diffusion loss 1/2 gamma'(t) ||eps - eps_hat||^2 (VDM
    eq. 17). num_timesteps = T > 0: the T-step loss (VDM eq. 15) T/2 (SNR(s) - SNR(t_i))
    ||x0 - x0_hat||^2 = T/2 expm1(gamma(t_i) - gamma(s)) ||eps - eps_hat||^2 with
    i = floor(t T) + 1, t_i = i / T, s = (i - 1) / T; it decreases towards the continuous loss
    as T doubles (VDM's "more steps, lower loss" result) for the same network.
    """
    t = jnp.asarray(t, jnp.float32)
    batch = jnp.ones((x0.shape[0],), jnp.float32)
    gamma_0, gamma_1 = gamma_fn(0.0 * batch), gamma_fn(batch)
    kw = dict(mean_type=mean_type, gamma_range=gamma_range, model_time_scale=model_time_scale)
    if num_timesteps <= 0:
        gamma_t, dgamma_t = gamma_and_derivative(gamma_fn, t)
        return bound_terms(
            model_fn, x0, noise, gamma_t, dgamma_t, gamma_0, gamma_1, num_levels, **kw
        )
    step = jnp.clip(jnp.floor(t * num_timesteps) + 1.0, 1.0, num_timesteps)
    gamma_t = gamma_fn(step / num_timesteps)
    gamma_s = gamma_fn((step - 1.0) / num_timesteps)
    err = _eps_error(model_fn, x0, noise, gamma_t, **kw)
    diffusion = 0.5 * num_timesteps * jnp.expm1(gamma_t - gamma_s) * err["mse"] / _LOG2
    prior = prior_bpd(gamma_1, x0)
    recon = reconstruction_bpd(gamma_0, x0, noise, num_levels)
    return {
        "prior_bpd": prior,
        "recon_bpd": recon,
        "diffusion_bpd": diffusion,
        "total_bpd": prior + recon + diffusion,
        "mse": err["mse"],
    }


def training_losses(
    gamma_fn: GammaFn,
    model_fn: ModelFn,
    x0: jax.Array,
    t: jax.Array,
    noise: jax.Array,
    num_levels: int,
    *,
    weighting: str = "elbo",
    min_snr_gamma: float = 5.0,
    mean_type: str = "eps",
    gamma_range: tuple[float, float] = (GAMMA_MIN, GAMMA_MAX),
    model_time_scale: float = MODEL_TIME_SCALE,
) -> dict[str, jax.Array]:
    """Returns {"loss", "mse", "vb", + vdm_loss's terms}, each [B]; "vb" is the bound (bits/dim).

    "elbo": loss = the bound itself (VDM); "simple" / "min_snr" / "v": loss = w(gamma(t)) times the
    eps-MSE (mean over dimensions) with the weighting functions above; the bound is then only
    reported. The model output is read as mean_type ("eps", "x0" or "v") and converted to eps.
    """
    t = jnp.asarray(t, jnp.float32)
    kw = dict(mean_type=mean_type, gamma_range=gamma_range, model_time_scale=model_time_scale)
    terms = vdm_loss(gamma_fn, model_fn, x0, t, noise, num_levels, **kw)
    if weighting == "elbo":
        loss = terms["total_bpd"]
    else:
        gamma_t, dgamma_t = gamma_and_derivative(gamma_fn, t)
        loss = loss_weight(weighting, gamma_t, dgamma_t, min_snr_gamma) * terms["mse"]
    return {**terms, "loss": loss, "vb": terms["total_bpd"]}


def bound_bpd(
    gamma_fn: GammaFn,
    model_fn: ModelFn,
    x0: jax.Array,
    key: jax.Array,
    num_t_samples: int,
    num_levels: int = 256,
    *,
    mean_type: str = "eps",
    gamma_range: tuple[float, float] = (GAMMA_MIN, GAMMA_MAX),
    model_time_scale: float = MODEL_TIME_SCALE,
) -> dict[str, jax.Array]:
    """Returns the continuous bound per example in bits/dim, averaged over num_t_samples draws.

    Keys "total_bpd", "prior_bpd", "recon_bpd", "diffusion_bpd", each [B]. Each example gets the
    low-discrepancy times (u_b + k / K) mod 1, k < K = num_t_samples, and fresh noise for each k;
    a lax.scan keeps one [B, H, W, C] evaluation in memory at a time.
    """
    u_key, noise_key = jax.random.split(key)
    u0 = jax.random.uniform(u_key, (x0.shape[0],), jnp.float32)
    kw = dict(mean_type=mean_type, gamma_range=gamma_range, model_time_scale=model_time_scale)
    names = ("total_bpd", "prior_bpd", "recon_bpd", "diffusion_bpd")

    def body(carry, k):
        t = jnp.mod(u0 + k.astype(jnp.float32) / num_t_samples, 1.0)
        noise = jax.random.normal(jax.random.fold_in(noise_key, k), x0.shape, x0.dtype)
        terms = vdm_loss(gamma_fn, model_fn, x0, t, noise, num_levels, **kw)
        return jax.tree.map(jnp.add, carry, {n: terms[n] for n in names}), None

    zeros = {n: jnp.zeros((x0.shape[0],), jnp.float32) for n in names}
    sums, _ = jax.lax.scan(body, zeros, jnp.arange(num_t_samples))
    return {n: v / num_t_samples for n, v in sums.items()}


def sampling_grid(
    gamma_fn: GammaFn,
    num_steps: int,
    model_time_scale: float = MODEL_TIME_SCALE,
    *,
    gamma_range: tuple[float, float] = (GAMMA_MIN, GAMMA_MAX),
) -> solvers.NoiseGrid:
    """Returns the `solvers.NoiseGrid` at t = 1, 1 - 1/N, ..., 1/N, then the clean end.

    Every `diffax.solvers` sampler runs on it (`solvers.denoiser(model_fn, grid, mean_type,
    learn_sigma=False)`); the clean end (alpha 1, sigma 0) stands for t = 0, whose
    sigma_0 / alpha_0 = exp(gamma(0) / 2) is below a bin for VDM's ends. model_t is the float32
    `model_time` of each point.
    """
    if num_steps < 1:
        raise ValueError(f"eval.sample_steps={num_steps} must be at least 1.")
    t = 1.0 - jnp.arange(num_steps, dtype=jnp.float32) / num_steps
    gamma = gamma_fn(t)
    alpha, sigma = alpha_sigma(gamma)
    return solvers.grid_from_alpha_sigma(
        alpha, sigma, model_time(gamma, gamma_range, model_time_scale)
    )
