"""Tests of diffax.metrics.lpips: the LPIPS-VGG16 distance, its weight file, the training term."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits_autoencoder
from diffax import build, tasks, train
from diffax.metrics import lpips
from diffax.tasks import autoencoder as autoencoder_task

SMALL = (4, 8, 8, 8, 8)  # Reduced VGG widths: the layout of VGG16's, a few thousand weights.


def make_weights(path, widths=SMALL, seed=0):
    """Writes random official-name LPIPS weights (He-scaled convs, non-negative lin) to path."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in lpips.expected_shapes(widths).items():
        if name.startswith("lin"):
            tensors[name] = np.abs(rng.normal(size=shape))
        elif name.endswith("weight"):
            tensors[name] = rng.normal(size=shape) * np.sqrt(2.0 / (9 * shape[1]))
        else:
            tensors[name] = 0.1 * rng.normal(size=shape)
    lpips.save_tensors(tensors, str(path))
    return {k: np.asarray(v, np.float32) for k, v in tensors.items()}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("lpips") / "lpips_small.safetensors")
    return path, make_weights(path)


def _images(seed, shape=(3, 16, 16, 3)):
    return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, shape), jnp.float32)


def _numpy_lpips(tensors, x0, x1):
    """LPIPS from the torch-layout tensors in float64 NCHW: an independent computation."""

    def conv(x, w, b):  # x [B, I, H, W], w [O, I, 3, 3], padding 1.
        p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        h, wd = x.shape[2:]
        out = sum(
            np.einsum("oi,bihw->bohw", w[:, :, dy, dx], p[:, :, dy : dy + h, dx : dx + wd])
            for dy in range(3)
            for dx in range(3)
        )
        return out + b[None, :, None, None]

    def taps(x):
        x = np.transpose(np.asarray(x, np.float64), (0, 3, 1, 2))
        h = (x - np.array(lpips.SHIFT)[None, :, None, None]) / np.array(lpips.SCALE)[
            None, :, None, None
        ]
        out = []
        for s, convs in enumerate(lpips.STAGES):
            if s:
                b, c, hh, ww = h.shape
                h = h.reshape(b, c, hh // 2, 2, ww // 2, 2).max(axis=(3, 5))
            for n in convs:
                h = np.maximum(
                    conv(h, tensors[f"features.{n}.weight"], tensors[f"features.{n}.bias"]), 0
                )
            out.append(h / (np.sqrt(np.sum(h**2, axis=1, keepdims=True)) + 1e-10))
        return out

    total = 0.0
    for k, (a, b) in enumerate(zip(taps(x0), taps(x1), strict=True)):
        w = tensors[f"lin{k}.model.1.weight"][0, :, 0, 0]
        total = total + np.einsum("c,bchw->bhw", w, (a - b) ** 2).mean(axis=(1, 2))
    return total


def test_lpips_is_zero_on_equal_images_symmetric_nonnegative_and_matches_numpy(weights):
    path, tensors = weights
    distance = jax.jit(lpips.distance_fn(path))
    x0, x1 = _images(0), _images(1)
    np.testing.assert_allclose(distance(x0, x0), 0.0, atol=1e-7)
    d01, d10 = distance(x0, x1), distance(x1, x0)
    np.testing.assert_allclose(d01, d10, rtol=1e-6)
    assert d01.shape == (3,) and np.all(np.asarray(d01) > 0)
    np.testing.assert_allclose(d01, _numpy_lpips(tensors, x0, x1), rtol=1e-5, atol=1e-5)
    grey = distance(x0[..., :1], x1[..., :1])  # Grey images: repeated to three channels.
    np.testing.assert_allclose(
        grey, distance(jnp.repeat(x0[..., :1], 3, -1), jnp.repeat(x1[..., :1], 3, -1)), rtol=1e-6
    )


def test_channel_normalisation_has_a_finite_gradient_at_zero_features():
    h = jnp.zeros((2, 3, 3, 4)).at[0, 0, 0].set(jnp.array([3.0, 4.0, 0.0, 0.0]))
    np.testing.assert_allclose(lpips.normalize_channels(h)[0, 0, 0], [0.6, 0.8, 0, 0], rtol=1e-6)
    # Dead-ReLU positions (all channels 0): a plain sqrt's gradient there is 0 * inf = NaN.
    grad = jax.jit(jax.grad(lambda h: jnp.sum(lpips.normalize_channels(h) * jnp.arange(4.0))))(h)
    chex.assert_tree_all_finite(grad)


def test_loader_takes_vgg16_shapes_and_maps_oihw_to_hwio(weights):
    shapes = lpips.expected_shapes()  # VGG16's: torchvision's vgg16 and lpips' vgg.pth.
    assert shapes["features.0.weight"] == (64, 3, 3, 3)
    assert shapes["features.28.weight"] == (512, 512, 3, 3) and len(shapes) == 13 * 2 + 5
    assert shapes["lin2.model.1.weight"] == (1, 256, 1, 1)
    assert sum(int(np.prod(s)) for k, s in shapes.items() if k.startswith("f")) == 14_714_688
    path, tensors = weights
    params, widths = lpips.load_params(path)
    assert widths == SMALL
    np.testing.assert_array_equal(
        params["features_5"]["kernel"][1, 2], tensors["features.5.weight"][:, :, 1, 2].T
    )


def test_a_file_of_other_names_or_shapes_is_refused_naming_them(weights, tmp_path):
    _, tensors = weights
    bad = dict(tensors)
    bad["lin3.model.1.weight"] = bad.pop("lin3.model.1.weight")[:, :4]
    del bad["features.7.bias"]
    path = str(tmp_path / "bad.npz")
    lpips.save_tensors(bad, path)
    with pytest.raises(
        ValueError,
        match=r"bad\.npz.*missing features\.7\.bias; wrong shapes "
        r"lin3\.model\.1\.weight \(1, 4, 1, 1\) \(expected \(1, 8, 1, 1\)\)\.$",
    ):
        lpips.load_params(path)
    negative = dict(tensors, **{"lin0.model.1.weight": -tensors["lin0.model.1.weight"]})
    lpips.save_tensors(negative, path)
    with pytest.raises(ValueError, match="negative lin weights in lin0.model.1.weight"):
        lpips.load_params(path)


def test_main_job_trains_with_the_lpips_term(weights, data_dir, tmp_path, caplog):
    config = digits_autoencoder.get_config()
    config.data.data_dir = data_dir
    config.data.image_size = 16
    config.model.autoencoder.block_out_channels = (8, 8)
    config.model.autoencoder.norm_num_groups = 4
    config.training.update(num_steps=2, warmup_steps=1, checkpoint_every=2, log_every=1)
    config.training.perceptual_weight = 1.0
    assert autoencoder_task.perceptual_fn(config) is None  # No file: skipped, with one warning.
    assert "the LPIPS term is skipped" in caplog.text
    config.training.lpips_weights = weights[0]
    step = tasks.make_train_step(config, build.create_model(config), None)
    assert step.keywords["perceptual_fn"] is not None
    caplog.set_level("INFO")
    _, state, _ = train.train(config, str(tmp_path), jax.devices()[:1])
    assert int(state.step) == 2
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step 2:")]
    assert logged and " p_loss " in logged[0], logged  # The term is in the step's metrics.
    p_loss = float(logged[0].split(" p_loss ")[1].split()[0])
    assert p_loss > 0


def test_convert_tool_merges_the_two_torch_files(weights, tmp_path, monkeypatch):
    """convert_lpips with a stand-in torch (diffax's tests never need torch itself)."""
    import sys
    import types

    from diffax.tools import convert_lpips

    _, tensors = weights

    class Tensor:
        def __init__(self, array):
            self.array = array

        def float(self):
            return self

        def numpy(self):
            return self.array

    files = {
        "vgg16.pth": {k: Tensor(v) for k, v in tensors.items() if k.startswith("features")},
        "vgg.pth": {k: Tensor(v) for k, v in tensors.items() if k.startswith("lin")},
    }
    files["vgg16.pth"]["classifier.0.weight"] = Tensor(np.zeros((2, 2), np.float32))
    fake = types.SimpleNamespace(load=lambda path, **kw: files[path])
    monkeypatch.setitem(sys.modules, "torch", fake)
    out = str(tmp_path / "lpips.safetensors")
    assert convert_lpips.convert("vgg16.pth", "vgg.pth", out) == SMALL
    params, _ = lpips.load_params(out)
    chex_equal = jax.tree.map(np.array_equal, params, lpips.load_params(weights[0])[0])
    assert all(jax.tree.leaves(chex_equal))
