"""Training continuous-time models: the train step, VDM's learned-schedule gradients, init.

Mirrors `diffax.train.train_step` (same contract: pure, (state, batch) -> (state, metrics)) for the
processes of `diffax.continuous`; `diffax.build` and `diffax.train` pick it for
`diffusion.kind="continuous"`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from diffax import models
from diffax.continuous import (
    GAMMA_MAX,
    GAMMA_MIN,
    MODEL_TIME_SCALE,
    WEIGHTINGS,
    GammaFn,
    bound_terms,
    gamma_and_derivative,
    low_discrepancy_t,
    training_losses,
)
from diffax.models import noise_schedule
from diffax.train_state import TrainState, step_metrics


def schedule_module(config: ml_collections.ConfigDict) -> noise_schedule.NoiseSchedule:
    """Returns the learned schedule of config.diffusion (gamma_min, gamma_max, schedule_hidden)."""
    d = config.diffusion
    return noise_schedule.NoiseSchedule(
        gamma_min=d.get("gamma_min", GAMMA_MIN),
        gamma_max=d.get("gamma_max", GAMMA_MAX),
        hidden=d.get("schedule_hidden", 1024),
    )


def init_params(rng: jax.Array, model: nn.Module, config: ml_collections.ConfigDict) -> Any:
    """Returns fresh parameters: the model's, or {"model", "schedule"} for a learned schedule.

    The learned layout is what `train_step(..., learned_schedule=True)` and the EMA trees hold;
    `schedule_module(config).apply({"params": params["schedule"]}, t)` is then gamma_fn. The model
    is initialised with float32 times (continuous models are called with `model_time`).
    """
    data = config.data
    model_rng, schedule_rng = jax.random.split(rng)
    x = jnp.zeros((1, data.image_size, data.image_size, data.num_channels), jnp.float32)
    t = jnp.zeros((1,), jnp.float32)
    y = jnp.zeros((1,), jnp.int32) if getattr(model, "num_classes", 0) else None
    params = model.init({"params": model_rng}, x, t, y, train=False)["params"]
    if config.diffusion.get("gamma_schedule", "linear_gamma") != "learned":
        return params
    schedule = schedule_module(config).init({"params": schedule_rng}, t)["params"]
    return {"model": params, "schedule": schedule}


def _schedule_outputs(schedule: nn.Module, schedule_params: Any, t: jax.Array):
    """Returns (gamma(t), gamma'(t), gamma(0), gamma(1)) of the learned schedule."""
    apply = lambda tt: schedule.apply({"params": schedule_params}, tt)
    gamma_t, dgamma_t = gamma_and_derivative(apply, t)
    ends = apply(jnp.array([0.0, 1.0], jnp.float32))
    return gamma_t, dgamma_t, ends[0], ends[1]


def learned_schedule_grads(
    schedule: nn.Module,
    params: dict[str, Any],
    model_loss_fn: Callable[..., tuple[jax.Array, dict[str, jax.Array]]],
    t: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array], dict[str, Any]]:
    """Returns (mean bound, terms, grads) for {"model", "schedule"} params under VDM's rule.

    model_loss_fn(model_params, gamma_t, dgamma_t, gamma_0, gamma_1) -> (mean total bits/dim,
    terms with "diffusion_bpd" [B]). Model parameters and the schedule's ends get the gradient of
    the bound; the schedule's interior gets the gradient of mean(diffusion_bpd^2), the estimator's
    second moment, whose gradient is the variance's (VDM: the bound's mean does not depend on the
    interior). One backward pass through the network gives d total_b / d gamma_t,b; as
    d(L_b^2) = 2 L_b dL_b, the second gradient is the schedule's pull-back of those cotangents
    times 2 diffusion_bpd_b (VDM's custom backward rule, written as two cheap VJPs of the schedule).
    """
    outputs, schedule_vjp = jax.vjp(
        lambda sp: _schedule_outputs(schedule, sp, t), params["schedule"]
    )
    (loss, terms), cotangents = jax.value_and_grad(
        model_loss_fn, argnums=(0, 1, 2, 3, 4), has_aux=True
    )(params["model"], *outputs)
    model_grads, c_gamma, c_dgamma, c_0, c_1 = cotangents
    (bound_grads,) = schedule_vjp((c_gamma, c_dgamma, c_0, c_1))
    scale = 2.0 * jax.lax.stop_gradient(terms["diffusion_bpd"])
    zero = jnp.zeros_like(c_0)
    (variance_grads,) = schedule_vjp((scale * c_gamma, scale * c_dgamma, zero, zero))
    schedule_grads = noise_schedule.merge_gradients(bound_grads, variance_grads)
    return loss, terms, {"model": model_grads, "schedule": schedule_grads}


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    gamma: GammaFn | nn.Module,
    num_levels: int,
    weighting: str,
    learned_schedule: bool,
    mean_type: str = "eps",
    min_snr_gamma: float = 5.0,
    gamma_range: tuple[float, float] = (GAMMA_MIN, GAMMA_MAX),
    label_dropout: float = 0.0,
    model_time_scale: float = MODEL_TIME_SCALE,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on {"image": [B, H, W, C], "label": [B]}; pure, like train.train_step.

    gamma: a fixed gamma_fn, or with learned_schedule=True the `NoiseSchedule` module, whose
    parameters are state.params["schedule"] (state.params = {"model", "schedule"}, `init_params`);
    a learned schedule needs weighting "elbo" (for other weightings the schedule would change the
    objective itself, not only its variance). t is low-discrepancy and noise, label dropout and
    dropout come from fold_in(state.rng, state.step). Metrics: "loss", "mse" (eps-MSE), "vb" (the
    bound, bits/dim), "grad_norm", "skipped", "consecutive_skips".
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(
            f"diffusion.weighting={weighting!r} is not one of {', '.join(WEIGHTINGS)}."
        )
    if learned_schedule and weighting != "elbo":
        raise ValueError(
            f"diffusion.weighting={weighting!r} with the learned schedule: only 'elbo' is "
            "invariant to the schedule's interior, which is trained to lower its variance."
        )
    images, labels = batch["image"], batch.get("label")
    batch_size = images.shape[0]
    key = jax.random.fold_in(state.rng, state.step)
    t_key, noise_key, label_key, dropout_key = jax.random.split(key, 4)
    t = low_discrepancy_t(t_key, batch_size)
    noise = jax.random.normal(noise_key, images.shape, images.dtype)
    num_classes = getattr(model, "num_classes", 0)
    if num_classes:
        drop = jax.random.uniform(label_key, labels.shape) < label_dropout
        labels = jnp.where(drop, num_classes, labels)  # The null class.
    kw = dict(mean_type=mean_type, gamma_range=gamma_range, model_time_scale=model_time_scale)

    def network(params):
        return models.model_fn(model, params, labels, train=True, dropout_rng=dropout_key)

    if learned_schedule:

        def model_loss_fn(model_params, gamma_t, dgamma_t, gamma_0, gamma_1):
            terms = bound_terms(
                network(model_params),
                images,
                noise,
                gamma_t,
                dgamma_t,
                gamma_0,
                gamma_1,
                num_levels,
                **kw,
            )
            return jnp.mean(terms["total_bpd"]), terms

        loss, terms, grads = learned_schedule_grads(gamma, state.params, model_loss_fn, t)
        terms = {**terms, "vb": terms["total_bpd"]}
    else:

        def loss_fn(params):
            terms = training_losses(
                gamma,
                network(params),
                images,
                t,
                noise,
                num_levels,
                weighting=weighting,
                min_snr_gamma=min_snr_gamma,
                **kw,
            )
            return jnp.mean(terms["loss"]), terms

        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)

    new_state = state.apply_gradients(grads)
    return new_state, step_metrics(loss, terms, grads, new_state)
