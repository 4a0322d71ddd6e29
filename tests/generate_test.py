"""Tests of diffax.generate: each configured sampler draws finite batches, compiled once."""

import chex
import jax
import numpy as np
import pytest

from configs import tiny
from diffax import build, generate, sharding, solvers, tasks


@pytest.fixture(scope="module")
def params():
    config = tiny.get_config()
    model = build.create_model(config)
    return tasks.init_params(jax.random.PRNGKey(0), model, config)


@pytest.mark.parametrize(
    ("sampler", "steps", "expected_nfe"),
    [("ddpm", 10, 10), ("ddim", 10, 10), ("dpmpp_2m", 6, 6), ("heun", 5, 9), ("unipc", 6, 6)],
)
def test_each_sampler_draws_finite_samples_with_honest_nfe(params, sampler, steps, expected_nfe):
    config = tiny.get_config()
    config.eval.sampler = sampler
    config.eval.sample_steps = steps
    model, process = build.create_model(config), tasks.create_process(config)
    mesh = sharding.create_mesh()
    generator = generate.Generator(config, model, process, mesh, num_samples=8)
    images = generator.generate(params, 12, seed=0)  # Two batches of 8: one compilation.
    chex.assert_shape(images, (12, 8, 8, 1))
    chex.assert_tree_all_finite(images)
    assert generator.nfe == expected_nfe
    # Guidance (w=1 in configs/tiny.py) doubles the batch of each call.
    assert generator.forward_passes_per_sample == 2 * expected_nfe
    assert generator._sample._cache_size() == 1


def test_solver_grid_follows_the_spacing_and_ends_clean():
    config = tiny.get_config()
    config.eval.sampler, config.eval.sample_steps, config.eval.sample_spacing = (
        "unipc",
        5,
        "uniform",
    )
    process = tasks.create_process(config)
    grid = generate.solver_grid(config, process)
    expected = solvers.spacing_timesteps(process, 5, "uniform")
    np.testing.assert_array_equal(np.asarray(grid.model_t[:-1]), expected)
    assert float(grid.sigma[-1]) == 0.0 and float(grid.alpha[-1]) == 1.0


def _tiny_classifier_config():
    from configs import digits_classifier

    config = digits_classifier.get_config()
    config.diffusion.num_timesteps = tiny.get_config().diffusion.num_timesteps
    config.model.unet.attention_resolutions = ()
    return config


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m"])
def test_classifier_guidance_at_scale_zero_changes_nothing_and_moves_samples_otherwise(
    params, sampler
):
    config = tiny.get_config()
    config.eval.sampler, config.eval.sample_steps = sampler, 5
    model, process = build.create_model(config), tasks.create_process(config)
    mesh = sharding.create_mesh()
    classifier_config = _tiny_classifier_config()
    classifier_model = build.create_model(classifier_config)
    classifier_params = tasks.init_params(
        jax.random.PRNGKey(3), classifier_model, classifier_config
    )
    plain = generate.Generator(config, model, process, mesh, num_samples=8)
    reference = plain.generate(params, 8, seed=0)
    with_classifier = generate.Generator(
        config,
        model,
        process,
        mesh,
        num_samples=8,
        classifier=(classifier_model, classifier_params),
    )
    np.testing.assert_array_equal(with_classifier.generate(params, 8, seed=0), reference)
    config.eval.classifier_scale = 50.0
    guided = generate.Generator(
        config,
        model,
        process,
        mesh,
        num_samples=8,
        classifier=(classifier_model, classifier_params),
    ).generate(params, 8, seed=0)
    chex.assert_tree_all_finite(guided)
    assert np.abs(guided - reference).max() > 1e-3


def test_the_chain_ends_in_the_samples_and_has_the_asked_frames(params):
    config = tiny.get_config()  # DDPM, 10 respaced steps.
    model, process = build.create_model(config), tasks.create_process(config)
    generator = generate.Generator(config, model, process, sharding.create_mesh(), num_samples=8)
    images, chain = generator.generate_with_chain(params, 12, seed=0, chain_frames=5)
    chex.assert_shape(chain, (6, 8, 8, 8, 1))  # 5 frames every 2 steps, then the samples.
    np.testing.assert_array_equal(chain[-1], images[:8])
    np.testing.assert_array_equal(images, generator.generate(params, 12, seed=0))


@pytest.mark.parametrize(
    ("prompt", "shown"),
    [
        ("\udcff\udcfe three", r"--prompt='\xff\xfe three' is not valid UTF-8"),  # argv bytes
        ("x" * 10_000, "--prompt='" + "x" * 60 + "...' is 10000 UTF-8 bytes"),
    ],
)
def test_a_prompt_that_cannot_be_a_caption_gets_a_short_sentence_naming_the_flag(prompt, shown):
    with pytest.raises(ValueError) as error:
        generate.check_prompt(prompt, text=True, stored=False, text_length=32)
    message = str(error.value)
    assert message.startswith(shown), message
    assert len(message) < 200 and "\n" not in message
    message.encode("utf-8")  # Printable as it is: the bytes are shown escaped.
    generate.check_prompt("a three", text=True, stored=False, text_length=32)
