"""Tests of the train state: EMA closed form, non-finite updates skipped and counted."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffax.train_state import TrainState


def _state(rates=(0.9, 0.5)):
    params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
    return TrainState.create(params, optax.sgd(0.1), rates, jax.random.PRNGKey(0), jnp.zeros(2))


def test_ema_follows_the_recurrence_for_each_rate():
    state = _state()
    grads = {"w": jnp.array([1.0, 1.0]), "b": jnp.array(2.0)}
    expected_params = {"w": np.array([1.0, -2.0]), "b": np.array(0.5)}
    expected_ema = [dict(expected_params), dict(expected_params)]
    for _ in range(3):
        state = state.apply_gradients(grads)
        expected_params = {k: v - 0.1 * np.asarray(grads[k]) for k, v in expected_params.items()}
        for ema, rate in zip(expected_ema, (0.9, 0.5), strict=True):
            for k in ema:
                ema[k] = rate * ema[k] + (1 - rate) * expected_params[k]
    assert int(state.step) == 3
    np.testing.assert_allclose(state.params["w"], expected_params["w"], rtol=1e-6)
    for got, want in zip(state.ema_params, expected_ema, strict=True):
        np.testing.assert_allclose(got["w"], want["w"], rtol=1e-6)
        np.testing.assert_allclose(got["b"], want["b"], rtol=1e-6)


def test_non_finite_gradient_changes_nothing_and_is_counted():
    state = _state()
    good = {"w": jnp.array([1.0, 1.0]), "b": jnp.array(1.0)}
    bad = {"w": jnp.array([jnp.nan, 1.0]), "b": jnp.array(1.0)}
    state = state.apply_gradients(good)
    before = jax.tree.map(np.asarray, (state.params, state.opt_state, state.ema_params))
    state = jax.jit(lambda s, g: s.apply_gradients(g, sampler_state=jnp.ones(2)))(state, bad)
    after = jax.tree.map(np.asarray, (state.params, state.opt_state, state.ema_params))
    jax.tree.map(np.testing.assert_array_equal, before, after)
    np.testing.assert_array_equal(state.sampler_state, 0.0)  # Dropped with a skipped update.
    assert (int(state.skipped), int(state.consecutive_skips), int(state.step)) == (1, 1, 2)
    state = state.apply_gradients(bad)
    assert int(state.consecutive_skips) == 2
    state = state.apply_gradients(good)
    assert (int(state.skipped), int(state.consecutive_skips)) == (2, 0)


def test_ema_warmup_uses_the_num_updates_decay_and_reaches_the_rate():
    params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
    state = TrainState.create(
        params, optax.sgd(0.1), (0.9, 0.5), jax.random.PRNGKey(0), ema_warmup=True
    )
    grads = {"w": jnp.array([1.0, 1.0]), "b": jnp.array(2.0)}
    expected_params = {k: np.asarray(v) for k, v in params.items()}
    expected_ema = [dict(expected_params), dict(expected_params)]
    step = jax.jit(lambda s: s.apply_gradients(grads))
    for n in range(200):
        state = step(state)
        expected_params = {k: v - 0.1 * np.asarray(grads[k]) for k, v in expected_params.items()}
        for ema, rate in zip(expected_ema, (0.9, 0.5), strict=True):
            decay = min(rate, (1 + n) / (10 + n))  # 0.1 at the first update.
            for k in ema:
                ema[k] = decay * ema[k] + (1 - decay) * expected_params[k]
    for got, want in zip(state.ema_params, expected_ema, strict=True):
        np.testing.assert_allclose(got["w"], want["w"], rtol=1e-5)


def test_finite_check_is_one_reduction_not_copied_into_each_update():
    # The old per-leaf test (an and-chain over the leaves) was fused into every select of the
    # update, so the compiled step grew with leaves x consumers: 19 s of the digits step's compile.
    params = {f"w{i}": jnp.full((8, 4 + i), 0.1) for i in range(24)}
    state = TrainState.create(params, optax.adam(0.1), (0.9,), jax.random.PRNGKey(0))
    hlo = jax.jit(lambda s, g: s.apply_gradients(g)).lower(state, params).compile().as_text()
    assert hlo.count(" and(") < 24
    bad = dict(params, w23=params["w23"].at[7, 3].set(jnp.inf))
    assert int(state.apply_gradients(bad).skipped) == 1
