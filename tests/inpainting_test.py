"""Tests of inpainting: masks, RePaint's schedule and sampler against a closed form (independent
Gaussian pixels with the exact denoiser), and the main job's mask-conditioned and RePaint paths."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sampling_test import MEAN, STD, GaussianOracle

from configs import tiny
from diffax import diffusion, evaluate, inpainting, schedules, train, validation


def test_fixed_masks_hide_the_named_part():
    m = inpainting.fixed_mask("bottom_half", 8)[..., 0]
    assert m[:4].min() == 1 and m[4:].max() == 0
    c = inpainting.fixed_mask("center", 8)[..., 0]
    assert c[2:6, 2:6].max() == 0 and c.sum() == 64 - 16
    with pytest.raises(ValueError, match="not one of"):
        inpainting.fixed_mask("middle", 8)


@pytest.mark.parametrize("kind", inpainting.MASK_KINDS)
def test_random_masks_of_each_kind(kind):
    masks = inpainting.random_masks(jax.random.PRNGKey(0), 256, 8, (kind,))
    chex.assert_shape(masks, (256, 8, 8, 1))
    assert set(np.unique(masks)) <= {0.0, 1.0}
    unknown = 64 - np.asarray(masks).sum(axis=(1, 2, 3))
    if kind == "half":
        np.testing.assert_array_equal(unknown, 32)
    elif kind == "box":  # Sides in [2, 6]: 4 to 36 unknown pixels.
        assert unknown.min() >= 4 and unknown.max() <= 36
    else:
        assert abs(unknown.mean() - 32) < 2


def test_repaint_schedule_walks_down_with_jumps_and_ends_at_zero():
    plain = inpainting.repaint_schedule(20, 5, 1)
    np.testing.assert_array_equal(plain, [(i, 0) for i in reversed(range(20))])
    ops = inpainting.repaint_schedule(20, 5, 3)
    state, visited = 20, []
    for i, up in ops:
        if up:
            assert i == state  # A forward step from state i to i + 1.
            state += 1
        else:
            assert i == state - 1  # A reverse step from state i + 1 to i.
            state -= 1
        assert 0 <= state <= 20
        visited.append(state)
    assert state == 0
    # Jump points 15, 10, 5 each go back up 5 steps twice more (r - 1 = 2).
    assert int(ops[:, 1].sum()) == 3 * 2 * 5
    assert len(ops) == 20 + 2 * 3 * 2 * 5


def test_repaint_keeps_the_known_part_and_draws_the_rest_from_the_data_distribution():
    # Independent Gaussian pixels: the unknown ones given the known are N(MEAN, STD^2) exactly, and
    # every RePaint step (reverse with the exact model, forward jumps) keeps that marginal.
    betas = schedules.get_named_beta_schedule("cosine", 40)
    d = diffusion.GaussianDiffusion.create(betas, var_type="learned")
    oracle = GaussianOracle(betas)
    known = MEAN + STD * jax.random.normal(jax.random.PRNGKey(0), (256, 4, 4, 2))
    mask = jnp.broadcast_to(inpainting.fixed_mask("bottom_half", 4), (256, 4, 4, 1))
    out = jax.jit(
        lambda k: inpainting.repaint_sample(
            d, oracle.eps_and_log_variance_model, known, mask, k, jump_length=5, resamplings=3,
            clip_denoised=False,
        )
    )(jax.random.PRNGKey(1))  # fmt: skip
    np.testing.assert_array_equal(out[:, :2], known[:, :2])
    filled = np.asarray(out[:, 2:]).ravel()  # 4096 values
    assert abs(filled.mean() - MEAN) < 4 * STD / np.sqrt(filled.size)
    assert abs(filled.std() / STD - 1) < 0.05


def test_masked_psnr_counts_only_unknown_pixels():
    x = jnp.zeros((1, 4, 4, 1))
    mask = jnp.asarray(inpainting.fixed_mask("bottom_half", 4))[None]
    y = x + 0.1 * (1 - mask) + 5.0 * mask  # Known pixels differ wildly: ignored.
    np.testing.assert_allclose(inpainting.masked_psnr(x, y, mask), 10 * np.log10(4 / 0.01), 1e-5)


def test_validation_names_the_inpainting_field():
    config = tiny.get_config()
    config.inpainting.eval_mask = "middle"
    with pytest.raises(validation.ConfigError, match="inpainting.eval_mask='middle'"):
        validation.validate_config(config, 8)
    config = tiny.get_config()
    config.inpainting.train_masks = ("box", "ring")
    with pytest.raises(validation.ConfigError, match="inpainting.train_masks"):
        validation.validate_config(config, 8)
    config = tiny.get_config()
    config.inpainting.mask_cond = config.inpainting.repaint = True
    with pytest.raises(validation.ConfigError, match="inpainting.repaint=True is for models"):
        validation.validate_config(config, 8)


def _small(config, data_dir, classifier_path):
    """tiny.py on one 8x8 level with attention in the middle block only (conftest.SMALL_UNET),
    scored by the shared digits classifier: the main job's paths, at half the compile time."""
    config.data.data_dir, config.eval.classifier_path = data_dir, classifier_path
    config.model.unet.channel_mult, config.model.unet.attention_resolutions = (1,), ()
    return config


def test_main_job_trains_a_mask_conditioned_model_and_repaints_with_another(
    data_dir, tmp_path, classifier_path
):
    config = _small(tiny.get_config(), data_dir, classifier_path)
    config.inpainting.mask_cond = True
    config.training.sample_every = 2  # The training grids of an image-conditioned model too.
    config.model.class_cond, config.training.label_dropout, config.eval.guidance_scale = (
        False, 0.0, 0.0,
    )  # fmt: skip
    results = train.train_and_evaluate(config, str(tmp_path / "masked"))
    assert np.isfinite(results["test/bpd_given_known_part"])
    assert np.isfinite(results["samples/masked_psnr"])
    assert results["inpainting"] == "mask-conditioned, bottom_half unknown"
    saved = json.loads((tmp_path / "masked" / "eval_00000004.json").read_text())
    assert saved["samples/num_examples"] == config.eval.num_samples

    # RePaint with a plain class-conditional model (its null class), without retraining.
    plain = _small(tiny.get_config(), data_dir, classifier_path)
    train.train(plain, str(tmp_path / "plain"))
    plain.inpainting.repaint = True
    plain.inpainting.repaint_jump, plain.inpainting.repaint_resamplings = 2, 2
    path = evaluate.sample_checkpoint(plain, str(tmp_path / "plain"), num_samples=10)
    with np.load(path.replace(".png", "_io.npz")) as io:
        chex.assert_shape(io["samples"], (10, 8, 8, 1))
        chex.assert_tree_all_finite(io["samples"])
