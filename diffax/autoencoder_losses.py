"""Training the latent-diffusion autoencoder (Rombach et al. 2022, sec. 3.1, appendix G): its loss,
the latent scale and the adversarial terms (`diffax.tasks.autoencoder` holds the train steps).

Pure functions of arrays. The loss is LDM's KL-regularised one: per example, the reconstruction
error summed over pixels plus `kl_weight` times KL(q(z|x) || N(0, I)) summed over latent
dimensions; optionally a perceptual distance (LPIPS, `diffax.metrics.lpips`) added to every
pixel's error, and the adversarial terms of the GAN step. Summing (not averaging) over
dimensions is what gives the paper's kl_weight = 1e-6 its meaning: the KL is a "slight" pull
towards a standard normal whatever the image size. Arrays are NHWC; losses are in nats-like units
per example, `[B]`.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffax.distributions import normal_kl

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


def latent_stats(total: Any, total_sq: Any, count: float) -> tuple[Any, Any]:
    """Returns (shift, scale) = (mean, 1 / std) from sums of latents and of their squares over
    `count` elements (float64 sums: the eval split is summed batch by batch, on the devices).

    LDM rescales the first stage's latents by one such scale (of all elements; 0.18215 for
    Stable Diffusion's VAE) so the diffusion model sees roughly unit-variance inputs; per channel
    (sums [z]) they are diffusers' latents_mean / latents_std. `normalize_latents(z, scale,
    shift)` then has zero mean and unit variance.
    """
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return mean, 1.0 / std


def normalize_latents(z: jax.Array, scale: Any, shift: Any = 0.0) -> jax.Array:
    """Returns (z - shift) * scale: latents as the diffusion model sees them."""
    return (z - shift) * scale


def denormalize_latents(z: jax.Array, scale: Any, shift: Any = 0.0) -> jax.Array:
    """Returns z / scale + shift: diffusion-model latents as the decoder takes them."""
    return z / scale + shift


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
