"""The noisy classifier of classifier guidance (Dhariwal & Nichol 2021, sec. 4): its train step,
the kind's evaluator names and its parameters.

The math (its loss, grad_x log p(y | x_t), the guided model_fn) is in
`diffax.classifier_guidance`; the guidance function samplers take from a trained one is
`models.guidance_fn`.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffax import build, classifier_guidance, config_checks, models
from diffax import timestep_sampler as timestep_sampler_lib
from diffax.diffusion import GaussianDiffusion
from diffax.tasks import base, denoiser
from diffax.train_state import TrainState, update_metrics


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    process: GaussianDiffusion,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step of the noisy classifier on {"image": [B, H, W, C], "label": [B]}; pure.

    Mirrors the denoiser's step: draws from fold_in(state.rng, state.step); t is uniform in
    0..T-1 (the paper trains on the diffusion model's noising distribution); the sampler_state is
    left unchanged. Metrics (scalars): loss, accuracy (batch means), grad_norm, skipped,
    consecutive_skips.
    """
    images, labels = batch["image"], batch["label"]
    key = jax.random.fold_in(state.rng, state.step)
    t_key, noise_key, dropout_key = jax.random.split(key, 3)
    t, _ = timestep_sampler_lib.uniform_sample(t_key, images.shape[0], process.num_timesteps)
    noise = jax.random.normal(noise_key, images.shape, images.dtype)

    def loss_fn(params):
        logits_fn = models.model_fn(model, params, train=True, dropout_rng=dropout_key)
        terms = classifier_guidance.classifier_loss(process, logits_fn, images, labels, t, noise)
        return jnp.mean(terms["loss"]), terms

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads)
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean(terms["accuracy"]),
        **update_metrics(grads, new_state),
    }
    return new_state, metrics


class NoisyClassifier(base.Task):
    """A classifier of noised images p(y | x_t), trained on the discrete process's x_t."""

    name = "classifier"
    model_names = ("noisy_classifier",)
    evaluator_names = ("classifier_accuracy",)

    def init_params(self, rng, model, config):
        return denoiser.init_params(rng, model, config)  # Called as (x, t, None, train=...).

    def check(self, config):
        """Checks that there are labels to predict and no latents or label input."""
        super().check(config)
        name, data = config.model.name, config.data
        if build.is_latent(config):
            raise config_checks.ConfigError(
                f"latent.autoencoder={config.latent.autoencoder!r} trains a denoiser on latents, "
                f"but model.name={name!r} is not one; use 'unet' or 'dit'."
            )
        if data.num_classes < 1:
            raise config_checks.ConfigError(
                f"model.name={name!r} needs labelled data: data.num_classes >= 1 "
                f"(got {data.num_classes})."
            )
        if config.model.class_cond:
            raise config_checks.ConfigError(
                f"model.name={name!r} predicts labels: set model.class_cond=False."
            )

    def train_step(self, config, model, process, mesh=None):
        del config, mesh
        return functools.partial(train_step, model=model, process=process)


TASK = NoisyClassifier()
