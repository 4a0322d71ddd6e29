"""The training state: one pytree holding everything a resumed run needs, updated purely."""

from typing import Any

import flax.struct
import jax
import jax.flatten_util
import jax.numpy as jnp
import optax


def tree_all_finite(tree: Any) -> jax.Array:
    """Returns a scalar bool: every element of every leaf is finite."""
    flat = jax.flatten_util.ravel_pytree(tree)[0]
    return jnp.all(jnp.isfinite(flat))


class TrainState(flax.struct.PyTreeNode):
    """Step, parameters, optimizer state, EMA parameters, RNG and timestep-sampler state."""

    step: jax.Array  # [] int32: optimizer updates applied (skipped ones included).
    params: Any
    opt_state: Any
    ema_params: tuple[Any, ...]  # One parameter tree per rate in ema_rates.
    rng: jax.Array  # [2] uint32 base key; each step folds in its step number.
    sampler_state: Any  # timestep_sampler state (checkpointed with the rest).
    skipped: jax.Array  # [] int32: non-finite updates skipped in total.
    consecutive_skips: jax.Array  # [] int32: non-finite updates skipped in a row.
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
    ema_rates: tuple[float, ...] = flax.struct.field(pytree_node=False)
    # Decay min(rate, (1 + n) / (10 + n)) at the n-th update (TensorFlow's num_updates rule): a
    # short run's EMA then forgets the initial weights (0.999 keeps 13.5% of them after 2000).
    ema_warmup: bool = flax.struct.field(pytree_node=False, default=False)

    @classmethod
    def create(
        cls,
        params: Any,
        tx: optax.GradientTransformation,
        ema_rates: tuple[float, ...],
        rng: jax.Array,
        sampler_state: Any = None,
        ema_warmup: bool = False,
    ) -> "TrainState":
        """Returns the state at step 0; the EMA trees start as copies of params."""
        return cls(
            step=jnp.array(0, jnp.int32),
            params=params,
            opt_state=tx.init(params),
            ema_params=tuple(params for _ in ema_rates),
            rng=rng,
            sampler_state=sampler_state,
            skipped=jnp.array(0, jnp.int32),
            consecutive_skips=jnp.array(0, jnp.int32),
            tx=tx,
            ema_rates=tuple(ema_rates),
            ema_warmup=ema_warmup,
        )

    def apply_gradients(self, grads: Any, **replace: Any) -> "TrainState":
        """Applies the optax update and moves the EMAs; a non-finite gradient changes nothing.

        Fields in `replace` (e.g. a new sampler_state) are taken only when the update is applied.
        """
        updates, new_opt_state = self.tx.update(grads, self.opt_state, self.params)
        new_params = optax.apply_updates(self.params, updates)
        n = self.step.astype(jnp.float32)
        rates = [
            jnp.minimum(rate, (1.0 + n) / (10.0 + n)) if self.ema_warmup else rate
            for rate in self.ema_rates
        ]
        new_ema = tuple(
            jax.tree.map(lambda e, p, r=rate: r * e + (1.0 - r) * p, ema, new_params)
            for rate, ema in zip(rates, self.ema_params, strict=True)
        )
        ok = tree_all_finite(grads)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        return self.replace(
            step=self.step + 1,
            params=keep(new_params, self.params),
            opt_state=keep(new_opt_state, self.opt_state),
            ema_params=keep(new_ema, self.ema_params),
            skipped=self.skipped + jnp.where(ok, 0, 1).astype(jnp.int32),
            consecutive_skips=jnp.where(ok, 0, self.consecutive_skips + 1).astype(jnp.int32),
            **{k: keep(v, getattr(self, k)) for k, v in replace.items()},
        )


def update_metrics(grads: Any, state: TrainState) -> dict:
    """Returns what every step logs of its update: the gradient norm and the skip counters of the
    updated state."""
    return {
        "grad_norm": optax.global_norm(grads),
        "skipped": state.skipped,
        "consecutive_skips": state.consecutive_skips,
    }


def step_metrics(loss: jax.Array, terms: dict, grads: Any, state: TrainState) -> dict:
    """Returns a denoiser step's logged metrics: mean loss, mse and vb, and `update_metrics`."""
    return {
        "loss": loss,
        "mse": jnp.mean(terms["mse"]),
        "vb": jnp.mean(terms["vb"]),
        **update_metrics(grads, state),
    }
