"""Bits/dim of the eval split by the probability-flow ODE (Song et al. 2021, sec. D.2)."""

from typing import Any

import jax
import jax.numpy as jnp

from diffax import diffusion, models, ode_likelihood, sharding
from diffax.evaluators import common


def evaluate(context: common.Context) -> dict[str, Any]:
    """Returns test/ode_bpd (see `evaluate_ode_bpd`)."""
    return {f"test/{k}": v for k, v in evaluate_ode_bpd(*context.args).items()}


def evaluate_ode_bpd(config, model, process, mesh, params) -> dict:
    """Returns the eval split's probability-flow ODE bits/dim (Song et al. 2021, sec. D.2) with
    uniform dequantization: adaptive Dopri5 (diffrax) at eval.ode_tolerance, exact or Hutchinson
    divergence, unconditional (the null class for a class-conditional model)."""
    ev = config.eval
    num_classes = getattr(model, "num_classes", 0)
    options = dict(
        num_levels=config.data.num_levels,
        divergence=ev.ode_divergence,
        rtol=ev.ode_tolerance,
        atol=ev.ode_tolerance,
    )

    @jax.jit
    def sums(params, batch, key):
        # The solver runs one example at a time (batch 1): one null label serves them all.
        labels = jnp.full((1,), num_classes, jnp.int32) if num_classes else None
        if isinstance(process, diffusion.GaussianDiffusion):
            model_fn = models.model_fn(model, params, labels)
            out = ode_likelihood.discrete_ode_bpd(process, model_fn, batch["image"], key, **options)
        else:
            model_fn = models.model_fn(model, process.model_params(params), labels)
            gamma_fn, time_fn = ode_likelihood.continuous_schedule(
                process.gamma_fn(params), process.gamma_range
            )
            out = ode_likelihood.ode_bpd(
                model_fn,
                batch["image"],
                key,
                gamma_fn=gamma_fn,
                model_time_fn=time_fn,
                mean_type=process.mean_type,
                **options,
            )
        mask = batch["mask"]
        return jnp.sum(out["bpd"] * mask), jnp.sum(mask), jnp.sum((1 - out["ok"]) * mask)

    data = common.eval_batches(config)
    total, count, failed = 0.0, 0.0, 0.0
    for i, batch in enumerate(data):
        out = sums(params, sharding.global_batch(batch, mesh), jax.random.PRNGKey(1000 + i))
        b, n, f = (float(v) for v in jax.device_get(out))
        total, count, failed = total + b, count + n, failed + f
    if failed:
        raise FloatingPointError(
            f"The PF-ODE solver hit its step limit on {int(failed)} examples; raise "
            f"eval.ode_tolerance={config.eval.ode_tolerance} or check the model."
        )
    return {"ode_bpd": total / count}
