"""Tests for diffax.models.dit (the Diffusion Transformer, Peebles & Xie 2023) and its configs."""

import math
import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs import digits_dit, digits_dit_text, imagenet256_dit_xl2
from diffax import build, tasks, train, validation
from diffax.models import count_params, dit
from diffax.tools import flops
from diffax.validation import ConfigError

# A tiny model on 8x8x3 inputs: 16 tokens of width 32; learned sigma (6 outputs), 10 classes.
TINY = dict(patch_size=2, hidden_size=32, depth=2, num_heads=2)
NUM_CLASSES = 10
BATCH = 8  # One example per fake CPU device in the sharding test.

# The paper's latent setting (sec. 3.1, 4): 32x32x4 latents, 1000 classes, learned sigma.
LATENT_SHAPE = (32, 32, 4)
IMAGENET_CLASSES = 1000
FREQ_DIM = 256  # The timestep MLP's sinusoidal input width (sec. 3.2).

# Parameters in millions as the paper reports them (Table 4 / sec. 5; S/B/L follow ViT). Exact
# counts of this implementation (the fixed position embedding is not a parameter; counting it as
# the reference code's frozen buffer adds L * D, e.g. 0.29M for XL/2, and changes no rounding):
#   S/2 32,865,056   S/4 32,920,448   S/8 33,142,016
#   B/2 130,315,808  B/4 130,426,496  B/8 130,869,248
#   L/2 457,840,672  L/4 457,988,224  L/8 458,578,432
#   XL/2 674,834,720 XL/4 675,000,704 XL/8 675,664,640
# The per-size figure is asserted to the paper's rounding for p = 2 and 4; the p x p-dependent
# layers (patch embedding, output layer) put p = 8 up to 0.66M higher, asserted within 1M.
PAPER_PARAMS_M = {"S": 33, "B": 130, "L": 458, "XL": 675}

# Forward Gflops as the paper reports them (fvcore: one multiply-add counts as one flop, so these
# are MACs). p = 4: Table 1; p = 2: the per-model figures (XL/2 118.6 also in Table 2). This
# implementation's matmul MACs (Dense layers + the two attention matmuls), in G:
#   S/2 6.056   S/4 1.413   S/8 0.358
#   B/2 23.005  B/4 5.565   B/8 1.418
#   L/2 80.698  L/4 19.696  L/8 5.011
#   XL/2 118.621 XL/4 29.044 XL/8 7.392
# fvcore also counts the LayerNorms (about 4 flops per element, +0.06% for XL/2), hence the 1%.
PAPER_GFLOPS = {
    ("S", 2): 6.1,
    ("B", 2): 23.0,
    ("L", 2): 80.7,
    ("XL", 2): 118.6,
    ("S", 4): 1.4,
    ("B", 4): 5.6,
    ("L", 4): 19.7,
    ("XL", 4): 29.1,
}
SIZES_AND_PATCHES = [(size, p) for size in dit.DIT_SIZES for p in (2, 4, 8)]


def _paper_model(size, patch_size):
    hidden, depth, heads = dit.DIT_SIZES[size]
    return dit.DiT(
        out_channels=2 * LATENT_SHAPE[-1],
        patch_size=patch_size,
        hidden_size=hidden,
        depth=depth,
        num_heads=heads,
        num_classes=IMAGENET_CLASSES,
    )


def param_formula(hidden, depth, patch, in_ch, out_ch, num_classes, mlp_ratio=4.0):
    """Parameters of DiT written out from the architecture (weights + biases of each linear)."""
    d, mlp, pp = hidden, int(hidden * mlp_ratio), patch * patch
    block = (
        (d * 6 * d + 6 * d)  # adaLN-Zero modulation: shift, scale, gate for attention and MLP
        + (d * 3 * d + 3 * d)  # attention qkv
        + (d * d + d)  # attention output projection
        + (d * mlp + mlp)  # MLP in
        + (mlp * d + d)  # MLP out
    )  # LayerNorms have no parameters
    embeddings = (
        (pp * in_ch * d + d)  # patch embedding
        + (FREQ_DIM * d + d)  # timestep MLP, first layer
        + (d * d + d)  # timestep MLP, second layer
        + (num_classes + 1) * d  # label table with the null class
    )
    final = (d * 2 * d + 2 * d) + (d * pp * out_ch + pp * out_ch)  # adaLN (shift, scale), linear
    return depth * block + embeddings + final


def mac_formula(hidden, depth, heads, patch, image_shape, out_ch, mlp_ratio=4.0):
    """Forward matmul MACs of one image, written out from the architecture."""
    height, width, in_ch = image_shape
    d, mlp, pp = hidden, int(hidden * mlp_ratio), patch * patch
    length = (height // patch) * (width // patch)
    head_dim = d // heads
    block = (
        d * 6 * d  # adaLN modulation, once per image
        + length * (d * 3 * d + d * d + 2 * d * mlp)  # qkv, projection, MLP per token
        + 2 * heads * length * length * head_dim  # QK^T and AV
    )
    embeddings = length * pp * in_ch * d + FREQ_DIM * d + d * d
    final = d * 2 * d + length * d * pp * out_ch
    return depth * block + embeddings + final


@pytest.mark.parametrize("size, patch_size", SIZES_AND_PATCHES)
def test_param_count_matches_formula_and_paper(size, patch_size):
    model = _paper_model(size, patch_size)
    x = jax.ShapeDtypeStruct((1, *LATENT_SHAPE), jnp.float32)
    t = y = jax.ShapeDtypeStruct((1,), jnp.int32)
    params = jax.eval_shape(lambda x, t, y: model.init(jax.random.key(0), x, t, y), x, t, y)
    count = count_params(params["params"])
    hidden, depth, _ = dit.DIT_SIZES[size]
    assert count == param_formula(hidden, depth, patch_size, 4, 8, IMAGENET_CLASSES)
    if patch_size == 8:
        assert abs(count / 1e6 - PAPER_PARAMS_M[size]) < 1.0
    else:
        assert round(count / 1e6) == PAPER_PARAMS_M[size]


@pytest.mark.parametrize("size, patch_size", SIZES_AND_PATCHES)
def test_forward_macs_match_formula_and_paper_gflops(size, patch_size):
    model = _paper_model(size, patch_size)
    hidden, depth, heads = dit.DIT_SIZES[size]
    counts = flops.forward_macs(model, LATENT_SHAPE)
    length = (32 // patch_size) ** 2
    assert counts["conv"] == 0
    assert counts["attention"] == depth * flops.attention_macs(1, length, hidden, heads)
    macs = counts["total"]
    assert macs == mac_formula(hidden, depth, heads, patch_size, LATENT_SHAPE, 8)
    paper = PAPER_GFLOPS.get((size, patch_size))
    if paper is not None:
        np.testing.assert_allclose(macs / 1e9, paper, rtol=0.01)


def _inputs(batch=BATCH):
    """Host-side (x [B, 8, 8, 3], t [B], y [B]): no per-shape compilation of random draws."""
    x = np.random.default_rng(1).standard_normal((batch, 8, 8, 3), np.float32)
    t = np.arange(batch, dtype=np.int32) * 97
    y = np.arange(batch, dtype=np.int32) % NUM_CLASSES
    return x, t, y


def _perturb(params, scale=0.05):
    """Adds noise to every leaf, so the zero-initialised layers stop masking the network."""
    rng = np.random.default_rng(123)
    return jax.tree_util.tree_map(
        lambda leaf: np.asarray(leaf) + scale * rng.standard_normal(leaf.shape, np.float32), params
    )


COND_MODEL = dit.DiT(out_channels=6, num_classes=NUM_CLASSES, **TINY)
COND_APPLY = jax.jit(COND_MODEL.apply)


@pytest.fixture(scope="module")
def fresh_params():
    x, t, y = _inputs()
    return jax.jit(COND_MODEL.init)(jax.random.key(0), x, t, y)["params"]


@pytest.fixture(scope="module")
def perturbed_params(fresh_params):
    return _perturb(fresh_params)


def test_fresh_model_outputs_exact_zeros_and_every_block_is_the_identity(fresh_params):
    x, t, y = _inputs()
    x = 10.0 * x + 3.0  # any input
    variables = {"params": fresh_params}
    blocks = []

    def record_blocks(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, dit.DiTBlock) and context.method_name == "__call__":
            blocks.append((args[0], out))
        return out

    with nn.intercept_methods(record_blocks):
        out = COND_MODEL.apply(variables, x, t, y)
    chex.assert_shape(out, (BATCH, 8, 8, 6))
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, 0.0)  # adaLN-Zero: the final layer starts at zero
    assert len(blocks) == TINY["depth"]
    for block_in, block_out in blocks:
        np.testing.assert_array_equal(block_out, block_in)  # every gate starts at zero


def test_perturbed_model_is_nonzero_and_finite(perturbed_params):
    x, t, y = _inputs()
    out = COND_APPLY({"params": perturbed_params}, x, t, y)
    chex.assert_tree_all_finite(out)
    assert float(jnp.abs(out).mean()) > 1e-3


def test_bfloat16_compute_keeps_float32_params_norms_softmax_and_output():
    model = COND_MODEL.clone(dtype=jnp.bfloat16)
    x, t, y = _inputs(batch=2)
    variables = jax.eval_shape(model.init, jax.random.key(0), x, t, y)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)} == {jnp.dtype("float32")}
    assert jax.eval_shape(model.apply, variables, x, t, y).dtype == jnp.float32
    jaxpr = str(jax.make_jaxpr(model.apply)(variables, x, t, y))
    assert "bf16" in jaxpr  # the Dense matmuls run in bfloat16 ...
    for line in jaxpr.splitlines():
        if "reduce_max" in line or "rsqrt" in line:  # ... softmax and LayerNorm in float32
            assert "f32" in line and "bf16" not in line, line


def test_unconditional_fixed_variance_model_output_shape():
    model = dit.DiT(out_channels=3, **TINY)
    x, t, _ = _inputs(batch=2)
    variables = jax.eval_shape(model.init, jax.random.key(0), x, t, None)
    assert "label_embed" not in variables["params"]
    out = jax.eval_shape(model.apply, variables, x, t, None)
    chex.assert_shape(out, (2, 8, 8, 3))
    assert out.dtype == jnp.float32


@pytest.mark.parametrize("patch_size", [1, 2, 4])
def test_unpatchify_inverts_patchify(patch_size):
    x = np.random.default_rng(2).standard_normal((2, 8, 12, 3), np.float32)
    tokens = dit.patchify(x, patch_size)
    chex.assert_shape(tokens, (2, (8 // patch_size) * (12 // patch_size), patch_size**2 * 3))
    np.testing.assert_array_equal(dit.unpatchify(tokens, patch_size, 8, 12), x)


def test_patchify_then_dense_is_a_stride_p_conv():
    """Token layout (patch rows, then columns, channels fastest) is a conv kernel reshaped."""
    p, channels, features = 2, 3, 5
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 4, 6, channels))
    kernel = rng.standard_normal((p, p, channels, features))  # [kh, kw, C_in, C_out]
    conv = np.zeros((2, 2, 3, features))  # kernel = stride = p, no padding
    for i in range(2):
        for j in range(3):
            window = x[:, i * p : (i + 1) * p, j * p : (j + 1) * p, :]  # [B, p, p, C]
            conv[:, i, j] = np.einsum("bhwc,hwcf->bf", window, kernel)
    dense = np.asarray(dit.patchify(x, p)) @ kernel.reshape(p * p * channels, features)
    np.testing.assert_allclose(dense, conv.reshape(2, -1, features), rtol=1e-10)


def _sincos_reference(grid_h, grid_w, dim):
    """MAE's 2-D embedding, one token and one frequency at a time: first half x, second half y."""
    quarter = dim // 4
    out = np.zeros((grid_h * grid_w, dim))
    for row in range(grid_h):
        for col in range(grid_w):
            for k in range(quarter):
                omega = 1.0 / 10000 ** (k / quarter)
                token = row * grid_w + col
                out[token, k] = math.sin(col * omega)
                out[token, quarter + k] = math.cos(col * omega)
                out[token, 2 * quarter + k] = math.sin(row * omega)
                out[token, 3 * quarter + k] = math.cos(row * omega)
    return out


@pytest.mark.parametrize("grid_h, grid_w, dim", [(4, 4, 16), (3, 5, 8), (16, 16, 1152)])
def test_sincos_position_embedding_matches_reference(grid_h, grid_w, dim):
    pos = dit.sincos_pos_embed_2d(grid_h, grid_w, dim)
    assert pos.dtype == np.float32
    np.testing.assert_allclose(pos, _sincos_reference(grid_h, grid_w, dim), atol=1e-6)


def test_null_class_row_exists_and_labels_and_timesteps_change_the_output(perturbed_params):
    chex.assert_shape(perturbed_params["label_embed"]["embedding"], (NUM_CLASSES + 1, 32))
    x, t, y = _inputs()
    params = {"params": perturbed_params}
    out = COND_APPLY(params, x, t, y)
    for label in (NUM_CLASSES, y[0] + 1):  # the null class, another class
        changed = y.copy()
        changed[0] = label
        other = COND_APPLY(params, x, t, changed)
        assert float(jnp.abs(other[0] - out[0]).max()) > 1e-4
        np.testing.assert_array_equal(other[1:], out[1:])  # examples do not interact
    other = COND_APPLY(params, x, t + np.eye(BATCH, dtype=np.int32)[0] * 300, y)
    assert float(jnp.abs(other[0] - out[0]).max()) > 1e-4


def test_batch_sharded_over_devices_matches_unsharded(perturbed_params):
    assert jax.device_count() == BATCH
    x, t, y = _inputs()
    params = {"params": perturbed_params}
    expected = COND_APPLY(params, x, t, y)
    mesh = jax.make_mesh((BATCH,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    split, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    sharded = jax.jit(COND_MODEL.apply, out_shardings=split)(
        jax.device_put(params, replicated),
        jax.device_put(x, split),
        jax.device_put(t, split),
        jax.device_put(y, split),
    )
    assert len(sharded.sharding.device_set) == BATCH
    chex.assert_trees_all_close(sharded, expected, atol=1e-5, rtol=1e-5)


def test_jitted_apply_traces_once(perturbed_params):
    @jax.jit
    @chex.assert_max_traces(n=1)
    def apply(params, x, t, y):
        return COND_MODEL.apply({"params": params}, x, t, y)

    x, t, y = _inputs()
    first = apply(perturbed_params, x, t, y)
    second = apply(perturbed_params, x + 1.0, t + 1, y)  # same shapes: no retrace
    assert not np.array_equal(first, second)


def test_remat_checkpoints_each_block_and_keeps_the_parameters():
    x, t, y = _inputs(batch=2)

    def grad_jaxpr(model):
        variables = jax.eval_shape(model.init, jax.random.key(0), x, t, y)
        loss = lambda v: jnp.sum(model.apply(v, x, t, y) ** 2)  # noqa: E731
        return variables, str(jax.make_jaxpr(jax.grad(loss))(variables))

    plain_vars, plain = grad_jaxpr(COND_MODEL)
    remat_vars, remat = grad_jaxpr(COND_MODEL.clone(remat=True))
    chex.assert_trees_all_equal_shapes_and_dtypes(remat_vars, plain_vars)
    # jax.checkpoint shows in a jaxpr as the remat primitive ("remat2" in current JAX).
    assert "remat" not in plain
    assert len(re.findall(r"= remat\w*\[", remat)) >= TINY["depth"]


def test_patch_size_that_does_not_divide_the_image_raises():
    model = dit.DiT(out_channels=3, patch_size=3, hidden_size=32, depth=1, num_heads=2)
    x, t, _ = _inputs(batch=1)
    with pytest.raises(ValueError) as error:
        jax.eval_shape(model.init, jax.random.key(0), x, t, None)
    assert (
        str(error.value).splitlines()[0] == "model.dit.patch_size=3 must divide the image size 8x8."
    )


def test_digits_dit_config_validates_builds_and_lowers_a_train_step():
    config = digits_dit.get_config()
    validation.validate_config(config, device_count=jax.device_count())
    model = build.create_model(config)
    assert isinstance(model, dit.DiT) and model.num_classes == 10 and model.out_channels == 2
    params = jax.eval_shape(lambda r: tasks.init_params(r, model, config), jax.random.key(0))
    assert count_params(params) == param_formula(128, 6, 2, 1, 2, 10)
    # Lowering traces the whole sharded step (loss, gradients, AdamW, EMA) on abstract inputs;
    # Trainer.compile would add about 30 s of XLA compilation on two CPU cores.
    trainer = train.Trainer(config)
    trainer.train_step.lower(
        trainer.abstract_state, trainer.abstract_batch(config.training.batch_size)
    )


def test_digits_dit_text_config_builds_a_dit_that_cross_attends_and_pools_the_caption():
    config = digits_dit_text.get_config()
    validation.validate_config(config, device_count=jax.device_count())
    model = build.create_model(config)
    assert isinstance(model.denoiser, dit.DiT) and model.denoiser.pool_context
    params = jax.eval_shape(lambda r: tasks.init_params(r, model, config), jax.random.key(0))
    denoiser = params["denoiser"]
    assert "context_embed" in denoiser and "cross_attn" in denoiser["block_5"]
    assert set(params) == {"denoiser", "encoder"}


def test_imagenet256_dit_xl2_config_builds_the_paper_model():
    config = imagenet256_dit_xl2.get_config()
    model = build.create_model(config)
    assert (model.hidden_size, model.depth, model.num_heads) == dit.DIT_SIZES["XL"]
    assert model.patch_size == 2 and model.out_channels == 8 and model.num_classes == 1000
    params = jax.eval_shape(lambda r: tasks.init_params(r, model, config), jax.random.key(0))
    assert count_params(params) == 674_834_720


def test_imagenet256_dit_xl2_config_is_valid():
    config = imagenet256_dit_xl2.get_config()
    validation.validate_config(config, device_count=8)
    assert build.is_latent(config) and config.latent.autoencoder == "sd_vae"
    assert config.latent.sd_vae_weights is None  # A local file the user gives.


@pytest.mark.parametrize(
    "field, value",
    [
        ("model.dit.patch_size", 3),  # does not divide data.image_size = 8
        ("model.dit.patch_size", 0),
        ("model.dit.hidden_size", 130),  # not divisible by num_heads = 4
        ("model.dit.hidden_size", 6),  # 6 % 4: no 2-D sine-cosine split (with num_heads = 2)
        ("model.dit.num_heads", 0),
        ("model.dit.depth", 0),
        ("model.dit.mlp_ratio", 0.0),
        ("model.dit.mlp_ratio", -1.0),
    ],
)
def test_invalid_dit_field_is_named(field, value):
    config = digits_dit.get_config()
    config.update_from_flattened_dict({field: value})
    if value == 6:
        config.model.dit.num_heads = 2
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as error:
        validation.validate_config(config, device_count=8)
    assert "\n" not in str(error.value)


def test_unet_checks_do_not_apply_to_dit():
    config = digits_dit.get_config()
    config.model.unet.ch = 48  # GroupNorm's 32 groups refuse this U-Net width; DiT never reads it.
    config.model.unet.attention_resolutions = (16,)  # never reached by the U-Net on 8x8 digits
    validation.validate_config(config, device_count=8)
