"""Tests of diffax.latents: loading the frozen autoencoder, its scale, shape checks, decoding."""

import json
import os

import chex
import jax
import numpy as np
import pytest

from diffax import latents, sharding, tasks, train
from diffax.models import count_params


@pytest.fixture(scope="module")
def mesh():
    return sharding.create_mesh()


def test_load_reads_the_workdir_scale_and_image_config(latent_config, mesh):
    latent = latents.load(latent_config(), mesh)
    assert latent.scale == 2.0  # From latent_stats.json, not hard-coded.
    assert latent.version == "step 1"
    assert latent.latent_shape == (8, 8, 4) and latent.image_shape == (16, 16, 1)
    assert latent.image_data.dataset == "digits" and latent.image_data.num_levels == 17
    config = latent_config()
    config.latent.scale = 0.5  # A set latent.scale wins over the file.
    assert latents.load(config, mesh).scale == 0.5


def test_decode_of_scaled_latents_has_image_shape_and_matches_the_decoder(latent_config, mesh):
    latent = latents.load(latent_config(), mesh)
    z = np.random.default_rng(0).normal(size=(5, 8, 8, 4)).astype(np.float32)
    images = latent.decode(z, batch_size=8)
    chex.assert_shape(images, (5, 16, 16, 1))
    assert np.all(np.abs(images) <= 1.0)
    direct = latent.model.apply({"params": latent.params}, z / 2.0, method=latent.model.decode)
    np.testing.assert_allclose(images, np.clip(direct, -1, 1), atol=1e-5)


def test_latent_shape_disagreement_is_one_sentence(latent_config, mesh):
    config = latent_config()
    config.data.image_size = 16
    with pytest.raises(ValueError, match=r"8x8x4 latents, but data.image_size=16"):
        latents.load(config, mesh)
    config = latent_config()
    config.data.num_channels = 3
    with pytest.raises(ValueError, match=r"set data.image_size=8, data.num_channels=4"):
        latents.load(config, mesh)


def test_missing_workdir_and_stale_or_missing_latent_stats_are_refused(
    latent_config, mesh, tmp_path, data_dir
):
    from conftest import make_autoencoder_workdir

    config = latent_config()
    config.latent.autoencoder_workdir = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"holds no checkpoint: train the autoencoder"):
        latents.load(config, mesh)
    workdir = tmp_path / "ae"
    make_autoencoder_workdir(workdir, data_dir, num_steps=1)
    config.latent.autoencoder_workdir = str(workdir)
    with open(workdir / "latent_stats.json", "w") as f:
        json.dump({"step": 0, "scale": 1.0}, f)
    with pytest.raises(ValueError, match=r"latent_stats.json is of step 0 but the newest"):
        latents.load(config, mesh)
    os.remove(workdir / "latent_stats.json")
    with pytest.raises(FileNotFoundError, match=r"has no latent_stats.json"):
        latents.load(config, mesh)


def test_unfinished_training_is_refused(latent_config, mesh, monkeypatch):
    from diffax import checkpointing

    original = checkpointing.saved_config

    def longer(manager):  # The saved config asks for more steps than the checkpoint has.
        saved = original(manager)
        saved["training"]["num_steps"] = 500
        return saved

    monkeypatch.setattr(checkpointing, "saved_config", longer)
    with pytest.raises(FileNotFoundError, match=r"stopped at step 1 of 500 \(unfinished\)"):
        latents.load(latent_config(), mesh)


def test_sd_vae_needs_weights_and_a_scale(latent_config, mesh, tmp_path):
    config = latent_config()
    config.latent.autoencoder = "sd_vae"
    with pytest.raises(ValueError, match=r"needs latent.sd_vae_weights"):
        latents.load(config, mesh)
    config.latent.sd_vae_weights = str(tmp_path / "vae.safetensors")
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        latents.load(config, mesh)


def test_trainer_of_a_latent_config_trains_on_latent_shapes_and_traces_once(latent_config):
    config = latent_config()
    trainer = train.Trainer(config)
    assert trainer.latent is not None and trainer.latent.scale == 2.0
    step_fn = tasks.make_train_step(config, trainer.model, trainer.process)
    assert step_fn.keywords["num_levels"] == 0  # The continuous decoder: latents are not levels.

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(state, batch):
        return step_fn(state, batch)

    state = trainer.init()
    assert count_params(state.params) > 0
    rng = np.random.default_rng(0)
    for _ in range(2):
        batch = {
            "image": rng.normal(size=(16, 8, 8, 4)).astype(np.float32),
            "label": rng.integers(0, 10, 16).astype(np.int32),
        }
        state, metrics = step(state, batch)
    chex.assert_tree_all_finite(metrics)
    assert int(state.step) == 2


def test_per_channel_needs_the_channel_stats_in_latent_stats_json(latent_config, mesh):
    config = latent_config()
    config.latent.normalization = "per_channel"
    with pytest.raises(
        ValueError,
        match=r"^latent\.normalization='per_channel' needs channel_shift and channel_scale in "
        r".*latent_stats\.json, which has none .*set latent\.normalization='scalar'\.$",
    ):
        latents.load(config, mesh)


def test_per_channel_normalise_then_decode_is_decode_of_the_raw_latent(
    latent_config, mesh, data_dir, tmp_path
):
    from conftest import make_autoencoder_workdir

    from diffax import autoencoder_losses

    shift, scale = [0.5, -1.0, 2.0, 0.0], [2.0, 0.5, 1.0, 3.0]
    make_autoencoder_workdir(tmp_path, data_dir, channel_stats=(shift, scale))
    config = latent_config()
    config.latent.autoencoder_workdir = str(tmp_path)
    config.latent.normalization = "per_channel"
    latent = latents.load(config, mesh)
    np.testing.assert_array_equal(latent.shift, shift)
    np.testing.assert_array_equal(latent.scale, scale)
    images = jax.random.uniform(jax.random.key(0), (8, 16, 16, 1), minval=-1.0, maxval=1.0)
    mean, _ = latent.encode(images)
    z = autoencoder_losses.normalize_latents(mean, latent.scale, latent.shift)
    raw = latent.model.apply({"params": latent.params}, mean, method=latent.model.decode)
    np.testing.assert_allclose(
        latent.decode(np.asarray(z), 8), np.clip(np.asarray(raw), -1, 1), atol=1e-5
    )
