"""The noisy classifier p(y | x_t) of classifier guidance: the ADM U-Net's encoder half.

Dhariwal & Nichol 2021 ("Diffusion Models Beat GANs", sec. 4.1 and appendix): the classifier is
"the downsampling trunk of the UNet model with an attention pool at the 8x8 layer", trained on
noised inputs x_t with the timestep t as an input. Here: the U-Net's input conv, down path and
middle block (the same layers and hyperparameter names as `unet.UNet`), then GroupNorm + SiLU and
attention pooling (CLIP's, Radford et al. 2021, sec. 2.4: a mean token joins the positions, a
learned positional embedding is added, one multi-head attention step, the mean token's output is
projected to the logits). Nothing is copied from openai/guided-diffusion. Tensors are NHWC.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffax.models.layers import (
    AttentionBlock,
    Downsample,
    ResBlock,
    attention_heads,
    conv,
    group_norm,
    timestep_embedding,
)
from diffax.models.unet import reachable_resolutions


class AttentionPool(nn.Module):
    """Attention pooling `[B, H, W, C] -> [B, out_features]` (CLIP's AttentionPool2d), in float32.

    Tokens: the mean over positions, then the H*W positions; a learned positional embedding
    [H*W + 1, C] (init N(0, 1/C)) is added to them. One multi-head QKV attention step (q and k each
    scaled by d**-0.25, as `layers.AttentionBlock`) is taken for the mean token's query only, the
    only output used, and projected to out_features.
    """

    out_features: int
    num_heads: int = 1
    num_head_channels: int = -1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Returns float32 `[B, out_features]`."""
        batch, height, width, channels = x.shape
        heads = attention_heads(channels, self.num_heads, self.num_head_channels)
        head_dim = channels // heads
        tokens = x.astype(jnp.float32).reshape(batch, height * width, channels)  # [B, L, C]
        tokens = jnp.concatenate([jnp.mean(tokens, axis=1, keepdims=True), tokens], axis=1)
        positional = self.param(
            "positional_embedding",
            nn.initializers.normal(stddev=channels**-0.5),
            (height * width + 1, channels),
            jnp.float32,
        )
        tokens = tokens + positional[None]  # [B, L+1, C]
        qkv = nn.Dense(3 * channels, dtype=jnp.float32, param_dtype=jnp.float32, name="qkv")(tokens)
        qkv = qkv.reshape(batch, height * width + 1, 3, heads, head_dim)  # [B, L+1, 3, heads, d]
        scale = head_dim**-0.25
        q = qkv[:, :1, 0] * scale  # [B, 1, heads, d]: the mean token's query
        k, v = qkv[:, :, 1] * scale, qkv[:, :, 2]  # [B, L+1, heads, d]
        weights = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k), axis=-1)  # [B, heads, 1, L+1]
        pooled = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, channels)  # [B, C]
        return nn.Dense(
            self.out_features, dtype=jnp.float32, param_dtype=jnp.float32, name="proj_out"
        )(pooled)


class NoisyClassifier(nn.Module):
    """Noisy-image classifier: `(x [B, H, W, C], t [B], y ignored) -> float32 logits [B, K]`.

    `num_classes` is K, the number of logits: unlike `unet.UNet.num_classes` it does NOT mean the
    network is label-conditioned. The classifier never reads y (the labels are its targets); `y`
    is accepted only so `diffax.models.model_fn`, which passes labels to any model whose
    num_classes > 0, can call it. So code that infers "class-conditional" from
    `model.num_classes > 0` (the denoiser's label dropout) must not be used on
    it: train it with `diffax.tasks.classifier.train_step`. With K > 0 always,
    `build.num_classes` is 0 for its config (`model.class_cond = False`), so it is initialised
    without labels.
    """

    num_classes: int  # K: logits, one per class of the data
    ch: int = 128  # base width; level i has ch * channel_mult[i] channels
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)  # feature-map heights in pixels
    num_heads: int = 1  # in the attention blocks and the attention pool
    num_head_channels: int = -1  # if > 0, heads = channels // num_head_channels
    dropout: float = 0.0
    resblock_updown: bool = False  # BigGAN residual downsampling (ADM section 3)
    use_scale_shift_norm: bool = False  # AdaGN from the timestep embedding (ADM section 3)
    conv_resample: bool = True  # learned 3x3 stride-2 conv in the plain downsample layers
    # q, k, v split before heads in the attention blocks (the pool always splits them first, as
    # guided-diffusion's); False: heads first, the order of guided-diffusion's classifiers.
    use_new_attention_order: bool = True
    dtype: Any = jnp.float32  # compute dtype; params, norms, the pool and the logits are float32
    remat: bool = False  # rematerialise residual and attention blocks in the backward pass

    def _check_inputs(self, x: jax.Array) -> None:
        """Raises ValueError for inputs the configured network cannot process."""
        height, width = x.shape[1], x.shape[2]
        factor = 2 ** (len(self.channel_mult) - 1)
        if height % factor or width % factor:
            raise ValueError(
                f"input size {height}x{width} must be divisible by 2**(len(channel_mult)-1)="
                f"{factor} for channel_mult={self.channel_mult}"
            )
        reachable = reachable_resolutions(height, len(self.channel_mult))
        missing = [r for r in self.attention_resolutions if r not in reachable]
        if missing:
            raise ValueError(
                f"attention_resolutions {missing} are never reached for a {height}x{width} input; "
                f"reachable resolutions are {list(reachable)}"
            )
        if self.num_classes < 1:
            raise ValueError(f"num_classes={self.num_classes} must be at least 1 (the logits)")

    @nn.compact
    def __call__(
        self, x: jax.Array, t: jax.Array, y: jax.Array | None = None, *, train: bool = False
    ) -> jax.Array:
        """Returns float32 logits `[B, num_classes]` of p(y | x_t) for `x` `[B, H, W, C]`.

        `t` `[B]` int or float timesteps of the process the classifier was trained on (unscaled,
        e.g. 0..T-1, the ones the samplers pass to the diffusion model); `y` is ignored (see the
        class docstring). Dropout draws from the "dropout" RNG stream when `train=True`.
        """
        del y  # Not label-conditioned: the labels are the targets.
        self._check_inputs(x)
        res_block = nn.remat(ResBlock) if self.remat else ResBlock
        attn_block = nn.remat(AttentionBlock) if self.remat else AttentionBlock

        def res(h, emb, channels, name, down=False):
            return res_block(
                channels,
                dropout=self.dropout,
                use_scale_shift_norm=self.use_scale_shift_norm,
                down=down,
                deterministic=not train,
                dtype=self.dtype,
                name=name,
            )(h, emb)

        def attn(h, name):
            return attn_block(
                self.num_heads,
                self.num_head_channels,
                dtype=self.dtype,
                use_new_attention_order=self.use_new_attention_order,
                name=name,
            )(h)

        # Timestep embedding in float32, as the U-Net's (parameter names shared with it).
        emb_dim = 4 * self.ch
        emb = timestep_embedding(t, self.ch)  # [B, ch]
        emb = nn.Dense(emb_dim, param_dtype=jnp.float32, name="time_embed_0")(emb)
        emb = nn.Dense(emb_dim, param_dtype=jnp.float32, name="time_embed_1")(nn.silu(emb))

        # The U-Net's down path without the skips (same layer names as unet.UNet's encoder).
        h = conv(int(self.channel_mult[0] * self.ch), 3, self.dtype, "input_conv")(
            x.astype(self.dtype)
        )  # [B, H, W, width]
        resolution = x.shape[1]
        last = len(self.channel_mult) - 1
        for level, mult in enumerate(self.channel_mult):
            for i in range(self.num_res_blocks):
                h = res(h, emb, int(self.ch * mult), f"down_{level}_res_{i}")
                if resolution in self.attention_resolutions:
                    h = attn(h, f"down_{level}_attn_{i}")
            if level != last:
                name = f"down_{level}_downsample"
                if self.resblock_updown:
                    h = res(h, emb, h.shape[-1], name, down=True)
                else:
                    h = Downsample(self.conv_resample, dtype=self.dtype, name=name)(h)
                resolution //= 2

        # Middle: res, attention, res at the lowest resolution.
        h = res(h, emb, h.shape[-1], "mid_res_0")
        h = attn(h, "mid_attn")
        h = res(h, emb, h.shape[-1], "mid_res_1")

        # Head in float32: GroupNorm, SiLU, attention pool (at 8x8 for ADM's 64x64 classifier).
        h = nn.silu(group_norm(h.astype(jnp.float32), "out_norm"))  # [B, H', W', C']
        pool = AttentionPool(self.num_classes, self.num_heads, self.num_head_channels, name="pool")
        return pool(h)  # [B, num_classes]
