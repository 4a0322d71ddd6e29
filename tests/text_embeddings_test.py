"""Tests of diffax.text_embeddings and the models, pipeline and step that use stored embeddings."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import build, diffusion, input_pipeline, models, tasks, text_embeddings, validation
from diffax.models import text_encoder
from diffax.models.unet import UNet
from diffax.tools import embed_captions


def _write(path, n=6, length=4, width=8, **replace):
    arrays = {
        "embeddings": np.random.default_rng(0).normal(size=(n, length, width)).astype(np.float16),
        "mask": np.arange(length)[None, :] < np.array([1 + i % length for i in range(n)])[:, None],
        "index": np.arange(n)[::-1].copy(),
    }
    arrays.update(replace)
    np.savez(path, **arrays)
    return arrays


def test_file_errors_are_one_sentence_naming_the_file_and_what_is_accepted(tmp_path):
    path = str(tmp_path / "train.npz")
    _write(path)
    assert text_embeddings.check_file(path, 4, 8) == 6
    with pytest.raises(ValueError, match=r"holds 8-wide embeddings but model.text.width=16"):
        text_embeddings.check_file(path, 4, 16)
    with pytest.raises(ValueError, match=r"4 tokens per example but data.text_length=5"):
        text_embeddings.check_file(path, 5, 8)
    with pytest.raises(FileNotFoundError, match=r"no embeddings file .*test.npz"):
        text_embeddings.check_file(str(tmp_path / "test.npz"), 4, 8)
    _write(path, mask=np.ones((5, 4), bool))
    with pytest.raises(ValueError, match=r"misaligned: embeddings \[6, 4, 8\], mask \[5, 4\]"):
        text_embeddings.check_file(path, 4, 8)
    _write(path, index=np.arange(6.0))
    with pytest.raises(ValueError, match=r"index float64 \[6\]; accepted: .* index \[N\] integer"):
        text_embeddings.check_file(path, 4, 8)
    arrays = _write(path)
    data = {"text_embeddings": str(tmp_path / "{split}.npz"), "text_length": 4}
    table = text_embeddings.load(_config(data), "train[:3]", 8)  # Sorted by index.
    np.testing.assert_array_equal(table.embeddings[0], arrays["embeddings"][5])
    with pytest.raises(ValueError, match=r"train.npz has no embeddings for example 9"):
        table.rows(np.array([1, 9]))


def _config(data):
    import ml_collections

    return ml_collections.ConfigDict(data)


def test_validation_refuses_a_width_mismatch_and_a_missing_split_file(data_dir, tmp_path):
    from configs import tiny_text

    config = tiny_text.get_config()
    config.data.data_dir = data_dir
    config.data.text_embeddings = str(tmp_path / "{split}.npz")
    _write(str(tmp_path / "train.npz"), length=32, width=32)
    with pytest.raises(validation.ConfigError, match=r"no embeddings file .*test.npz"):
        validation.validate_config(config, 8)
    _write(str(tmp_path / "test.npz"), length=32, width=16)
    with pytest.raises(validation.ConfigError, match=r"set model.text.width=16"):
        validation.validate_config(config, 8)
    config.data.text_embeddings = str(tmp_path / "emb.npz")
    with pytest.raises(validation.ConfigError, match=r"must be a path holding \{split\}"):
        validation.validate_config(config, 8)


@pytest.fixture(scope="module")
def context_model():
    unet = UNet(
        out_channels=1,
        ch=32,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(4,),
        num_head_channels=32,
    )
    model = text_encoder.ContextConditioned(denoiser=unet, length=6, width=16)
    x, t = jnp.ones((3, 8, 8, 1)), jnp.array([1, 5, 9])
    params = jax.jit(model.init)(jax.random.key(0), x, t)["params"]
    # Cross-attention's output projection starts at zero; perturb it so the context matters.
    params = jax.tree.map(lambda p: p + 0.05 * jnp.sin(jnp.arange(p.size).reshape(p.shape)), params)
    return model, params, x, t


def test_masked_padding_is_ignored_and_an_all_masked_row_is_the_null_context(context_model):
    model, params, x, t = context_model
    context = jax.random.normal(jax.random.key(1), (3, 6, 16))
    mask = jnp.array([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0], [0] * 6], bool)
    out = model.apply({"params": params}, x, t, context=context, context_mask=mask)
    changed = jnp.where(mask[..., None], context, 100.0)  # Only the padding differs.
    again = model.apply({"params": params}, x, t, context=changed, context_mask=mask)
    chex.assert_trees_all_close(out, again, atol=1e-5)
    null = model.apply({"params": params}, x, t)  # context=None: zeros, every key masked.
    chex.assert_trees_all_close(out[2], null[2], atol=1e-5)
    assert float(jnp.abs(out[0] - null[0]).max()) > 1e-3  # A real context does matter.
    with pytest.raises(ValueError, match=r"context must be \[B, 6, 16\]"):
        model.apply({"params": params}, x, t, context=context[..., :8], context_mask=mask)


def test_npz_batch_gives_the_training_loss_of_the_encoder_on_the_same_captions(data_dir, tmp_path):
    from configs import tiny_text

    config = tiny_text.get_config()
    config.data.data_dir = data_dir
    config.training.label_dropout = 0.0  # Dropped rows differ by design (empty caption, null).
    config.data.fixed_captions = True  # The captions embed_captions stores, one per example.
    encoder, encoder_params = embed_captions.encoder_params(config, None, seed=3)
    arrays = embed_captions.embed(
        encoder, encoder_params, embed_captions.split_captions(config, "train"), 32
    )
    embed_captions.write(str(tmp_path / "train.npz"), arrays, "float32")
    stored = config.copy_and_resolve_references()
    stored.data.text_embeddings = str(tmp_path / "{split}.npz")
    batches = [
        next(input_pipeline.create_train_iterator(c.data, 16, seed=0)) for c in (config, stored)
    ]
    np.testing.assert_array_equal(batches[0]["image"], batches[1]["image"])  # Same examples.
    np.testing.assert_array_equal(batches[0]["label"], batches[1]["label"])
    np.testing.assert_array_equal(
        text_encoder.token_mask(batches[0]["tokens"]), batches[1]["context_mask"]
    )
    # The training loss of both models on the same batch, timesteps and noise (train_step's own
    # handling of the context batch runs in main_test's end-to-end run).
    text_model, stored_model = build.create_model(config), build.create_model(stored)
    x, t = jnp.asarray(batches[0]["image"]), jnp.arange(16) % config.diffusion.num_timesteps
    params = tasks.init_params(jax.random.PRNGKey(0), text_model, config)
    params = {**params, "encoder": encoder_params}
    noise = jax.random.normal(jax.random.PRNGKey(1), x.shape)
    process = tasks.create_process(config)
    text_inputs = jnp.asarray(batches[0]["tokens"])
    stored_inputs = {k: jnp.asarray(batches[1][k]) for k in ("context", "context_mask")}

    @jax.jit
    def losses(params, text_inputs, stored_inputs):
        fns = (
            models.model_fn(text_model, params, tokens=text_inputs),
            models.model_fn(stored_model, {"denoiser": params["denoiser"]}, context=stored_inputs),
        )
        return [
            diffusion.training_losses(process, fn, x, t, noise, num_levels=config.data.num_levels)
            for fn in fns
        ]

    text_terms, stored_terms = losses(params, text_inputs, stored_inputs)
    chex.assert_trees_all_close(text_terms, stored_terms, rtol=1e-5, atol=1e-6)
