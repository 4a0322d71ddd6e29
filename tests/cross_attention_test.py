"""Tests for diffax.models.cross_attention and the U-Net / DiT with a context."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from diffax.models import cross_attention, dit
from diffax.models.unet import UNet

BATCH, LENGTH, WIDTH = 2, 6, 16
MASK = jnp.array([[True, True, True, False, False, False], [True] * 5 + [False]])  # [B, L]


def _context(seed=0):
    return jax.random.normal(jax.random.key(seed), (BATCH, LENGTH, WIDTH))  # [B, L, D]


def _with_new_padding(context, seed=7):
    """Returns context with every masked position replaced by other values."""
    other = 100.0 * jax.random.normal(jax.random.key(seed), context.shape)
    return jnp.where(MASK[..., None], context, other)


def _perturb(params, scale=0.05):
    """Adds noise to every leaf, so zero-initialised projections stop hiding the network."""
    rng = np.random.default_rng(0)
    return jax.tree.map(
        lambda a: np.asarray(a) + scale * rng.standard_normal(a.shape, np.float32), params
    )


def test_masked_attention_matches_softmax_over_the_valid_keys_only():
    q, k, v = (jax.random.normal(jax.random.key(i), (BATCH, 4, 2, 8)) for i in range(3))
    k, v = (
        jnp.pad(k, ((0, 0), (0, 2), (0, 0), (0, 0))),
        jnp.pad(v, ((0, 0), (0, 2), (0, 0), (0, 0))),
    )
    mask = MASK[:, :6]
    out = cross_attention.masked_attention(q, k, v, mask)
    for b in range(BATCH):
        valid = np.asarray(mask[b])
        kb, vb = np.asarray(k[b])[valid], np.asarray(v[b])[valid]  # [n, heads, d]
        logits = np.einsum("qhd,khd->hqk", np.asarray(q[b]), kb) / np.sqrt(8)
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        expected = np.einsum("hqk,khd->qhd", weights, vb)
        np.testing.assert_allclose(out[b], expected, rtol=1e-5, atol=1e-5)


def test_masked_attention_with_no_valid_key_stays_finite():
    q, k, v = (jax.random.normal(jax.random.key(i), (1, 3, 1, 4)) for i in range(3))
    out = cross_attention.masked_attention(q, k, v, jnp.zeros((1, 3), bool))
    chex.assert_tree_all_finite(out)


def test_spatial_transformer_is_identity_at_init_and_ignores_padding_after_training():
    block = cross_attention.SpatialTransformer(num_head_channels=16)
    x = jax.random.normal(jax.random.key(3), (BATCH, 4, 4, 32))
    params = block.init(jax.random.key(0), x, _context(), MASK)["params"]
    chex.assert_trees_all_close(block.apply({"params": params}, x, _context(), MASK), x)
    trained = {"params": _perturb(params)}
    out = block.apply(trained, x, _context(), MASK)
    assert not np.allclose(out, x)  # The perturbed block does something...
    padded = block.apply(trained, x, _with_new_padding(_context()), MASK)
    chex.assert_trees_all_close(out, padded, atol=1e-5)  # ...but never reads masked tokens.


def _small_unet(**kwargs):
    """Returns a two-level U-Net with a text block at 4x4 and in the middle."""
    return UNet(
        out_channels=2,
        ch=32,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(4,),
        num_head_channels=32,
        **kwargs,
    )


def test_unet_with_context_has_output_shape_and_ignores_masked_tokens():
    model = _small_unet()
    x = jax.random.normal(jax.random.key(1), (BATCH, 8, 8, 1))
    t = jnp.array([3, 400])
    params = model.init(jax.random.key(0), x, t, context=_context(), context_mask=MASK)["params"]
    assert "cross_attn" in params["mid_attn"]
    apply = jax.jit(lambda p, c: model.apply({"params": p}, x, t, context=c, context_mask=MASK))
    params = _perturb(params)
    out = apply(params, _context())
    chex.assert_shape(out, (BATCH, 8, 8, 2))
    chex.assert_trees_all_close(out, apply(params, _with_new_padding(_context())), atol=1e-5)
    assert not np.allclose(out, apply(params, _context(seed=1)), atol=1e-4)  # It reads context.


def test_dit_block_with_cross_attention_is_identity_at_init_and_ignores_masked_tokens():
    model = dit.DiT(out_channels=2, patch_size=2, hidden_size=32, depth=2, num_heads=2)
    x = jax.random.normal(jax.random.key(1), (BATCH, 8, 8, 1))
    t = jnp.array([3, 400])
    params = model.init(jax.random.key(0), x, t, context=_context(), context_mask=MASK)["params"]
    block = dit.DiTBlock(num_heads=2)
    tokens = jax.random.normal(jax.random.key(2), (BATCH, 16, 32))
    c = jax.random.normal(jax.random.key(3), (BATCH, 32))
    chex.assert_trees_all_close(
        block.apply({"params": params["block_0"]}, tokens, c, _context(), MASK), tokens
    )
    params = _perturb(params)
    apply = jax.jit(lambda p, ctx: model.apply({"params": p}, x, t, context=ctx, context_mask=MASK))
    out = apply(params, _context())
    chex.assert_shape(out, (BATCH, 8, 8, 2))
    chex.assert_trees_all_close(out, apply(params, _with_new_padding(_context())), atol=1e-5)
    assert not np.allclose(out, apply(params, _context(seed=1)), atol=1e-4)


def test_pooled_context_is_the_mean_of_the_valid_tokens_and_zero_without_any():
    context = _context()
    pooled = cross_attention.pooled_context(context, MASK)
    want = [np.mean(np.asarray(context[b])[np.asarray(MASK[b])], axis=0) for b in range(BATCH)]
    np.testing.assert_allclose(pooled, np.stack(want), rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(
        cross_attention.pooled_context(_with_new_padding(context), MASK), pooled
    )
    none = jnp.zeros_like(MASK)
    np.testing.assert_array_equal(cross_attention.pooled_context(context, none), 0.0)


def _pooling_models():
    unet_model = _small_unet(pool_context=True)
    dit_model = dit.DiT(
        out_channels=2, patch_size=2, hidden_size=32, depth=2, num_heads=2, pool_context=True
    )
    return unet_model, dit_model


def test_pooled_context_reaches_the_timestep_embedding_and_ignores_masked_tokens():
    x = jax.random.normal(jax.random.key(1), (BATCH, 8, 8, 1))
    t = jnp.array([3, 400])
    for model in _pooling_models():
        params = model.init(jax.random.key(0), x, t, context=_context(), context_mask=MASK)
        params = _perturb(params["params"])
        assert "context_embed" in params
        apply = jax.jit(
            lambda p, c, m=model: m.apply({"params": p}, x, t, context=c, context_mask=MASK)
        )
        out = apply(params, _context())
        chex.assert_trees_all_close(out, apply(params, _with_new_padding(_context())), atol=1e-5)
        # Only the pooled path left: zero every cross-attention output; the context still counts.
        alone = jax.tree_util.tree_map_with_path(
            lambda path, a: a * 0 if "cross_attn" in jax.tree_util.keystr(path) else a, params
        )
        assert not np.allclose(apply(alone, _context()), apply(alone, _context(seed=1)), atol=1e-4)
        no_pool = dict(alone, context_embed=jax.tree.map(jnp.zeros_like, alone["context_embed"]))
        chex.assert_trees_all_close(
            apply(no_pool, _context()), apply(no_pool, _context(seed=1)), atol=1e-5
        )


def test_a_per_query_mask_is_each_query_with_its_own_key_mask():
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 5, 2, 8)) for i in range(3))
    mask = jax.random.bernoulli(jax.random.key(3), 0.6, (2, 5, 5)).at[:, :, 0].set(True)
    out = cross_attention.masked_attention(q, k, v, mask)
    for i in range(5):
        one = cross_attention.masked_attention(q[:, i : i + 1], k, v, mask[:, i])
        chex.assert_trees_all_close(out[:, i : i + 1], one, atol=1e-6)


def test_rotary_scores_depend_only_on_the_offset_of_query_and_key():
    q, k = (jax.random.normal(jax.random.key(i), (1, 1, 2, 16)) for i in range(2))

    def score(p_q: int, p_k: int) -> jax.Array:
        at = lambda x, p: jnp.zeros((1, 12, 2, 16)).at[:, p].set(x[:, 0])  # noqa: E731
        rq, rk = cross_attention.rotate(at(q, p_q)), cross_attention.rotate(at(k, p_k))
        return jnp.sum(rq[:, p_q] * rk[:, p_k], axis=-1)

    chex.assert_trees_all_close(score(2, 5), score(6, 9), atol=1e-5)
    chex.assert_trees_all_close(score(0, 0), jnp.sum(q * k, axis=-1)[:, 0], atol=1e-5)
    assert float(jnp.abs(score(2, 5) - score(2, 7)).max()) > 1e-3
