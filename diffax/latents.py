"""The frozen first stage of latent diffusion (Rombach et al. 2022, sec. 3): which autoencoder, its
latent scale, and encoding images to / decoding latents from what the denoiser sees.

The denoiser works on z = scale * (latent - shift), latent a draw from the autoencoder's posterior
q(z|x); samples are decoded as decode(z / scale + shift). With latent.normalization "scalar" (LDM)
shift is 0 and scale one number; with "per_channel" both are per latent channel [z], each
channel's mean and 1 / std from the workdir's latent_stats.json. The autoencoder is either a
trained diffax workdir (config.latent.autoencoder = "workdir": its checkpoint, saved config and
latent_stats.json) or a diffusers AutoencoderKL file (config.latent.autoencoder = "sd_vae",
loaded by diffax.vae_weights). In the diffusion config data.image_size and data.num_channels are
the latents'; `LatentSpace.image_data` is the data config the images are read with (size and
channels the autoencoder's).
"""

import dataclasses
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from diffax import autoencoder_losses, build, checkpointing, restore, sharding, tasks
from diffax.models.autoencoder import AutoencoderKL

# The autoencoder of Stable Diffusion (and of DiT, Peebles & Xie 2023 sec. 3.1): f = 8, 4 latent
# channels; used for an sd_vae file that comes without a diffusers config.json beside it.
SD_VAE_BLOCK_OUT_CHANNELS = (128, 256, 512, 512)
SD_VAE_LAYERS_PER_BLOCK = 2
STATS_FILE = "latent_stats.json"  # Written by the reconstruction evaluator.
# latent.normalization values: one scale for every latent (LDM), or a shift and scale per channel.
NORMALIZATIONS = ("scalar", "per_channel")


@dataclasses.dataclass(frozen=True)
class LatentSpace:
    """A frozen autoencoder and its scale: encodes image batches, decodes latents, on the mesh."""

    model: AutoencoderKL
    params: Any  # Replicated on the mesh.
    scale: Any  # The denoiser sees scale * (latent - shift): a float, or [z] per channel.
    source: str  # Absolute path of the autoencoder workdir or weights file.
    version: str  # What a cache of its latents must match: the checkpoint step or the file's stamp.
    image_data: ml_collections.ConfigDict  # The data config the images are read with.
    mesh: Mesh
    shift: Any = 0.0  # 0.0, or [z] per channel (latent.normalization="per_channel").

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """Returns [h, w, z] of one image's latents."""
        side = self.image_data.image_size // self.model.downsample_factor
        return (side, side, self.model.z_channels)

    def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Returns unscaled posterior (mean, logvar) [B, h, w, z] of a global batch [B, H, W, C]."""
        return _encode(self.model, self.params, images)

    def decode(self, latents: np.ndarray, batch_size: int) -> np.ndarray:
        """Returns float32 images [N, H, W, C] in [-1, 1] of normalised latents [N, h, w, z]
        (numpy): decode(z / scale + shift).

        Runs in padded batches of batch_size (a multiple of the device count): one compile.
        """
        latents = np.asarray(latents, np.float32)
        out = []
        batch_sharding = sharding.batch_sharding(self.mesh)
        for start in range(0, len(latents), batch_size):
            chunk = latents[start : start + batch_size]
            padded = np.zeros((batch_size, *chunk.shape[1:]), np.float32)
            padded[: len(chunk)] = chunk
            z = jax.device_put(padded, batch_sharding)
            images = _decode(self.model, self.params, z, self.scale, self.shift)
            out.append(sharding.to_host(images)[: len(chunk)])
        return np.concatenate(out) if out else np.zeros((0, *self.image_shape), np.float32)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Returns [H, W, C] of the images."""
        size = self.image_data.image_size
        return (size, size, self.image_data.num_channels)


@functools.partial(jax.jit, static_argnums=(0,))
def _encode(model: AutoencoderKL, params: Any, images: jax.Array):
    return model.apply({"params": params}, images, method=model.encode)


@functools.partial(jax.jit, static_argnums=(0,))
def _decode(model: AutoencoderKL, params: Any, z: jax.Array, scale: Any, shift: Any):
    latents = autoencoder_losses.denormalize_latents(
        z, jnp.asarray(scale, jnp.float32), jnp.asarray(shift, jnp.float32)
    )
    images = model.apply({"params": params}, latents, method=model.decode)
    return jnp.clip(images, -1.0, 1.0)


def _unfinished(workdir: str, reason: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"latent.autoencoder_workdir={workdir!r} {reason}: train the autoencoder there first "
        "(python -m diffax.main --config=configs/digits_autoencoder.py --workdir=...)."
    )


def autoencoder_config(workdir: str) -> tuple[ml_collections.ConfigDict, int]:
    """Returns (the config saved with a diffax autoencoder's newest checkpoint, its step).

    Raises FileNotFoundError in one sentence if there is no checkpoint or training is unfinished.
    """
    if not workdir:
        raise ValueError(
            "latent.autoencoder='workdir' needs latent.autoencoder_workdir, the workdir of a "
            "trained diffax autoencoder (e.g. of configs/digits_autoencoder.py)."
        )
    if not os.path.isdir(checkpointing.checkpoint_dir(workdir)):
        raise _unfinished(workdir, "holds no checkpoint")
    with checkpointing.managed(workdir, read_only=True) as manager:
        step = manager.latest_step()
        saved = checkpointing.saved_config(manager)
    if saved is None:
        raise _unfinished(workdir, "holds no checkpoint")
    config = ml_collections.ConfigDict(saved)
    if not tasks.is_autoencoder(config):
        raise ValueError(
            f"latent.autoencoder_workdir={workdir!r} holds a {config.model.name!r} model, not "
            "an autoencoder."
        )
    if step < config.training.num_steps:
        raise _unfinished(
            workdir, f"stopped at step {step} of {config.training.num_steps} (unfinished)"
        )
    return config, step


def image_data_config(
    config: ml_collections.ConfigDict, image_size: int, num_channels: int
) -> ml_collections.ConfigDict:
    """Returns config.data with the images' size and channels: what the autoencoder reads."""
    data = ml_collections.ConfigDict(config.data.to_dict())
    data.image_size, data.num_channels = image_size, num_channels
    return data


def check_shapes(
    config: ml_collections.ConfigDict, latent_shape: tuple[int, int, int], what: str
) -> None:
    """Raises ValueError if data.image_size / data.num_channels are not the latents' [h, w, z]."""
    side, _, channels = latent_shape
    if (config.data.image_size, config.data.num_channels) != (side, channels):
        raise ValueError(
            f"{what} gives {side}x{side}x{channels} latents, but data.image_size="
            f"{config.data.image_size} and data.num_channels={config.data.num_channels}: in a "
            f"latent config they are the latents' (set data.image_size={side}, "
            f"data.num_channels={channels})."
        )


def _read_stats(workdir: str, step: int, normalization: str) -> tuple[Any, Any]:
    """Returns (scale, shift) from WORKDIR/latent_stats.json, checked to be of checkpoint `step`:
    (a float, 0.0) for "scalar", float32 [z] arrays for "per_channel"."""
    path = os.path.join(workdir, STATS_FILE)
    if not os.path.exists(path):
        raise _unfinished(workdir, f"has no {STATS_FILE} (its evaluation writes it)")
    with open(path) as f:
        stats = json.load(f)
    if stats.get("step") != step:
        raise ValueError(
            f"{path} is of step {stats.get('step')} but the newest checkpoint is step {step}: run "
            "--mode=eval on the autoencoder workdir to refresh it, or set latent.scale."
        )
    if normalization == "scalar":
        return float(stats["scale"]), 0.0
    if "channel_scale" not in stats or "channel_shift" not in stats:
        raise ValueError(
            f"latent.normalization='per_channel' needs channel_shift and channel_scale in {path}, "
            "which has none (written before they existed): run --mode=eval on the autoencoder "
            "workdir to rewrite it, or set latent.normalization='scalar'."
        )
    return (
        np.asarray(stats["channel_scale"], np.float32),
        np.asarray(stats["channel_shift"], np.float32),
    )


def _from_workdir(config: ml_collections.ConfigDict, mesh: Mesh) -> LatentSpace:
    workdir = os.path.abspath(config.latent.autoencoder_workdir or "")
    ae_config, step = autoencoder_config(config.latent.autoencoder_workdir)
    if ae_config.data.num_levels != config.data.num_levels:
        raise ValueError(
            f"data.num_levels={config.data.num_levels}, but the autoencoder in {workdir} was "
            f"trained on images of {ae_config.data.num_levels} levels."
        )
    model = build.create_model(ae_config)
    f = model.downsample_factor
    size = ae_config.data.image_size
    check_shapes(config, (size // f, size // f, model.z_channels), f"The autoencoder in {workdir}")
    normalization = config.latent.get("normalization", "scalar")
    if config.latent.scale and normalization == "scalar":
        scale, shift = float(config.latent.scale), 0.0
    else:
        scale, shift = _read_stats(workdir, step, normalization)
    if normalization == "per_channel" and scale.shape != (model.z_channels,):
        raise ValueError(
            f"{os.path.join(workdir, STATS_FILE)} holds {scale.shape[0]} channel scales for "
            f"{model.z_channels} latent channels: run --mode=eval on the autoencoder workdir."
        )
    params, _ = restore.restore_eval_params(ae_config, workdir, mesh)
    return LatentSpace(
        model=model,
        params=jax.device_put(params, sharding.replicated(mesh)),
        scale=scale,
        shift=shift,
        source=workdir,
        version=f"step {step}",
        image_data=image_data_config(config, size, ae_config.data.num_channels),
        mesh=mesh,
    )


def sd_vae_model(config: ml_collections.ConfigDict) -> AutoencoderKL:
    """Returns the AutoencoderKL of latent.sd_vae_weights: its folder's config.json, else SD's."""
    from diffax import vae_weights

    path = config.latent.sd_vae_weights or ""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    if folder and os.path.exists(os.path.join(folder, "config.json")):
        return vae_weights.architecture_from_config_json(folder).model()
    return vae_weights.VaeConfig(
        block_out_channels=SD_VAE_BLOCK_OUT_CHANNELS, layers_per_block=SD_VAE_LAYERS_PER_BLOCK
    ).model()


def _from_sd_vae(config: ml_collections.ConfigDict, mesh: Mesh) -> LatentSpace:
    from diffax import vae_weights

    path = config.latent.sd_vae_weights
    if not path:
        raise ValueError(
            "latent.autoencoder='sd_vae' needs latent.sd_vae_weights, a diffusers AutoencoderKL "
            ".safetensors file (or its folder) on local disk."
        )
    if not os.path.exists(path):
        raise FileNotFoundError(f"latent.sd_vae_weights={path!r} does not exist.")
    if not config.latent.scale:
        raise ValueError(
            "latent.scale is unset: a weights file carries no latent statistics; set it "
            "(0.18215 for Stable Diffusion's VAE)."
        )
    model = sd_vae_model(config)
    f = model.downsample_factor
    check_shapes(
        config,
        (config.data.image_size, config.data.image_size, model.z_channels),
        f"latent.sd_vae_weights={path!r}",
    )
    params = vae_weights.load_autoencoder_params(path, model)
    stat = os.stat(path)
    return LatentSpace(
        model=model,
        params=jax.device_put(params, sharding.replicated(mesh)),
        scale=float(config.latent.scale),
        source=os.path.abspath(path),
        version=f"{stat.st_size} bytes, mtime {stat.st_mtime_ns}",
        image_data=image_data_config(config, config.data.image_size * f, model.in_channels),
        mesh=mesh,
    )


def load(config: ml_collections.ConfigDict, mesh: Mesh) -> LatentSpace:
    """Returns the config's frozen autoencoder; one-sentence errors if it is missing or unfit."""
    if config.latent.autoencoder == "workdir":
        return _from_workdir(config, mesh)
    return _from_sd_vae(config, mesh)
