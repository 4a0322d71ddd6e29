"""Tests of diffax.tools.flops against MACs counted by hand and against XLA's cost analysis."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from configs import tiny
from diffax import build
from diffax.models import layers
from diffax.tools import flops


def abstract(*shape, dtype=jnp.float32):
    """Returns a jax.ShapeDtypeStruct (nothing is allocated)."""
    return jax.ShapeDtypeStruct(shape, dtype)


def module_macs(module, x):
    """Returns count_macs of module.apply on abstract x (abstract variables initialised first)."""
    variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
    return flops.count_macs(module.apply, variables, x)


def test_strided_conv_macs_match_hand_count():
    conv = nn.Conv(16, (3, 3), strides=(2, 2), padding="SAME")
    counts = module_macs(conv, abstract(2, 8, 8, 3))
    # Output [2, 4, 4, 16]; each output element is a 3 x 3 x 3-input-channel dot product.
    assert counts["conv"] == 2 * 4 * 4 * 16 * (3 * 3 * 3) == 13824
    assert counts["total"] == counts["conv"] and counts["dense"] == counts["attention"] == 0


def test_grouped_conv_counts_only_its_group_inputs():
    conv = nn.Conv(8, (1, 1), feature_group_count=4)
    counts = module_macs(conv, abstract(1, 5, 5, 8))
    assert counts["conv"] == 5 * 5 * 8 * (8 // 4)


def test_dense_macs_match_hand_count():
    dense = nn.Dense(7)
    counts = module_macs(dense, abstract(3, 10, 5))
    assert counts["dense"] == 3 * 10 * 7 * 5


def test_attention_block_macs_match_hand_count():
    block = layers.AttentionBlock(num_heads=2)
    x = abstract(2, 4, 4, 64)  # L = 16 positions, 2 heads of 32 channels.
    counts = module_macs(block, x)
    length, channels = 16, 64
    assert counts["dense"] == 2 * (length * channels * 3 * channels + length * channels * channels)
    # QK^T and AV: per head L x L x 32 MACs each.
    assert counts["attention"] == 2 * 2 * (2 * length * length * 32)


def res_block_macs(length, c_in, c_out, emb_dim=128):
    """MACs of one scale-shift ResBlock at L positions, written out by hand."""
    skip = length * c_in * c_out if c_in != c_out else 0
    return (
        length * 9 * c_in * c_out  # in_conv 3x3
        + emb_dim * 2 * c_out  # emb_proj to (scale, shift)
        + length * 9 * c_out * c_out  # out_conv 3x3
        + skip  # 1x1 skip conv when the width changes
    )


def attn_block_macs(length, channels):
    """MACs of one attention block at L positions (one 32-channel head per 32 channels)."""
    return length * channels * 3 * channels + 2 * length**2 * channels + length * channels**2


def test_tiny_unet_forward_macs_match_hand_count():
    # configs/tiny.py: 8x8x1 input, ch 32, channel_mult (1, 1), one res block, attention at 4x4,
    # learned variance (2 output channels), class-conditional, time embedding 4 x 32 = 128.
    config = tiny.get_config()
    model = build.create_model(config)
    hi, lo = 64, 16  # positions at 8x8 and 4x4
    expected = (
        32 * 128
        + 128 * 128  # time embedding MLP
        + hi * 9 * 1 * 32  # input conv
        + res_block_macs(hi, 32, 32)  # down level 0
        + lo * 9 * 32 * 32  # stride-2 downsample conv (4x4 outputs)
        + res_block_macs(lo, 32, 32)
        + attn_block_macs(lo, 32)  # down level 1
        + 2 * res_block_macs(lo, 32, 32)
        + attn_block_macs(lo, 32)  # middle
        + 2 * (res_block_macs(lo, 64, 32) + attn_block_macs(lo, 32))  # up level 1, skip concat
        + hi * 9 * 32 * 32  # upsample conv at 8x8
        + 2 * res_block_macs(hi, 64, 32)  # up level 0
        + hi * 9 * 32 * 2  # output conv
    )
    counts = flops.forward_macs(model, build.image_shape(config), batch_size=3)
    assert counts["total"] == 3 * expected
    assert counts["attention"] == 3 * 4 * 2 * lo**2 * 32
    assert flops.forward_flops_per_image(model, build.image_shape(config)) == 2 * expected
    assert flops.train_flops_per_image(model, build.image_shape(config)) == 6 * expected


@pytest.mark.parametrize(
    "module,shape",
    [
        (nn.Conv(4, (3, 3), padding="VALID", use_bias=False), (2, 6, 6, 3)),
        (nn.Dense(5, use_bias=False), (4, 7)),
    ],
)
def test_analytic_flops_equal_xla_cost_analysis_without_padding_or_bias(module, shape):
    x = jnp.zeros(shape)
    params = module.init(jax.random.PRNGKey(0), x)
    compiled = jax.jit(module.apply).lower(params, x).compile()
    analytic = 2 * module_macs(module, abstract(*shape))["total"]
    assert flops.xla_cost(compiled)["flops"] == analytic


def test_sampling_flops_double_with_guidance():
    assert flops.sampling_flops(10.0, steps=50, num_images=4) == 2000.0
    assert flops.sampling_flops(10.0, steps=50, num_images=4, guidance=True) == 4000.0
