"""A noisy classifier's accuracy on the eval split at several noise levels."""

from typing import Any

import jax
import jax.numpy as jnp

from diffax import classifier_guidance, models, sharding
from diffax.evaluators import common


def evaluate(context: common.Context) -> dict[str, Any]:
    """Returns a noisy classifier's eval-split accuracy at t = 0, T/4, T/2, 3T/4 (test/accuracy_t*;
    x_t drawn once per t with a fixed key) and test/num_examples."""
    model, process, params = context.model, context.process, context.params
    num_timesteps = process.num_timesteps
    timesteps = [0, num_timesteps // 4, num_timesteps // 2, 3 * num_timesteps // 4]

    @jax.jit
    def correct(params, batch, key):
        out = {}
        for t_value in timesteps:
            t = jnp.full(batch["label"].shape, t_value, jnp.int32)
            noise = jax.random.normal(jax.random.fold_in(key, t_value), batch["image"].shape)
            logits_fn = models.model_fn(model, params)
            terms = classifier_guidance.classifier_loss(
                process, logits_fn, batch["image"], batch["label"], t, noise
            )
            out[t_value] = jnp.sum(terms["accuracy"] * batch["mask"])
        return out, jnp.sum(batch["mask"])

    totals, count = {t: 0.0 for t in timesteps}, 0.0
    for i, batch in enumerate(context.eval_batches()):
        batch = sharding.global_batch(batch, context.mesh)
        hits, n = correct(params, batch, jax.random.PRNGKey(i))
        hits, n = jax.device_get((hits, n))
        totals = {t: totals[t] + float(hits[t]) for t in timesteps}
        count += float(n)
    results = {f"test/accuracy_t{t}": totals[t] / count for t in timesteps}
    results["test/num_examples"] = int(count)
    return results
