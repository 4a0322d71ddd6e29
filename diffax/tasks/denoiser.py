"""The denoiser (DDPM / improved DDPM on a discrete chain): its train step, init and evaluators.

The step draws t (uniformly or by loss-second-moment importance sampling), the noise and the
label or caption dropout from fold_in(state.rng, state.step), and applies
`diffusion.training_losses`; with a data-parallel mesh the gradients are computed per device and
averaged in one all-reduce (`sharding.data_parallel`).
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from diffax import build, config_checks, diffusion, generate, models, schedules, sharding
from diffax import timestep_sampler as timestep_sampler_lib
from diffax.models import text_encoder
from diffax.tasks import base
from diffax.train_state import TrainState, step_metrics


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    process: diffusion.GaussianDiffusion,
    num_levels: int,
    label_dropout: float,
    importance_sampling: bool,
    grad_accum_steps: int = 1,
    conditioning_fn: Callable[[jax.Array, jax.Array], dict] | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step of the denoiser on a global batch {"image": [B, H, W, C], "label": [B]}
    (and "tokens" [B, L] for a text-conditioned model, or "context" [B, L, D] and "context_mask"
    [B, L] for one on stored embeddings); pure.

    label_dropout is the chance a label becomes the null class, or a caption the empty one;
    conditioning_fn(images, key) makes the backbone's further inputs from the batch (see
    build.conditioning_fn; super-resolution's low-resolution copies, inpainting's masks). With a
    data-parallel mesh the gradients are computed per device (sharding.data_parallel).
    """
    images, labels = batch["image"], batch["label"]
    tokens = batch.get("tokens")
    batch_size = images.shape[0]
    # Every random draw derives from (base key, step): a resumed run repeats them exactly.
    key = jax.random.fold_in(state.rng, state.step)
    t_key, noise_key, label_key, dropout_key = jax.random.split(key, 4)
    if importance_sampling:
        t, weights = timestep_sampler_lib.loss_second_moment_sample(
            state.sampler_state, t_key, batch_size
        )
    else:
        t, weights = timestep_sampler_lib.uniform_sample(t_key, batch_size, process.num_timesteps)
    noise = jax.random.normal(noise_key, images.shape, images.dtype)
    num_classes = getattr(model, "num_classes", 0)
    if num_classes:
        labels = base.drop_labels(labels, label_key, label_dropout, num_classes)
    if text_encoder.is_text_conditioned(model):
        if tokens is None:
            raise ValueError("A text-conditioned model needs batch['tokens'] (data.text_length).")
        # Caption dropout to the empty caption, the null context of guidance.
        drop = jax.random.uniform(jax.random.fold_in(label_key, 1), labels.shape) < label_dropout
        null = text_encoder.null_tokens(batch_size, tokens.shape[1])
        tokens = jnp.where(drop[:, None], null, tokens)
    else:
        tokens = None
    context = None
    if text_encoder.is_context_conditioned(model):
        if "context" not in batch:
            raise ValueError(
                "A model on stored embeddings needs batch['context'] and batch['context_mask'] "
                "(data.text_embeddings)."
            )
        # Caption dropout to the null context: zero embeddings, every key masked (the same
        # draw as the tokens' above).
        drop = jax.random.uniform(jax.random.fold_in(label_key, 1), labels.shape) < label_dropout
        context = {
            "context": jnp.where(drop[:, None, None], 0.0, batch["context"]),
            "context_mask": jnp.where(drop[:, None], False, batch["context_mask"]),
        }
    # Its own key (not a fifth split above), so models without it draw exactly as before.
    cond = {}
    if conditioning_fn is not None:
        cond = conditioning_fn(images, jax.random.fold_in(key, 1))

    def loss_fn(params, micro):
        x0, t_micro, noise_micro, y, w, tok, ctx, c, rng = micro
        model_fn = models.model_fn(
            model,
            params,
            y,
            train=True,
            dropout_rng=rng,
            tokens=tok,
            context=ctx,
            conditioning=c or None,
        )
        terms = diffusion.training_losses(
            process, model_fn, x0, t_micro, noise_micro, num_levels=num_levels
        )
        return jnp.mean(terms["loss"] * w), terms

    micro = (images, t, noise, labels, weights, tokens, context, cond)
    grads_fn = functools.partial(_loss_and_grads, loss_fn, grad_accum_steps=grad_accum_steps)
    if mesh is not None:
        grads_fn = sharding.data_parallel(grads_fn, mesh)
    (loss, terms), grads = grads_fn(state.params, micro, dropout_key)

    sampler_state = state.sampler_state
    if importance_sampling:
        per_example = jax.lax.stop_gradient(terms["loss"])
        sampler_state = timestep_sampler_lib.loss_second_moment_update(
            sampler_state, t, per_example
        )
    new_state = state.apply_gradients(grads, sampler_state=sampler_state)
    return new_state, step_metrics(loss, terms, grads, new_state)


def _loss_and_grads(loss_fn, params, micro, dropout_key, *, grad_accum_steps: int):
    """Returns ((mean loss, per-example terms), gradients) of loss_fn over micro's examples; with
    grad_accum_steps > 1 the micro-batches run one after another in a scan."""
    if grad_accum_steps == 1:
        return jax.value_and_grad(loss_fn, has_aux=True)(params, (*micro, dropout_key))
    batch_size = micro[0].shape[0]
    split = lambda x: x.reshape(grad_accum_steps, batch_size // grad_accum_steps, *x.shape[1:])
    micro = jax.tree.map(split, micro)
    rngs = jax.random.split(dropout_key, grad_accum_steps)

    def accumulate(grad_sum, inputs):
        (loss_i, terms_i), grads_i = jax.value_and_grad(loss_fn, has_aux=True)(params, inputs)
        return jax.tree.map(jnp.add, grad_sum, grads_i), (loss_i, terms_i)

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, (losses, terms) = jax.lax.scan(accumulate, zeros, (*micro, rngs))
    grads = jax.tree.map(lambda g: g / grad_accum_steps, grads)
    terms = jax.tree.map(lambda x: x.reshape(batch_size), terms)
    return (jnp.mean(losses), terms), grads


def init_params(rng: jax.Array, model: nn.Module, config: ml_collections.ConfigDict) -> Any:
    """Returns fresh parameters of a backbone called as (x, t, labels, train, **conditioning)."""
    x = jnp.zeros((1, *build.image_shape(config)), jnp.float32)
    t = jnp.zeros((1,), jnp.int32)
    y = jnp.zeros((1,), jnp.int32) if build.num_classes(config) else None
    make_conditioning = build.conditioning_fn(config, train=False)
    extra = make_conditioning(x, rng) if make_conditioning else {}
    return model.init({"params": rng}, x, t, y, train=False, **extra)["params"]


class Denoiser(base.Task):
    """A diffusion model on the discrete chain of `diffax.diffusion` (U-Net or DiT backbone)."""

    name = "denoiser"
    evaluator_names = ("bpd", "ode_bpd", "conditional_bpd", "samples")
    draws_samples = True

    def init_params(self, rng, model, config):
        return init_params(rng, model, config)

    def train_step(self, config, model, process, mesh=None):
        return functools.partial(
            train_step,
            model=model,
            process=process,
            num_levels=build.data_levels(config),
            label_dropout=config.training.label_dropout,
            importance_sampling=config.diffusion.timestep_sampler == "loss_second_moment",
            grad_accum_steps=config.training.grad_accum_steps,
            conditioning_fn=build.conditioning_fn(config, train=True),
            mesh=mesh,
        )

    def check(self, config):
        """Checks the sampler's steps against the discrete chain, and that nothing asks a model
        without a null class for one."""
        super().check(config)
        _check_null_class(config, self.evaluators(config))
        ev, d = config.eval, config.diffusion
        if ev.sample_steps > d.num_timesteps:
            raise config_checks.ConfigError(
                f"eval.sample_steps={ev.sample_steps} exceeds diffusion.num_timesteps="
                f"{d.num_timesteps}; use at most {d.num_timesteps} (0 for every step)."
            )
        if ev.sampler == "ddim" and ev.sample_steps:
            try:
                schedules.space_timesteps(d.num_timesteps, f"ddim{ev.sample_steps}")
            except ValueError as e:
                raise config_checks.ConfigError(
                    f"eval.sample_steps={ev.sample_steps} cannot be honoured by a DDIM stride "
                    f"over diffusion.num_timesteps={d.num_timesteps} ({e})."
                ) from None
        if ev.sampler not in generate.CHAIN_SAMPLERS:
            if not isinstance(ev.sample_spacing, str):
                raise config_checks.ConfigError(
                    f"eval.sample_spacing={ev.sample_spacing!r} must be a string."
                )
            try:
                generate.solver_grid(config, self.create_process(config))
            except ValueError as e:
                raise config_checks.ConfigError(str(e)) from None

    def default_evaluators(self, config):
        if build.lacks_null_class(config):  # p(x|y) is the only bound such a model has.
            return ("conditional_bpd", "samples")
        names = ["bpd"]
        if config.eval.ode_bpd:
            names.append("ode_bpd")
        # p(x|y) for the true labels beside p(x) (pixels only: the latents' bound has no labels).
        if (
            build.num_classes(config)
            and config.eval.conditional_bpd
            and not build.is_latent(config)
        ):
            names.append("conditional_bpd")
        return (*names, "samples")


def _check_null_class(config: ml_collections.ConfigDict, evaluators: tuple[str, ...]) -> None:
    """Raises ConfigError in one sentence when a class-conditional model without a null class
    (model.unet.null_class=False) is asked for one: label dropout, classifier-free guidance,
    RePaint's unconditional model, p(x) bits/dim."""
    if not build.lacks_null_class(config):
        return
    uses = {
        "training.label_dropout": config.training.label_dropout,
        "eval.guidance_scale": config.eval.guidance_scale,
        "eval.ode_bpd": config.eval.ode_bpd,
        "inpainting.repaint": config.inpainting.repaint,
        "eval.evaluators": [n for n in evaluators if n in ("bpd", "ode_bpd")],
    }
    for field, value in uses.items():
        if value:
            raise config_checks.ConfigError(
                f"{field}={value!r} needs the null class, which this model lacks "
                "(model.unet.null_class=False, as ADM's checkpoints); use 0, False or "
                "'conditional_bpd'."
            )


TASK = Denoiser()
