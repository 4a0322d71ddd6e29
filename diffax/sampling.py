"""Reverse-process samplers: ancestral DDPM, DDIM (and its inversion), classifier-free guidance.

Conventions: arrays are NHWC; an integer t in 0..T-1 indexes the (possibly respaced) process `d`,
t = 0 being the least noisy step; the model is called as `model_fn(x_t, d.timestep_map[t])`, i.e.
with the timesteps of the original process. The loops run on `jax.lax.scan`, so the model is traced
once whatever T is, and every sampler is jit-able with `shape` (and `model_fn`) static.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from diffax.diffusion import (
    GaussianDiffusion,
    ModelFn,
    extract,
    p_mean_variance,
    predict_eps_from_x0,
)

# (x_t [B, H, W, C], original-process timesteps [B]) -> grad_x log p(y | x_t) [B, H, W, C].
GuidanceFn = Callable[[jax.Array, jax.Array], jax.Array]


def _is_static_zero(value) -> bool:
    """Returns whether value is a Python number equal to 0 (known when tracing)."""
    return isinstance(value, int | float) and value == 0


def _model_output(d: GaussianDiffusion, model_fn: ModelFn, x_t: jax.Array, t: jax.Array):
    """Returns the model output at process step t, calling the model with original timesteps."""
    return model_fn(x_t, d.timestep_map[t])


def _nonzero_mask(t: jax.Array, x: jax.Array) -> jax.Array:
    """Returns 1 where t != 0 and 0 at the last step, shaped [B, 1, ..., 1] against x."""
    return (t != 0).astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))


def _pred_x0_and_eps(d, model_fn, x_t, t, clip_denoised):
    """Returns (pred_x0, eps) with eps re-derived from the (possibly clipped) pred_x0."""
    out = p_mean_variance(d, _model_output(d, model_fn, x_t, t), x_t, t, clip_denoised)
    return out["pred_x0"], predict_eps_from_x0(d, x_t, t, out["pred_x0"])


def p_sample(
    d: GaussianDiffusion,
    model_fn: ModelFn,
    x_t: jax.Array,
    t: jax.Array,
    noise: jax.Array,
    clip_denoised: bool = True,
    guidance_fn: GuidanceFn | None = None,
    guidance_scale: float = 0.0,
) -> dict[str, jax.Array]:
    """Returns {"sample": x_{t-1}, "pred_x0"} of one ancestral step; t [B]; no noise at t == 0.

    With guidance_fn(x_t, timesteps) -> grad_x log p(y | x_t) (e.g. a noisy classifier's), the
    mean moves by guidance_scale * Sigma * grad (Dhariwal & Nichol 2021, Algorithm 1); a Python
    0 scale (or no guidance_fn) is the unguided step exactly.
    """
    out = p_mean_variance(d, _model_output(d, model_fn, x_t, t), x_t, t, clip_denoised)
    if guidance_fn is not None and not _is_static_zero(guidance_scale):
        grad = guidance_fn(x_t, d.timestep_map[t])
        out = {**out, "mean": out["mean"] + guidance_scale * out["variance"] * grad}
    # The last step (t = 0) returns the mean: Ho et al. 2020, Algorithm 2, line 4 (z = 0 if t = 1).
    nonzero = _nonzero_mask(t, x_t)  # [B, 1, 1, 1]
    sample = out["mean"] + nonzero * jnp.exp(0.5 * out["log_variance"]) * noise  # [B, H, W, C]
    return {"sample": sample, "pred_x0": out["pred_x0"]}


def ddim_sigma(d: GaussianDiffusion, t: jax.Array, eta: float, x: jax.Array) -> jax.Array:
    """Returns the DDIM noise scale sigma_t [B, 1, 1, 1] (Song et al. 2021, eq. 16) times eta."""
    abar = extract(d.alphas_cumprod, t, x.ndim)
    abar_prev = extract(d.alphas_cumprod_prev, t, x.ndim)
    # Clamp at 0: in float32 abar / abar_prev can round to slightly above 1 for tiny betas.
    ratio = jnp.maximum(1.0 - abar / abar_prev, 0.0)
    return eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar)) * jnp.sqrt(ratio)


def ddim_step(
    d: GaussianDiffusion,
    model_fn: ModelFn,
    x_t: jax.Array,
    t: jax.Array,
    noise: jax.Array,
    eta: float = 0.0,
    clip_denoised: bool = True,
    guidance_fn: GuidanceFn | None = None,
    guidance_scale: float = 0.0,
) -> dict[str, jax.Array]:
    """Returns {"sample": x_{t-1}, "pred_x0"} of one DDIM step (Song et al. 2021 eq. 12); t [B].

    With guidance_fn (grad_x log p(y | x_t)), eps' = eps - guidance_scale sqrt(1 - abar_t) grad
    (Dhariwal & Nichol 2021, Algorithm 2), shifting the eps re-derived from the clipped pred_x0,
    and pred_x0 follows eps' unclipped: guided-diffusion's `condition_score` order, so imported
    ADM-G models sample as they did for the paper.
    """
    # eps comes from the (possibly clipped) pred_x0 so that x_{t-1} stays consistent with it.
    pred_x0, eps = _pred_x0_and_eps(d, model_fn, x_t, t, clip_denoised)  # [B, H, W, C] each
    if guidance_fn is not None and not _is_static_zero(guidance_scale):
        abar = extract(d.alphas_cumprod, t, x_t.ndim)
        grad = guidance_fn(x_t, d.timestep_map[t]).astype(eps.dtype)
        eps = eps - guidance_scale * jnp.sqrt(1.0 - abar) * grad
        pred_x0 = (x_t - jnp.sqrt(1.0 - abar) * eps) / jnp.sqrt(abar)
    abar_prev = extract(d.alphas_cumprod_prev, t, x_t.ndim)
    sigma = ddim_sigma(d, t, eta, x_t)
    direction = jnp.sqrt(jnp.maximum(1.0 - abar_prev - sigma**2, 0.0)) * eps
    mean = jnp.sqrt(abar_prev) * pred_x0 + direction
    nonzero = _nonzero_mask(t, x_t)  # [B, 1, 1, 1]
    return {"sample": mean + nonzero * sigma * noise, "pred_x0": pred_x0}


def ddim_reverse_step(
    d: GaussianDiffusion,
    model_fn: ModelFn,
    x_t: jax.Array,
    t: jax.Array,
    clip_denoised: bool = True,
) -> dict[str, jax.Array]:
    """Returns {"sample": x_{t+1}, "pred_x0"} of one deterministic (eta = 0) DDIM encoding step."""
    pred_x0, eps = _pred_x0_and_eps(d, model_fn, x_t, t, clip_denoised)  # [B, H, W, C] each
    abar_next = extract(d.alphas_cumprod_next, t, x_t.ndim)
    sample = jnp.sqrt(abar_next) * pred_x0 + jnp.sqrt(1.0 - abar_next) * eps
    return {"sample": sample, "pred_x0": pred_x0}


def _scan_steps(
    step: Callable[[jax.Array, jax.Array], jax.Array],
    x: jax.Array,
    ts: jax.Array,
    return_every: int,
) -> dict[str, jax.Array]:
    """Returns {"sample"} of x <- step(x, t) over ts, plus "intermediates" after steps k, 2k, ..."""

    def body(x, t):
        return step(x, t), None

    if return_every <= 0:
        x, _ = jax.lax.scan(body, x, ts)
        return {"sample": x}
    # Nested scans keep only the N = T // k requested states in memory, not all T of them.
    num_kept = ts.shape[0] // return_every
    head = ts[: num_kept * return_every].reshape(num_kept, return_every)  # [N, k]

    def chunk(x, chunk_ts):
        x, _ = jax.lax.scan(body, x, chunk_ts)
        return x, x

    x, intermediates = jax.lax.scan(chunk, x, head)  # intermediates: [N, B, H, W, C]
    tail = ts[num_kept * return_every :]
    if tail.shape[0] > 0:
        x, _ = jax.lax.scan(body, x, tail)
    return {"sample": x, "intermediates": intermediates}


def _descending_timesteps(d: GaussianDiffusion) -> jax.Array:
    """Returns [T-1, ..., 0] as int32, the order in which samplers visit the process steps."""
    return jnp.arange(d.num_timesteps - 1, -1, -1, dtype=jnp.int32)


def ddpm_sample(
    d: GaussianDiffusion,
    model_fn: ModelFn,
    shape: tuple[int, ...],
    key: jax.Array,
    clip_denoised: bool = True,
    return_every: int = 0,
    noise: jax.Array | None = None,
    guidance_fn: GuidanceFn | None = None,
    guidance_scale: float = 0.0,
) -> dict[str, jax.Array]:
    """Returns {"sample": x_0 [B, H, W, C]} (+ "intermediates" [T // k, B, H, W, C]) by DDPM.

    Starts from `noise` if given, else from N(0, I) drawn from `key`; the per-step noise comes from
    `fold_in(key, t)`. Static under jit: model_fn, shape, clip_denoised, return_every.
    """
    init_key, step_key = jax.random.split(key)
    x_init = jax.random.normal(init_key, shape, jnp.float32) if noise is None else noise

    def step(x, t):
        t_batch = jnp.full((shape[0],), t, jnp.int32)  # [B]
        z = jax.random.normal(jax.random.fold_in(step_key, t), shape, x.dtype)
        return p_sample(d, model_fn, x, t_batch, z, clip_denoised, guidance_fn, guidance_scale)[
            "sample"
        ]

    return _scan_steps(step, x_init, _descending_timesteps(d), return_every)


def ddim_sample(
    d: GaussianDiffusion,
    model_fn: ModelFn,
    shape: tuple[int, ...],
    key: jax.Array,
    eta: float = 0.0,
    clip_denoised: bool = True,
    return_every: int = 0,
    noise: jax.Array | None = None,
    guidance_fn: GuidanceFn | None = None,
    guidance_scale: float = 0.0,
) -> dict[str, jax.Array]:
    """Returns {"sample": x_0 [B, H, W, C]} (+ "intermediates" [T // k, B, H, W, C]) by DDIM.

    Runs on the full or a respaced process d; starts from `noise` if given (e.g. a `ddim_reverse`
    encoding), else from N(0, I) drawn from `key`. eta = 0 is deterministic given x_T. Classifier
    guidance: see ddim_step.
    """
    init_key, step_key = jax.random.split(key)
    x_init = jax.random.normal(init_key, shape, jnp.float32) if noise is None else noise

    def step(x, t):
        t_batch = jnp.full((shape[0],), t, jnp.int32)  # [B]
        z = jax.random.normal(jax.random.fold_in(step_key, t), shape, x.dtype)
        return ddim_step(
            d, model_fn, x, t_batch, z, eta, clip_denoised, guidance_fn, guidance_scale
        )["sample"]

    return _scan_steps(step, x_init, _descending_timesteps(d), return_every)


def ddim_reverse(
    d: GaussianDiffusion,
    model_fn: ModelFn,
    x0: jax.Array,
    clip_denoised: bool = False,
) -> dict[str, jax.Array]:
    """Returns {"sample": x_T [B, H, W, C]}, the deterministic DDIM encoding of x0 (t = 0..T-1)."""

    def step(x, t):
        t_batch = jnp.full((x0.shape[0],), t, jnp.int32)  # [B]
        return ddim_reverse_step(d, model_fn, x, t_batch, clip_denoised)["sample"]

    ts = jnp.arange(d.num_timesteps, dtype=jnp.int32)
    return _scan_steps(step, x0, ts, return_every=0)


def classifier_free_guidance(
    model_fn: Callable[[jax.Array, jax.Array, Any], jax.Array],
    labels: Any,
    null_label: Any,
    guidance_scale: float,
    guided_channels: int = 0,
) -> ModelFn:
    """Returns model(x, t) = (1 + w) cond - w uncond on the mean channels (Ho & Salimans 2022).

    guided_channels > 0 guides only the first that many mean channels, the others are the
    conditional output's: DiT's `forward_with_cfg` guides 3 of its 4 latent channels, "for exact
    reproducibility" of its published FIDs (Peebles & Xie 2023's code, models.py).

    The condition is labels [B] with null_label the null class, or any pytree of [B, ...] arrays
    (caption tokens [B, L]) with null_label the matching null values (the empty caption [L]),
    broadcast over the batch. Conditional and unconditional outputs come from one call on a
    doubled batch [2B, ...]; with a learned variance (2C output channels) the last C channels
    are the conditional output's. w = guidance_scale = 0 returns the conditional output exactly.
    """

    def guided(x: jax.Array, t: jax.Array) -> jax.Array:
        batch, channels = x.shape[0], x.shape[-1]
        t_batch = jnp.broadcast_to(t, (batch,))  # [B]
        null = jax.tree.map(
            lambda c, n: jnp.broadcast_to(jnp.asarray(n, c.dtype), c.shape), labels, null_label
        )
        out = model_fn(
            jnp.concatenate([x, x], axis=0),  # [2B, H, W, C]
            jnp.concatenate([t_batch, t_batch], axis=0),  # [2B]
            jax.tree.map(lambda c, n: jnp.concatenate([c, n], axis=0), labels, null),  # [2B, ...]
        )
        cond, uncond = out[:batch], out[batch:]
        w = guidance_scale
        guided_mean = (1.0 + w) * cond[..., :channels] - w * uncond[..., :channels]
        if 0 < guided_channels < channels:
            guided_mean = jnp.concatenate(
                [guided_mean[..., :guided_channels], cond[..., guided_channels:channels]], axis=-1
            )
        if out.shape[-1] == 2 * channels:
            return jnp.concatenate([guided_mean, cond[..., channels:]], axis=-1)
        return guided_mean

    return guided
