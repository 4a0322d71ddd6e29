"""Tests for diffax.models.text_encoder: byte tokens, the encoder, the TextConditioned wrapper."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import models
from diffax.models import text_encoder
from diffax.models.unet import UNet


def test_tokenize_is_bos_bytes_then_padding_and_round_trips():
    tokens = text_encoder.tokenize(["ab", "", "é"], 6)
    np.testing.assert_array_equal(tokens[0], [1, ord("a") + 2, ord("b") + 2, 0, 0, 0])
    np.testing.assert_array_equal(tokens[1], [1, 0, 0, 0, 0, 0])  # The empty caption: BOS only.
    assert tokens[2, 3] == 0 and tokens[2, 1] == 0xC3 + 2  # Two UTF-8 bytes.
    assert text_encoder.detokenize(tokens) == ["ab", "", "é"]
    np.testing.assert_array_equal(text_encoder.null_tokens(2, 6), tokens[[1, 1]])


def test_tokenize_refuses_a_caption_that_does_not_fit_in_one_sentence():
    with pytest.raises(ValueError, match=r"'abcdef' is 6 UTF-8 bytes; data.text_length=6"):
        text_encoder.tokenize(["abcdef"], 6)


def test_encoder_output_at_real_tokens_does_not_depend_on_the_padding_length():
    encoder = text_encoder.TextEncoder(max_length=24, width=32, depth=2, num_heads=4)
    short, long = (jnp.asarray(text_encoder.tokenize(["seven"], n)) for n in (8, 24))
    params = encoder.init(jax.random.key(0), long)
    out_short, out_long = encoder.apply(params, short), encoder.apply(params, long)
    chex.assert_shape(out_long, (1, 24, 32))
    chex.assert_trees_all_close(out_short[:, :6], out_long[:, :6], atol=1e-5)


def test_without_positions_the_encoder_has_no_position_table_and_bad_values_fail():
    tokens = jnp.asarray(text_encoder.tokenize(["a seven"], 24))
    encoder = text_encoder.TextEncoder(max_length=24, width=32, depth=2, positions="none")
    params = encoder.init(jax.random.key(0), tokens)["params"]
    assert (
        "pos_embed" not in params
        and "pos_embed"
        in text_encoder.TextEncoder(max_length=24, width=32).init(jax.random.key(0), tokens)[
            "params"
        ]
    )
    chex.assert_shape(encoder.apply({"params": params}, tokens), (1, 24, 32))
    with pytest.raises(ValueError, match="positions"):
        text_encoder.TextEncoder(max_length=24, width=32, positions="rope").init(
            jax.random.key(0), tokens
        )


def test_word_ids_start_a_word_at_each_space():
    tokens = jnp.asarray(text_encoder.tokenize(["ab cd", "x"], 8))
    np.testing.assert_array_equal(
        text_encoder.word_ids(tokens), [[1, 1, 1, 2, 2, 2, 2, 2], [1, 1, 1, 1, 1, 1, 1, 1]]
    )


@pytest.mark.parametrize("positions", ["words", "none"])
def test_by_words_the_first_block_reads_each_word_without_the_others(positions):
    """positions="words": with one block, a word's outputs ignore a word two spaces away, which
    global attention ("none") does not."""
    tokens = jnp.asarray(text_encoder.tokenize(["seven xx nine", "seven yy nine"], 16))
    encoder = text_encoder.TextEncoder(
        max_length=16, width=32, depth=1, num_heads=4, positions=positions
    )
    params = encoder.init(jax.random.key(0), tokens)
    out = encoder.apply(params, tokens)
    seven = slice(0, 6)  # BOS and "seven"; the 3-gram convolution reaches the space after it.
    change = float(jnp.abs(out[0, seven] - out[1, seven]).max())
    if positions == "words":
        assert change < 1e-6
    else:
        assert change > 1e-3


@pytest.fixture(scope="module")
def text_model():
    model = text_encoder.TextConditioned(
        denoiser=UNet(
            out_channels=1,
            ch=32,
            channel_mult=(1, 2),
            num_res_blocks=1,
            attention_resolutions=(4,),
            num_head_channels=32,
        ),
        encoder=text_encoder.TextEncoder(max_length=16, width=32, depth=1, num_heads=2),
    )
    x = jnp.zeros((2, 8, 8, 1))
    params = model.init(jax.random.key(0), x, jnp.zeros((2,), jnp.int32))["params"]
    return model, params


def test_text_conditioned_params_hold_denoiser_and_encoder_and_none_is_the_empty_caption(
    text_model,
):
    model, params = text_model
    assert set(params) == {"denoiser", "encoder"}
    assert model.num_classes == 0 and model.text_length == 16
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    t = jnp.array([1, 5])
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: a + 0.05 * rng.standard_normal(a.shape, np.float32), params)
    empty = models.model_fn(model, params, tokens=text_encoder.null_tokens(2, 16))(x, t)
    chex.assert_trees_all_close(models.model_fn(model, params)(x, t), empty)
    seven = jnp.asarray(text_encoder.tokenize(["a seven", "a seven"], 16))
    assert not np.allclose(models.model_fn(model, params, tokens=seven)(x, t), empty, atol=1e-4)


def test_wrong_token_length_and_tokens_for_a_plain_model_fail_in_one_sentence(text_model):
    model, params = text_model
    with pytest.raises(ValueError, match=r"tokens must be \[B, 16\]"):
        models.model_fn(model, params, tokens=jnp.ones((2, 9), jnp.int32))(
            jnp.zeros((2, 8, 8, 1)), jnp.zeros((2,), jnp.int32)
        )
    with pytest.raises(ValueError, match="without text conditioning"):
        models.model_fn(model.denoiser, params["denoiser"], tokens=jnp.ones((2, 16), jnp.int32))


def test_guidance_with_the_empty_caption_at_w0_is_the_conditional_model_and_w_moves_it(text_model):
    from diffax import sampling

    model, params = text_model
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda a: a + 0.05 * rng.standard_normal(a.shape, np.float32), params)
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 1))
    t = jnp.array([3, 7])
    tokens = jnp.asarray(text_encoder.tokenize(["a written two", "the digit 5"], 16))
    conditional = lambda x, t, c: models.model_fn(model, params, tokens=c)(x, t)
    null = text_encoder.null_tokens(1, 16)[0]
    cond = models.model_fn(model, params, tokens=tokens)(x, t)
    guided = sampling.classifier_free_guidance(conditional, tokens, null, 0.0)(x, t)
    chex.assert_trees_all_close(guided, cond, atol=1e-5)
    uncond = models.model_fn(model, params)(x, t)
    w2 = sampling.classifier_free_guidance(conditional, tokens, null, 2.0)(x, t)
    chex.assert_trees_all_close(w2, 3.0 * cond - 2.0 * uncond, atol=1e-4)
