"""Training the latent-diffusion autoencoder (Rombach et al. 2022, sec. 3.1, appendix G): its loss,
the latent scale, and a train step with the contract of `diffax.train.train_step`.

Pure functions of arrays. The loss is LDM's KL-regularised one: per example, the reconstruction
error summed over pixels plus `kl_weight` times KL(q(z|x) || N(0, I)) summed over latent
dimensions; optionally a perceptual distance (LPIPS, `diffax.metrics.lpips`) added to every
pixel's error, and the adversarial terms of `gan_train_step`. Summing (not averaging) over
dimensions is what gives the paper's kl_weight = 1e-6 its meaning: the KL is a "slight" pull
towards a standard normal whatever the image size. Arrays are NHWC; losses are in nats-like units
per example, `[B]`.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import optax

from diffax.distributions import normal_kl
from diffax.train_state import TrainState

# reconstruction_loss kinds: absolute error (LDM's default) or squared error.
RECONSTRUCTION_KINDS = ("l1", "l2")
# LDM's weight of the KL term: a "slight KL-penalty towards a standard normal" (sec. 3.1).
DEFAULT_KL_WEIGHT = 1e-6


def _sum_flat(x: jax.Array) -> jax.Array:
    """Returns the sum over every axis but the first: [B, ...] -> [B]."""
    return jnp.sum(x, axis=tuple(range(1, x.ndim)))


def kl_to_standard_normal(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """Returns KL(N(mean, exp(logvar)) || N(0, I)) in nats per example `[B]`, summed over latents.

    Closed form 0.5 sum(mean^2 + exp(logvar) - 1 - logvar); mean and logvar are `[B, h, w, z]`.
    """
    zeros = jnp.zeros_like(mean)
    return _sum_flat(normal_kl(mean.astype(jnp.float32), logvar.astype(jnp.float32), zeros, zeros))


def reconstruction_loss(x: jax.Array, x_hat: jax.Array, kind: str = "l1") -> jax.Array:
    """Returns the reconstruction error per example `[B]`, summed over pixels and channels.

    kind "l1": sum |x - x_hat| (LDM's pixel loss); "l2": sum (x - x_hat)^2.
    """
    diff = x.astype(jnp.float32) - x_hat.astype(jnp.float32)
    if kind == "l1":
        return _sum_flat(jnp.abs(diff))
    if kind == "l2":
        return _sum_flat(jnp.square(diff))
    raise ValueError(f"reconstruction kind must be one of {RECONSTRUCTION_KINDS}, got {kind!r}")


def autoencoder_loss(
    x: jax.Array,
    x_hat: jax.Array,
    mean: jax.Array,
    logvar: jax.Array,
    kl_weight: float = DEFAULT_KL_WEIGHT,
    kind: str = "l1",
    perceptual: jax.Array | None = None,
    perceptual_weight: float = 1.0,
) -> dict[str, jax.Array]:
    """Returns {"loss": rec + perceptual_weight H W C p_loss + kl_weight kl, "rec", "kl"} (and
    "p_loss" with a perceptual distance), each per example `[B]`.

    x, x_hat: `[B, H, W, C]`; mean, logvar: the posterior `[B, h, w, z]` that x_hat was decoded
    from (a sample of it, in training); perceptual: a distance per example `[B]` (LPIPS), which
    LDM adds to every pixel's error before summing, hence the H W C.
    """
    rec = reconstruction_loss(x, x_hat, kind)
    kl = kl_to_standard_normal(mean, logvar)
    terms = {"loss": rec + kl_weight * kl, "rec": rec, "kl": kl}
    if perceptual is not None:
        terms["p_loss"] = perceptual
        terms["loss"] = terms["loss"] + perceptual_weight * x[0].size * perceptual
    return terms


def psnr(x: jax.Array, x_hat: jax.Array, data_range: float = 2.0) -> jax.Array:
    """Returns the peak signal-to-noise ratio in dB per example `[B]` (data_range 2 for [-1, 1])."""
    mse = jnp.mean(
        jnp.square(x.astype(jnp.float32) - x_hat.astype(jnp.float32)),
        axis=tuple(range(1, x.ndim)),
    )
    return 10.0 * jnp.log10(data_range**2 / jnp.maximum(mse, 1e-20))


def latent_scale(latents: jax.Array) -> jax.Array:
    """Returns the float32 scalar 1 / std of all elements of latents `[N, h, w, z]`.

    LDM rescales the first stage's latents by this one number (estimated on a batch of encoded
    training images; 0.18215 for Stable Diffusion's VAE), so the diffusion model sees roughly
    unit-variance inputs: feed it `latents * scale`, decode `z / scale`.
    """
    return 1.0 / jnp.std(latents.astype(jnp.float32))


def latent_channel_stats(latents: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns float32 (shift [z], scale [z]): per-channel mean and 1 / std of `[N, h, w, z]`.

    `normalize_latents(latents, scale, shift)` then has zero mean and unit variance per channel
    (the per-channel form of `latent_scale`, as diffusers' latents_mean / latents_std).
    """
    latents = latents.astype(jnp.float32).reshape(-1, latents.shape[-1])
    return jnp.mean(latents, axis=0), 1.0 / jnp.std(latents, axis=0)


def normalize_latents(z: jax.Array, scale: Any, shift: Any = 0.0) -> jax.Array:
    """Returns (z - shift) * scale: latents as the diffusion model sees them."""
    return (z - shift) * scale


def denormalize_latents(z: jax.Array, scale: Any, shift: Any = 0.0) -> jax.Array:
    """Returns z / scale + shift: diffusion-model latents as the decoder takes them."""
    return z / scale + shift


def init_params(rng: jax.Array, model: nn.Module, image_shape: tuple[int, int, int]) -> Any:
    """Returns fresh autoencoder params for images `image_shape` = [H, W, C] (pure)."""
    x = jnp.zeros((1, *image_shape), jnp.float32)
    return model.init({"params": rng}, x, sample_posterior=False)["params"]


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    kl_weight: float = DEFAULT_KL_WEIGHT,
    reconstruction: str = "l1",
    perceptual_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    perceptual_weight: float = 1.0,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step of the autoencoder on {"image": [B, H, W, C], ...}; pure.

    perceptual_fn(x, x_hat) -> [B] (LPIPS, frozen) adds the perceptual term of `autoencoder_loss`.

    Mirrors `diffax.train.train_step`: the posterior sample is drawn from fold_in(state.rng,
    state.step); labels are ignored; the sampler_state is left unchanged. Metrics (scalars):
    loss, rec, kl (batch means, per example as in `autoencoder_loss`), grad_norm, skipped,
    consecutive_skips.
    """
    images = batch["image"]
    key = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
        x_hat, mean, logvar = model.apply({"params": params}, images, key, sample_posterior=True)
        p = None if perceptual_fn is None else perceptual_fn(images, x_hat)
        terms = autoencoder_loss(
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
        "grad_norm": optax.global_norm(grads),
        "skipped": new_state.skipped,
        "consecutive_skips": new_state.consecutive_skips,
    }
    return new_state, metrics


# --- The adversarial term (LDM's LPIPSWithDiscriminator) -----------------------------------------


def hinge_discriminator_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """Returns 0.5 (mean relu(1 - D(x)) + mean relu(1 + D(x_hat))) per example `[B]`."""
    real = jnp.mean(jax.nn.relu(1.0 - logits_real), axis=tuple(range(1, logits_real.ndim)))
    fake = jnp.mean(jax.nn.relu(1.0 + logits_fake), axis=tuple(range(1, logits_fake.ndim)))
    return 0.5 * (real + fake)


def generator_adversarial_loss(logits_fake: jax.Array) -> jax.Array:
    """Returns -mean D(x_hat) per example `[B]`: the autoencoder's side of the hinge GAN."""
    return -jnp.mean(logits_fake, axis=tuple(range(1, logits_fake.ndim)))


def adaptive_weight(rec_grad: jax.Array, adv_grad: jax.Array, max_weight: float = 1e4) -> jax.Array:
    """Returns ||rec_grad|| / (||adv_grad|| + 1e-4), clipped to [0, max_weight] (VQGAN eq. 7).

    Both are gradients with respect to the decoder's last layer; the ratio balances the
    adversarial term against the reconstruction (Esser et al. 2021).
    """
    ratio = jnp.linalg.norm(rec_grad) / (jnp.linalg.norm(adv_grad) + 1e-4)
    return jnp.clip(ratio, 0.0, max_weight)


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
    kl_weight: float = DEFAULT_KL_WEIGHT,
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
        terms = autoencoder_loss(
            images, x_hat, mean, logvar, kl_weight, reconstruction, p, perceptual_weight
        )
        return jnp.mean(terms["loss"]), terms

    (_, terms), vae_cotangents = jax.value_and_grad(vae_loss, argnums=(0, 1, 2), has_aux=True)(
        x_hat, mean, logvar
    )
    g_loss, g_cotangent = jax.value_and_grad(
        lambda x: jnp.mean(generator_adversarial_loss(discriminate(disc_params, x)))
    )(x_hat)
    # Two backward passes through the autoencoder; the gradient is linear in the cotangents.
    (vae_grads,) = backward(vae_cotangents)
    (adv_grads,) = backward((g_cotangent, jnp.zeros_like(mean), jnp.zeros_like(logvar)))
    at_last = lambda tree: flax.traverse_util.flatten_dict(tree)[last_layer]
    d_weight = jax.lax.stop_gradient(
        disc_weight * adaptive_weight(at_last(vae_grads), at_last(adv_grads))
    )
    ae_grads = jax.tree.map(lambda v, a: v + factor * d_weight * a, vae_grads, adv_grads)

    def disc_loss(params):
        logits_real = discriminate(params, images)
        logits_fake = discriminate(params, jax.lax.stop_gradient(x_hat))
        loss = factor * jnp.mean(hinge_discriminator_loss(logits_real, logits_fake))
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
        "grad_norm": optax.global_norm(grads),
        "skipped": new_state.skipped,
        "consecutive_skips": new_state.consecutive_skips,
    }
    return new_state, metrics
