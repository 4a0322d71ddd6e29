"""The DDPM / improved-DDPM / ADM U-Net in flax.linen.

Ho et al. 2020 (DDPM) appendix B; Nichol & Dhariwal 2021 (improved DDPM) section 4 and appendix A;
Dhariwal & Nichol 2021 (ADM, "Diffusion Models Beat GANs") section 3. With the defaults this is the
DDPM CIFAR-10 network (35.7M parameters); the ADM options are `num_head_channels`,
`resblock_updown`, `use_scale_shift_norm` and more attention resolutions. Tensors are NHWC.
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffax.config_checks import ConfigError, int_tuple, number, positive_int
from diffax.models.cross_attention import SpatialTransformer, pooled_context
from diffax.models.layers import (
    NUM_GROUPS,
    AttentionBlock,
    Downsample,
    LevelEmbedding,
    ResBlock,
    Upsample,
    attention_heads,
    check_image_cond_inputs,
    conv,
    fourier_features,
    group_norm,
    timestep_embedding,
)


def reachable_resolutions(height: int, num_levels: int) -> tuple[int, ...]:
    """Returns the feature-map heights `H, H/2, ..., H/2**(num_levels-1)` the U-Net visits."""
    return tuple(height // 2**level for level in range(num_levels))


def check_hyperparameters(hp: Mapping[str, Any], field: str, image_size: int) -> None:
    """Raises ConfigError in one sentence naming the field (`field`: the section's prefix, e.g.
    "model.unet.") if the U-Net hyperparameters `hp` build no U-Net for image_size images."""
    f = field
    positive_int(hp["ch"], f + "ch")
    positive_int(hp["num_res_blocks"], f + "num_res_blocks")
    ch, mult = hp["ch"], hp["channel_mult"]
    ok = isinstance(mult, (tuple, list)) and len(mult) > 0
    ok = ok and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in mult)
    if not ok or not all(c > 0 and float(ch * c).is_integer() for c in mult):
        raise ConfigError(
            f"{f}channel_mult={mult!r} must be a tuple of positive multipliers giving whole "
            f"channel counts with {f}ch={ch}."
        )
    mult = tuple(mult)
    widths = sorted({int(ch * c) for c in mult})
    int_tuple(hp["attention_resolutions"], f + "attention_resolutions", allow_empty=True)
    positive_int(hp["num_heads"], f + "num_heads")
    head_channels = hp["num_head_channels"]
    if not (isinstance(head_channels, int) and not isinstance(head_channels, bool)) or (
        head_channels < 1 and head_channels != -1
    ):
        raise ConfigError(
            f"{f}num_head_channels={head_channels!r} must be a positive integer or -1."
        )
    number(hp["dropout"], f + "dropout", 0.0, 1.0, high_open=True)
    for flag in ("use_new_attention_order", "null_class"):  # The classifier has no null_class.
        if flag in hp and not isinstance(hp[flag], bool):
            raise ConfigError(f"{f}{flag}={hp[flag]!r} must be True or False.")
    if "timestep_scale" in hp:
        number(hp["timestep_scale"], f + "timestep_scale", 0.0, float("inf"), low_open=True)
    bad_widths = [w for w in widths if w % NUM_GROUPS]
    if bad_widths:
        raise ConfigError(
            f"{f}ch={ch} with {f}channel_mult={mult!r} gives widths {bad_widths} that "
            f"GroupNorm's {NUM_GROUPS} groups cannot split; use multiples of {NUM_GROUPS}."
        )
    factor = 2 ** (len(mult) - 1)
    if image_size % factor:
        raise ConfigError(
            f"data.image_size={image_size} must be divisible by {factor}, the U-Net's "
            f"downsampling for {f}channel_mult={mult!r} (use a size divisible by {factor} "
            "or fewer levels)."
        )
    reachable = reachable_resolutions(image_size, len(mult))
    for res in tuple(hp["attention_resolutions"]):
        if res not in reachable:
            raise ConfigError(
                f"{f}attention_resolutions contains {res}, which the U-Net never reaches; "
                f"its resolutions are {reachable}."
            )
    for width in widths:
        try:
            attention_heads(width, hp["num_heads"], head_channels)
        except ValueError as e:
            name = f + ("num_head_channels" if head_channels > 0 else "num_heads")
            raise ConfigError(
                f"{name}: {e} (the level widths are {widths}); pick a value dividing each."
            ) from None


class UNet(nn.Module):
    """Noise-prediction U-Net: `(x [B, H, W, C], t [B], y [B] or None) -> [B, H, W, out]`.

    Given a context `[B, L, D]` and its mask `[B, L]` (keywords), every attention block becomes
    LDM's SpatialTransformer, which also cross-attends to the context (Rombach et al. 2022).
    """

    out_channels: int  # C for a fixed variance, 2C for a learned one (mean channels first)
    ch: int = 128  # base width; level i has ch * channel_mult[i] channels
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)  # feature-map heights in pixels
    num_heads: int = 1
    num_head_channels: int = -1  # if > 0, heads = channels // num_head_channels
    dropout: float = 0.0
    resblock_updown: bool = False  # BigGAN residual up/downsampling (ADM section 3)
    use_scale_shift_norm: bool = False  # AdaGN: GN(h) * (1 + scale) + shift (ADM section 3)
    conv_resample: bool = True  # learned 3x3 conv in the plain down/upsample layers
    num_classes: int = 0  # > 0: class-conditional; label num_classes is the learned null class
    # The label table's extra row num_classes, the null class of classifier-free guidance; ADM's
    # published class-conditional checkpoints have none (False: num_classes rows).
    null_class: bool = True
    # q, k, v split before heads (True) or heads first (guided-diffusion's use_new_attention_order
    # False, improved-diffusion): see layers.AttentionBlock.
    use_new_attention_order: bool = True
    # The network embeds t * timestep_scale: 1000 / T for improved-diffusion's rescale_timesteps.
    timestep_scale: float = 1.0
    dtype: Any = jnp.float32  # compute dtype; params, norms, softmax and the output are float32
    remat: bool = False  # rematerialise residual and attention blocks in the backward pass
    # Exponents n of sin/cos(2^n pi x) channels appended to the input (VDM sec. 3.4); () none.
    fourier_features: tuple[int, ...] = ()
    # Image conditioning: `concat` [B, H, W, C'] joins x's channels (super-resolution: the
    # upsampled low-resolution image, SR3; inpainting: the masked image and mask) ...
    concat_cond: bool = False
    # ... and a noise-augmentation level `aug_level` [B] is embedded like t (CDM, Imagen).
    level_cond: bool = False
    # Given a context, its pooled mean is also added to the timestep embedding (Imagen).
    pool_context: bool = False

    def _check_inputs(self, x: jax.Array, y: jax.Array | None) -> None:
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
        attend; default all True) or None. Dropout draws from the "dropout" RNG stream when
        `train=True`.
        """
        self._check_inputs(x, y)
        check_image_cond_inputs(self.concat_cond, self.level_cond, x, concat, aug_level)
        if context is not None and context_mask is None:
            context_mask = jnp.ones(context.shape[:2], bool)
        if self.fourier_features:
            x = fourier_features(x, tuple(self.fourier_features))
        if self.concat_cond:
            x = jnp.concatenate([x, concat.astype(x.dtype)], axis=-1)
        height = x.shape[1]
        res_block = nn.remat(ResBlock) if self.remat else ResBlock
        attn_block = nn.remat(AttentionBlock) if self.remat else AttentionBlock
        text_block = nn.remat(SpatialTransformer) if self.remat else SpatialTransformer

        def res(h, emb, channels, name, up=False, down=False):
            return res_block(
                channels,
                dropout=self.dropout,
                use_scale_shift_norm=self.use_scale_shift_norm,
                up=up,
                down=down,
                deterministic=not train,
                dtype=self.dtype,
                name=name,
            )(h, emb)

        def attn(h, name):
            if context is not None:
                block = text_block(
                    self.num_heads, self.num_head_channels, dtype=self.dtype, name=name
                )
                return block(h, context, context_mask)
            return attn_block(
                self.num_heads,
                self.num_head_channels,
                dtype=self.dtype,
                use_new_attention_order=self.use_new_attention_order,
                name=name,
            )(h)

        # Timestep (and label) embedding, kept in float32 as in ADM (time_embed is not fp16).
        emb_dim = 4 * self.ch
        if self.timestep_scale != 1.0:
            t = jnp.asarray(t, jnp.float32) * self.timestep_scale
        emb = timestep_embedding(t, self.ch)  # [B, ch]
        emb = nn.Dense(emb_dim, param_dtype=jnp.float32, name="time_embed_0")(emb)
        emb = nn.Dense(emb_dim, param_dtype=jnp.float32, name="time_embed_1")(nn.silu(emb))
        if self.num_classes > 0:
            # One extra row: the learned null label for classifier-free guidance (Ho & Salimans).
            rows = self.num_classes + 1 if self.null_class else self.num_classes
            label_emb = nn.Embed(rows, emb_dim, name="label_embed")
            emb = emb + label_emb(jnp.asarray(y, jnp.int32))  # [B, 4ch]
        if self.level_cond:
            emb = emb + LevelEmbedding(emb_dim, self.ch, name="aug_level_embed")(aug_level)
        if self.pool_context and context is not None:
            pooled = pooled_context(context, context_mask)  # [B, D]
            emb = emb + nn.Dense(emb_dim, param_dtype=jnp.float32, name="context_embed")(pooled)

        # Encoder: skips holds every input-block output, consumed in reverse by the decoder.
        # ADM makes the input conv int(channel_mult[0] * ch) wide (ADM-512 starts at 0.5 ch).
        width = int(self.channel_mult[0] * self.ch)
        h = conv(width, 3, self.dtype, "input_conv")(x.astype(self.dtype))  # [B, H, W, width]
        skips = [h]
        resolution = height
        last = len(self.channel_mult) - 1
        for level, mult in enumerate(self.channel_mult):
            for i in range(self.num_res_blocks):
                h = res(h, emb, int(self.ch * mult), f"down_{level}_res_{i}")
                if resolution in self.attention_resolutions:
                    h = attn(h, f"down_{level}_attn_{i}")
                skips.append(h)
            if level != last:
                name = f"down_{level}_downsample"
                if self.resblock_updown:
                    h = res(h, emb, h.shape[-1], name, down=True)
                else:
                    h = Downsample(self.conv_resample, dtype=self.dtype, name=name)(h)
                resolution //= 2
                skips.append(h)

        # Middle: res, attention, res at the lowest resolution.
        h = res(h, emb, h.shape[-1], "mid_res_0")
        h = attn(h, "mid_attn")
        h = res(h, emb, h.shape[-1], "mid_res_1")

        # Decoder: num_res_blocks + 1 blocks per level, each on [h, skip] concatenated on channels.
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for i in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = res(h, emb, int(self.ch * mult), f"up_{level}_res_{i}")
                if resolution in self.attention_resolutions:
                    h = attn(h, f"up_{level}_attn_{i}")
            if level != 0:
                name = f"up_{level}_upsample"
                if self.resblock_updown:
                    h = res(h, emb, h.shape[-1], name, up=True)
                else:
                    h = Upsample(self.conv_resample, dtype=self.dtype, name=name)(h)
                resolution *= 2

        # Output head in float32 (ADM casts back before `out`); the zero conv makes a fresh
        # model predict exactly 0.
        h = nn.silu(group_norm(h.astype(jnp.float32), "out_norm"))
        return conv(self.out_channels, 3, jnp.float32, "out_conv", zero_init=True)(h)
