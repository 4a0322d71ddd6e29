"""The FID Inception-v3 network as a flax.linen module, and its weight file format.

FID (Heusel et al. 2017) and IS (Salimans et al. 2016) are defined on one specific network: the
2015 TensorFlow Inception-v3 graph `classify_image_graph_def.pb` from `inception-2015-12-05.tgz`
(Szegedy et al. 2016, "Rethinking the Inception Architecture for Computer Vision"). pytorch-fid
reproduces it as `FIDInceptionA/C/E_1/E_2` (facts, not code, taken from pytorch-fid's
`src/pytorch_fid/inception.py` and the TTUR `fid.py`). It differs from torchvision's Inception-v3:

- Average pools in the pool branches of the A (Mixed_5b-d), C (Mixed_6b-e) and E (Mixed_7b)
  blocks are TF "SAME" pools, which do NOT count padded positions in the divisor.
- The pool branch of the last E block (Mixed_7c) is a 3x3 stride-1 MAX pool (as in the TF graph).
- The classifier is 1008-way (`softmax/weights` [2048, 1008], `softmax/biases` [1008]).
- BatchNorm runs in inference mode with epsilon 1e-3.

Input convention: images [B, H, W, 3] in [-1, 1]. The 2015 graph takes uint8 and computes
`(x - 128) / 128` (its `Sub`/`Mul` nodes) after resizing; `uint8_to_inception_input` does that.
(pytorch-fid uses `2 * x / 255 - 1`; the two differ by < 1% of the range.) Resizing is done here,
to 299x299, with the TF1 `ResizeBilinear` convention the graph uses: align_corners=False and
half_pixel_centers=False, i.e. output pixel i samples input coordinate i * in_size / 299, with the
upper neighbour clamped to the border. Because that resize is linear, resizing before or after the
affine uint8 -> [-1, 1] map gives the same result.

Outputs: `(pool, logits)`: pool3 features [B, 2048] (the FID features) and 1008-way logits [B, 1008]
(for IS; note the Salimans et al. IS code multiplies pool3 by `softmax/weights` WITHOUT the bias,
which `include_logits_bias=False` reproduces). With `with_spatial=True` also the graph's
`mixed_6/conv` [B, 17, 17, 192], the spatial features of sFID (Nash et al. 2021, "Generating Images
with Sparse Representations"; guided-diffusion's `evaluations/evaluator.py` keeps its first 7
channels). The graph names its Inception blocks mixed, mixed_1, ..., mixed_10, so mixed_6 is
Mixed_6d; a block's `conv` scope is the branch1x1 of pytorch-fid's FIDInceptionC
(`graph_def_layer_names` below), and the op named `mixed_6/conv` ends that scope, after its
`conv/batchnorm`: the layer's output, conv + BN + ReLU.

Weight file format (.npz, float32): one array per leaf with flat "/"-joined keys from the module
tree, e.g. "Conv2d_1a_3x3/conv/kernel" [3, 3, 3, 32] (HWIO), "Conv2d_1a_3x3/bn/scale",
".../bn/bias", ".../bn/mean", ".../bn/var", "Mixed_5b/branch5x5_2/conv/kernel", ...,
"fc/kernel" [2048, 1008], "fc/bias" [1008]. Leaves named "mean"/"var" belong to the
"batch_stats" collection, the others to "params". `load_params` returns the flax variables dict
{"params": ..., "batch_stats": ...}; apply it as `InceptionV3FID().apply(variables, images)`.

Where to get the real weights (nothing here downloads): the public TF graph
`http://download.tensorflow.org/models/image/imagenet/inception-2015-12-05.tgz` (file
`classify_image_graph_def.pb`), or pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (the same
weights as a PyTorch state dict: transpose conv kernels OIHW -> HWIO and the fc weight [1008, 2048]
-> [2048, 1008], map "Mixed_5b.branch1x1.conv.weight" -> "Mixed_5b/branch1x1/conv/kernel", bn
weight/bias/running_mean/running_var -> scale/bias/mean/var, then `save_params`). From the TF graph,
convert with TensorFlow (no network access needed once the .pb is local):

    python -m diffax.tools.convert_inception --graph_def=classify_image_graph_def.pb \
        --out=fid_inception_2015.npz
"""

import functools
from collections.abc import Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffax import weight_files

INCEPTION_SIZE = 299
NUM_LOGITS = 1008
BATCH_NORM_EPSILON = 1e-3
_BATCH_STATS_LEAVES = ("mean", "var")


def uint8_to_inception_input(images: jax.Array) -> jax.Array:
    """Returns float32 images in [-1, 1) as the 2015 graph computes them: (x - 128) / 128."""
    return (jnp.asarray(images, jnp.float32) - 128.0) / 128.0


def _tf1_bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Returns the [out, in] interpolation matrix of TF1 ResizeBilinear (no align_corners)."""
    scale = in_size / out_size
    source = np.arange(out_size, dtype=np.float64) * scale  # [out]
    lower = np.floor(source).astype(np.int64)
    upper = np.minimum(lower + 1, in_size - 1)
    frac = source - lower
    matrix = np.zeros((out_size, in_size), np.float64)
    np.add.at(matrix, (np.arange(out_size), lower), 1.0 - frac)
    np.add.at(matrix, (np.arange(out_size), upper), frac)
    return matrix.astype(np.float32)


def resize_bilinear_tf1(images: jax.Array, height: int, width: int) -> jax.Array:
    """Returns [B, height, width, C] resized like tf.compat.v1.image.resize_bilinear (defaults)."""
    rows = jnp.asarray(_tf1_bilinear_matrix(images.shape[1], height))  # [h_out, h_in]
    cols = jnp.asarray(_tf1_bilinear_matrix(images.shape[2], width))  # [w_out, w_in]
    # Separable: each output is a convex combination of at most 2x2 inputs; HIGHEST keeps float32
    # accuracy on accelerators whose default matmul precision is lower.
    return jnp.einsum("ph,bhwc,qw->bpqc", rows, images, cols, precision=jax.lax.Precision.HIGHEST)


class ConvBN(nn.Module):
    """Conv (no bias) + inference BatchNorm (eps 1e-3) + ReLU; pytorch-fid's BasicConv2d."""

    features: int
    kernel_size: tuple[int, int]
    strides: int = 1
    padding: str = "SAME"
    precision: jax.lax.Precision | None = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(
            self.features,
            self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            use_bias=False,
            precision=self.precision,
            name="conv",
        )(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=BATCH_NORM_EPSILON, name="bn")(x)
        return nn.relu(x)


def _avg_pool_same_excluding_padding(x: jax.Array) -> jax.Array:
    # TF avg_pool with SAME padding divides by the number of real (unpadded) inputs.
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding="SAME", count_include_pad=False)


def _max_pool_3x3_stride2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
    """Mixed_5b/c/d (FIDInceptionA): 1x1, 5x5, double 3x3, avg-pool (padding excluded) branches."""

    pool_features: int
    precision: jax.lax.Precision | None = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(ConvBN, precision=self.precision)
        branch1x1 = conv(64, (1, 1), name="branch1x1")(x)
        branch5x5 = conv(48, (1, 1), name="branch5x5_1")(x)
        branch5x5 = conv(64, (5, 5), name="branch5x5_2")(branch5x5)
        branch3x3dbl = conv(64, (1, 1), name="branch3x3dbl_1")(x)
        branch3x3dbl = conv(96, (3, 3), name="branch3x3dbl_2")(branch3x3dbl)
        branch3x3dbl = conv(96, (3, 3), name="branch3x3dbl_3")(branch3x3dbl)
        branch_pool = _avg_pool_same_excluding_padding(x)
        branch_pool = conv(self.pool_features, (1, 1), name="branch_pool")(branch_pool)
        return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a: grid reduction 35 -> 17 with stride-2 3x3, double 3x3 and max-pool branches."""

    precision: jax.lax.Precision | None = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(ConvBN, precision=self.precision)
        branch3x3 = conv(384, (3, 3), strides=2, padding="VALID", name="branch3x3")(x)
        branch3x3dbl = conv(64, (1, 1), name="branch3x3dbl_1")(x)
        branch3x3dbl = conv(96, (3, 3), name="branch3x3dbl_2")(branch3x3dbl)
        branch3x3dbl = conv(96, (3, 3), strides=2, padding="VALID", name="branch3x3dbl_3")(
            branch3x3dbl
        )
        branch_pool = _max_pool_3x3_stride2(x)
        return jnp.concatenate([branch3x3, branch3x3dbl, branch_pool], axis=-1)


class InceptionC(nn.Module):
    """Mixed_6b-e (FIDInceptionC): 1x1, factorised 7x7, double 7x7, avg-pool branches."""

    channels_7x7: int
    precision: jax.lax.Precision | None = jax.lax.Precision.HIGHEST
    return_conv: bool = False  # Also return branch1x1 [B, 17, 17, 192] (the graph's "conv").

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(ConvBN, precision=self.precision)
        c7 = self.channels_7x7
        branch1x1 = conv(192, (1, 1), name="branch1x1")(x)
        branch7x7 = conv(c7, (1, 1), name="branch7x7_1")(x)
        branch7x7 = conv(c7, (1, 7), name="branch7x7_2")(branch7x7)
        branch7x7 = conv(192, (7, 1), name="branch7x7_3")(branch7x7)
        branch7x7dbl = conv(c7, (1, 1), name="branch7x7dbl_1")(x)
        branch7x7dbl = conv(c7, (7, 1), name="branch7x7dbl_2")(branch7x7dbl)
        branch7x7dbl = conv(c7, (1, 7), name="branch7x7dbl_3")(branch7x7dbl)
        branch7x7dbl = conv(c7, (7, 1), name="branch7x7dbl_4")(branch7x7dbl)
        branch7x7dbl = conv(192, (1, 7), name="branch7x7dbl_5")(branch7x7dbl)
        branch_pool = _avg_pool_same_excluding_padding(x)
        branch_pool = conv(192, (1, 1), name="branch_pool")(branch_pool)
        out = jnp.concatenate([branch1x1, branch7x7, branch7x7dbl, branch_pool], axis=-1)
        # branch1x1 is the graph's "<block>/conv"; mixed_6/conv is sFID's layer.
        return (out, branch1x1) if self.return_conv else out


class InceptionD(nn.Module):
    """Mixed_7a: grid reduction 17 -> 8 with stride-2 3x3, 7x7-then-3x3 and max-pool branches."""

    precision: jax.lax.Precision | None = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(ConvBN, precision=self.precision)
        branch3x3 = conv(192, (1, 1), name="branch3x3_1")(x)
        branch3x3 = conv(320, (3, 3), strides=2, padding="VALID", name="branch3x3_2")(branch3x3)
        branch7x7x3 = conv(192, (1, 1), name="branch7x7x3_1")(x)
        branch7x7x3 = conv(192, (1, 7), name="branch7x7x3_2")(branch7x7x3)
        branch7x7x3 = conv(192, (7, 1), name="branch7x7x3_3")(branch7x7x3)
        branch7x7x3 = conv(192, (3, 3), strides=2, padding="VALID", name="branch7x7x3_4")(
            branch7x7x3
        )
        branch_pool = _max_pool_3x3_stride2(x)
        return jnp.concatenate([branch3x3, branch7x7x3, branch_pool], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b (avg pool, padding excluded) / Mixed_7c (max pool): FIDInceptionE_1 / E_2."""

    pool: str  # "avg" for Mixed_7b, "max" for Mixed_7c, as in the 2015 graph.
    precision: jax.lax.Precision | None = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(ConvBN, precision=self.precision)
        branch1x1 = conv(320, (1, 1), name="branch1x1")(x)
        branch3x3 = conv(384, (1, 1), name="branch3x3_1")(x)
        branch3x3 = jnp.concatenate(
            [
                conv(384, (1, 3), name="branch3x3_2a")(branch3x3),
                conv(384, (3, 1), name="branch3x3_2b")(branch3x3),
            ],
            axis=-1,
        )
        branch3x3dbl = conv(448, (1, 1), name="branch3x3dbl_1")(x)
        branch3x3dbl = conv(384, (3, 3), name="branch3x3dbl_2")(branch3x3dbl)
        branch3x3dbl = jnp.concatenate(
            [
                conv(384, (1, 3), name="branch3x3dbl_3a")(branch3x3dbl),
                conv(384, (3, 1), name="branch3x3dbl_3b")(branch3x3dbl),
            ],
            axis=-1,
        )
        if self.pool == "avg":
            branch_pool = _avg_pool_same_excluding_padding(x)
        elif self.pool == "max":
            branch_pool = nn.max_pool(x, (3, 3), strides=(1, 1), padding="SAME")
        else:
            raise ValueError(f"pool must be 'avg' or 'max', got {self.pool!r}")
        branch_pool = conv(192, (1, 1), name="branch_pool")(branch_pool)
        return jnp.concatenate([branch1x1, branch3x3, branch3x3dbl, branch_pool], axis=-1)


class InceptionV3FID(nn.Module):
    """The 2015 TF Inception-v3 graph used by FID/IS: [B, H, W, 3] in [-1, 1] -> pool, logits
    (and with with_spatial the sFID layer mixed_6/conv)."""

    resize_input: bool = True  # Resize to 299x299 (TF1 ResizeBilinear) inside the network.
    include_logits_bias: bool = True  # False gives the bias-free logits of the Salimans IS code.
    # float32 convolutions by default, so FID does not depend on an accelerator's default
    # (bf16 / TF32) matmul precision; None uses the platform default (faster, less exact).
    precision: jax.lax.Precision | None = jax.lax.Precision.HIGHEST
    # Also return mixed_6/conv [B, 17, 17, 192] (sFID's spatial features; module doc).
    with_spatial: bool = False

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, ...]:
        conv = functools.partial(ConvBN, precision=self.precision)
        x = jnp.asarray(images, jnp.float32)  # [B, H, W, 3]
        if self.resize_input:
            x = resize_bilinear_tf1(x, INCEPTION_SIZE, INCEPTION_SIZE)  # [B, 299, 299, 3]
        x = conv(32, (3, 3), strides=2, padding="VALID", name="Conv2d_1a_3x3")(x)  # 149
        x = conv(32, (3, 3), padding="VALID", name="Conv2d_2a_3x3")(x)  # 147
        x = conv(64, (3, 3), name="Conv2d_2b_3x3")(x)  # 147
        x = _max_pool_3x3_stride2(x)  # 73
        x = conv(80, (1, 1), name="Conv2d_3b_1x1")(x)  # 73
        x = conv(192, (3, 3), padding="VALID", name="Conv2d_4a_3x3")(x)  # 71
        x = _max_pool_3x3_stride2(x)  # [B, 35, 35, 192]
        x = InceptionA(32, precision=self.precision, name="Mixed_5b")(x)  # 256 channels
        x = InceptionA(64, precision=self.precision, name="Mixed_5c")(x)  # 288
        x = InceptionA(64, precision=self.precision, name="Mixed_5d")(x)  # 288
        x = InceptionB(precision=self.precision, name="Mixed_6a")(x)  # [B, 17, 17, 768]
        x = InceptionC(128, precision=self.precision, name="Mixed_6b")(x)
        x = InceptionC(160, precision=self.precision, name="Mixed_6c")(x)
        x, mixed_6_conv = InceptionC(
            160, precision=self.precision, return_conv=True, name="Mixed_6d"
        )(x)  # mixed_6_conv: [B, 17, 17, 192], the graph's "mixed_6/conv"
        x = InceptionC(192, precision=self.precision, name="Mixed_6e")(x)  # [B, 17, 17, 768]
        x = InceptionD(precision=self.precision, name="Mixed_7a")(x)  # [B, 8, 8, 1280]
        x = InceptionE("avg", precision=self.precision, name="Mixed_7b")(x)  # [B, 8, 8, 2048]
        x = InceptionE("max", precision=self.precision, name="Mixed_7c")(x)  # [B, 8, 8, 2048]
        pool = jnp.mean(x, axis=(1, 2))  # [B, 2048]; the graph's 8x8 VALID avg pool "pool_3"
        logits = nn.Dense(
            NUM_LOGITS, use_bias=self.include_logits_bias, precision=self.precision, name="fc"
        )(pool)
        if self.with_spatial:
            return pool, logits, mixed_6_conv  # [B, 2048], [B, 1008], [B, 17, 17, 192]
        return pool, logits  # [B, 2048], [B, 1008]


def abstract_variables(model: InceptionV3FID | None = None) -> dict:
    """Returns the ShapeDtypeStruct tree {"params", "batch_stats"} of the model (no allocation)."""
    model = model or InceptionV3FID()
    dummy = jax.ShapeDtypeStruct((1, INCEPTION_SIZE, INCEPTION_SIZE, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), dummy)
    return flax.core.unfreeze(variables)


def flatten_variables(variables: Mapping) -> dict[str, np.ndarray]:
    """Returns {"Conv2d_1a_3x3/conv/kernel": array, ...}: the .npz layout, collections merged."""
    flat = {}
    for collection in ("params", "batch_stats"):
        for path, leaf in flax.traverse_util.flatten_dict(
            flax.core.unfreeze(variables.get(collection, {})), sep="/"
        ).items():
            flat[path] = leaf
    return flat


def save_params(path: str, variables: Mapping) -> None:
    """Writes the variables dict {"params", "batch_stats"} to an .npz of flat float32 arrays."""
    np.savez(
        path, **{k: np.asarray(v, np.float32) for k, v in flatten_variables(variables).items()}
    )


def load_params(path: str, model: InceptionV3FID | None = None) -> dict:
    """Returns the variables dict {"params", "batch_stats"} read from an .npz (see module doc).

    Raises ValueError naming the file and the first missing or wrongly shaped key.
    """
    template = flatten_variables(abstract_variables(model))
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"Cannot read Inception weights {path!r} as .npz: {error}") from error
    with data:
        nested: dict[str, dict] = {"params": {}, "batch_stats": {}}
        for key, spec in template.items():
            if key not in data.files:
                raise ValueError(
                    f"Inception weights {path!r} lack key {key!r} (expected shape {spec.shape})"
                )
            value = data[key]
            if value.shape != spec.shape:
                raise ValueError(
                    f"Inception weights {path!r}: key {key!r} has shape {value.shape}, "
                    f"expected {spec.shape}"
                )
            collection = (
                "batch_stats" if key.rsplit("/", 1)[-1] in _BATCH_STATS_LEAVES else "params"
            )
            nested[collection][key] = jnp.asarray(value, jnp.float32)
    return {
        name: flax.traverse_util.unflatten_dict(leaves, sep="/") for name, leaves in nested.items()
    }


# pytorch-fid's tensor names: "<module path>.<leaf>", BatchNorm's running statistics included.
_PYTORCH_FID_LEAVES = {
    "kernel": "weight",
    "scale": "weight",
    "bias": "bias",
    "mean": "running_mean",
    "var": "running_var",
}


def pytorch_fid_name(key: str) -> str:
    """Returns pytorch-fid's tensor name of a flat weight-file key, e.g.
    "Mixed_5b/branch1x1/bn/mean" -> "Mixed_5b.branch1x1.bn.running_mean"."""
    *modules, leaf = key.split("/")
    return ".".join([*modules, _PYTORCH_FID_LEAVES[leaf]])


def convert_pytorch_fid(state_dict: Mapping[str, np.ndarray], out_path: str, source: str) -> None:
    """Writes diffax's weight file from pytorch-fid's FID Inception state dict
    (`pt_inception-2015-12-05-6726825d.pth`: the 2015 graph's weights, module names as here).
    Conv kernels OIHW -> HWIO, fc [1008, 2048] -> [2048, 1008]; BatchNorm's num_batches_tracked
    is ignored. ValueError in one sentence naming the misfit tensors; nothing is written then."""
    template = flatten_variables(abstract_variables())
    expected = {}
    for key, spec in template.items():
        shape = tuple(spec.shape)
        if key.endswith("kernel") and len(shape) == 4:
            shape = (shape[3], shape[2], shape[0], shape[1])
        elif key.endswith("kernel"):
            shape = shape[::-1]
        expected[pytorch_fid_name(key)] = shape
    ignored = tuple(name for name in state_dict if name.endswith(".num_batches_tracked"))
    weight_files.check_fits(
        state_dict, expected, source, "pytorch-fid's FID Inception-v3", ignored=ignored
    )
    flat = {}
    for key in template:
        value = np.asarray(state_dict[pytorch_fid_name(key)], np.float32)
        if key.endswith("kernel") and value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)
        elif key.endswith("kernel"):
            value = value.T
        flat[key] = np.ascontiguousarray(value)
    np.savez(out_path, **flat)


# ---------------------------------------------------------------------------------------------
# Conversion from the 2015 GraphDef. Its constants are "<layer>/conv2d_params" (HWIO kernels),
# "<layer>/batchnorm/{beta,gamma,moving_mean,moving_variance}" and "softmax/{weights,biases}"; the
# layer names (conv, conv_1, ..., mixed_10/tower_1/mixed/conv_1) are those of the public graph, as
# listed e.g. by torch-fidelity's and pytorch-fid's converters.


def _tf_conv(index: int) -> str:
    return "conv" if index == 0 else f"conv_{index}"


def graph_def_layer_names() -> dict[str, str]:
    """Returns {2015 graph layer: module layer} for its 94 conv+BN layers, e.g. "mixed/tower/conv"
    -> "Mixed_5b/branch5x5_1"."""
    names = {
        _tf_conv(i): stem
        for i, stem in enumerate(
            ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]
        )
    }
    blocks = {  # module block -> {TF sub-layer: module branch}
        "A": {"conv": "branch1x1", "tower/conv": "branch5x5_1", "tower/conv_1": "branch5x5_2"}
        | {f"tower_1/{_tf_conv(i)}": f"branch3x3dbl_{i + 1}" for i in range(3)}
        | {"tower_2/conv": "branch_pool"},
        "B": {"conv": "branch3x3"}
        | {f"tower/{_tf_conv(i)}": f"branch3x3dbl_{i + 1}" for i in range(3)},
        "C": {"conv": "branch1x1"}
        | {f"tower/{_tf_conv(i)}": f"branch7x7_{i + 1}" for i in range(3)}
        | {f"tower_1/{_tf_conv(i)}": f"branch7x7dbl_{i + 1}" for i in range(5)}
        | {"tower_2/conv": "branch_pool"},
        "D": {f"tower/{_tf_conv(i)}": f"branch3x3_{i + 1}" for i in range(2)}
        | {f"tower_1/{_tf_conv(i)}": f"branch7x7x3_{i + 1}" for i in range(4)},
        "E": {
            "conv": "branch1x1",
            "tower/conv": "branch3x3_1",
            "tower/mixed/conv": "branch3x3_2a",
            "tower/mixed/conv_1": "branch3x3_2b",
            "tower_1/conv": "branch3x3dbl_1",
            "tower_1/conv_1": "branch3x3dbl_2",
            "tower_1/mixed/conv": "branch3x3dbl_3a",
            "tower_1/mixed/conv_1": "branch3x3dbl_3b",
            "tower_2/conv": "branch_pool",
        },
    }
    block_order = [("Mixed_5b", "A"), ("Mixed_5c", "A"), ("Mixed_5d", "A"), ("Mixed_6a", "B")]
    block_order += [(f"Mixed_6{c}", "C") for c in "bcde"]
    block_order += [("Mixed_7a", "D"), ("Mixed_7b", "E"), ("Mixed_7c", "E")]
    for index, (module_block, kind) in enumerate(block_order):
        tf_block = "mixed" if index == 0 else f"mixed_{index}"
        for tf_layer, branch in blocks[kind].items():
            names[f"{tf_block}/{tf_layer}"] = f"{module_block}/{branch}"
    return names


def convert_graph_def(graph_def_path: str, out_path: str) -> None:
    """Writes the .npz weight file (module doc) from the 2015 `classify_image_graph_def.pb`."""
    import tensorflow as tf  # Only the converter needs TensorFlow.

    graph_def = tf.compat.v1.GraphDef()
    with tf.io.gfile.GFile(graph_def_path, "rb") as f:
        graph_def.ParseFromString(f.read())
    constants = {
        n.name: tf.make_ndarray(n.attr["value"].tensor) for n in graph_def.node if n.op == "Const"
    }
    nodes = {n.name: n for n in graph_def.node}
    flat = {"fc/kernel": constants["softmax/weights"], "fc/bias": constants["softmax/biases"]}
    for tf_layer, layer in graph_def_layer_names().items():
        flat[f"{layer}/conv/kernel"] = constants[f"{tf_layer}/conv2d_params"]
        bn = f"{tf_layer}/batchnorm"
        gamma = constants[f"{bn}/gamma"]
        node = nodes.get(bn)
        if node is not None and node.op == "BatchNormWithGlobalNormalization":
            # That op ignores gamma unless scale_after_normalization is set.
            if (
                "scale_after_normalization" in node.attr
                and not node.attr["scale_after_normalization"].b
            ):
                gamma = np.ones_like(gamma)
            epsilon = node.attr["variance_epsilon"].f if "variance_epsilon" in node.attr else None
            if epsilon is not None and not np.isclose(epsilon, BATCH_NORM_EPSILON):
                raise ValueError(f"{graph_def_path!r}: {bn} has epsilon {epsilon}, expected 1e-3")
        flat[f"{layer}/bn/scale"] = gamma
        flat[f"{layer}/bn/bias"] = constants[f"{bn}/beta"]
        flat[f"{layer}/bn/mean"] = constants[f"{bn}/moving_mean"]
        flat[f"{layer}/bn/var"] = constants[f"{bn}/moving_variance"]
    np.savez(out_path, **{key: np.asarray(value, np.float32) for key, value in flat.items()})
    load_params(out_path)  # Fails loudly, naming the key, if the graph did not fit the module.
