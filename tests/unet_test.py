"""Tests for diffax.models.unet and diffax.models.layers (the ADM U-Net)."""

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax.models import count_params, layers
from diffax.models.unet import UNet

# A tiny two-level model: 8x8 -> 4x4, attention at 4x4; every test model shares its parameters.
TINY = dict(ch=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,))
NUM_CLASSES = 10
BATCH = 2


def _inputs():
    x = jax.random.normal(jax.random.key(1), (BATCH, 8, 8, 3))  # [B, H, W, C]
    t = jnp.array([3, 700])  # [B]
    y = jnp.array([1, 4])  # [B]
    return x, t, y


def _perturb(params, scale=0.05):
    """Adds noise to every leaf, so the zero-initialised output layers stop masking the network."""
    rng = np.random.default_rng(123)  # host-side noise: no per-shape compilation
    return jax.tree_util.tree_map(
        lambda leaf: np.asarray(leaf) + scale * rng.standard_normal(leaf.shape, np.float32), params
    )


# The float32 class-conditional learned-sigma reference model, compiled once for all tests.
COND_MODEL = UNet(out_channels=6, num_classes=NUM_CLASSES, **TINY)
COND_APPLY = jax.jit(COND_MODEL.apply)


@pytest.fixture(scope="module")
def cond_variables():
    """Freshly initialised variables of the tiny class-conditional learned-sigma model."""
    x, t, y = _inputs()
    return jax.jit(COND_MODEL.init)(jax.random.key(0), x, t, y)


@pytest.fixture(scope="module")
def perturbed_variables(cond_variables):
    return {"params": _perturb(cond_variables["params"])}


@pytest.mark.parametrize(
    "out_channels, num_classes, extra",
    [
        (3, 0, {}),  # fixed variance, unconditional
        (6, 0, {}),  # learned variance, unconditional
        (6, NUM_CLASSES, {}),  # learned variance, class-conditional
        (  # the ADM options together
            6,
            NUM_CLASSES,
            dict(
                resblock_updown=True,
                use_scale_shift_norm=True,
                num_head_channels=16,
                conv_resample=False,
            ),
        ),
    ],
)
def test_output_shape_and_dtype(out_channels, num_classes, extra):
    x, t, y = _inputs()
    model = UNet(out_channels=out_channels, num_classes=num_classes, **TINY, **extra)
    y = y if num_classes else None
    variables = jax.eval_shape(model.init, jax.random.key(0), x, t, y)
    out = jax.eval_shape(model.apply, variables, x, t, y)
    chex.assert_shape(out, (BATCH, 8, 8, out_channels))
    assert out.dtype == jnp.float32


def test_fresh_model_outputs_exactly_zero(cond_variables):
    x, t, y = _inputs()
    out = COND_APPLY(cond_variables, x, t, y)
    chex.assert_shape(out, (BATCH, 8, 8, 6))
    np.testing.assert_array_equal(np.asarray(out), 0.0)


def test_bfloat16_compute_keeps_float32_params_and_output(perturbed_variables):
    x, t, y = _inputs()
    model_bf16 = UNet(out_channels=6, num_classes=NUM_CLASSES, dtype=jnp.bfloat16, **TINY)
    init_params = jax.eval_shape(model_bf16.init, jax.random.key(0), x, t, y)["params"]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(init_params))
    out_bf16 = jax.jit(model_bf16.apply)(perturbed_variables, x, t, y)
    assert out_bf16.dtype == jnp.float32
    out_f32 = COND_APPLY(perturbed_variables, x, t, y)
    # bfloat16 has an 8-bit mantissa: agreement to a few percent of the output scale.
    scale = float(jnp.max(jnp.abs(out_f32)))
    assert scale > 0
    chex.assert_trees_all_close(out_bf16, out_f32, atol=0.05 * scale)


def test_remat_checkpoints_blocks_and_keeps_outputs_identical(perturbed_variables):
    x, t, y = _inputs()
    remat = UNet(out_channels=6, num_classes=NUM_CLASSES, remat=True, **TINY)
    # Same parameter tree: remat must not rename any module.
    remat_params = jax.eval_shape(remat.init, jax.random.key(0), x, t, y)["params"]
    chex.assert_trees_all_equal_shapes_and_dtypes(remat_params, perturbed_variables["params"])
    out_remat = jax.jit(remat.apply)(perturbed_variables, x, t, y)
    np.testing.assert_array_equal(out_remat, COND_APPLY(perturbed_variables, x, t, y))

    def grad_jaxpr(model):
        loss = lambda v: jnp.sum(model.apply(v, x, t, y) ** 2)  # noqa: E731
        return str(jax.make_jaxpr(jax.grad(loss))(perturbed_variables))

    # Activation checkpointing shows up as `checkpoint`/`remat` equations in the backward pass.
    # At least one per res block (8) and attention block (4) of the tiny model.
    remat_jaxpr = grad_jaxpr(remat)
    assert "remat" not in grad_jaxpr(COND_MODEL) and "checkpoint" not in grad_jaxpr(COND_MODEL)
    assert remat_jaxpr.count("remat") + remat_jaxpr.count("checkpoint") >= 12


def test_class_label_changes_output_and_null_class_is_accepted(perturbed_variables):
    x, t, _ = _inputs()
    apply = COND_APPLY
    out_a = apply(perturbed_variables, x, t, jnp.array([0, 0]))
    out_b = apply(perturbed_variables, x, t, jnp.array([1, 1]))
    out_null = apply(perturbed_variables, x, t, jnp.full((BATCH,), NUM_CLASSES))
    chex.assert_tree_all_finite(out_null)
    assert float(jnp.max(jnp.abs(out_a - out_b))) > 1e-4
    assert float(jnp.max(jnp.abs(out_null - out_a))) > 1e-4
    # The null label has its own learned row: num_classes + 1 rows in all.
    chex.assert_shape(perturbed_variables["params"]["label_embed"]["embedding"], (11, 128))


def test_dropout_is_active_only_when_training(perturbed_variables):
    x, t, y = _inputs()
    with_dropout = UNet(out_channels=6, num_classes=NUM_CLASSES, dropout=0.5, **TINY)
    reference = COND_APPLY(perturbed_variables, x, t, y)
    # train=False: dropout is the identity, so the result equals the dropout-free network.
    eval_out = jax.jit(with_dropout.apply)(perturbed_variables, x, t, y)
    chex.assert_trees_all_close(eval_out, reference)

    train_apply = jax.jit(
        lambda key: with_dropout.apply(
            perturbed_variables, x, t, y, train=True, rngs={"dropout": key}
        )
    )
    out_1, out_2 = train_apply(jax.random.key(1)), train_apply(jax.random.key(2))
    assert float(jnp.max(jnp.abs(out_1 - reference))) > 1e-4
    assert float(jnp.max(jnp.abs(out_1 - out_2))) > 1e-4


def test_timestep_embedding_matches_closed_form():
    t = np.array([0.0, 1.0, 17.0, 999.5])
    for dim in (8, 7):
        half = dim // 2
        freqs = 10000.0 ** (-np.arange(half) / half)
        args = t[:, None] * freqs[None, :]
        expected = np.concatenate([np.cos(args), np.sin(args)], axis=1)
        if dim % 2:
            expected = np.concatenate([expected, np.zeros((len(t), 1))], axis=1)
        got = layers.timestep_embedding(jnp.asarray(t), dim)
        chex.assert_shape(got, (len(t), dim))
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-4)


def test_attention_block_matches_naive_multihead_attention():
    x = jax.random.normal(jax.random.key(5), (2, 4, 4, 64))  # [B, H, W, C]
    block = layers.AttentionBlock(num_head_channels=16)  # 4 heads of 16 channels
    params = _perturb(jax.jit(block.init)(jax.random.key(6), x)["params"], scale=0.2)
    got = jax.jit(block.apply)({"params": params}, x)

    # Independent NumPy computation: GroupNorm(32) -> q, k, v -> softmax(q k^T / sqrt(d)) v.
    xn = np.asarray(x, np.float64).reshape(2, 16, 32, 2)  # [B, L, groups, C/groups]
    mean = xn.mean(axis=(1, 3), keepdims=True)
    var = xn.var(axis=(1, 3), keepdims=True)
    normed = ((xn - mean) / np.sqrt(var + 1e-5)).reshape(2, 16, 64)
    normed = normed * np.asarray(params["norm"]["scale"]) + np.asarray(params["norm"]["bias"])
    qkv = normed @ np.asarray(params["qkv"]["kernel"]) + np.asarray(params["qkv"]["bias"])
    heads = []
    for head in range(4):
        q, k, v = (qkv[..., j * 64 + head * 16 : j * 64 + (head + 1) * 16] for j in range(3))
        logits = q @ k.transpose(0, 2, 1) / math.sqrt(16)
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        heads.append(weights @ v)
    attended = np.concatenate(heads, axis=-1)  # [B, L, C]
    proj = attended @ np.asarray(params["proj_out"]["kernel"]) + np.asarray(
        params["proj_out"]["bias"]
    )
    expected = np.asarray(x) + proj.reshape(2, 4, 4, 64)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-4)


def _abstract_param_count(model: nn.Module, size: int, labels: bool = False) -> int:
    x = jnp.zeros((1, size, size, 3))
    y = jnp.zeros((1,), jnp.int32) if labels else None
    params = jax.eval_shape(model.init, jax.random.key(0), x, jnp.zeros((1,)), y)["params"]
    return count_params(params)


def test_tiny_param_count_matches_hand_count():
    """The tiny model's parameters counted layer by layer from the architecture description."""

    def conv(k, c_in, c_out):
        return k * k * c_in * c_out + c_out

    def norm(c):
        return 2 * c

    def res(c_in, c_out, emb=128):
        skip = conv(1, c_in, c_out) if c_in != c_out else 0
        return (
            norm(c_in)
            + conv(3, c_in, c_out)
            + emb * c_out
            + c_out
            + norm(c_out)
            + (conv(3, c_out, c_out) + skip)
        )

    def attn(c):
        return norm(c) + c * 3 * c + 3 * c + c * c + c

    expected = (
        (32 * 128 + 128)
        + (128 * 128 + 128)  # time MLP: ch -> 4ch -> 4ch
        + conv(3, 3, 32)  # input conv; skips: 32
        + res(32, 32)  # level 0 (8x8); skip 32
        + conv(3, 32, 32)  # downsample; skip 32
        + res(32, 64)
        + attn(64)  # level 1 (4x4); skip 64
        + res(64, 64)
        + attn(64)
        + res(64, 64)  # middle
        + res(128, 64)
        + attn(64)
        + res(64 + 32, 64)
        + attn(64)  # decoder level 1
        + conv(3, 64, 64)  # upsample
        + res(64 + 32, 32)
        + res(32 + 32, 32)  # decoder level 0
        + norm(32)
        + conv(3, 32, 3)  # output head
    )
    assert _abstract_param_count(UNet(out_channels=3, **TINY), 8) == expected


def test_ddpm_cifar10_param_count_matches_paper():
    # Ho et al. 2020, appendix B: "Our CIFAR10 model has 35.7 million parameters".
    count = _abstract_param_count(UNet(out_channels=3), 32)
    assert abs(count - 35.7e6) / 35.7e6 < 0.01, count


def test_ddpm_256_param_count_matches_paper():
    # Ho et al. 2020, appendix B: "our LSUN and CelebA-HQ models have 114 million parameters";
    # the 256x256 models use six resolutions, channel multipliers (1, 1, 2, 2, 4, 4) in the
    # released diffusion_tf code, attention at 16x16. Ours: 113,673,219.
    model = UNet(out_channels=3, channel_mult=(1, 1, 2, 2, 4, 4))
    count = _abstract_param_count(model, 256)
    assert abs(count - 114e6) / 114e6 < 0.01, count


def test_adm_imagenet512_param_count_matches_paper_to_the_parameter():
    # Dhariwal & Nichol 2021 (ADM), appendix hyperparameter table: the ImageNet 512x512 model
    # has 559M parameters. Settings from the released guided-diffusion flags: 256 channels, 2 res
    # blocks, channel_mult (0.5, 1, 1, 2, 2, 4, 4), attention at 32/16/8 with 64-channel heads,
    # BigGAN up/downsampling, AdaGN, learned sigma, 1000 classes. The input conv is int(0.5 * 256)
    # = 128 wide as in the reference; a 256-wide one (diffax before the fix) has 348,288 more:
    # input conv 3,584 + first block (256 -> 128 with a 1x1 skip) 180,608 + last decoder block
    # (384 -> 128 instead of 256 -> 128) 164,096. The null-class row adds 4 * 256 = 1,024.
    model = UNet(
        out_channels=6,
        ch=256,
        channel_mult=(0.5, 1, 1, 2, 2, 4, 4),
        attention_resolutions=(32, 16, 8),
        num_head_channels=64,
        resblock_updown=True,
        use_scale_shift_norm=True,
        num_classes=1000,
    )
    assert _abstract_param_count(model, 512, labels=True) == 558_997_638 + 1_024


def test_input_conv_is_channel_mult0_times_ch_wide():
    model = UNet(out_channels=3, ch=64, channel_mult=(0.5, 1), attention_resolutions=())
    x = jnp.zeros((1, 8, 8, 3))
    params = jax.eval_shape(model.init, jax.random.key(0), x, jnp.zeros((1,)))["params"]
    assert params["input_conv"]["kernel"].shape == (3, 3, 3, 32)
    # The first residual block keeps the 32 channels: no 1x1 skip conv.
    assert "skip" not in params["down_0_res_0"]


def test_indivisible_input_size_raises():
    x, t, _ = _inputs()
    model = UNet(out_channels=3, ch=32, channel_mult=(1, 2, 2, 2), attention_resolutions=())
    with pytest.raises(ValueError, match="channel_mult"):
        model.init(jax.random.key(0), x[:, :6, :6], t)  # 6 is not divisible by 8


def test_unreachable_attention_resolution_raises():
    x, t, _ = _inputs()
    model = UNet(out_channels=3, **{**TINY, "attention_resolutions": (16,)})
    with pytest.raises(ValueError, match=r"attention_resolutions.*\[8, 4\]"):
        model.init(jax.random.key(0), x, t)


def test_missing_labels_raise():
    x, t, _ = _inputs()
    model = UNet(out_channels=3, num_classes=NUM_CLASSES, **TINY)
    with pytest.raises(ValueError, match="num_classes"):
        model.init(jax.random.key(0), x, t, None)
