"""GaussianDiffusion pytree and pure functions: forward process, posterior, p_mean_variance,
variational bound, training losses and bits/dim (Ho et al. 2020; Nichol & Dhariwal 2021).

Arrays are channels-last [B, H, W, C]; timesteps t are int32 [B] indices 0..T-1 into the
process arrays (t=0 is the least noisy latent); a learned-variance model outputs 2C channels,
mean part first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import flax.struct as struct
import jax
import jax.numpy as jnp
import numpy as np

from diffax.distributions import (
    discretized_gaussian_log_likelihood,
    gaussian_log_likelihood,
    mean_flat,
    normal_kl,
)

MEAN_TYPES = ("eps", "x0", "v")
VAR_TYPES = ("fixed_small", "fixed_large", "learned", "learned_range")
LEARNED_VAR_TYPES = ("learned", "learned_range")  # The model outputs 2C channels.
LOSS_TYPES = ("mse", "rescaled_mse", "kl", "rescaled_kl")
LOSS_ALIASES = {"simple": "mse", "hybrid": "rescaled_mse", "vlb": "rescaled_kl"}

# The one signature every diffusion function calls a network with: (x_t [B, H, W, C], timesteps [B])
# -> [B, H, W, C or 2C]; conditioning (labels, context) is closed over (diffax.models.model_fn).
ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


def _check_choice(field: str, value: str, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"Unknown {field} {value!r}; allowed values are {', '.join(allowed)}.")


def _process_arrays(betas: np.ndarray) -> dict[str, np.ndarray]:
    """Returns every per-timestep float64 coefficient of the process with these betas [T]."""
    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    alphas_cumprod_next = np.append(alphas_cumprod[1:], 0.0)
    # Ho et al. eq. 7: variance and mean coefficients of q(x_{t-1} | x_t, x_0).
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    # posterior_variance[0] is 0; its log is replaced by the t=1 value so the decoder variance
    # stays finite (improved-diffusion). With a single step, fall back to beta_0.
    first = posterior_variance[1] if len(betas) > 1 else betas[0]
    posterior_log_variance_clipped = np.log(np.append(first, posterior_variance[1:]))
    return dict(
        betas=betas,
        alphas_cumprod=alphas_cumprod,
        alphas_cumprod_prev=alphas_cumprod_prev,
        alphas_cumprod_next=alphas_cumprod_next,
        sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
        log_one_minus_alphas_cumprod=np.log(1.0 - alphas_cumprod),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod - 1.0),
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=posterior_log_variance_clipped,
        log_betas=np.log(betas),
        # fixed_large: beta_t, with the t=0 entry set like the posterior's for a finite decoder.
        fixed_large_log_variance=np.log(np.append(first, betas[1:])),
        posterior_mean_coef1=betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
    )


@struct.dataclass
class GaussianDiffusion:
    """A discrete-time Gaussian diffusion process; arrays are [T] float32 but timestep_map int32."""

    betas: jax.Array  # [T]
    alphas_cumprod: jax.Array  # [T]
    alphas_cumprod_prev: jax.Array  # [T]
    alphas_cumprod_next: jax.Array  # [T]
    sqrt_alphas_cumprod: jax.Array  # [T]
    sqrt_one_minus_alphas_cumprod: jax.Array  # [T]
    log_one_minus_alphas_cumprod: jax.Array  # [T]
    sqrt_recip_alphas_cumprod: jax.Array  # [T]
    sqrt_recipm1_alphas_cumprod: jax.Array  # [T]
    posterior_variance: jax.Array  # [T]
    posterior_log_variance_clipped: jax.Array  # [T], t=0 entry replaced by the t=1 entry
    log_betas: jax.Array  # [T], the learned_range upper bound
    fixed_large_log_variance: jax.Array  # [T], log beta_t with the t=0 entry as above
    posterior_mean_coef1: jax.Array  # [T]
    posterior_mean_coef2: jax.Array  # [T]
    timestep_map: jax.Array  # [T] int32, original-process timestep the model is called with
    mean_type: str = struct.field(pytree_node=False)  # "eps" | "x0" | "v"
    var_type: str = struct.field(pytree_node=False)  # fixed_small|fixed_large|learned|learned_range
    loss_type: str = struct.field(pytree_node=False)  # mse | rescaled_mse | kl | rescaled_kl
    original_num_timesteps: int = struct.field(pytree_node=False)  # T before respacing

    @classmethod
    def create(
        cls,
        betas: np.ndarray | Iterable[float],
        mean_type: str = "eps",
        var_type: str = "fixed_large",
        loss_type: str = "mse",
    ) -> GaussianDiffusion:
        """Returns the process for betas [T] in (0, 1]; loss aliases simple/hybrid/vlb accepted."""
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.shape[0] < 1:
            raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}.")
        if not np.all((betas > 0.0) & (betas <= 1.0)):
            raise ValueError("betas must all lie in (0, 1].")
        loss_type = LOSS_ALIASES.get(loss_type, loss_type)
        _check_choice("mean_type", mean_type, MEAN_TYPES)
        _check_choice("var_type", var_type, VAR_TYPES)
        _check_choice("loss_type", loss_type, (*LOSS_TYPES, *LOSS_ALIASES))
        return cls._from_betas(
            betas,
            np.arange(betas.shape[0]),
            mean_type=mean_type,
            var_type=var_type,
            loss_type=loss_type,
            original_num_timesteps=betas.shape[0],
        )

    @classmethod
    def _from_betas(
        cls, betas: np.ndarray, timestep_map: np.ndarray, **static
    ) -> GaussianDiffusion:
        arrays = {k: jnp.asarray(v, dtype=jnp.float32) for k, v in _process_arrays(betas).items()}
        return cls(**arrays, timestep_map=jnp.asarray(timestep_map, dtype=jnp.int32), **static)

    @property
    def num_timesteps(self) -> int:
        """Returns T, the number of steps of this (possibly respaced) process."""
        return self.betas.shape[0]

    @property
    def learn_sigma(self) -> bool:
        """Returns whether the model outputs 2C channels (mean part, then variance part)."""
        return self.var_type in LEARNED_VAR_TYPES

    def respace(self, use_timesteps: Iterable[int]) -> GaussianDiffusion:
        """Returns the process restricted to the kept steps (indices into this process).

        Kept steps keep their alphas_cumprod; betas are rebuilt from consecutive ratios and
        timestep_map is composed with this process's map (improved-diffusion SpacedDiffusion).
        """
        kept = sorted({int(i) for i in use_timesteps})
        if not kept or kept[0] < 0 or kept[-1] >= self.num_timesteps:
            raise ValueError(
                f"use_timesteps must be a non-empty set of indices in 0..{self.num_timesteps - 1}."
            )
        # Rebuild alphas_cumprod in float64 from the stored betas: more accurate than the
        # float32 alphas_cumprod when it is small.
        alphas_cumprod = np.cumprod(1.0 - np.asarray(self.betas, dtype=np.float64))
        kept_alphas_cumprod = alphas_cumprod[kept]
        new_betas = 1.0 - kept_alphas_cumprod / np.append(1.0, kept_alphas_cumprod[:-1])
        return self._from_betas(
            new_betas,
            np.asarray(self.timestep_map)[kept],
            mean_type=self.mean_type,
            var_type=self.var_type,
            loss_type=self.loss_type,
            original_num_timesteps=self.original_num_timesteps,
        )


def extract(values: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
    """Returns values[t] reshaped to [B, 1, ..., 1] with ndim axes, to broadcast against x."""
    return values[t].reshape(t.shape + (1,) * (ndim - t.ndim))


def q_mean_variance(
    d: GaussianDiffusion, x0: jax.Array, t: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns mean, variance and log-variance of q(x_t | x0) (variances broadcast to x0)."""
    mean = extract(d.sqrt_alphas_cumprod, t, x0.ndim) * x0
    variance = jnp.broadcast_to(extract(1.0 - d.alphas_cumprod, t, x0.ndim), x0.shape)
    log_variance = jnp.broadcast_to(extract(d.log_one_minus_alphas_cumprod, t, x0.ndim), x0.shape)
    return mean, variance, log_variance


def q_sample(d: GaussianDiffusion, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """Returns x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, a sample of q(x_t | x0)."""
    return (
        extract(d.sqrt_alphas_cumprod, t, x0.ndim) * x0
        + extract(d.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise
    )


def q_posterior_mean_variance(
    d: GaussianDiffusion, x0: jax.Array, x_t: jax.Array, t: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns mean, variance and clipped log-variance of q(x_{t-1} | x_t, x0)."""
    mean = (
        extract(d.posterior_mean_coef1, t, x_t.ndim) * x0
        + extract(d.posterior_mean_coef2, t, x_t.ndim) * x_t
    )
    variance = jnp.broadcast_to(extract(d.posterior_variance, t, x_t.ndim), x_t.shape)
    log_variance = jnp.broadcast_to(
        extract(d.posterior_log_variance_clipped, t, x_t.ndim), x_t.shape
    )
    return mean, variance, log_variance


def predict_x0_from_eps(
    d: GaussianDiffusion, x_t: jax.Array, t: jax.Array, eps: jax.Array
) -> jax.Array:
    """Returns x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
    return (
        extract(d.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t
        - extract(d.sqrt_recipm1_alphas_cumprod, t, x_t.ndim) * eps
    )


def predict_eps_from_x0(
    d: GaussianDiffusion, x_t: jax.Array, t: jax.Array, x0: jax.Array
) -> jax.Array:
    """Returns eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)."""
    return (extract(d.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t - x0) / extract(
        d.sqrt_recipm1_alphas_cumprod, t, x_t.ndim
    )


def predict_x0_from_v(
    d: GaussianDiffusion, x_t: jax.Array, t: jax.Array, v: jax.Array
) -> jax.Array:
    """Returns x0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v (Salimans & Ho 2022)."""
    return (
        extract(d.sqrt_alphas_cumprod, t, x_t.ndim) * x_t
        - extract(d.sqrt_one_minus_alphas_cumprod, t, x_t.ndim) * v
    )


def v_target(d: GaussianDiffusion, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """Returns v = sqrt(abar_t) noise - sqrt(1 - abar_t) x0 (Salimans & Ho 2022)."""
    return (
        extract(d.sqrt_alphas_cumprod, t, x0.ndim) * noise
        - extract(d.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * x0
    )


def _split_output(d: GaussianDiffusion, model_output: jax.Array, x_t: jax.Array):
    """Returns (mean part, variance part or None) of a model output [B, ..., C or 2C]."""
    channels = x_t.shape[-1]
    expected = 2 * channels if d.learn_sigma else channels
    if model_output.shape[-1] != expected:
        raise ValueError(
            f"var_type {d.var_type!r} needs a model output with {expected} channels for "
            f"{channels}-channel x_t, got shape {model_output.shape}."
        )
    if d.learn_sigma:
        return model_output[..., :channels], model_output[..., channels:]
    return model_output, None


def p_mean_variance(
    d: GaussianDiffusion,
    model_output: jax.Array,
    x_t: jax.Array,
    t: jax.Array,
    clip_denoised: bool = True,
) -> dict[str, jax.Array]:
    """Returns {"mean", "variance", "log_variance", "pred_x0"} of p(x_{t-1}|x_t), each like x_t."""
    mean_output, var_output = _split_output(d, model_output, x_t)
    ndim = x_t.ndim
    if d.var_type == "learned":
        log_variance = var_output
    elif d.var_type == "learned_range":
        # Nichol & Dhariwal eq. 15: interpolate between beta_t and the posterior variance.
        min_log = extract(d.posterior_log_variance_clipped, t, ndim)
        max_log = extract(d.log_betas, t, ndim)
        frac = (var_output + 1.0) / 2.0
        log_variance = frac * max_log + (1.0 - frac) * min_log
    elif d.var_type == "fixed_large":
        log_variance = extract(d.fixed_large_log_variance, t, ndim)
    else:  # fixed_small
        log_variance = extract(d.posterior_log_variance_clipped, t, ndim)
    log_variance = jnp.broadcast_to(log_variance, x_t.shape)
    variance = jnp.exp(log_variance)

    if d.mean_type == "eps":
        pred_x0 = predict_x0_from_eps(d, x_t, t, mean_output)
    elif d.mean_type == "v":
        pred_x0 = predict_x0_from_v(d, x_t, t, mean_output)
    else:  # x0
        pred_x0 = mean_output
    if clip_denoised:
        pred_x0 = jnp.clip(pred_x0, -1.0, 1.0)
    mean, _, _ = q_posterior_mean_variance(d, pred_x0, x_t, t)
    return {"mean": mean, "variance": variance, "log_variance": log_variance, "pred_x0": pred_x0}


def vb_terms_bpd(
    d: GaussianDiffusion,
    model_output: jax.Array,
    x0: jax.Array,
    x_t: jax.Array,
    t: jax.Array,
    clip_denoised: bool = False,
    num_levels: int = 256,
) -> dict[str, jax.Array]:
    """Returns {"vb": [B] bound term at t in bits/dim, "pred_x0"}.

    The term is the decoder NLL where t == 0 and KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t))
    elsewhere, averaged over dimensions. The decoder is discretized to num_levels levels, or with
    num_levels = 0 a Gaussian density (continuous data such as latents: a negative log density).
    """
    true_mean, _, true_log_variance = q_posterior_mean_variance(d, x0, x_t, t)
    out = p_mean_variance(d, model_output, x_t, t, clip_denoised=clip_denoised)
    kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"]))
    if num_levels:
        log_likelihood = discretized_gaussian_log_likelihood(
            x0, out["mean"], 0.5 * out["log_variance"], num_levels=num_levels
        )
    else:
        log_likelihood = gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"])
    decoder_nll = -mean_flat(log_likelihood)
    vb = jnp.where(t == 0, decoder_nll, kl) / math.log(2.0)
    return {"vb": vb, "pred_x0": out["pred_x0"]}


def prior_bpd(d: GaussianDiffusion, x0: jax.Array) -> jax.Array:
    """Returns KL(q(x_{T-1} | x0) || N(0, I)) per example [B], in bits/dim."""
    t = jnp.full((x0.shape[0],), d.num_timesteps - 1, dtype=jnp.int32)
    mean, _, log_variance = q_mean_variance(d, x0, t)
    return mean_flat(normal_kl(mean, log_variance, 0.0, 0.0)) / math.log(2.0)


def _mse_target(d: GaussianDiffusion, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    if d.mean_type == "eps":
        return noise
    if d.mean_type == "v":
        return v_target(d, x0, t, noise)
    return x0


def training_losses(
    d: GaussianDiffusion,
    model_fn: ModelFn,
    x0: jax.Array,
    t: jax.Array,
    noise: jax.Array,
    num_levels: int = 256,
) -> dict[str, jax.Array]:
    """Returns {"loss", "mse", "vb"}, each [B]; "vb" is the (scaled) bound term in the loss, or 0.

    kl: loss = vb (bits/dim); rescaled_kl: vb * T. mse: loss = mse, plus, with a learned
    variance, vb from the output with its mean part under stop_gradient (scaled by T/1000 for
    rescaled_mse). T is this process's num_timesteps; model_fn gets d.timestep_map[t].
    """
    x_t = q_sample(d, x0, t, noise)
    model_output = model_fn(x_t, d.timestep_map[t])
    mean_output, var_output = _split_output(d, model_output, x_t)
    mse = mean_flat(jnp.square(_mse_target(d, x0, t, noise) - mean_output))
    if d.loss_type in ("kl", "rescaled_kl"):
        vb = vb_terms_bpd(d, model_output, x0, x_t, t, clip_denoised=False, num_levels=num_levels)
        vb = vb["vb"] * (d.num_timesteps if d.loss_type == "rescaled_kl" else 1.0)
        return {"loss": vb, "mse": mse, "vb": vb}
    if not d.learn_sigma:
        return {"loss": mse, "mse": mse, "vb": jnp.zeros_like(mse)}
    # Hybrid objective (Nichol & Dhariwal sec. 3.1): the bound trains only the variance.
    frozen = jnp.concatenate([jax.lax.stop_gradient(mean_output), var_output], axis=-1)
    vb = vb_terms_bpd(d, frozen, x0, x_t, t, clip_denoised=False, num_levels=num_levels)["vb"]
    if d.loss_type == "rescaled_mse":
        vb = vb * (d.num_timesteps / 1000.0)
    return {"loss": mse + vb, "mse": mse, "vb": vb}


def calc_bpd(
    d: GaussianDiffusion,
    model_fn: ModelFn,
    x0: jax.Array,
    key: jax.Array,
    clip_denoised: bool = True,
    num_levels: int = 256,
) -> dict[str, jax.Array]:
    """Returns the full variational bound per example in bits/dim.

    Keys: "total_bpd" [B] (sum of vb over t plus prior), "prior_bpd" [B], and "vb",
    "xstart_mse", "mse" [B, T] whose column t is timestep t (one noise sample per t).
    """
    batch = x0.shape[0]

    def step(carry_key, t_scalar):
        carry_key, noise_key = jax.random.split(carry_key)
        t = jnp.full((batch,), t_scalar, dtype=jnp.int32)
        noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
        x_t = q_sample(d, x0, t, noise)
        model_output = model_fn(x_t, d.timestep_map[t])
        out = vb_terms_bpd(d, model_output, x0, x_t, t, clip_denoised, num_levels)
        eps = predict_eps_from_x0(d, x_t, t, out["pred_x0"])
        terms = (
            out["vb"],
            mean_flat(jnp.square(out["pred_x0"] - x0)),
            mean_flat(jnp.square(eps - noise)),
        )
        return carry_key, terms

    # Walk t from T-1 down to 0 like improved-diffusion; only [T, B] scalars are stacked.
    timesteps = jnp.arange(d.num_timesteps - 1, -1, -1, dtype=jnp.int32)
    _, (vb, xstart_mse, mse) = jax.lax.scan(step, key, timesteps)
    vb, xstart_mse, mse = (jnp.flip(a, axis=0).T for a in (vb, xstart_mse, mse))  # [B, T]
    prior = prior_bpd(d, x0)
    return {
        "total_bpd": jnp.sum(vb, axis=1) + prior,
        "prior_bpd": prior,
        "vb": vb,
        "xstart_mse": xstart_mse,
        "mse": mse,
    }
