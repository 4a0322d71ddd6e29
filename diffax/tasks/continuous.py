"""The continuous-time denoiser (VDM, Kingma et al. 2021): train step, learned-schedule gradients.

Mirrors `diffax.tasks.denoiser.train_step` (same contract: pure, (state, batch) -> (state,
metrics)) for the processes of `diffax.continuous`; `diffax.tasks` picks it for
`diffusion.kind="continuous"`. Evaluation is the denoiser's: the evaluators read the process.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from diffax import build, config_checks, continuous, diffusion, generate, models, solvers
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
from diffax.tasks import base, denoiser
from diffax.train_state import TrainState, step_metrics


def init_params(rng: jax.Array, model: nn.Module, config: ml_collections.ConfigDict) -> Any:
    """Returns fresh parameters: the model's, or {"model", "schedule"} for a learned schedule.

    The learned layout is what `train_step(..., learned_schedule=True)` and the EMA trees hold;
    `build.schedule_module(config).apply({"params": params["schedule"]}, t)` is then gamma_fn.
    The model is initialised with float32 times (continuous models are called with
    `model_time`).
    """
    data = config.data
    model_rng, schedule_rng = jax.random.split(rng)
    x = jnp.zeros((1, data.image_size, data.image_size, data.num_channels), jnp.float32)
    t = jnp.zeros((1,), jnp.float32)
    y = jnp.zeros((1,), jnp.int32) if getattr(model, "num_classes", 0) else None
    params = model.init({"params": model_rng}, x, t, y, train=False)["params"]
    if config.diffusion.get("gamma_schedule", "linear_gamma") != "learned":
        return params
    schedule = build.schedule_module(config).init({"params": schedule_rng}, t)["params"]
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
    """One optimizer step on {"image": [B, H, W, C], "label": [B]}; pure, like the denoiser's.

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
        labels = base.drop_labels(labels, label_key, label_dropout, num_classes)
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


class Continuous(denoiser.Denoiser):
    """A diffusion model in continuous time (diffusion.kind="continuous"), evaluated as one."""

    name = "continuous"

    def create_process(self, config):
        return build.continuous_process(config)

    def check(self, config):
        """Checks the schedule, the weighting and the sampler of a continuous-time model."""
        base.Task.check(self, config)  # Not the discrete chain's sampler checks.
        d, ev = config.diffusion, config.eval
        ConfigError = config_checks.ConfigError
        if build.is_latent(config):
            raise ConfigError(
                "diffusion.kind='continuous' on latents is not built yet (its bound assumes "
                "discrete pixels); use diffusion.kind='discrete'."
            )
        config_checks.choice(d.gamma_schedule, "diffusion.gamma_schedule", continuous.SCHEDULES)
        config_checks.choice(d.weighting, "diffusion.weighting", continuous.WEIGHTINGS)
        for field in ("gamma_min", "gamma_max"):
            config_checks.number(d[field], f"diffusion.{field}", -float("inf"), float("inf"))
        if not d.gamma_min < d.gamma_max:
            raise ConfigError(
                f"diffusion.gamma_min={d.gamma_min} must be below diffusion.gamma_max="
                f"{d.gamma_max}: -log SNR increases from t = 0 to t = 1."
            )
        config_checks.positive_int(d.schedule_hidden, "diffusion.schedule_hidden")
        config_checks.number(d.min_snr_gamma, "diffusion.min_snr_gamma", 0.0, float("inf"))
        if d.min_snr_gamma == 0:
            raise ConfigError("diffusion.min_snr_gamma=0 must be positive (Hang et al.'s gamma).")
        if d.gamma_schedule == "learned" and d.weighting != "elbo":
            raise ConfigError(
                f"diffusion.gamma_schedule='learned' needs diffusion.weighting='elbo' (got "
                f"{d.weighting!r}): with another weighting the schedule changes the objective."
            )
        if d.var_type in diffusion.LEARNED_VAR_TYPES:
            raise ConfigError(
                f"diffusion.kind='continuous' with diffusion.var_type={d.var_type!r}: the "
                "continuous bound fixes the reverse variance; use 'fixed_small'."
            )
        if ev.sampler in generate.CHAIN_SAMPLERS and ev.sampler != "ddim":
            raise ConfigError(
                f"eval.sampler={ev.sampler!r} samples the discrete chain only; a continuous-time "
                f"model takes one of {', '.join(solvers.SAMPLERS)} (e.g. 'ancestral')."
            )
        if ev.sample_steps < 1:
            raise ConfigError(
                "eval.sample_steps=0 means every step of a discrete chain; a continuous-time "
                "model needs a positive count of steps."
            )
        if ev.classifier_scale:
            raise ConfigError(
                f"eval.classifier_scale={ev.classifier_scale}: classifier guidance of "
                "continuous-time models is not built yet; use 0."
            )

    def init_params(self, rng, model, config):
        return init_params(rng, model, config)

    def train_step(self, config, model, process, mesh=None):
        del mesh  # One jit over the mesh: the partitioner places the all-reduce.
        return functools.partial(
            train_step,
            model=model,
            gamma=process.schedule_module if process.learned else process.fixed_gamma,
            num_levels=config.data.num_levels,
            weighting=config.diffusion.weighting,
            learned_schedule=process.learned,
            mean_type=config.diffusion.mean_type,
            min_snr_gamma=config.diffusion.min_snr_gamma,
            gamma_range=process.gamma_range,
            label_dropout=config.training.label_dropout,
        )


TASK = Continuous()
