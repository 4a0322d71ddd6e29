"""The one place a config becomes objects: the model, the diffusion process, the optimizer, shapes.

The tasks (`diffax.tasks`), evaluation, sampling and the tools all call these; a new backbone is one
module in `diffax/models/` plus one entry in `MODELS`. Which kind of model a config trains is the
tasks' question, not this module's.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from diffax import continuous, diffusion, inpainting, schedules, super_resolution
from diffax.models import autoencoder as autoencoder_model
from diffax.models import classifier as classifier_model
from diffax.models import dit, noise_schedule, text_encoder, unet


def part(config: ml_collections.ConfigDict, name: str) -> dict[str, Any]:
    """Returns config.model.<name> as its module's keyword arguments (sequences as tuples)."""
    section = config.model[name]
    return {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in section.items()}


def _shared(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Returns the fields every denoiser backbone reads beside its own section."""
    return dict(
        num_classes=num_classes(config),
        dtype=jnp.dtype(config.model.dtype),
        remat=config.model.remat,
        concat_cond=is_super_resolution(config) or is_inpainting(config),
        level_cond=embeds_level(config),
        pool_context=is_text_conditioned(config) and config.model.text.pool,
    )


def _unet(config: ml_collections.ConfigDict, out_channels: int) -> unet.UNet:
    """Returns ADM's U-Net of config.model.unet."""
    return unet.UNet(out_channels=out_channels, **part(config, "unet"), **_shared(config))


def _dit(config: ml_collections.ConfigDict, out_channels: int) -> dit.DiT:
    """Returns the Diffusion Transformer of config.model.dit."""
    return dit.DiT(out_channels=out_channels, **part(config, "dit"), **_shared(config))


def _noisy_classifier(
    config: ml_collections.ConfigDict, out_channels: int
) -> classifier_model.NoisyClassifier:
    """Returns the noisy classifier of config.model.classifier (data.num_classes logits;
    out_channels is unused: a classifier outputs no image)."""
    del out_channels
    return classifier_model.NoisyClassifier(
        num_classes=config.data.num_classes,
        dtype=jnp.dtype(config.model.dtype),
        remat=config.model.remat,
        **part(config, "classifier"),
    )


def _autoencoder_kl(
    config: ml_collections.ConfigDict, out_channels: int
) -> autoencoder_model.AutoencoderKL:
    """Returns the KL autoencoder of config.model.autoencoder (images in and out)."""
    del out_channels  # It reconstructs data.num_channels.
    return autoencoder_model.AutoencoderKL(
        in_channels=config.data.num_channels,
        out_channels=config.data.num_channels,
        dtype=jnp.dtype(config.model.dtype),
        **part(config, "autoencoder"),
    )


# config.model.name -> fn(config, out_channels) returning the flax module.
MODELS: dict[str, Callable[[ml_collections.ConfigDict, int], nn.Module]] = {
    "unet": _unet,
    "dit": _dit,
    "noisy_classifier": _noisy_classifier,
    "autoencoder_kl": _autoencoder_kl,
}
# config.model.name -> (its section of config.model, the module's check of that section).
SECTIONS: dict[str, tuple[str, Callable[[Any, str, int], None]]] = {
    "unet": ("unet", unet.check_hyperparameters),
    "dit": ("dit", dit.check_hyperparameters),
    "noisy_classifier": ("classifier", unet.check_hyperparameters),  # ADM's U-Net encoder.
    "autoencoder_kl": ("autoencoder", autoencoder_model.check_hyperparameters),
}


def check_backbone(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError in one sentence if config.model's section for model.name builds no
    backbone for data.image_size images (the check is the backbone module's own)."""
    section, check = SECTIONS[config.model.name]
    check(config.model[section], f"model.{section}.", config.data.image_size)


# Backbones that cross-attend to a context (model.text_cond).
TEXT_BACKBONES = ("unet", "dit")


def is_super_resolution(config: ml_collections.ConfigDict) -> bool:
    """Returns whether the denoiser is conditioned on a low-resolution copy of its image."""
    return config.super_resolution.low_res_size > 0


def embeds_level(config: ml_collections.ConfigDict) -> bool:
    """Returns whether a super-resolution model takes its augmentation level s as an input
    (super_resolution.level_cond; ADM's upsamplers do not)."""
    return is_super_resolution(config) and config.super_resolution.get("level_cond", True)


def is_inpainting(config: ml_collections.ConfigDict) -> bool:
    """Returns whether the denoiser is conditioned on a masked image and its mask."""
    return bool(config.inpainting.mask_cond)


def conditioning_fn(
    config: ml_collections.ConfigDict, train: bool
) -> Callable[[jax.Array, jax.Array], dict] | None:
    """Returns fn(images [B, H, W, C], key) -> the backbone's further inputs made from the batch
    (super-resolution: the low-resolution image and aug_level, s random in training, fixed in
    evaluation; inpainting: the masked image and the mask, random masks in training, eval_mask in
    evaluation), or None for a model that needs none."""
    if is_inpainting(config):
        ip = config.inpainting
        size = config.data.image_size

        def masked(images, key):
            if train:
                masks = inpainting.random_masks(key, images.shape[0], size, tuple(ip.train_masks))
            else:
                masks = jnp.broadcast_to(
                    inpainting.fixed_mask(ip.eval_mask, size), (*images.shape[:3], 1)
                )
            return inpainting.conditioning(images, masks)

        return masked
    if not is_super_resolution(config):
        return None
    sr = config.super_resolution
    return functools.partial(
        super_resolution.conditioning,
        low_res_size=sr.low_res_size,
        aug_level=sr.train_aug_max if train else sr.sample_aug_level,
        random_level=train,
        method=sr.upsample_method,
        embed_level=embeds_level(config),
    )


# config.latent.autoencoder values: "" diffuses pixels; the others name where the frozen first
# stage comes from (diffax.latents loads it).
LATENT_AUTOENCODERS = ("", "workdir", "sd_vae")


def is_latent(config: ml_collections.ConfigDict) -> bool:
    """Returns whether the diffusion model runs on an autoencoder's latents (config.latent)."""
    latent = config.get("latent")
    return bool(latent is not None and latent.get("autoencoder"))


def data_levels(config: ml_collections.ConfigDict) -> int:
    """Returns the levels of what the denoiser models: data.num_levels for images, 0 for latents
    (continuous values: the bound ends in a Gaussian density, not a discretized decoder)."""
    return 0 if is_latent(config) else config.data.num_levels


def image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """Returns [H, W, C] of the images the model sees (the latents', for latent diffusion)."""
    return (config.data.image_size, config.data.image_size, config.data.num_channels)


def num_classes(config: ml_collections.ConfigDict) -> int:
    """Returns the classes the model conditions on (0: unconditional); label K is the null class."""
    return config.data.num_classes if config.model.class_cond else 0


def lacks_null_class(config: ml_collections.ConfigDict) -> bool:
    """Returns whether a class-conditional model has no null class (model.unet.null_class=False,
    as ADM's checkpoints): nothing can stand for "no label", so p(x) and guidance by it do not
    exist."""
    unet_without = config.model.name == "unet" and not config.model.unet.get("null_class", True)
    return bool(num_classes(config)) and unet_without


def is_text_conditioned(config: ml_collections.ConfigDict) -> bool:
    """Returns whether the model reads captions (model.text_cond: a text encoder beside it)."""
    return bool(config.model.get("text_cond", False))


def has_stored_embeddings(config: ml_collections.ConfigDict) -> bool:
    """Returns whether the text context comes from files beside the data (data.text_embeddings:
    diffax.text_embeddings), not from diffax's own encoder."""
    return bool(config.data.get("text_embeddings"))


def _text_encoder(config: ml_collections.ConfigDict) -> text_encoder.TextEncoder:
    """Returns the byte-level text encoder of config.model.text (`pool` is the backbone's)."""
    kwargs = part(config, "text")
    del kwargs["pool"]
    return text_encoder.TextEncoder(
        max_length=config.data.text_length, dtype=jnp.dtype(config.model.dtype), **kwargs
    )


def create_model(config: ml_collections.ConfigDict) -> nn.Module:
    """Returns the backbone named by config.model.name, with 2C outputs for a learned variance;
    with model.text_cond, wrapped with a text encoder whose output it cross-attends to, or with
    data.text_embeddings, wrapped to take the stored embeddings as its context."""
    learn_sigma = config.diffusion.var_type in diffusion.LEARNED_VAR_TYPES
    out_channels = config.data.num_channels * (2 if learn_sigma else 1)
    backbone = MODELS[config.model.name](config, out_channels)
    if is_text_conditioned(config) and has_stored_embeddings(config):
        return text_encoder.ContextConditioned(
            denoiser=backbone, length=config.data.text_length, width=config.model.text.width
        )
    if is_text_conditioned(config):
        return text_encoder.TextConditioned(denoiser=backbone, encoder=_text_encoder(config))
    return backbone


@dataclasses.dataclass(frozen=True)
class ContinuousProcess:
    """A continuous-time process (diffax.continuous) as training, eval and sampling use it.

    With the learned schedule the parameters are {"model", "schedule"}; `gamma_fn(params)` and
    `model_params(params)` give each part (fixed schedules: the parameters are the model's).
    """

    schedule: str  # One of continuous.SCHEDULES.
    gamma_range: tuple[float, float]  # The model's conditioning range of gamma = -log SNR.
    fixed_gamma: Callable | None  # gamma_fn of a fixed schedule; None when learned.
    schedule_module: nn.Module | None  # The learned schedule; None when fixed.
    mean_type: str
    learn_sigma: bool = False  # The bound fixes the reverse variance: C output channels.

    @property
    def learned(self) -> bool:
        """Returns whether the schedule is learned (its parameters live beside the model's)."""
        return self.schedule_module is not None

    def gamma_fn(self, params: Any) -> Callable:
        """Returns t [B] -> gamma(t) [B] for these parameters."""
        if not self.learned:
            return self.fixed_gamma
        return lambda t: self.schedule_module.apply({"params": params["schedule"]}, t)

    def model_params(self, params: Any) -> Any:
        """Returns the network's part of the parameters."""
        return params["model"] if self.learned else params


def schedule_module(config: ml_collections.ConfigDict) -> noise_schedule.NoiseSchedule:
    """Returns the learned schedule of config.diffusion (gamma_min, gamma_max, schedule_hidden)."""
    d = config.diffusion
    return noise_schedule.NoiseSchedule(
        gamma_min=d.get("gamma_min", continuous.GAMMA_MIN),
        gamma_max=d.get("gamma_max", continuous.GAMMA_MAX),
        hidden=d.get("schedule_hidden", 1024),
    )


def continuous_process(config: ml_collections.ConfigDict) -> ContinuousProcess:
    """Returns the continuous-time process of config.diffusion (fixed or learned gamma)."""
    d = config.diffusion
    learned = d.gamma_schedule == "learned"
    return ContinuousProcess(
        schedule=d.gamma_schedule,
        gamma_range=tuple(
            continuous.conditioning_range(d.gamma_schedule, d.gamma_min, d.gamma_max)
        ),
        fixed_gamma=None
        if learned
        else continuous.get_gamma_fn(d.gamma_schedule, d.gamma_min, d.gamma_max),
        schedule_module=schedule_module(config) if learned else None,
        mean_type=d.mean_type,
    )


def discrete_process(config: ml_collections.ConfigDict) -> diffusion.GaussianDiffusion:
    """Returns the discrete-time process of config.diffusion (its beta schedule, T, mean, variance
    and loss types)."""
    d = config.diffusion
    betas = schedules.get_named_beta_schedule(d.schedule, d.num_timesteps)
    return diffusion.GaussianDiffusion.create(
        betas, mean_type=d.mean_type, var_type=d.var_type, loss_type=d.loss_type
    )


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Returns linear warmup to the peak rate, then constant (as DDPM and improved DDPM)."""
    training = config.training
    if training.warmup_steps <= 0:
        return optax.constant_schedule(training.learning_rate)
    return optax.linear_schedule(0.0, training.learning_rate, training.warmup_steps)


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Returns AdamW with warmup and optional global-norm clipping (config.training)."""
    training = config.training
    adamw = optax.adamw(
        learning_rate_schedule(config),
        b1=training.adam_b1,
        b2=training.adam_b2,
        weight_decay=training.weight_decay,
    )
    if training.grad_clip > 0:
        adamw = optax.chain(optax.clip_by_global_norm(training.grad_clip), adamw)
    return adamw
