"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, sec. 3.1, appendix G).

An encoder maps an image `[B, H, W, C]` to the mean and log-variance of a diagonal Gaussian
posterior over latents `[B, H/f, W/f, z]`, `f = 2**(len(block_out_channels) - 1)`; a decoder maps
latents back to images. Both are stacks of pre-activation residual blocks (GroupNorm, SiLU, 3x3
conv), with one single-head self-attention block at the lowest resolution, as the paper's first
stage (the VQGAN/LDM autoencoder; Stable Diffusion's VAE is `block_out_channels=(128, 256, 512,
512)`, `layers_per_block=2`, `z_channels=4`, f = 8).

Parameter names mirror the diffusers `AutoencoderKL` state dict (`encoder/down_blocks_0/resnets_1/
conv1` holds `encoder.down_blocks.0.resnets.1.conv1.*`), so `diffax.vae_weights` maps names one to
one; the layer order was checked against that layout, nothing is copied from it. The loss and the
latent scale are pure functions in `diffax.autoencoder_losses`. Tensors are NHWC.
"""

import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffax.config_checks import ConfigError, int_tuple, positive_int
from diffax.models.layers import upsample_nearest

Dtype = Any

# The reference clamps the posterior log-variance so exp(logvar) neither under- nor overflows.
LOGVAR_MIN = -30.0
LOGVAR_MAX = 20.0
# GroupNorm epsilon of the LDM / Stable Diffusion autoencoder (torch's default is 1e-5).
NORM_EPS = 1e-6


def downsample_factor(block_out_channels: tuple[int, ...]) -> int:
    """Returns f = 2**(levels - 1): each level but the last halves H and W."""
    return 2 ** (len(block_out_channels) - 1)


def _group_norm(x: jax.Array, groups: int, name: str) -> jax.Array:
    """Returns GroupNorm(groups, eps 1e-6) of `x` with float32 statistics, cast back to x.dtype."""
    norm = nn.GroupNorm(
        num_groups=groups,
        epsilon=NORM_EPS,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        # Two-pass variance: E[x^2] - E[x]^2 loses digits on large activations.
        use_fast_variance=False,
        name=name,
    )
    return norm(x.astype(jnp.float32)).astype(x.dtype)


def _conv(
    features: int,
    kernel: int,
    dtype: Dtype,
    name: str | None,
    stride: int = 1,
    padding: tuple[tuple[int, int], tuple[int, int]] | None = None,
) -> nn.Conv:
    """Returns a square conv, by default with symmetric padding `kernel // 2` (3x3 -> pad 1)."""
    pad = kernel // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=padding or ((pad, pad), (pad, pad)),
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )


class ResnetBlock(nn.Module):
    """x + conv(SiLU(GN(conv(SiLU(GN(x)))))), with a 1x1 conv on the skip when channels change.

    No timestep embedding and no dropout: the autoencoder's blocks are the U-Net's without them.
    """

    out_channels: int
    norm_num_groups: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Returns `[B, H, W, out_channels]` from `[B, H, W, C]`."""
        h = nn.silu(_group_norm(x, self.norm_num_groups, "norm1"))
        h = _conv(self.out_channels, 3, self.dtype, "conv1")(h)
        h = nn.silu(_group_norm(h, self.norm_num_groups, "norm2"))
        h = _conv(self.out_channels, 3, self.dtype, "conv2")(h)
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, 1, self.dtype, "conv_shortcut")(x)
        return x + h


class Attention(nn.Module):
    """Single-head spatial self-attention with a residual: x + to_out(softmax(q k^T / sqrt(C)) v).

    q, k, v and the output projection are dense layers on the flattened positions (the 1x1 convs of
    the original code); logits and softmax are computed in float32.
    """

    norm_num_groups: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Returns `[B, H, W, C]`, the same shape as `x`."""
        batch, height, width, channels = x.shape
        h = _group_norm(x, self.norm_num_groups, "group_norm")
        h = h.reshape(batch, height * width, channels)  # [B, L, C]
        dense = lambda name: nn.Dense(
            channels, dtype=self.dtype, param_dtype=jnp.float32, name=name
        )
        q, k, v = dense("to_q")(h), dense("to_k")(h), dense("to_v")(h)  # [B, L, C] each
        logits = jnp.einsum("bqc,bkc->bqk", q, k, preferred_element_type=jnp.float32)
        weights = jax.nn.softmax(logits / math.sqrt(channels), axis=-1).astype(self.dtype)
        out = jnp.einsum("bqk,bkc->bqc", weights, v)  # [B, L, C]
        out = dense("to_out")(out)
        return x + out.reshape(batch, height, width, channels).astype(x.dtype)


class Downsample(nn.Module):
    """A 3x3 stride-2 conv after zero padding of one row at the bottom and one column at the right.

    The asymmetric padding (0, 1, 0, 1) is the reference's: a pretrained kernel expects it.
    """

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Returns `[B, H/2, W/2, C]` from `[B, H, W, C]` (H and W even)."""
        return _conv(x.shape[-1], 3, self.dtype, "conv", stride=2, padding=((0, 1), (0, 1)))(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, then a 3x3 conv."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Returns `[B, 2H, 2W, C]` from `[B, H, W, C]`."""
        return _conv(x.shape[-1], 3, self.dtype, "conv")(upsample_nearest(x))


class MidBlock(nn.Module):
    """resnet, self-attention (optional), resnet, at the lowest resolution."""

    norm_num_groups: int = 32
    attention: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Returns `[B, H, W, C]`, the same shape as `x`."""
        channels = x.shape[-1]
        x = ResnetBlock(channels, self.norm_num_groups, self.dtype, name="resnets_0")(x)
        if self.attention:
            x = Attention(self.norm_num_groups, self.dtype, name="attentions_0")(x)
        return ResnetBlock(channels, self.norm_num_groups, self.dtype, name="resnets_1")(x)


class DownEncoderBlock(nn.Module):
    """num_layers resnets at one resolution, then (all levels but the last) a Downsample."""

    out_channels: int
    num_layers: int
    add_downsample: bool
    norm_num_groups: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Returns `[B, H', W', out_channels]`, H' = H/2 with a downsample, else H."""
        for j in range(self.num_layers):
            x = ResnetBlock(
                self.out_channels, self.norm_num_groups, self.dtype, name=f"resnets_{j}"
            )(x)
        if self.add_downsample:
            x = Downsample(self.dtype, name="downsamplers_0")(x)
        return x


class Encoder(nn.Module):
    """Image `[B, H, W, C]` -> `[B, H/f, W/f, 2 z]` posterior moments (before quant_conv)."""

    block_out_channels: tuple[int, ...]
    layers_per_block: int
    z_channels: int
    norm_num_groups: int = 32
    mid_block_attention: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Returns `[B, H/f, W/f, 2 z_channels]`: mean and log-variance, concatenated on C."""
        groups, dtype = self.norm_num_groups, self.dtype
        h = _conv(self.block_out_channels[0], 3, dtype, "conv_in")(x.astype(dtype))
        last = len(self.block_out_channels) - 1
        for i, channels in enumerate(self.block_out_channels):
            h = DownEncoderBlock(
                channels, self.layers_per_block, i < last, groups, dtype, name=f"down_blocks_{i}"
            )(h)
        h = MidBlock(groups, self.mid_block_attention, dtype, name="mid_block")(h)
        h = nn.silu(_group_norm(h, groups, "conv_norm_out"))
        return _conv(2 * self.z_channels, 3, dtype, "conv_out")(h)


class UpDecoderBlock(nn.Module):
    """num_layers resnets at one resolution, then (all levels but the last) an Upsample."""

    out_channels: int
    num_layers: int
    add_upsample: bool
    norm_num_groups: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Returns `[B, H', W', out_channels]`, H' = 2H with an upsample, else H."""
        for j in range(self.num_layers):
            x = ResnetBlock(
                self.out_channels, self.norm_num_groups, self.dtype, name=f"resnets_{j}"
            )(x)
        if self.add_upsample:
            x = Upsample(self.dtype, name="upsamplers_0")(x)
        return x


class Decoder(nn.Module):
    """Latents `[B, h, w, z]` -> image `[B, h f, w f, out_channels]`.

    The mirror of the encoder: widths in reverse order and one more resnet per level
    (layers_per_block + 1), as in the reference.
    """

    out_channels: int
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    norm_num_groups: int = 32
    mid_block_attention: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        """Returns `[B, h f, w f, out_channels]` in the compute dtype."""
        groups, dtype = self.norm_num_groups, self.dtype
        h = _conv(self.block_out_channels[-1], 3, dtype, "conv_in")(z.astype(dtype))
        h = MidBlock(groups, self.mid_block_attention, dtype, name="mid_block")(h)
        widths = tuple(reversed(self.block_out_channels))
        for i, channels in enumerate(widths):
            h = UpDecoderBlock(
                channels,
                self.layers_per_block + 1,
                i < len(widths) - 1,
                groups,
                dtype,
                name=f"up_blocks_{i}",
            )(h)
        h = nn.silu(_group_norm(h, groups, "conv_norm_out"))
        return _conv(self.out_channels, 3, dtype, "conv_out")(h)


class AutoencoderKL(nn.Module):
    """The LDM autoencoder: encode to a diagonal Gaussian over latents, decode latents to images.

    Call it through `apply`: `model.apply({"params": p}, x, key)` for (reconstruction, mean,
    logvar), `model.apply({"params": p}, x, method=model.encode)` for (mean, logvar) and
    `model.apply({"params": p}, z, method=model.decode)` for images. Images are `[B, H, W,
    in_channels]` (usually in [-1, 1]) with H and W multiples of f; latents are unscaled (multiply
    by the scale of `diffax.autoencoder_losses.latent_stats` before diffusion).
    """

    in_channels: int = 3
    out_channels: int = 3
    z_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    mid_block_attention: bool = True  # diffusers' mid_block_add_attention.
    use_quant_conv: bool = True  # The 1x1 conv 2z -> 2z after the encoder.
    use_post_quant_conv: bool = True  # The 1x1 conv z -> z before the decoder.
    dtype: Dtype = jnp.float32  # Compute dtype; parameters and the posterior stay float32.

    @property
    def downsample_factor(self) -> int:
        """Returns f, the ratio of image to latent side."""
        return downsample_factor(self.block_out_channels)

    def setup(self):
        for channels in self.block_out_channels:
            if channels % self.norm_num_groups:
                raise ValueError(
                    f"norm_num_groups={self.norm_num_groups} does not divide a block width of "
                    f"{channels} (block_out_channels={self.block_out_channels})."
                )
        common = dict(
            block_out_channels=tuple(self.block_out_channels),
            layers_per_block=self.layers_per_block,
            norm_num_groups=self.norm_num_groups,
            mid_block_attention=self.mid_block_attention,
            dtype=self.dtype,
        )
        self.encoder = Encoder(z_channels=self.z_channels, **common)
        self.decoder = Decoder(out_channels=self.out_channels, **common)
        if self.use_quant_conv:
            self.quant_conv = _conv(2 * self.z_channels, 1, jnp.float32, None)
        if self.use_post_quant_conv:
            self.post_quant_conv = _conv(self.z_channels, 1, self.dtype, None)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Returns float32 (mean, logvar), each `[B, H/f, W/f, z]`; logvar clipped to [-30, 20]."""
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got shape {x.shape}")
        factor = self.downsample_factor
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(f"image sides {x.shape[1:3]} are not multiples of f = {factor}")
        moments = self.encoder(x).astype(jnp.float32)
        if self.use_quant_conv:
            moments = self.quant_conv(moments)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z: jax.Array) -> jax.Array:
        """Returns images `[B, h f, w f, out_channels]` (float32) from latents `[B, h, w, z]`."""
        if self.use_post_quant_conv:
            z = self.post_quant_conv(z.astype(self.dtype))
        return self.decoder(z).astype(jnp.float32)

    def __call__(
        self, x: jax.Array, key: jax.Array | None = None, sample_posterior: bool = True
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Returns (reconstruction [B, H, W, out], mean, logvar [B, H/f, W/f, z]).

        With sample_posterior the decoder sees z = mean + exp(logvar / 2) eps, eps ~ N(0, I) from
        `key` (the reparameterisation); otherwise it sees the mean.
        """
        mean, logvar = self.encode(x)
        z = mean
        if sample_posterior:
            if key is None:
                raise ValueError("sample_posterior=True needs a key")
            z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)
        return self.decode(z), mean, logvar


class PatchDiscriminator(nn.Module):
    """The pix2pix PatchGAN (Isola et al. 2017) that LDM trains its autoencoders against.

    4x4 convs: stride 2 for the first num_layers, widths ndf * min(2**n, 8), then a stride-1 conv
    and a stride-1 conv to one logit per patch; LeakyReLU(0.2) between them. The reference
    normalises with BatchNorm; GroupNorm here keeps the discriminator a per-example function of
    its parameters alone (no batch statistics in the train state).
    """

    ndf: int = 64
    num_layers: int = 3
    norm_num_groups: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Returns float32 patch logits `[B, H/2**L - 2, W/2**L - 2, 1]` from `[B, H, W, C]`."""
        pad = ((1, 1), (1, 1))
        h = nn.Conv(self.ndf, (4, 4), (2, 2), pad, dtype=self.dtype, name="conv_0")(x)
        h = nn.leaky_relu(h, 0.2)
        for n in range(1, self.num_layers + 1):
            stride = 2 if n < self.num_layers else 1
            width = self.ndf * min(2**n, 8)
            h = nn.Conv(
                width,
                (4, 4),
                (stride, stride),
                pad,
                use_bias=False,
                dtype=self.dtype,
                name=f"conv_{n}",
            )(h)
            h = nn.leaky_relu(_group_norm(h, min(self.norm_num_groups, width), f"norm_{n}"), 0.2)
        logits = nn.Conv(1, (4, 4), (1, 1), pad, dtype=self.dtype, name="conv_out")(h)
        return logits.astype(jnp.float32)


def check_hyperparameters(hp: Mapping[str, Any], field: str, image_size: int) -> None:
    """Raises ConfigError in one sentence naming the field (`field`: the section's prefix,
    "model.autoencoder.") if `hp` builds no KL autoencoder for image_size images."""
    widths = int_tuple(hp["block_out_channels"], field + "block_out_channels", allow_empty=False)
    for name in ("layers_per_block", "z_channels", "norm_num_groups"):
        positive_int(hp[name], field + name)
    groups = hp["norm_num_groups"]
    bad = [w for w in widths if w % groups]
    if bad:
        raise ConfigError(
            f"{field}norm_num_groups={groups} must divide every width of "
            f"{field}block_out_channels={widths} ({bad} are not multiples)."
        )
    factor = 2 ** (len(widths) - 1)
    if image_size % factor:
        raise ConfigError(
            f"data.image_size={image_size} must be divisible by {factor}, the autoencoder's "
            f"downsampling for {field}block_out_channels={widths}."
        )
