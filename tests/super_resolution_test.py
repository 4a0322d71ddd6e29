"""Tests of super-resolution: the conditioning math against closed forms, PSNR / SSIM against an
independent NumPy computation, the backbones' low-resolution inputs, and the main job end to end
(training, the conditional bound, PSNR next to bicubic, a two-stage cascade)."""

import functools
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from diffax import build, evaluate, super_resolution, tasks, train, validation


def test_downsample_is_the_block_average():
    x = jnp.arange(2 * 8 * 8 * 3, dtype=jnp.float32).reshape(2, 8, 8, 3)
    low = super_resolution.downsample(x, 4)
    chex.assert_shape(low, (2, 4, 4, 3))
    expected = np.asarray(x)[:, 2:4, 4:6, :].mean(axis=(1, 2))  # The block at (1, 2).
    np.testing.assert_allclose(low[:, 1, 2, :], expected, rtol=1e-6)


def test_upsampling_a_constant_image_keeps_it_constant():
    low = jnp.full((1, 4, 4, 1), 0.3)
    for method in super_resolution.UPSAMPLE_METHODS:
        np.testing.assert_allclose(super_resolution.upsample(low, 8, method), 0.3, rtol=1e-6)


def test_augmentation_level_zero_is_identity_one_is_noise_and_variance_is_kept():
    key_x, key_n = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(key_x, (4, 16, 16, 1))
    noise = jax.random.normal(key_n, x.shape)
    levels = jnp.array([0.0, 1.0, 0.5, 0.3])
    out = super_resolution.augment(x, levels, noise)
    np.testing.assert_allclose(out[0], x[0], atol=1e-6)
    np.testing.assert_allclose(out[1], noise[1], atol=1e-6)
    # cos^2 + sin^2 = 1: unit-variance inputs stay unit-variance at any level.
    big = jax.random.normal(key_x, (2, 128, 128, 1))
    mixed = super_resolution.augment(big, jnp.array([0.5, 0.5]), big[::-1])
    assert abs(float(jnp.var(mixed)) - 1.0) < 0.05


def test_training_levels_are_uniform_below_the_maximum_and_evaluation_is_fixed():
    images = jnp.zeros((512, 8, 8, 1))
    train_cond = super_resolution.conditioning(
        images, jax.random.PRNGKey(1), low_res_size=4, aug_level=0.4, random_level=True
    )
    levels = np.asarray(train_cond["aug_level"])
    assert levels.min() >= 0 and levels.max() <= 0.4 and abs(levels.mean() - 0.2) < 0.02
    chex.assert_shape(train_cond["concat"], (512, 8, 8, 1))
    eval_cond = super_resolution.conditioning(
        images, jax.random.PRNGKey(1), low_res_size=4, aug_level=0.0, random_level=False
    )
    np.testing.assert_array_equal(eval_cond["aug_level"], 0.0)
    np.testing.assert_array_equal(eval_cond["concat"], 0.0)  # No noise at level 0.


def test_psnr_matches_its_definition():
    x = jnp.zeros((2, 4, 4, 1))
    y = x.at[0].set(0.1).at[1].set(0.2)
    np.testing.assert_allclose(
        super_resolution.psnr(x, y), [10 * np.log10(4 / 0.01), 10 * np.log10(4 / 0.04)], rtol=1e-5
    )


def _numpy_ssim(x, y, data_range=2.0):
    """SSIM of one single-channel image pair with one window covering the whole image (the
    window size when the image is smaller than 11), written from Wang et al. 2004, eq. 13."""
    size = x.shape[0]
    sigma = 1.5 * size / 11
    g = np.exp(-0.5 * ((np.arange(size) - (size - 1) / 2) / sigma) ** 2)
    w = np.outer(g, g) / np.outer(g, g).sum()
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy = (w * (x - mx) ** 2).sum(), (w * (y - my) ** 2).sum()
    cxy = (w * (x - mx) * (y - my)).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))


def test_ssim_is_one_for_identical_images_and_matches_an_independent_computation():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (3, 8, 8, 1)).astype(np.float32)
    y = np.clip(x + rng.normal(0, 0.3, x.shape), -1, 1).astype(np.float32)
    np.testing.assert_allclose(super_resolution.ssim(x, x), 1.0, rtol=1e-5)
    expected = [_numpy_ssim(x[i, ..., 0], y[i, ..., 0]) for i in range(3)]
    np.testing.assert_allclose(super_resolution.ssim(x, y), expected, rtol=1e-4, atol=1e-5)


def _sr_config(**overrides):
    config = tiny.get_config()
    config.super_resolution.low_res_size = 4
    config.super_resolution.train_aug_max = 0.3
    config.model.class_cond = False
    config.training.label_dropout = 0.0
    config.eval.guidance_scale = 0.0
    for field, value in overrides.items():
        section, name = field.split("__")
        config[section][name] = value
    return config


@pytest.mark.parametrize("name", ["unet", "dit"])
def test_backbones_see_the_low_resolution_image_and_its_level(name):
    config = _sr_config(model__name=name)
    if name == "dit":
        config.model.dit.hidden_size, config.model.dit.depth, config.model.dit.num_heads = 32, 1, 2
    model = build.create_model(config)
    params = tasks.init_params(jax.random.PRNGKey(0), model, config)
    # Zero-initialised output layers would hide the inputs: perturb every parameter.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = jax.tree.unflatten(
        tree, [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    )
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 8, 8, 1))
    t = jnp.array([3, 7])
    low = jax.random.normal(jax.random.PRNGKey(3), (2, 8, 8, 1))
    level = jnp.array([0.0, 0.2])

    def run(low_res, aug_level):
        return model.apply({"params": params}, x, t, concat=low_res, aug_level=aug_level)

    out = run(low, level)
    chex.assert_shape(out, (2, 8, 8, 2))
    assert float(jnp.max(jnp.abs(out - run(0 * low, level)))) > 1e-4
    assert float(jnp.max(jnp.abs(out - run(low, level + 0.5)))) > 1e-4
    with pytest.raises(ValueError, match="concat_cond=True needs"):
        model.apply({"params": params}, x, t)


def test_validation_names_the_super_resolution_field():
    with pytest.raises(validation.ConfigError, match="super_resolution.low_res_size=3"):
        validation.validate_config(_sr_config(super_resolution__low_res_size=3), 8)
    with pytest.raises(validation.ConfigError, match="super_resolution.sample_aug_level"):
        validation.validate_config(_sr_config(super_resolution__sample_aug_level=1.5), 8)
    config = tiny.get_config()
    config.super_resolution.base_workdir = "/somewhere"
    with pytest.raises(validation.ConfigError, match="super_resolution.base_workdir"):
        validation.validate_config(config, 8)


def test_main_job_trains_an_upsampler_reports_psnr_and_samples_a_cascade(
    data_dir, tmp_path, classifier_path
):
    # One 8x8 level, attention in the middle block only (conftest.SMALL_UNET); the shared digits
    # classifier scores the samples.
    config = _sr_config(data__data_dir=data_dir, eval__classifier_path=classifier_path)
    config.model.unet.update(channel_mult=(1,), attention_resolutions=())
    config.training.sample_every = 2  # The training grids of an image-conditioned model too.
    results = train.train_and_evaluate(config, str(tmp_path / "sr"))
    for key in ("test/bpd_given_low_res", "samples/psnr", "samples/bicubic_psnr", "samples/ssim"):
        assert np.isfinite(results[key]), key
    assert "test/bpd" not in results  # Never reported as an unconditional likelihood.
    saved = json.loads((tmp_path / "sr" / "eval_00000004.json").read_text())
    assert saved["samples/num_examples"] == config.eval.num_samples
    assert os.path.exists(saved["samples_png"])

    # The cascade: a 4x4 base model's samples, upsampled to 8x8.
    base = tiny.get_config()
    base.data.image_size, base.data.data_dir = 4, data_dir
    base.model.unet.channel_mult = (1,)
    base.model.unet.attention_resolutions = ()
    train.train(base, str(tmp_path / "base"))
    config.super_resolution.base_workdir = str(tmp_path / "base")
    path = evaluate.sample_checkpoint(config, str(tmp_path / "sr"), num_samples=10)
    with np.load(path.replace(".png", "_io.npz")) as io:
        chex.assert_shape(io["low_res"], (10, 4, 4, 1))
        chex.assert_shape(io["samples"], (10, 8, 8, 1))
        chex.assert_tree_all_finite(io["samples"])


def test_shipped_upsampler_configs_validate_and_build():
    from configs import digits_sr, imagenet64_to_256

    for make, low, size in ((digits_sr, 4, 8), (imagenet64_to_256, 64, 256)):
        config = make.get_config()
        validation.validate_config(config, 8)
        model = build.create_model(config)
        init = functools.partial(tasks.init_params, model=model, config=config)
        params = jax.eval_shape(init, jax.random.PRNGKey(0))
        # The input conv reads x_t and the upsampled low-resolution image: 2C channels.
        c = config.data.num_channels
        assert params["input_conv"]["kernel"].shape[2] == 2 * c
        assert config.super_resolution.low_res_size == low and config.data.image_size == size


def test_a_model_without_the_level_input_gets_the_same_image_and_no_level():
    low = jax.random.uniform(jax.random.PRNGKey(0), (2, 4, 4, 3), minval=-1.0, maxval=1.0)
    key = jax.random.PRNGKey(1)
    with_level = super_resolution.conditioning_from_low_res(low, key, image_size=8, aug_level=0.0)
    without = super_resolution.conditioning_from_low_res(
        low, key, image_size=8, aug_level=0.0, embed_level=False
    )
    assert set(without) == {"concat"}
    np.testing.assert_array_equal(without["concat"], with_level["concat"])
