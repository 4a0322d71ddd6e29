"""Building blocks of the ADM U-Net: timestep embedding, residual, attention and resampling layers.

Architecture facts follow Ho et al. 2020 (DDPM, appendix B), Nichol & Dhariwal 2021 (improved DDPM,
section 4 / appendix A) and Dhariwal & Nichol 2021 (ADM, section 3: BigGAN residual up/downsampling,
multi-head attention, adaptive group normalization). Layer order was checked against the public
reference code (openai/guided-diffusion, guided_diffusion/unet.py); nothing is copied from it.
Tensors are NHWC: `[B, H, W, C]`.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# ADM's GroupNorm32: 32 groups, torch's default eps 1e-5, statistics in float32.
NUM_GROUPS = 32
NORM_EPS = 1e-5


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Returns `[B, dim]` float32 sinusoidal embeddings `[cos(t w_i), sin(t w_i)]` of timesteps `t`.

    `t` is `[B]` int or float (any range, e.g. 0..T-1); frequencies `w_i = max_period**(-i/half)`,
    `i = 0..half-1`, as in ADM's `timestep_embedding` (DDPM's code orders sin first and divides
    by half - 1: the same features up to a permutation and a slight frequency stretch); an odd
    `dim` gets one zero column.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)  # [half]
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]  # [B, half]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)  # [B, 2*half]
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def group_norm(x: jax.Array, name: str) -> jax.Array:
    """Returns GroupNorm(32) of `x` computed in float32 and cast back to `x.dtype`."""
    norm = nn.GroupNorm(
        num_groups=NUM_GROUPS,
        epsilon=NORM_EPS,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        name=name,
    )
    return norm(x.astype(jnp.float32)).astype(x.dtype)


def conv(
    features: int,
    kernel: int,
    dtype: Dtype,
    name: str,
    stride: int = 1,
    zero_init: bool = False,
) -> nn.Conv:
    """Returns a square conv with torch-style symmetric padding `kernel // 2` (3x3 -> pad 1)."""
    pad = kernel // 2
    extra = {"kernel_init": nn.initializers.zeros} if zero_init else {}
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
        **extra,
    )


def upsample_nearest(x: jax.Array) -> jax.Array:
    """Returns `[B, 2H, 2W, C]` nearest-neighbour upsampling of `[B, H, W, C]`."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def downsample_avg(x: jax.Array) -> jax.Array:
    """Returns `[B, H/2, W/2, C]` 2x2 average pooling of `[B, H, W, C]`."""
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class Downsample(nn.Module):
    """Plain downsampling: a learned 3x3 stride-2 conv, or 2x2 average pooling."""

    use_conv: bool
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Returns `[B, H/2, W/2, C]`."""
        if self.use_conv:
            return conv(x.shape[-1], 3, self.dtype, "conv", stride=2)(x)
        return downsample_avg(x)


class Upsample(nn.Module):
    """Plain upsampling: nearest-neighbour 2x, then an optional learned 3x3 conv."""

    use_conv: bool
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Returns `[B, 2H, 2W, C]`."""
        x = upsample_nearest(x)
        if self.use_conv:
            x = conv(x.shape[-1], 3, self.dtype, "conv")(x)
        return x


class ResBlock(nn.Module):
    """DDPM/ADM residual block, optionally with AdaGN and BigGAN-style up/downsampling.

    h = conv3x3(SiLU(GN(x))); h += Dense(SiLU(emb))   [or GN(h) * (1 + scale) + shift, ADM eq. in 3]
    h = zero-init conv3x3(dropout(SiLU(GN(h)))); return skip(x) + h, skip = 1x1 conv if C changes.
    With `up`/`down` the resampling (no conv, BigGAN; ADM section 3) is applied to both paths
    after the first norm-SiLU, as in the reference code.
    """

    out_channels: int
    dropout: float = 0.0
    use_scale_shift_norm: bool = False
    up: bool = False
    down: bool = False
    deterministic: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
        """Returns `[B, H', W', out_channels]` from `x` `[B, H, W, C]` and `emb` `[B, E]`."""
        h = nn.silu(group_norm(x, "in_norm"))  # [B, H, W, C]
        if self.up:
            h, x = upsample_nearest(h), upsample_nearest(x)
        elif self.down:
            h, x = downsample_avg(h), downsample_avg(x)
        h = conv(self.out_channels, 3, self.dtype, "in_conv")(h)  # [B, H', W', out]

        emb_dim = 2 * self.out_channels if self.use_scale_shift_norm else self.out_channels
        emb_out = nn.Dense(emb_dim, dtype=self.dtype, param_dtype=jnp.float32, name="emb_proj")(
            nn.silu(emb)
        )[:, None, None, :]  # [B, 1, 1, emb_dim]
        if self.use_scale_shift_norm:
            scale, shift = jnp.split(emb_out, 2, axis=-1)
            h = group_norm(h, "out_norm") * (1 + scale) + shift
        else:
            h = group_norm(h + emb_out, "out_norm")
        h = nn.silu(h)
        h = nn.Dropout(self.dropout, deterministic=self.deterministic)(h)
        h = conv(self.out_channels, 3, self.dtype, "out_conv", zero_init=True)(h)

        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, 1, self.dtype, "skip")(x)
        return x + h


def attention_heads(channels: int, num_heads: int, num_head_channels: int) -> int:
    """Returns the head count: `channels // num_head_channels` if that is > 0, else `num_heads`."""
    heads = channels // num_head_channels if num_head_channels > 0 else num_heads
    if num_head_channels > 0 and channels % num_head_channels:
        raise ValueError(f"num_head_channels={num_head_channels} does not divide {channels}")
    if heads < 1 or channels % heads:
        raise ValueError(f"num_heads={heads} does not divide {channels} channels")
    return heads


class AttentionBlock(nn.Module):
    """Spatial multi-head self-attention with a residual: x + proj(attn(qkv(GN(x)))).

    q and k are each scaled by d**-0.25 (d = head dim) before their product, equal to the usual
    1/sqrt(d) but kinder to float16/bfloat16 (ADM's QKVAttention); logits and softmax in float32.
    The output projection starts at zero, so a fresh block is the identity.
    """

    num_heads: int = 1
    num_head_channels: int = -1
    dtype: Dtype = jnp.float32
    # How the 3C qkv channels split: q, k, v first, then heads (ADM's "new attention order");
    # False: heads first, then q, k, v within each head (the legacy order of improved-diffusion
    # and of guided-diffusion without use_new_attention_order). Same parameters either way.
    use_new_attention_order: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Returns `[B, H, W, C]`, the same shape as `x`."""
        batch, height, width, channels = x.shape
        heads = attention_heads(channels, self.num_heads, self.num_head_channels)
        head_dim = channels // heads
        h = group_norm(x, "norm").reshape(batch, height * width, channels)  # [B, L, C]
        # A 1x1 conv on the flattened positions is a Dense layer (DDPM's NIN layers).
        qkv = nn.Dense(3 * channels, dtype=self.dtype, param_dtype=jnp.float32, name="qkv")(h)
        if self.use_new_attention_order:  # Channel (j, head, i): q, k, v first, then heads.
            qkv = qkv.reshape(batch, height * width, 3, heads, head_dim)  # [B, L, 3, heads, d]
        else:  # Channel (head, j, i): heads first.
            qkv = qkv.reshape(batch, height * width, heads, 3, head_dim).swapaxes(2, 3)
        scale = head_dim**-0.25
        q, k, v = qkv[:, :, 0] * scale, qkv[:, :, 1] * scale, qkv[:, :, 2]  # [B, L, heads, d]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)  # [B, heads, L, L]
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, height * width, channels)
        out = nn.Dense(
            channels,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=nn.initializers.zeros,
            name="proj_out",
        )(out)  # [B, L, C]
        return x + out.reshape(batch, height, width, channels).astype(x.dtype)


def fourier_features(x: jax.Array, exponents: tuple[int, ...] = (7, 8)) -> jax.Array:
    """Returns [x, sin(2^n pi x) for n, cos(2^n pi x) for n] on the last axis: C (1 + 2 len(n)).

    VDM sec. 3.4: high-frequency features of the noisy input let the network resolve the fine
    details (bins of width 2/255) that dominate the likelihood at low noise. x is [B, H, W, C].
    """
    if not exponents:
        return x
    freqs = jnp.asarray([2.0**n * math.pi for n in exponents], x.dtype)  # [N]
    angles = x[..., None] * freqs  # [B, H, W, C, N]
    angles = jnp.moveaxis(angles, -1, -2).reshape(*x.shape[:-1], -1)  # [B, H, W, N C]
    return jnp.concatenate([x, jnp.sin(angles), jnp.cos(angles)], axis=-1)


def check_image_cond_inputs(
    concat_cond: bool,
    level_cond: bool,
    x: jax.Array,
    concat: jax.Array | None,
    aug_level: jax.Array | None,
) -> None:
    """Raises ValueError unless a model conditioned by concatenation gets `concat` [B, H, W, C']
    at x's batch and size (and `aug_level` [B] when level_cond), and others get neither."""
    for wanted, value, name, field in (
        (concat_cond, concat, "concat", "concat_cond"),
        (level_cond, aug_level, "aug_level", "level_cond"),
    ):
        if wanted and value is None:
            raise ValueError(f"{field}=True needs the {name} input, got None")
        if not wanted and value is not None:
            raise ValueError(f"a {name} input was given but {field}=False")
    if concat is not None and concat.shape[:3] != x.shape[:3]:
        raise ValueError(f"concat {concat.shape} must match x's batch and size {x.shape[:3]}")


class LevelEmbedding(nn.Module):
    """Embeds a noise-augmentation level s in [0, 1] `[B]` like a timestep (s scaled to 0..1000),
    through a two-layer MLP, in float32: the conditioning of a cascade's upsampler (CDM, Imagen)."""

    features: int
    frequency_dim: int

    @nn.compact
    def __call__(self, level: jax.Array) -> jax.Array:
        emb = timestep_embedding(1000.0 * level.astype(jnp.float32), self.frequency_dim)
        emb = nn.Dense(self.features, param_dtype=jnp.float32, name="dense_0")(emb)
        return nn.Dense(self.features, param_dtype=jnp.float32, name="dense_1")(nn.silu(emb))
