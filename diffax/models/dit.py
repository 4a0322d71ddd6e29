"""The Diffusion Transformer (DiT) in flax.linen.

Peebles & Xie 2023, "Scalable Diffusion Models with Transformers" (arXiv:2212.09748), section 3.2:
the input `[B, H, W, C]` is cut into `p x p` patches, each linearly embedded to a token
(`patchify`), plus a fixed 2-D sine-cosine position embedding; N transformer blocks with
adaLN-Zero conditioning on the sum of the timestep and class embeddings; a final adaptive layer
norm and a linear decoder to `p * p * out_channels` per token, rearranged back to the image
(`unpatchify`). Model sizes follow the paper's Table 1 (`DIT_SIZES`). Initialisation: ViT-style
xavier-uniform linears and N(0, 0.02^2) embeddings; every adaLN-Zero modulation and the output
layer at zero (section 3.2), so each block starts as the identity and a fresh model outputs 0.
Tensors are NHWC; tokens are `[B, L, D]` in row-major patch order.
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffax.config_checks import ConfigError, number, positive_int
from diffax.models.cross_attention import MultiHeadAttention, pooled_context
from diffax.models.layers import LevelEmbedding, check_image_cond_inputs, timestep_embedding

Dtype = Any

# Model sizes of the paper's Table 1: name -> (hidden_size D, depth N, num_heads).
DIT_SIZES = {
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "XL": (1152, 28, 16),
}
TIMESTEP_FREQ_DIM = 256  # Sinusoidal frequency features fed to the timestep MLP (section 3.2).
LAYER_NORM_EPS = 1e-6  # The paper's LayerNorms have no affine parameters; eps as in ViT.
POS_EMBED_MAX_PERIOD = 10000.0  # Wavelength base of the sine-cosine position embedding.

_dense_init = nn.initializers.xavier_uniform()  # ViT's initialisation of linear layers.
_zeros = nn.initializers.zeros  # adaLN-Zero modulations and the output layer.
_embed_init = nn.initializers.normal(0.02)  # Label table and timestep MLP: N(0, 0.02^2).


def check_patch_size(patch_size: int, height: int, width: int) -> None:
    """Raises ValueError unless patch_size is positive and divides the image size."""
    if patch_size < 1 or height % patch_size or width % patch_size:
        raise ValueError(
            f"model.dit.patch_size={patch_size} must divide the image size {height}x{width}."
        )


def check_hidden_size(hidden_size: int, num_heads: int) -> None:
    """Raises ValueError unless num_heads divides hidden_size and hidden_size is a multiple of 4."""
    if num_heads < 1 or hidden_size % num_heads:
        raise ValueError(
            f"model.dit.hidden_size={hidden_size} must be divisible by "
            f"model.dit.num_heads={num_heads}."
        )
    if hidden_size % 4:
        raise ValueError(
            f"model.dit.hidden_size={hidden_size} must be a multiple of 4 for the 2-D sine-cosine "
            "position embedding."
        )


def check_hyperparameters(hp: Mapping[str, Any], field: str, image_size: int) -> None:
    """Raises ConfigError in one sentence naming the field (`field`: the section's prefix,
    "model.dit.") if the DiT hyperparameters `hp` build no DiT for image_size images."""
    for name in ("patch_size", "hidden_size", "num_heads", "depth"):
        positive_int(hp[name], field + name)
    try:
        check_patch_size(hp["patch_size"], image_size, image_size)
        check_hidden_size(hp["hidden_size"], hp["num_heads"])
    except ValueError as e:
        raise ConfigError(str(e)) from None
    number(hp["mlp_ratio"], field + "mlp_ratio", 0.0, float("inf"), high_open=True)
    if int(hp["hidden_size"] * hp["mlp_ratio"]) < 1:
        raise ConfigError(
            f"{field}mlp_ratio={hp['mlp_ratio']} must give an MLP at least 1 unit wide."
        )


def patchify(x: jax.Array, patch_size: int) -> jax.Array:
    """Returns tokens `[B, (H/p)*(W/p), p*p*C]` of `x` `[B, H, W, C]`, patches in row-major order.

    Each token lists its patch's pixels row by row, channels fastest: the layout of a conv kernel
    `[p, p, C, D]` reshaped to `[p*p*C, D]`, so a stride-p conv embedding is the same linear map.
    """
    batch, height, width, channels = x.shape
    p = patch_size
    x = x.reshape(batch, height // p, p, width // p, p, channels)
    x = x.transpose(0, 1, 3, 2, 4, 5)  # [B, H/p, W/p, p, p, C]
    return x.reshape(batch, (height // p) * (width // p), p * p * channels)


def unpatchify(tokens: jax.Array, patch_size: int, height: int, width: int) -> jax.Array:
    """Returns `[B, H, W, C]` from tokens `[B, (H/p)*(W/p), p*p*C]`: the inverse of `patchify`."""
    batch, _, features = tokens.shape
    p = patch_size
    channels = features // (p * p)
    x = tokens.reshape(batch, height // p, width // p, p, p, channels)
    x = x.transpose(0, 1, 3, 2, 4, 5)  # [B, H/p, p, W/p, p, C]
    return x.reshape(batch, height, width, channels)


def sincos_pos_embed_2d(grid_height: int, grid_width: int, dim: int) -> np.ndarray:
    """Returns the fixed `[grid_height * grid_width, dim]` float32 2-D sine-cosine embedding.

    MAE's convention (He et al. 2022), which DiT uses: the first dim/2 channels encode the
    token's column x, the last dim/2 its row y; each half is `[sin(pos w_k), cos(pos w_k)]` with
    `w_k = 10000**(-k / (dim/4))`, `k = 0..dim/4-1`. Tokens are row-major (index y * width + x).
    `dim` must be a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"the 2-D sine-cosine position embedding needs dim % 4 == 0, got {dim}")
    quarter = dim // 4
    omega = POS_EMBED_MAX_PERIOD ** (-np.arange(quarter, dtype=np.float64) / quarter)  # [dim/4]
    rows, cols = np.meshgrid(np.arange(grid_height), np.arange(grid_width), indexing="ij")

    def encode(pos: np.ndarray) -> np.ndarray:  # [L] -> [L, dim/2]
        angles = pos.reshape(-1, 1).astype(np.float64) * omega[None, :]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)

    return np.concatenate([encode(cols), encode(rows)], axis=-1).astype(np.float32)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """Returns `x * (1 + scale) + shift` for tokens `[B, L, D]` and per-example `[B, D]` terms."""
    return x * (1.0 + scale[:, None, :]) + shift[:, None, :]


def layer_norm(x: jax.Array) -> jax.Array:
    """Returns float32 LayerNorm of `x` `[..., D]` without affine parameters (eps 1e-6)."""
    norm = nn.LayerNorm(epsilon=LAYER_NORM_EPS, use_bias=False, use_scale=False, dtype=jnp.float32)
    return norm(x.astype(jnp.float32))


def _dense(features: int, dtype: Dtype, name: str, kernel_init=_dense_init) -> nn.Dense:
    """Returns a Dense with float32 params, a zero bias and (by default) a xavier-uniform kernel."""
    return nn.Dense(
        features, dtype=dtype, param_dtype=jnp.float32, kernel_init=kernel_init, name=name
    )


class SelfAttention(nn.Module):
    """Multi-head self-attention on tokens `[B, L, D]`: proj(softmax(q k^T / sqrt(d)) v).

    Logits and softmax in float32. Its two matmuls cost `2 * B * heads * L**2 * d` MACs
    (`diffax.tools.flops.attention_macs`, counted by `flops.forward_macs`).
    """

    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Returns `[B, L, D]` in the compute dtype."""
        batch, length, hidden = x.shape
        head_dim = hidden // self.num_heads
        qkv = _dense(3 * hidden, self.dtype, "qkv")(x)  # [B, L, 3D]
        qkv = qkv.reshape(batch, length, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, L, heads, d]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        weights = jax.nn.softmax(logits * head_dim**-0.5, axis=-1)  # [B, heads, L, L]
        out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(self.dtype), v)
        return _dense(hidden, self.dtype, "proj")(out.reshape(batch, length, hidden))


class DiTBlock(nn.Module):
    """A DiT block with adaLN-Zero (section 3.2, Figure 3).

    From the conditioning c, one zero-initialised Dense regresses shift, scale and gate for the
    attention and MLP branches: `x + gate * branch(LN(x) * (1 + scale) + shift)`. At
    initialisation every gate is 0, so the block is the identity. Given a context, a
    cross-attention layer follows the self-attention, `x + cross_attn(LN(x), context)`, unmodulated
    as in PixArt-alpha (Chen et al. 2023, section 2.3); its zero output projection keeps the
    block the identity at initialisation.
    """

    num_heads: int
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        c: jax.Array,
        context: jax.Array | None = None,
        context_mask: jax.Array | None = None,
    ) -> jax.Array:
        """Returns float32 tokens `[B, L, D]` from tokens `x` `[B, L, D]`, `c` `[B, D]` and an
        optional context `[B, Lc, Dc]` with its mask `[B, Lc]`."""
        hidden = x.shape[-1]
        modulation = _dense(6 * hidden, self.dtype, "adaLN_modulation", kernel_init=_zeros)(
            nn.silu(c)
        ).astype(jnp.float32)  # [B, 6D]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(
            modulation, 6, axis=-1
        )  # each [B, D]

        h = modulate(layer_norm(x), shift_msa, scale_msa)
        h = SelfAttention(self.num_heads, dtype=self.dtype, name="attn")(h)
        x = x + gate_msa[:, None, :] * h.astype(jnp.float32)
        if context is not None:
            h = MultiHeadAttention(
                self.num_heads, self.dtype, zero_init_out=True, name="cross_attn"
            )(layer_norm(x).astype(self.dtype), context.astype(self.dtype), context_mask)
            x = x + h.astype(jnp.float32)

        h = modulate(layer_norm(x), shift_mlp, scale_mlp)
        h = _dense(int(hidden * self.mlp_ratio), self.dtype, "mlp_in")(h)
        h = nn.gelu(h, approximate=True)
        h = _dense(hidden, self.dtype, "mlp_out")(h)
        return x + gate_mlp[:, None, :] * h.astype(jnp.float32)


class DiT(nn.Module):
    """Diffusion Transformer: `(x [B, H, W, C], t [B], y [B] or None) -> [B, H, W, out]`."""

    out_channels: int  # C for a fixed variance, 2C for a learned one (mean channels first)
    patch_size: int = 2  # p: tokens are p x p patches; must divide H and W
    hidden_size: int = 384  # D, the token width (a multiple of 4 and of num_heads)
    depth: int = 12  # N, the number of DiT blocks
    num_heads: int = 6  # attention heads per block
    mlp_ratio: float = 4.0  # MLP hidden width / D
    num_classes: int = 0  # > 0: class-conditional; label num_classes is the learned null class
    dtype: Any = jnp.float32  # compute dtype; params, norms, softmax and the output are float32
    remat: bool = False  # rematerialise each DiT block in the backward pass
    # Image conditioning: `concat` [B, H, W, C'] joins x's channels before patchify
    # (super-resolution, inpainting); with level_cond, `aug_level` [B] is embedded like t into c.
    concat_cond: bool = False
    level_cond: bool = False
    # Given a context, its pooled mean is also added to c where a label would be (Imagen, sec. 2.4).
    pool_context: bool = False

    def _check_inputs(self, x: jax.Array, y: jax.Array | None) -> None:
        """Raises ValueError for inputs or sizes the configured network cannot process."""
        check_patch_size(self.patch_size, x.shape[1], x.shape[2])
        check_hidden_size(self.hidden_size, self.num_heads)
        if self.num_classes > 0 and y is None:
            raise ValueError(f"num_classes={self.num_classes} > 0 needs labels y, got None")
        if self.num_classes == 0 and y is not None:
            raise ValueError("labels y were given but num_classes=0 (unconditional model)")

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        t: jax.Array,
        y: jax.Array | None = None,
        *,
        train: bool = False,
        concat: jax.Array | None = None,
        aug_level: jax.Array | None = None,
        context: jax.Array | None = None,
        context_mask: jax.Array | None = None,
    ) -> jax.Array:
        """Returns the float32 `[B, H, W, out_channels]` output for `x` `[B, H, W, C]`.

        `t` `[B]` int or float timesteps (unscaled, e.g. 0..T-1); `y` `[B]` int labels in
        `0..num_classes` (num_classes = null class) or None; `concat`, `aug_level`: see
        concat_cond and level_cond; `context` `[B, L, D]` with `context_mask` `[B, L]` (True:
        attend; default all True) adds cross-attention to every block. DiT has no dropout:
        `train` is accepted for the common backbone interface and changes nothing.
        """
        del train
        self._check_inputs(x, y)
        check_image_cond_inputs(self.concat_cond, self.level_cond, x, concat, aug_level)
        if self.concat_cond:
            x = jnp.concatenate([x, concat.astype(x.dtype)], axis=-1)
        if context is not None and context_mask is None:
            context_mask = jnp.ones(context.shape[:2], bool)
        _, height, width, _ = x.shape
        p = self.patch_size

        # Patch embedding: a linear map of each flattened p x p patch (a stride-p conv), plus the
        # fixed position embedding; the residual stream stays float32.
        tokens = _dense(self.hidden_size, self.dtype, "patch_embed")(
            patchify(x.astype(self.dtype), p)
        ).astype(jnp.float32)  # [B, L, D]
        pos = sincos_pos_embed_2d(height // p, width // p, self.hidden_size)  # [L, D] constant
        tokens = tokens + jnp.asarray(pos)[None]

        # Conditioning c = MLP(freq(t)) + embed(y), kept in float32 (section 3.2).
        c = timestep_embedding(t, TIMESTEP_FREQ_DIM)  # [B, 256]
        c = _dense(self.hidden_size, jnp.float32, "time_embed_0", kernel_init=_embed_init)(c)
        c = _dense(self.hidden_size, jnp.float32, "time_embed_1", kernel_init=_embed_init)(
            nn.silu(c)
        )  # [B, D]
        if self.num_classes > 0:
            # One extra row: the learned null label for classifier-free guidance (Ho & Salimans).
            label_embed = nn.Embed(
                self.num_classes + 1,
                self.hidden_size,
                embedding_init=_embed_init,
                name="label_embed",
            )
            c = c + label_embed(jnp.asarray(y, jnp.int32))  # [B, D]
        if self.level_cond:
            c = c + LevelEmbedding(self.hidden_size, TIMESTEP_FREQ_DIM, name="aug_level_embed")(
                aug_level
            )
        if self.pool_context and context is not None:
            pooled = pooled_context(context, context_mask)  # [B, Dc]
            c = c + _dense(self.hidden_size, jnp.float32, "context_embed", kernel_init=_embed_init)(
                pooled
            )

        block = nn.remat(DiTBlock) if self.remat else DiTBlock
        for i in range(self.depth):
            tokens = block(self.num_heads, self.mlp_ratio, dtype=self.dtype, name=f"block_{i}")(
                tokens, c, context, context_mask
            )

        # Final layer: adaLN (shift, scale) and a linear decoder to p*p*out_channels per token,
        # both zero-initialised, in float32.
        final_modulation = _dense(
            2 * self.hidden_size, jnp.float32, "final_adaLN_modulation", kernel_init=_zeros
        )(nn.silu(c))  # [B, 2D]
        shift, scale = jnp.split(final_modulation, 2, axis=-1)  # each [B, D]
        h = modulate(layer_norm(tokens), shift, scale)
        h = _dense(p * p * self.out_channels, jnp.float32, "final_linear", kernel_init=_zeros)(h)
        return unpatchify(h, p, height, width)  # [B, H, W, out_channels]
