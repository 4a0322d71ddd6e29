"""Evaluation of a trained model: test-split bits/dim by the full-chain bound, samples, metrics.

`evaluate_params` runs everything on a set of parameters and writes `eval_<step>.json`;
`evaluate_checkpoint` (--mode=eval) and `sample_checkpoint` (--mode=sample) restore the parameters
they need from the workdir's newest checkpoint first.
"""

import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from diffax import (
    build,
    checkpointing,
    diffusion,
    generate,
    images,
    input_pipeline,
    models,
    sharding,
    summaries,
    validation,
)


def eval_params(state: Any, config: ml_collections.ConfigDict) -> Any:
    """Returns the parameters eval and sampling use: the first EMA, or the raw ones."""
    return state.ema_params[0] if config.eval.use_ema and state.ema_params else state.params


def restore_eval_params(
    config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh
) -> tuple[Any, int]:
    """Returns (eval parameters, step) of the workdir's newest checkpoint; a clear error if none."""
    model = build.create_model(config)
    abstract, _ = build.abstract_state(config, model, build.create_optimizer(config), mesh)
    manager = checkpointing.create_manager(workdir, read_only=True)
    try:
        restored = checkpointing.restore(manager, abstract)
    finally:
        checkpointing.close(manager)
    if restored is None:
        raise FileNotFoundError(
            f"No checkpoint in {checkpointing.checkpoint_dir(workdir)}: train first with "
            "--mode=train, or point --workdir at a trained run."
        )
    state, step = restored
    return eval_params(state, config), step


def _bpd_sums(params, batch, key, *, model, process, num_levels, null_label):
    """Returns masked sums over a batch of the bound's terms (bits/dim), and the example count."""
    labels = batch["label"]
    if null_label is not None:
        labels = jnp.full_like(labels, null_label)
    out = diffusion.calc_bpd(
        process,
        models.model_fn(model, params, labels),
        batch["image"],
        key,
        clip_denoised=True,
        num_levels=num_levels,
    )
    mask = batch["mask"]
    return {
        "total_bpd": jnp.sum(out["total_bpd"] * mask),
        "prior_bpd": jnp.sum(out["prior_bpd"] * mask),
        "vb": jnp.sum(out["vb"] * mask[:, None], axis=0),  # [T]
        "count": jnp.sum(mask),
    }


def evaluate_bpd(config, model, process, mesh, params, conditional: bool = False) -> dict:
    """Returns test-split bits/dim (mean per example) by the full-chain variational bound.

    A class-conditional model is scored through its null class (p(x)) unless conditional=True.
    Sums stay on the devices and are fetched once, after the last batch.
    """
    num_classes = getattr(model, "num_classes", 0)
    null_label = num_classes if num_classes and not conditional else None
    bpd_sums = jax.jit(
        functools.partial(
            _bpd_sums,
            model=model,
            process=process,
            num_levels=config.data.num_levels,
            null_label=null_label,
        )
    )
    accumulate = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b), donate_argnums=(0,))
    local = sharding.per_process_batch_size(config.eval.batch_size, "eval.batch_size")
    data = input_pipeline.create_eval_iterator(
        config.data, local, num_examples=config.eval.num_bpd_examples
    )
    totals = None
    for i, batch in enumerate(data):
        out = bpd_sums(params, sharding.global_batch(batch, mesh), jax.random.PRNGKey(i))
        totals = out if totals is None else accumulate(totals, out)
    totals = jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float64), totals)
    n = totals["count"]
    return {
        "bpd": float(totals["total_bpd"] / n),
        "prior_bpd": float(totals["prior_bpd"] / n),
        "decoder_bpd": float(totals["vb"][0] / n),
        "num_examples": int(n),
    }


def save_samples(
    config: ml_collections.ConfigDict, workdir: str, name: str, samples: np.ndarray, labels=None
) -> str:
    """Writes the samples' grid and .npz into the workdir on process 0; returns the png path."""
    if jax.process_index() != 0:
        return os.path.join(workdir, name + ".png")
    columns = images.grid_columns(len(samples), build.num_classes(config))
    return images.save_samples(
        workdir, name, samples, config.data.num_levels, labels, columns=columns
    )


def _check_finite(figures: dict[str, float], step: int) -> None:
    """Raises FloatingPointError naming the non-finite figures: they are no result to report."""
    bad = sorted(name for name, value in figures.items() if not np.isfinite(value))
    if bad:
        raise FloatingPointError(
            f"Evaluation at step {step} gave non-finite {', '.join(bad)}; the checkpoint's "
            "parameters are not usable (no eval file was written)."
        )


def evaluate_params(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    model,
    process: diffusion.GaussianDiffusion,
    mesh: jax.sharding.Mesh,
    params: Any,
    step: int,
    writer=None,
) -> dict[str, Any]:
    """Computes bits/dim, samples and their quality for params; writes eval_<step>.json."""
    results: dict[str, Any] = {"step": step, "params": "ema" if config.eval.use_ema else "raw"}
    args = (config, model, process, mesh, params)
    results.update({f"test/{k}": v for k, v in evaluate_bpd(*args).items()})
    if build.num_classes(config) and config.eval.conditional_bpd:
        # p(x|y) for the true labels; test/bpd above is p(x) through the learned null class.
        results["test/bpd_conditional"] = evaluate_bpd(*args, conditional=True)["bpd"]
    _check_finite({k: v for k, v in results.items() if k.startswith("test/")}, step)
    generator = generate.Generator(config, model, process, mesh)
    samples = generator.generate(params, config.eval.num_samples, seed=step)
    if not np.all(np.isfinite(samples)):
        raise FloatingPointError(
            f"Sampling at step {step} gave non-finite images; the parameters are not usable."
        )
    labels = generator.labels(len(samples))
    if config.eval.quality_metrics:
        from diffax.metrics import quality

        results.update(
            quality.quality_metrics(
                config,
                samples,
                labels if build.num_classes(config) else None,
                workdir,
                functools.partial(input_pipeline.eval_split_images, config.data),
            )
        )
    results["samples_png"] = save_samples(
        config, workdir, f"eval_samples_{step:08d}", samples, labels
    )
    results["sampler"] = f"{config.eval.sampler}-{generator.num_steps}"
    results["sampler_nfe"] = generator.nfe  # Sequential model calls per batch.
    results["forward_passes_per_sample"] = generator.forward_passes_per_sample
    results["guidance_scale"] = config.eval.guidance_scale
    scalars = {k: v for k, v in results.items() if k.startswith(("test/", "samples/"))}
    _check_finite(scalars, step)
    summaries.write_scalars(writer, step, scalars)
    if jax.process_index() == 0:
        path = epath.Path(workdir) / f"eval_{step:08d}.json"
        path.write_text(json.dumps(results, indent=2))
        logging.info("Eval at step %d: %s (written to %s)", step, results, path)
    return results


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Restores the newest checkpoint's eval parameters and runs the full evaluation (eval mode)."""
    validation.validate_config(config)
    mesh = sharding.create_mesh(config.mesh.data, config.mesh.fsdp)
    params, step = restore_eval_params(config, workdir, mesh)
    return evaluate_params(
        config,
        workdir,
        model=build.create_model(config),
        process=build.create_process(config),
        mesh=mesh,
        params=params,
        step=step,
        writer=summaries.create_writer(workdir),
    )


def sample_checkpoint(
    config: ml_collections.ConfigDict, workdir: str, num_samples: int | None = None
) -> str:
    """Restores the newest checkpoint and writes num_samples samples as a PNG grid and .npz."""
    validation.validate_config(config)
    mesh = sharding.create_mesh(config.mesh.data, config.mesh.fsdp)
    params, step = restore_eval_params(config, workdir, mesh)
    num_samples = num_samples or config.eval.num_samples
    model, process = build.create_model(config), build.create_process(config)
    generator = generate.Generator(config, model, process, mesh, num_samples=num_samples)
    samples = generator.generate(params, num_samples, seed=step + 1)
    path = save_samples(
        config,
        workdir,
        f"samples_{step:08d}_n{num_samples}",
        samples,
        generator.labels(num_samples),
    )
    logging.info("Wrote %d samples to %s", num_samples, path)
    return path
