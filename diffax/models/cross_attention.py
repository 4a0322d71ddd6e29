"""Attention to a context sequence: masked multi-head attention and the U-Net's text block.

The context is `[B, L, D]` (a text encoder's output) with a key mask `[B, L]` (True: a real token);
masked keys get exactly zero weight. Used by the U-Net's SpatialTransformer (Rombach et al. 2022,
LDM, section 3.3) and by DiT's cross-attention layer (Chen et al. 2023, PixArt-alpha, section 2.3).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffax.models.layers import attention_heads, group_norm

Dtype = Any


def pooled_context(context: jax.Array, mask: jax.Array) -> jax.Array:
    """Returns the mean of the valid tokens `[B, D]` of a context `[B, L, D]` with mask `[B, L]`
    (zeros for a row with none: the stored embeddings' null context), in float32.

    Imagen adds it to the timestep embedding beside cross-attention (Saharia et al. 2022, sec.
    2.4), so the caption also reaches every residual block as the class label would.
    """
    weights = mask.astype(jnp.float32)[..., None]  # [B, L, 1]
    total = jnp.sum(context.astype(jnp.float32) * weights, axis=1)
    return total / jnp.maximum(jnp.sum(weights, axis=1), 1.0)


def masked_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """Returns softmax(q k^T / sqrt(d)) v `[B, Lq, heads, d]` from q `[B, Lq, heads, d]`, k and v
    `[B, Lk, heads, d]`; keys where mask `[B, Lk]` (or per query `[B, Lq, Lk]`) is False get
    weight 0 (logits and softmax in float32). A row with no valid key attends uniformly, so it
    stays finite (callers keep one always-valid token)."""
    head_dim = q.shape[-1]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    logits = logits * head_dim**-0.5  # [B, heads, Lq, Lk]
    if mask is not None:
        # The float32 minimum, not -inf: exp(min - max) is exactly 0 beside any valid key, and
        # an all-masked row gives uniform weights instead of 0 / 0.
        mask = mask[:, None, None, :] if mask.ndim == 2 else mask[:, None]
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


class MultiHeadAttention(nn.Module):
    """Multi-head attention from queries `[B, Lq, C]` to a context `[B, Lk, D]` (self-attention
    when the context is the queries); the output projection may start at zero."""

    num_heads: int
    dtype: Dtype = jnp.float32
    zero_init_out: bool = False
    # Rotate queries and keys by their positions (RoPE, Su et al. 2021, self-attention only): the
    # scores then depend on how far apart two tokens are, not on where they sit.
    rotary: bool = False

    @nn.compact
    def __call__(
        self, x: jax.Array, context: jax.Array, mask: jax.Array | None = None
    ) -> jax.Array:
        """Returns `[B, Lq, C]` in the compute dtype."""
        batch, length, channels = x.shape
        head_dim = channels // self.num_heads
        dense = lambda n, name, **kw: nn.Dense(  # noqa: E731
            n, dtype=self.dtype, param_dtype=jnp.float32, name=name, **kw
        )
        q = dense(channels, "query", use_bias=False)(x).reshape(batch, length, -1, head_dim)
        k = dense(channels, "key", use_bias=False)(context)
        v = dense(channels, "value", use_bias=False)(context)
        k = k.reshape(*context.shape[:2], -1, head_dim)  # [B, Lk, heads, d]
        v = v.reshape(*context.shape[:2], -1, head_dim)
        if self.rotary:
            q, k = rotate(q), rotate(k)
        out = masked_attention(q, k, v, mask).reshape(batch, length, channels)
        extra = {"kernel_init": nn.initializers.zeros} if self.zero_init_out else {}
        return dense(channels, "out", **extra)(out)


def rotate(x: jax.Array, base: float = 10_000.0) -> jax.Array:
    """Returns x [B, L, heads, d] with each pair (x_i, x_{i + d/2}) at position p rotated by the
    angle p * base^(-2i/d) (RoPE, Su et al. 2021): rotated q.k depends on positions only by
    their offset."""
    half = x.shape[-1] // 2
    freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)  # [d/2]
    angles = jnp.arange(x.shape[1], dtype=jnp.float32)[:, None] * freqs  # [L, d/2]
    cos, sin = jnp.cos(angles)[:, None], jnp.sin(angles)[:, None]  # [L, 1, d/2]
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).astype(x.dtype)


def layer_norm(x: jax.Array, name: str) -> jax.Array:
    """Returns float32 LayerNorm of `x` `[..., C]` (learned scale and bias), cast back."""
    norm = nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, param_dtype=jnp.float32, name=name)
    return norm(x.astype(jnp.float32)).astype(x.dtype)


class SpatialTransformer(nn.Module):
    """LDM's text block on a feature map (Rombach et al. 2022, section 3.3 and appendix E.2).

    h = proj_in(GN(x)) as tokens [B, HW, C]; h += self-attn(LN(h)); h += cross-attn(LN(h),
    context, mask); h += FF(LN(h)); return x + proj_out(h), proj_out zero-initialised so a fresh
    block is the identity.
    """

    num_heads: int = 1
    num_head_channels: int = -1
    ff_mult: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array, mask: jax.Array) -> jax.Array:
        """Returns `[B, H, W, C]` from `x` `[B, H, W, C]`, context `[B, L, D]`, mask `[B, L]`."""
        batch, height, width, channels = x.shape
        heads = attention_heads(channels, self.num_heads, self.num_head_channels)
        dense = lambda n, name, **kw: nn.Dense(  # noqa: E731
            n, dtype=self.dtype, param_dtype=jnp.float32, name=name, **kw
        )
        h = group_norm(x, "norm").reshape(batch, height * width, channels)  # [B, HW, C]
        h = dense(channels, "proj_in")(h)
        n = layer_norm(h, "norm_self")
        h = h + MultiHeadAttention(heads, self.dtype, name="self_attn")(n, n)
        n = layer_norm(h, "norm_cross")
        h = h + MultiHeadAttention(heads, self.dtype, name="cross_attn")(
            n, context.astype(self.dtype), mask
        )
        n = layer_norm(h, "norm_ff")
        # GEGLU feed-forward, as LDM's BasicTransformerBlock (Shazeer 2020).
        gate_value = dense(2 * self.ff_mult * channels, "ff_in")(n)
        value, gate = jnp.split(gate_value, 2, axis=-1)
        h = h + dense(channels, "ff_out")(value * nn.gelu(gate))
        out = dense(channels, "proj_out", kernel_init=nn.initializers.zeros)(h)
        return x + out.reshape(batch, height, width, channels).astype(x.dtype)
