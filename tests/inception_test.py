"""Tests for diffax.metrics.inception: shapes, parameter count, weight files, and agreement with an
independent TensorFlow-ops implementation of the 2015 FID graph using the same random weights."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from diffax import models
from diffax.metrics import inception


def _conv_params(in_channels, out_channels, height, width):
    # Kernel without bias + BatchNorm scale and bias (running stats are buffers, not parameters).
    return in_channels * out_channels * height * width + 2 * out_channels


def _published_parameter_count():
    """Sums the layers of the published FID Inception-v3 (Szegedy et al. 2016, Table 1; the
    FIDInceptionV3 layer list of pytorch-fid) from a table written independently of the module."""
    total = (
        _conv_params(3, 32, 3, 3)
        + _conv_params(32, 32, 3, 3)
        + _conv_params(32, 64, 3, 3)
        + _conv_params(64, 80, 1, 1)
        + _conv_params(80, 192, 3, 3)
    )
    for in_channels, pool_features in ((192, 32), (256, 64), (288, 64)):  # Mixed_5b-d
        total += (
            _conv_params(in_channels, 64, 1, 1)
            + _conv_params(in_channels, 48, 1, 1)
            + _conv_params(48, 64, 5, 5)
            + _conv_params(in_channels, 64, 1, 1)
            + _conv_params(64, 96, 3, 3)
            + _conv_params(96, 96, 3, 3)
            + _conv_params(in_channels, pool_features, 1, 1)
        )
    total += (  # Mixed_6a
        _conv_params(288, 384, 3, 3)
        + _conv_params(288, 64, 1, 1)
        + _conv_params(64, 96, 3, 3)
        + _conv_params(96, 96, 3, 3)
    )
    for c7 in (128, 160, 160, 192):  # Mixed_6b-e
        total += (
            _conv_params(768, 192, 1, 1)
            + _conv_params(768, c7, 1, 1)
            + _conv_params(c7, c7, 1, 7)
            + _conv_params(c7, 192, 7, 1)
            + _conv_params(768, c7, 1, 1)
            + 3 * _conv_params(c7, c7, 7, 1)
            + _conv_params(c7, 192, 1, 7)
            + _conv_params(768, 192, 1, 1)
        )
    total += (  # Mixed_7a
        _conv_params(768, 192, 1, 1)
        + _conv_params(192, 320, 3, 3)
        + _conv_params(768, 192, 1, 1)
        + 2 * _conv_params(192, 192, 7, 1)
        + _conv_params(192, 192, 3, 3)
    )
    for in_channels in (1280, 2048):  # Mixed_7b, Mixed_7c
        total += (
            _conv_params(in_channels, 320, 1, 1)
            + _conv_params(in_channels, 384, 1, 1)
            + 2 * _conv_params(384, 384, 1, 3)
            + _conv_params(in_channels, 448, 1, 1)
            + _conv_params(448, 384, 3, 3)
            + 2 * _conv_params(384, 384, 1, 3)
            + _conv_params(in_channels, 192, 1, 1)
        )
    return total + 2048 * 1008 + 1008  # the 1008-way classifier of the 2015 graph


def test_parameter_count_matches_published_network():
    expected = _published_parameter_count()
    # Cross-check of the table with torchvision's published figure for Inception-v3: 27,161,264
    # parameters (docs, Inception_V3_Weights.IMAGENET1K_V1.num_params), which include the
    # auxiliary head (1x1 768->128 conv + BN, 5x5 128->768 conv + BN, fc 768->1000) and a
    # 1000-way fc; swapping those for the FID graph's 1008-way fc gives 23,850,960.
    aux_head = _conv_params(768, 128, 1, 1) + _conv_params(128, 768, 5, 5) + 768 * 1000 + 1000
    torchvision_based = 27_161_264 - aux_head - (2048 * 1000 + 1000) + (2048 * 1008 + 1008)
    assert expected == torchvision_based == 23_850_960
    assert models.count_params(inception.abstract_variables()["params"]) == expected


def test_output_shapes_for_any_input_size():
    variables = inception.abstract_variables()
    images = jax.ShapeDtypeStruct((3, 32, 40, 3), jnp.float32)
    pool, logits = jax.eval_shape(inception.InceptionV3FID().apply, variables, images)
    chex.assert_shape(pool, (3, 2048))
    chex.assert_shape(logits, (3, 1008))
    # sFID's mixed_6/conv: 17x17 for any input, which is resized to 299x299 first.
    spatial_model = inception.InceptionV3FID(with_spatial=True)
    outputs = jax.eval_shape(spatial_model.apply, variables, images)
    chex.assert_shape(outputs, ((3, 2048), (3, 1008), (3, 17, 17, 192)))


def _random_variables(seed: int) -> dict[str, np.ndarray]:
    """Random float32 weights for every key of the file format, scaled to keep activations O(1)."""
    rng = np.random.default_rng(seed)
    flat = {}
    for key, spec in inception.flatten_variables(inception.abstract_variables()).items():
        leaf = key.rsplit("/", 1)[-1]
        if leaf == "kernel":
            fan_in = int(np.prod(spec.shape[:-1]))
            value = rng.normal(size=spec.shape) * np.sqrt(2.0 / fan_in)
        elif leaf == "scale":
            value = rng.uniform(0.5, 1.5, size=spec.shape)
        elif leaf == "var":
            value = rng.uniform(0.5, 1.5, size=spec.shape)
        else:  # bias, mean
            value = rng.normal(size=spec.shape) * 0.2
        flat[key] = value.astype(np.float32)
    return flat


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    flat = _random_variables(seed=0)
    path = str(tmp_path_factory.mktemp("inception") / "weights.npz")
    np.savez(path, **flat)
    return path, flat


def test_load_params_round_trip(weights_file, tmp_path):
    path, flat = weights_file
    variables = inception.load_params(path)
    assert set(variables) == {"params", "batch_stats"}
    loaded = inception.flatten_variables(variables)
    assert set(loaded) == set(flat)
    for key, value in flat.items():
        np.testing.assert_array_equal(np.asarray(loaded[key]), value, err_msg=key)
    np.testing.assert_array_equal(
        variables["batch_stats"]["Mixed_7c"]["branch_pool"]["bn"]["var"],
        flat["Mixed_7c/branch_pool/bn/var"],
    )
    resaved = str(tmp_path / "resaved.npz")
    inception.save_params(resaved, variables)
    with np.load(resaved) as data:
        assert set(data.files) == set(flat)
        np.testing.assert_array_equal(data["fc/kernel"], flat["fc/kernel"])


def test_load_params_names_file_and_first_bad_key(weights_file, tmp_path):
    _, flat = weights_file
    missing = dict(flat)
    del missing["Mixed_6b/branch7x7_2/conv/kernel"]
    missing_path = str(tmp_path / "missing.npz")
    np.savez(missing_path, **missing)
    with pytest.raises(ValueError, match=r"missing\.npz.*Mixed_6b/branch7x7_2/conv/kernel"):
        inception.load_params(missing_path)
    wrong = dict(flat)
    wrong["fc/kernel"] = np.zeros((2048, 1000), np.float32)
    wrong_path = str(tmp_path / "wrong.npz")
    np.savez(wrong_path, **wrong)
    with pytest.raises(ValueError, match=r"wrong\.npz.*fc/kernel.*\(2048, 1000\)"):
        inception.load_params(wrong_path)


def test_resize_matches_tf1_resize_bilinear():
    rng = np.random.default_rng(1)
    images = rng.uniform(-1, 1, size=(2, 13, 7, 3)).astype(np.float32)
    expected = tf.compat.v1.image.resize_bilinear(images, [29, 16]).numpy()
    got = inception.resize_bilinear_tf1(jnp.asarray(images), 29, 16)
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5)


def test_uint8_conversion_matches_graph_constants():
    images = np.array([0, 128, 255], np.uint8)
    np.testing.assert_allclose(
        np.asarray(inception.uint8_to_inception_input(images)), [-1.0, 0.0, 127 / 128]
    )


# ---------------------------------------------------------------------------------------------
# Independent reference: the 2015 graph written with TensorFlow ops. Pools use TF's own padding
# semantics (avg_pool "SAME" excludes padding), convolutions are "SAME"/"VALID" as in the graph,
# BatchNorm is the formula gamma * (x - mean) / sqrt(var + 1e-3) + beta.


def _tf_conv_bn(w, name, x, stride=1, padding="SAME"):
    x = tf.nn.conv2d(x, w[f"{name}/conv/kernel"], strides=stride, padding=padding)
    inv = w[f"{name}/bn/scale"] / np.sqrt(w[f"{name}/bn/var"] + 1e-3)
    return tf.nn.relu((x - w[f"{name}/bn/mean"]) * inv + w[f"{name}/bn/bias"])


def _tf_avg_pool_same(x):
    return tf.nn.avg_pool2d(x, 3, 1, "SAME")


def _tf_block_a(w, p, x):
    b1 = _tf_conv_bn(w, f"{p}/branch1x1", x)
    b5 = _tf_conv_bn(w, f"{p}/branch5x5_2", _tf_conv_bn(w, f"{p}/branch5x5_1", x))
    b3 = _tf_conv_bn(w, f"{p}/branch3x3dbl_1", x)
    b3 = _tf_conv_bn(w, f"{p}/branch3x3dbl_3", _tf_conv_bn(w, f"{p}/branch3x3dbl_2", b3))
    bp = _tf_conv_bn(w, f"{p}/branch_pool", _tf_avg_pool_same(x))
    return tf.concat([b1, b5, b3, bp], -1)


def _tf_block_b(w, p, x):
    b3 = _tf_conv_bn(w, f"{p}/branch3x3", x, 2, "VALID")
    bd = _tf_conv_bn(w, f"{p}/branch3x3dbl_2", _tf_conv_bn(w, f"{p}/branch3x3dbl_1", x))
    bd = _tf_conv_bn(w, f"{p}/branch3x3dbl_3", bd, 2, "VALID")
    return tf.concat([b3, bd, tf.nn.max_pool2d(x, 3, 2, "VALID")], -1)


def _tf_block_c(w, p, x):
    b1 = _tf_conv_bn(w, f"{p}/branch1x1", x)
    b7 = x
    for i in (1, 2, 3):
        b7 = _tf_conv_bn(w, f"{p}/branch7x7_{i}", b7)
    bd = x
    for i in (1, 2, 3, 4, 5):
        bd = _tf_conv_bn(w, f"{p}/branch7x7dbl_{i}", bd)
    bp = _tf_conv_bn(w, f"{p}/branch_pool", _tf_avg_pool_same(x))
    return tf.concat([b1, b7, bd, bp], -1)


def _tf_block_d(w, p, x):
    b3 = _tf_conv_bn(w, f"{p}/branch3x3_2", _tf_conv_bn(w, f"{p}/branch3x3_1", x), 2, "VALID")
    b7 = x
    for i in (1, 2, 3):
        b7 = _tf_conv_bn(w, f"{p}/branch7x7x3_{i}", b7)
    b7 = _tf_conv_bn(w, f"{p}/branch7x7x3_4", b7, 2, "VALID")
    return tf.concat([b3, b7, tf.nn.max_pool2d(x, 3, 2, "VALID")], -1)


def _tf_block_e(w, p, x, max_pool):
    b1 = _tf_conv_bn(w, f"{p}/branch1x1", x)
    b3 = _tf_conv_bn(w, f"{p}/branch3x3_1", x)
    b3 = tf.concat(
        [_tf_conv_bn(w, f"{p}/branch3x3_2a", b3), _tf_conv_bn(w, f"{p}/branch3x3_2b", b3)], -1
    )
    bd = _tf_conv_bn(w, f"{p}/branch3x3dbl_2", _tf_conv_bn(w, f"{p}/branch3x3dbl_1", x))
    bd = tf.concat(
        [_tf_conv_bn(w, f"{p}/branch3x3dbl_3a", bd), _tf_conv_bn(w, f"{p}/branch3x3dbl_3b", bd)],
        -1,
    )
    pooled = tf.nn.max_pool2d(x, 3, 1, "SAME") if max_pool else _tf_avg_pool_same(x)
    bp = _tf_conv_bn(w, f"{p}/branch_pool", pooled)
    return tf.concat([b1, b3, bd, bp], -1)


def _tf_inception(w, images):
    x = tf.compat.v1.image.resize_bilinear(images, [299, 299])
    x = _tf_conv_bn(w, "Conv2d_1a_3x3", x, 2, "VALID")
    x = _tf_conv_bn(w, "Conv2d_2a_3x3", x, 1, "VALID")
    x = _tf_conv_bn(w, "Conv2d_2b_3x3", x)
    x = tf.nn.max_pool2d(x, 3, 2, "VALID")
    x = _tf_conv_bn(w, "Conv2d_3b_1x1", x)
    x = _tf_conv_bn(w, "Conv2d_4a_3x3", x, 1, "VALID")
    x = tf.nn.max_pool2d(x, 3, 2, "VALID")
    for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        x = _tf_block_a(w, name, x)
    x = _tf_block_b(w, "Mixed_6a", x)
    for name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        if name == "Mixed_6d":  # The graph's mixed_6/conv, computed on its own.
            mixed_6_conv = _tf_conv_bn(w, f"{name}/branch1x1", x)
        x = _tf_block_c(w, name, x)
    x = _tf_block_d(w, "Mixed_7a", x)
    x = _tf_block_e(w, "Mixed_7b", x, max_pool=False)
    x = _tf_block_e(w, "Mixed_7c", x, max_pool=True)
    pool = tf.reshape(tf.nn.avg_pool2d(x, 8, 1, "VALID"), [-1, 2048])
    logits = tf.matmul(pool, w["fc/kernel"]) + w["fc/bias"]
    return pool.numpy(), logits.numpy(), mixed_6_conv.numpy()


def test_sharded_forward_matches_tensorflow_reference(weights_file):
    path, flat = weights_file
    rng = np.random.default_rng(2)
    # Odd, non-square size so the resize, SAME/VALID paddings and pool borders all matter.
    images = rng.uniform(-1, 1, size=(2, 37, 45, 3)).astype(np.float32)
    expected_pool, expected_logits, expected_spatial = _tf_inception(flat, images)

    variables = inception.load_params(path)
    mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    replicated = NamedSharding(mesh, PartitionSpec())
    model = inception.InceptionV3FID(with_spatial=True)
    forward = jax.jit(
        chex.assert_max_traces(lambda v, x: model.apply(v, x), n=1),
        in_shardings=(replicated, batch_sharding),
        out_shardings=(batch_sharding,) * 3,
    )
    pool, logits, spatial = forward(variables, jax.device_put(images, batch_sharding))
    chex.assert_shape(pool, (2, 2048))
    chex.assert_shape(logits, (2, 1008))
    chex.assert_tree_all_finite((pool, logits))
    assert pool.sharding.is_equivalent_to(batch_sharding, 2)
    # Scale-aware tolerance: float32 through ~95 layers with different summation orders.
    assert np.std(expected_pool) > 1e-2
    np.testing.assert_allclose(
        np.asarray(pool), expected_pool, rtol=1e-3, atol=1e-3 * np.abs(expected_pool).max()
    )
    np.testing.assert_allclose(
        np.asarray(logits), expected_logits, rtol=1e-3, atol=1e-3 * np.abs(expected_logits).max()
    )
    chex.assert_shape(spatial, (2, 17, 17, 192))
    assert np.std(expected_spatial) > 1e-2
    np.testing.assert_allclose(
        np.asarray(spatial),
        expected_spatial,
        rtol=1e-3,
        atol=1e-3 * np.abs(expected_spatial).max(),
    )


def _const_node(graph_def, name, value):
    node = graph_def.node.add(name=name, op="Const")
    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))


def test_graph_def_layer_names_match_the_2015_graph():
    names = inception.graph_def_layer_names()
    assert len(names) == 94  # 5 stem + 3x7 A + 4 B + 4x10 C + 6 D + 2x9 E conv layers
    # Hand-copied from the node names of classify_image_graph_def.pb (as listed by public
    # converters, e.g. torch-fidelity's), independent of how the module builds its table.
    expected = {
        "conv": "Conv2d_1a_3x3",
        "conv_4": "Conv2d_4a_3x3",
        "mixed/tower/conv_1": "Mixed_5b/branch5x5_2",
        "mixed_2/tower_2/conv": "Mixed_5d/branch_pool",
        "mixed_3/conv": "Mixed_6a/branch3x3",
        "mixed_3/tower/conv_2": "Mixed_6a/branch3x3dbl_3",
        "mixed_4/tower_1/conv_4": "Mixed_6b/branch7x7dbl_5",
        "mixed_7/tower/conv_2": "Mixed_6e/branch7x7_3",
        "mixed_8/tower/conv_1": "Mixed_7a/branch3x3_2",
        "mixed_8/tower_1/conv_3": "Mixed_7a/branch7x7x3_4",
        "mixed_9/tower/mixed/conv_1": "Mixed_7b/branch3x3_2b",
        "mixed_10/tower_1/mixed/conv": "Mixed_7c/branch3x3dbl_3a",
        "mixed_10/tower_2/conv": "Mixed_7c/branch_pool",
    }
    for tf_layer, layer in expected.items():
        assert names[tf_layer] == layer


def test_convert_graph_def_round_trips_constants(weights_file, tmp_path):
    _, flat = weights_file
    graph_def = tf.compat.v1.GraphDef()
    unscaled = "mixed_5/tower/conv_1"  # one BN node with scale_after_normalization=False
    for tf_layer, layer in inception.graph_def_layer_names().items():
        _const_node(graph_def, f"{tf_layer}/conv2d_params", flat[f"{layer}/conv/kernel"])
        for tf_name, leaf in (
            ("gamma", "scale"),
            ("beta", "bias"),
            ("moving_mean", "mean"),
            ("moving_variance", "var"),
        ):
            _const_node(graph_def, f"{tf_layer}/batchnorm/{tf_name}", flat[f"{layer}/bn/{leaf}"])
        bn = graph_def.node.add(name=f"{tf_layer}/batchnorm", op="BatchNormWithGlobalNormalization")
        bn.attr["scale_after_normalization"].b = tf_layer != unscaled
        bn.attr["variance_epsilon"].f = 0.001
    _const_node(graph_def, "softmax/weights", flat["fc/kernel"])
    _const_node(graph_def, "softmax/biases", flat["fc/bias"])
    graph_path = str(tmp_path / "graph.pb")
    with open(graph_path, "wb") as f:
        f.write(graph_def.SerializeToString())
    out_path = str(tmp_path / "converted.npz")
    inception.convert_graph_def(graph_path, out_path)
    converted = inception.flatten_variables(inception.load_params(out_path))
    assert set(converted) == set(flat)
    for key, value in flat.items():
        if key == "Mixed_6c/branch7x7_2/bn/scale":  # = mixed_5/tower/conv_1: gamma ignored
            np.testing.assert_array_equal(converted[key], np.ones_like(value))
        else:
            np.testing.assert_array_equal(converted[key], value, err_msg=key)


def _pytorch_fid_state_dict():
    """pytorch-fid's state dict layout (tests/data/pytorch_fid_layout.json, written from its own
    network by diffax.tools.check_pytorch_fid), zeros but for three marked tensors."""
    path = os.path.join(os.path.dirname(__file__), "data", "pytorch_fid_layout.json")
    with open(path) as f:
        layout = json.load(f)
    state = {name: np.zeros(shape, np.float32) for name, shape in layout.items()}
    rng = np.random.default_rng(0)
    for name in (
        "Mixed_6d.branch1x1.conv.weight",
        "fc.weight",
        "Mixed_7c.branch_pool.bn.running_var",
    ):
        state[name] = rng.standard_normal(state[name].shape).astype(np.float32)
    return state


def test_pytorch_fid_weights_convert_into_the_weight_file(tmp_path):
    state = _pytorch_fid_state_dict()
    path = str(tmp_path / "fid_inception.npz")
    inception.convert_pytorch_fid(state, path, "pt_inception.pth")
    flat = inception.flatten_variables(inception.load_params(path))
    np.testing.assert_array_equal(
        flat["Mixed_6d/branch1x1/conv/kernel"],
        state["Mixed_6d.branch1x1.conv.weight"].transpose(2, 3, 1, 0),  # OIHW -> HWIO
    )
    np.testing.assert_array_equal(flat["fc/kernel"], state["fc.weight"].T)
    np.testing.assert_array_equal(
        flat["Mixed_7c/branch_pool/bn/var"], state["Mixed_7c.branch_pool.bn.running_var"]
    )
    assert len(flat) == len([n for n in state if not n.endswith("num_batches_tracked")])


def test_a_pytorch_fid_file_that_does_not_fit_is_one_sentence(tmp_path):
    state = _pytorch_fid_state_dict()
    del state["Mixed_5b.branch1x1.bn.running_mean"]
    path = tmp_path / "never.npz"
    with pytest.raises(ValueError) as error:
        inception.convert_pytorch_fid(state, str(path), "pt_inception.pth")
    assert str(error.value).startswith("pt_inception.pth does not fit pytorch-fid's FID Inception")
    assert "lacks 1 tensors: Mixed_5b.branch1x1.bn.running_mean" in str(error.value)
    assert not path.exists()
