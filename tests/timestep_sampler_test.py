"""Tests for diffax.timestep_sampler: uniform and loss-second-moment importance sampling."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import timestep_sampler as ts

_T, _K = 6, 3


def _warm_state(loss_of_t):
    """A state whose every history row holds K copies of loss_of_t(t), fed in two batches."""
    t = np.repeat(np.arange(_T), _K)  # every t, K times
    losses = np.asarray([loss_of_t(i) for i in t], np.float32)
    state = ts.loss_second_moment_init(_T, _K)
    state = ts.loss_second_moment_update(state, jnp.asarray(t[::2]), jnp.asarray(losses[::2]))
    return ts.loss_second_moment_update(state, jnp.asarray(t[1::2]), jnp.asarray(losses[1::2]))


def test_uniform_sample_has_unit_weights_and_covers_all_timesteps():
    t, weights = jax.jit(ts.uniform_sample, static_argnums=(1, 2))(jax.random.PRNGKey(0), 512, 10)
    chex.assert_shape([t, weights], (512,))
    assert t.dtype == jnp.int32 and weights.dtype == jnp.float32
    np.testing.assert_array_equal(weights, np.ones(512))
    assert set(np.asarray(t).tolist()) == set(range(10))


def test_init_state_is_an_empty_history():
    state = ts.loss_second_moment_init(_T, _K)
    chex.assert_shape(state.history, (_T, _K))
    chex.assert_shape(state.counts, (_T,))
    assert state.history.dtype == jnp.float32 and state.counts.dtype == jnp.int32
    assert len(jax.tree_util.tree_leaves(state)) == 2  # a plain pytree of arrays, checkpointable


def test_weights_are_uniform_until_every_timestep_has_k_losses():
    state = ts.loss_second_moment_init(_T, _K)
    np.testing.assert_allclose(ts.loss_second_moment_weights(state), np.full(_T, 1 / _T))
    # Fill all but one slot of the last timestep: still not warmed up.
    t = np.repeat(np.arange(_T), _K)[:-1]
    state = ts.loss_second_moment_update(state, jnp.asarray(t), jnp.ones(t.shape[0]) * 5.0)
    np.testing.assert_allclose(ts.loss_second_moment_weights(state), np.full(_T, 1 / _T))
    t, weights = ts.loss_second_moment_sample(state, jax.random.PRNGKey(0), 16)
    np.testing.assert_allclose(weights, np.ones(16), rtol=1e-6)


@pytest.mark.parametrize("uniform_prob", [0.001, 0.2])
def test_warm_weights_are_proportional_to_root_mean_square_loss(uniform_prob):
    state = _warm_state(lambda t: t + 1.0)
    probs = jax.jit(ts.loss_second_moment_weights)(state, uniform_prob)
    rms = np.arange(1, _T + 1, dtype=np.float64)  # sqrt(mean((t + 1)^2)) for constant losses
    expected = (1 - uniform_prob) * rms / rms.sum() + uniform_prob / _T
    np.testing.assert_allclose(probs, expected, rtol=1e-6)
    np.testing.assert_allclose(np.sum(probs), 1.0, rtol=1e-6)


def test_importance_weights_make_the_weighted_loss_unbiased():
    losses = np.array([0.3, 1.0, 2.5, 0.1, 4.0, 0.7])
    state = _warm_state(lambda t: losses[t])
    probs = np.asarray(ts.loss_second_moment_weights(state), np.float64)
    t, weights = ts.loss_second_moment_sample(state, jax.random.PRNGKey(1), 64)
    chex.assert_shape([t, weights], (64,))
    np.testing.assert_allclose(weights, 1 / (_T * probs[np.asarray(t)]), rtol=1e-5)
    # E_p[w(t) loss(t)] = sum_t p(t) loss(t) / (T p(t)) = uniform mean of losses, exactly.
    weight_of_t = 1 / (_T * probs)
    np.testing.assert_allclose(np.sum(probs * weight_of_t * losses), losses.mean(), rtol=1e-6)


def test_sampling_follows_the_weights():
    state = _warm_state(lambda t: 10.0 if t == 2 else 0.01)
    t, _ = jax.jit(ts.loss_second_moment_sample, static_argnums=2)(
        state, jax.random.PRNGKey(2), 4000
    )
    freq = np.bincount(np.asarray(t), minlength=_T) / 4000
    np.testing.assert_allclose(freq, ts.loss_second_moment_weights(state), atol=0.03)


def test_update_records_duplicates_in_order_and_drops_the_oldest():
    state = ts.loss_second_moment_init(_T, _K)
    update = jax.jit(ts.loss_second_moment_update)
    state = update(state, jnp.array([1, 1, 4, 1]), jnp.array([10.0, 20.0, 7.0, 30.0]))
    np.testing.assert_array_equal(state.counts, [0, 3, 0, 0, 1, 0])
    np.testing.assert_array_equal(state.history[1], [10.0, 20.0, 30.0])
    np.testing.assert_array_equal(state.history[4], [7.0, 0.0, 0.0])
    # A full row shifts: each new loss evicts the oldest one.
    state = update(state, jnp.array([1, 1, 4, 4]), jnp.array([40.0, 50.0, 8.0, 9.0]))
    np.testing.assert_array_equal(state.counts, [0, 3, 0, 0, 3, 0])
    np.testing.assert_array_equal(state.history[1], [30.0, 40.0, 50.0])
    np.testing.assert_array_equal(state.history[4], [7.0, 8.0, 9.0])
    np.testing.assert_array_equal(state.history[0], np.zeros(_K))
