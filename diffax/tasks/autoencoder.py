"""The latent-diffusion autoencoder (Rombach et al. 2022, sec. 3.1, appendix G): its train steps
(with or without the PatchGAN discriminator), optimizer, parameters and evaluator.

The losses are pure functions in `diffax.autoencoder_losses`.
"""

import functools
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from diffax import autoencoder_losses, build, config_checks
from diffax.models import autoencoder as autoencoder_model
from diffax.tasks import base
from diffax.train_state import TrainState, update_metrics

GAN_HALVES = ("autoencoder", "discriminator")


def is_gan(config: ml_collections.ConfigDict) -> bool:
    """Returns whether the autoencoder trains against a PatchGAN discriminator (its params are then
    {"autoencoder", "discriminator"}; `autoencoder_params` picks the first)."""
    return config.training.get("disc_weight", 0.0) > 0


def create_discriminator(config: ml_collections.ConfigDict) -> autoencoder_model.PatchDiscriminator:
    """Returns the PatchGAN discriminator of config.model.discriminator (an autoencoder GAN)."""
    return autoencoder_model.PatchDiscriminator(
        dtype=jnp.dtype(config.model.dtype), **build.part(config, "discriminator")
    )


def autoencoder_params(config: ml_collections.ConfigDict, params: Any) -> Any:
    """Returns the autoencoder's part of an autoencoder run's params (all of them without a GAN)."""
    return params["autoencoder"] if is_gan(config) else params


def perceptual_fn(config: ml_collections.ConfigDict) -> Callable | None:
    """Returns the frozen LPIPS fn(x, x_hat) -> [B] (training.lpips_weights), or None when
    training.perceptual_weight is 0 or, logged once, no weights file is given."""
    training = config.training
    if training.get("perceptual_weight", 0.0) <= 0:
        return None
    if not training.lpips_weights:
        logging.warning(
            "training.perceptual_weight=%s but training.lpips_weights is empty: the LPIPS term "
            "is skipped (diffax never downloads; python -m diffax.tools.convert_lpips makes the "
            "file).",
            training.perceptual_weight,
        )
        return None
    from diffax.metrics import lpips  # Only runs with a perceptual term load the network.

    return lpips.distance_fn(training.lpips_weights)


def init_params(rng: jax.Array, model: nn.Module, image_shape: tuple[int, int, int]) -> Any:
    """Returns fresh autoencoder params for images `image_shape` = [H, W, C] (pure)."""
    x = jnp.zeros((1, *image_shape), jnp.float32)
    return model.init({"params": rng}, x, sample_posterior=False)["params"]


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    kl_weight: float = autoencoder_losses.DEFAULT_KL_WEIGHT,
    reconstruction: str = "l1",
    perceptual_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    perceptual_weight: float = 1.0,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step of the autoencoder on {"image": [B, H, W, C], ...}; pure.

    perceptual_fn(x, x_hat) -> [B] (LPIPS, frozen) adds the perceptual term of `autoencoder_loss`.

    Mirrors the denoiser's step: the posterior sample is drawn from fold_in(state.rng,
    state.step); labels are ignored; the sampler_state is left unchanged. Metrics (scalars):
    loss, rec, kl (batch means, per example as in `autoencoder_loss`), grad_norm, skipped,
    consecutive_skips.
    """
    images = batch["image"]
    key = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
        x_hat, mean, logvar = model.apply({"params": params}, images, key, sample_posterior=True)
        p = None if perceptual_fn is None else perceptual_fn(images, x_hat)
        terms = autoencoder_losses.autoencoder_loss(
            images, x_hat, mean, logvar, kl_weight, reconstruction, p, perceptual_weight
        )
        return jnp.mean(terms["loss"]), terms

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads)
    metrics = {
        "loss": loss,
        "rec": jnp.mean(terms["rec"]),
        "kl": jnp.mean(terms["kl"]),
        **({"p_loss": jnp.mean(terms["p_loss"])} if "p_loss" in terms else {}),
        **update_metrics(grads, new_state),
    }
    return new_state, metrics


def init_gan_params(
    rng: jax.Array,
    model: nn.Module,
    discriminator: nn.Module,
    image_shape: tuple[int, int, int],
) -> dict[str, Any]:
    """Returns {"autoencoder": ..., "discriminator": ...} params: what `gan_train_step` trains."""
    ae_rng, disc_rng = jax.random.split(rng)
    x = jnp.zeros((1, *image_shape), jnp.float32)
    return {
        "autoencoder": init_params(ae_rng, model, image_shape),
        "discriminator": discriminator.init({"params": disc_rng}, x)["params"],
    }


def gan_train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    discriminator: nn.Module,
    kl_weight: float = autoencoder_losses.DEFAULT_KL_WEIGHT,
    disc_weight: float = 0.5,
    disc_start: int = 50_001,
    reconstruction: str = "l1",
    last_layer: tuple[str, ...] = ("decoder", "conv_out", "kernel"),
    perceptual_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    perceptual_weight: float = 1.0,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One step of the autoencoder and its PatchGAN discriminator on {"image": [B, H, W, C]}; pure.

    state.params is `init_gan_params`' tree; one optimizer updates both halves (Adam acts per
    parameter, so this is two Adams of the same hyperparameters). The autoencoder minimises rec +
    kl_weight kl + factor * disc_weight * w * g_loss with w = `adaptive_weight` at `last_layer`;
    the discriminator minimises factor * hinge loss on (x, stop_gradient(x_hat)). factor is 0
    before step disc_start (the warm-up: a plain `train_step` until then), 1 after; perceptual_fn
    as in `train_step`. Metrics:
    loss, rec, kl (as `train_step`), g_loss, d_loss, d_weight, logits_real, logits_fake,
    grad_norm, skipped, consecutive_skips.
    """
    images = batch["image"]
    key = jax.random.fold_in(state.rng, state.step)
    ae_params, disc_params = state.params["autoencoder"], state.params["discriminator"]
    factor = jnp.where(state.step >= disc_start, 1.0, 0.0)
    discriminate = lambda params, x: discriminator.apply({"params": params}, x)

    def forward(params):
        return model.apply({"params": params}, images, key, sample_posterior=True)

    (x_hat, mean, logvar), backward = jax.vjp(forward, ae_params)

    def vae_loss(x_hat, mean, logvar):  # LDM's nll + kl: the perceptual term is in the ratio w.
        p = None if perceptual_fn is None else perceptual_fn(images, x_hat)
        terms = autoencoder_losses.autoencoder_loss(
            images, x_hat, mean, logvar, kl_weight, reconstruction, p, perceptual_weight
        )
        return jnp.mean(terms["loss"]), terms

    (_, terms), vae_cotangents = jax.value_and_grad(vae_loss, argnums=(0, 1, 2), has_aux=True)(
        x_hat, mean, logvar
    )
    g_loss, g_cotangent = jax.value_and_grad(
        lambda x: jnp.mean(
            autoencoder_losses.generator_adversarial_loss(discriminate(disc_params, x))
        )
    )(x_hat)
    # Two backward passes through the autoencoder; the gradient is linear in the cotangents.
    (vae_grads,) = backward(vae_cotangents)
    (adv_grads,) = backward((g_cotangent, jnp.zeros_like(mean), jnp.zeros_like(logvar)))
    at_last = lambda tree: flax.traverse_util.flatten_dict(tree)[last_layer]
    d_weight = jax.lax.stop_gradient(
        disc_weight * autoencoder_losses.adaptive_weight(at_last(vae_grads), at_last(adv_grads))
    )
    ae_grads = jax.tree.map(lambda v, a: v + factor * d_weight * a, vae_grads, adv_grads)

    def disc_loss(params):
        logits_real = discriminate(params, images)
        logits_fake = discriminate(params, jax.lax.stop_gradient(x_hat))
        loss = factor * jnp.mean(
            autoencoder_losses.hinge_discriminator_loss(logits_real, logits_fake)
        )
        return loss, (jnp.mean(logits_real), jnp.mean(logits_fake))

    (d_loss, (logits_real, logits_fake)), disc_grads = jax.value_and_grad(disc_loss, has_aux=True)(
        disc_params
    )
    grads = {"autoencoder": ae_grads, "discriminator": disc_grads}
    new_state = state.apply_gradients(grads)
    metrics = {
        "loss": jnp.mean(terms["loss"]) + factor * d_weight * g_loss,
        "rec": jnp.mean(terms["rec"]),
        "kl": jnp.mean(terms["kl"]),
        **({"p_loss": jnp.mean(terms["p_loss"])} if "p_loss" in terms else {}),
        "g_loss": g_loss,
        "d_loss": d_loss,
        "d_weight": d_weight,
        "logits_real": logits_real,
        "logits_fake": logits_fake,
        **update_metrics(grads, new_state),
    }
    return new_state, metrics


class Autoencoder(base.Task):
    """The KL autoencoder of latent diffusion, optionally against a PatchGAN discriminator."""

    name = "autoencoder"
    model_names = ("autoencoder_kl",)  # Called as (x, key), not as denoisers.
    evaluator_names = ("reconstruction",)

    def check(self, config):
        """Checks the loss fields (reconstruction, KL, GAN, LPIPS) and that no latents or labels
        are asked for."""
        super().check(config)
        m, data, training = config.model, config.data, config.training
        ConfigError = config_checks.ConfigError
        if build.is_latent(config):
            raise ConfigError(
                f"latent.autoencoder={config.latent.autoencoder!r} trains a denoiser on latents, "
                f"but model.name={m.name!r} is not one; use 'unet' or 'dit'."
            )
        config_checks.choice(
            training.reconstruction_loss,
            "training.reconstruction_loss",
            autoencoder_losses.RECONSTRUCTION_KINDS,
        )
        config_checks.number(training.kl_weight, "training.kl_weight", 0.0, float("inf"))
        if is_gan(config):
            disc = m.discriminator
            config_checks.positive_int(disc.ndf, "model.discriminator.ndf")
            config_checks.positive_int(disc.num_layers, "model.discriminator.num_layers")
            if data.image_size // 2**disc.num_layers - 2 < 1:
                raise ConfigError(
                    f"model.discriminator.num_layers={disc.num_layers} leaves the discriminator "
                    f"no patch of a {data.image_size}-pixel image (it needs data.image_size >= "
                    f"{3 * 2**disc.num_layers}); lower model.discriminator.num_layers."
                )
        if m.class_cond:
            raise ConfigError(f"model.name={m.name!r} ignores labels: set model.class_cond=False.")
        path = training.lpips_weights
        if training.perceptual_weight > 0 and path and not os.path.isfile(path):
            raise ConfigError(
                f"training.lpips_weights={path!r} is not a file: give the .safetensors or .npz "
                "that python -m diffax.tools.convert_lpips writes, or '' to skip the term."
            )

    def init_params(self, rng, model, config):
        shape = build.image_shape(config)
        if is_gan(config):
            return init_gan_params(rng, model, create_discriminator(config), shape)
        return init_params(rng, model, shape)

    def create_optimizer(self, config):
        """Returns AdamW; for a GAN one per half (as LDM's two optimizers), so clipping the
        autoencoder's large gradients never shrinks the discriminator's."""
        adamw = build.create_optimizer(config)
        if not is_gan(config):
            return adamw
        return optax.multi_transform(
            dict.fromkeys(GAN_HALVES, adamw),
            lambda params: {k: jax.tree.map(lambda _, k=k: k, params[k]) for k in GAN_HALVES},
        )

    def train_step(self, config, model, process, mesh=None):
        del process, mesh
        training = config.training
        common = dict(
            model=model,
            kl_weight=training.kl_weight,
            reconstruction=training.reconstruction_loss,
            perceptual_fn=perceptual_fn(config),
            perceptual_weight=training.perceptual_weight,
        )
        if is_gan(config):
            return functools.partial(
                gan_train_step,
                discriminator=create_discriminator(config),
                disc_weight=training.disc_weight,
                disc_start=training.disc_start,
                **common,
            )
        return functools.partial(train_step, **common)

    def eval_params(self, state, config):
        return autoencoder_params(config, super().eval_params(state, config))


TASK = Autoencoder()
