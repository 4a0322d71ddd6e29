"""Timestep samplers: uniform, and importance sampling by the loss's second moment
(Nichol & Dhariwal 2021, sec. 3.3). Timesteps are int32 in 0..T-1; each sample comes with an
importance weight 1 / (T p(t)) so that mean(weight * loss) is unbiased for the uniform mean.
"""

from __future__ import annotations

import flax.struct as struct
import jax
import jax.numpy as jnp

# config.diffusion.timestep_sampler values: how training draws t.
TIMESTEP_SAMPLERS = ("uniform", "loss_second_moment")


class LossSecondMomentState(struct.PyTreeNode):
    """The last K losses seen at every timestep; a pytree of arrays, so it can be checkpointed."""

    history: jax.Array  # [T, K] float32, oldest first once a row is full
    counts: jax.Array  # [T] int32, how many of the K slots of each row are filled


def uniform_sample(
    key: jax.Array, batch_size: int, num_timesteps: int
) -> tuple[jax.Array, jax.Array]:
    """Returns (t int32 [B] uniform in 0..T-1, weights float32 [B] of ones)."""
    t = jax.random.randint(key, (batch_size,), 0, num_timesteps, dtype=jnp.int32)
    return t, jnp.ones((batch_size,), jnp.float32)


def loss_second_moment_init(
    num_timesteps: int, history_per_term: int = 10
) -> LossSecondMomentState:
    """Returns an empty state: history zeros [T, K], counts zeros [T]."""
    return LossSecondMomentState(
        history=jnp.zeros((num_timesteps, history_per_term), jnp.float32),
        counts=jnp.zeros((num_timesteps,), jnp.int32),
    )


def loss_second_moment_weights(
    state: LossSecondMomentState, uniform_prob: float = 0.001
) -> jax.Array:
    """Returns sampling probabilities [T]: uniform until every t has K losses, then
    sqrt(mean(loss^2)) normalized, mixed as (1 - uniform_prob) p + uniform_prob / T."""
    num_timesteps, history_per_term = state.history.shape
    uniform = jnp.full((num_timesteps,), 1.0 / num_timesteps, jnp.float32)
    rms = jnp.sqrt(jnp.mean(jnp.square(state.history), axis=-1))  # [T]
    # The max() guards the division when every recorded loss is zero (then rms is all 0).
    probs = rms / jnp.maximum(jnp.sum(rms), jnp.finfo(jnp.float32).tiny)
    probs = jnp.where(jnp.sum(rms) > 0, probs, uniform)
    probs = (1.0 - uniform_prob) * probs + uniform_prob / num_timesteps
    warmed_up = jnp.all(state.counts == history_per_term)
    return jnp.where(warmed_up, probs, uniform)


def loss_second_moment_sample(
    state: LossSecondMomentState, key: jax.Array, batch_size: int, uniform_prob: float = 0.001
) -> tuple[jax.Array, jax.Array]:
    """Returns (t int32 [B] drawn from the weights, importance weights 1 / (T p(t)) float32 [B])."""
    probs = loss_second_moment_weights(state, uniform_prob)  # [T]
    t = jax.random.categorical(key, jnp.log(probs), shape=(batch_size,)).astype(jnp.int32)
    weights = 1.0 / (probs.shape[0] * probs[t])
    return t, weights.astype(jnp.float32)


def loss_second_moment_update(
    state: LossSecondMomentState, t: jax.Array, losses: jax.Array
) -> LossSecondMomentState:
    """Returns the state with each (t[i], losses[i]) recorded in batch order; full rows drop
    their oldest loss, and repeated timesteps within a batch are each recorded."""
    history_per_term = state.history.shape[1]

    def record(carry, item):
        history, counts = carry
        step, loss = item
        row, count = history[step], counts[step]
        full = count == history_per_term
        shifted = jnp.concatenate([row[1:], loss[None]])  # drop the oldest, append at the end
        filled = row.at[jnp.minimum(count, history_per_term - 1)].set(loss)
        history = history.at[step].set(jnp.where(full, shifted, filled))
        counts = counts.at[step].set(jnp.minimum(count + 1, history_per_term))
        return (history, counts), None

    items = (t.astype(jnp.int32), losses.astype(jnp.float32))
    (history, counts), _ = jax.lax.scan(record, (state.history, state.counts), items)
    return LossSecondMomentState(history=history, counts=counts)
