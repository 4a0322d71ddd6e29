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
from diffax.datasets import captions
from diffax.models import text_encoder


def eval_params(state: Any, config: ml_collections.ConfigDict) -> Any:
    """Returns the parameters eval and sampling use: the first EMA, or the raw ones (of an
    autoencoder GAN, the autoencoder's alone)."""
    params = state.ema_params[0] if config.eval.use_ema and state.ema_params else state.params
    return build.autoencoder_params(config, params)


def restore_eval_params(
    config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh
) -> tuple[Any, int]:
    """Returns (eval parameters, step) of the workdir's newest checkpoint; a clear error if none."""
    model = build.create_model(config)
    if not os.path.isdir(checkpointing.checkpoint_dir(workdir)):
        raise FileNotFoundError(
            f"No checkpoint in {checkpointing.checkpoint_dir(workdir)}: train first with "
            "--mode=train, or point --workdir at a trained run."
        )
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


def workdir_config(workdir: str) -> dict | None:
    """Returns the config saved with a workdir's newest checkpoint (a plain dict), None if none."""
    if not os.path.isdir(checkpointing.checkpoint_dir(workdir)):
        return None
    manager = checkpointing.create_manager(workdir, read_only=True)
    try:
        return checkpointing.saved_config(manager)
    finally:
        checkpointing.close(manager)


def restore_classifier(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
) -> tuple[Any, Any]:
    """Returns (noisy classifier model, its eval parameters) from eval.classifier_workdir.

    The classifier's own config is read from its checkpoint; its diffusion process must be the
    sampled model's (the guidance is evaluated at the same timesteps).
    """
    workdir = config.eval.classifier_workdir
    saved = workdir_config(workdir)
    if saved is None:
        raise FileNotFoundError(
            f"eval.classifier_workdir={workdir!r} holds no checkpoint: train a noisy classifier "
            "there first (e.g. --config=configs/digits_classifier.py)."
        )
    classifier_config = ml_collections.ConfigDict(saved)
    if not build.is_classifier(classifier_config):
        raise ValueError(
            f"eval.classifier_workdir={workdir!r} holds a {classifier_config.model.name!r} "
            f"model, not one of {', '.join(build.CLASSIFIERS)}."
        )
    ours, theirs = config.diffusion, classifier_config.diffusion
    for field in ("schedule", "num_timesteps"):
        if ours[field] != theirs[field]:
            raise ValueError(
                f"eval.classifier_workdir={workdir!r}: the classifier was trained with "
                f"diffusion.{field}={theirs[field]!r}, this model with {ours[field]!r}."
            )
    params, _ = restore_eval_params(classifier_config, workdir, mesh)
    return build.create_model(classifier_config), params


def _guidance_classifier(config: ml_collections.ConfigDict, mesh) -> tuple[Any, Any] | None:
    """Returns (classifier model, params) when eval.classifier_scale asks for guidance."""
    return restore_classifier(config, mesh) if config.eval.classifier_scale else None


def evaluate_classifier(
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
    """Writes eval_<step>.json with a noisy classifier's eval-split accuracy at t = 0, T/4, T/2,
    3T/4 (x_t drawn once per t with a fixed key)."""
    from diffax import classifier

    num_timesteps = process.num_timesteps
    timesteps = [0, num_timesteps // 4, num_timesteps // 2, 3 * num_timesteps // 4]

    @jax.jit
    def correct(params, batch, key):
        out = {}
        for t_value in timesteps:
            t = jnp.full(batch["label"].shape, t_value, jnp.int32)
            noise = jax.random.normal(jax.random.fold_in(key, t_value), batch["image"].shape)
            logits_fn = models.model_fn(model, params)
            terms = classifier.classifier_loss(
                process, logits_fn, batch["image"], batch["label"], t, noise
            )
            out[t_value] = jnp.sum(terms["accuracy"] * batch["mask"])
        return out, jnp.sum(batch["mask"])

    local = sharding.per_process_batch_size(config.eval.batch_size, "eval.batch_size")
    totals, count = {t: 0.0 for t in timesteps}, 0.0
    data = input_pipeline.create_eval_iterator(
        config.data, local, num_examples=config.eval.num_bpd_examples
    )
    for i, batch in enumerate(data):
        hits, n = correct(params, sharding.global_batch(batch, mesh), jax.random.PRNGKey(i))
        hits, n = jax.device_get((hits, n))
        totals = {t: totals[t] + float(hits[t]) for t in timesteps}
        count += float(n)
    results: dict[str, Any] = {"step": step, "params": "ema" if config.eval.use_ema else "raw"}
    results.update({f"test/accuracy_t{t}": totals[t] / count for t in timesteps})
    results["test/num_examples"] = int(count)
    scalars = {k: v for k, v in results.items() if k.startswith("test/")}
    _check_finite(scalars, step)
    summaries.write_scalars(writer, step, scalars)
    if jax.process_index() == 0:
        path = epath.Path(workdir) / f"eval_{step:08d}.json"
        path.write_text(json.dumps(results, indent=2))
        logging.info("Eval at step %d: %s (written to %s)", step, results, path)
    return results


def evaluate_autoencoder(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    model,
    process,
    mesh: jax.sharding.Mesh,
    params: Any,
    step: int,
    writer=None,
) -> dict[str, Any]:
    """Writes eval_<step>.json with the eval split's reconstruction PSNR (dB, from the posterior
    mean), L1/L2 and KL per example, and the latent scale 1 / std of the posterior means, which
    latent diffusion multiplies the latents by (also written to WORKDIR/latent_stats.json, with
    each channel's mean and 1 / std as channel_shift and channel_scale); and a
    grid of originals (odd rows) over their reconstructions (even rows)."""
    from diffax import autoencoder

    del process

    @jax.jit
    def sums(params, batch):
        x = batch["image"]
        mean, logvar = model.apply({"params": params}, x, method=model.encode)
        x_hat = model.apply({"params": params}, mean, method=model.decode)
        mask = batch["mask"]
        rec = autoencoder.reconstruction_loss(x, x_hat, config.training.reconstruction_loss)
        out = {
            "psnr": jnp.sum(autoencoder.psnr(x, x_hat) * mask),
            "rec": jnp.sum(rec * mask),
            "kl": jnp.sum(autoencoder.kl_to_standard_normal(mean, logvar) * mask),
            "z_sum": jnp.sum(mean * mask[:, None, None, None]),
            "z_sq": jnp.sum(jnp.square(mean) * mask[:, None, None, None]),
            # Per channel [z]: latent.normalization="per_channel" (diffax.latents).
            "zc_sum": jnp.sum(mean * mask[:, None, None, None], axis=(0, 1, 2)),
            "zc_sq": jnp.sum(jnp.square(mean) * mask[:, None, None, None], axis=(0, 1, 2)),
            "count": jnp.sum(mask),
        }
        return out, x_hat

    local = sharding.per_process_batch_size(config.eval.batch_size, "eval.batch_size")
    data = input_pipeline.create_eval_iterator(
        config.data, local, num_examples=config.eval.num_bpd_examples
    )
    totals, shown = None, None
    for batch in data:
        out, x_hat = sums(params, sharding.global_batch(batch, mesh))
        out = jax.tree.map(lambda v: np.asarray(jax.device_get(v), np.float64), out)
        totals = out if totals is None else jax.tree.map(np.add, totals, out)
        if shown is None:
            shown = (batch["image"][:50], sharding.to_host(x_hat)[:50])
    n = totals["count"]
    latent_size = n * np.prod(
        model.apply(
            {"params": params}, jnp.zeros((1, *build.image_shape(config))), method=model.encode
        )[0].shape[1:]
    )
    z_mean = totals["z_sum"] / latent_size
    z_std = float(np.sqrt(totals["z_sq"] / latent_size - z_mean**2))
    channel_size = latent_size / totals["zc_sum"].shape[0]
    channel_mean = totals["zc_sum"] / channel_size
    channel_std = np.sqrt(np.maximum(totals["zc_sq"] / channel_size - channel_mean**2, 0.0))
    results: dict[str, Any] = {"step": step, "params": "ema" if config.eval.use_ema else "raw"}
    results.update(
        {
            "test/psnr": float(totals["psnr"] / n),
            f"test/{config.training.reconstruction_loss}": float(totals["rec"] / n),
            "test/kl": float(totals["kl"] / n),
            "test/num_examples": int(n),
            "latent/scale": 1.0 / z_std,
            "latent/mean": float(z_mean),
        }
    )
    _check_finite({k: v for k, v in results.items() if k.startswith(("test/", "latent/"))}, step)
    summaries.write_scalars(writer, step, {k: v for k, v in results.items() if "/" in k})
    if jax.process_index() == 0:
        originals, reconstructions = shown
        pairs = np.stack([originals, reconstructions], axis=1)  # [n, 2, H, W, C]
        rows = [pairs[i : i + 10].transpose(1, 0, 2, 3, 4) for i in range(0, len(pairs), 10)]
        grid = np.concatenate([r.reshape(-1, *r.shape[2:]) for r in rows])
        results["reconstructions_png"] = os.path.join(
            workdir, f"eval_reconstructions_{step:08d}.png"
        )
        images.save_png(
            results["reconstructions_png"],
            images.image_grid(grid, config.data.num_levels, min(10, len(originals))),
        )
        stats = {
            "step": step,
            "scale": results["latent/scale"],
            "mean": results["latent/mean"],
            "channel_shift": [float(v) for v in channel_mean],
            "channel_scale": [float(1.0 / v) for v in channel_std],
        }
        (epath.Path(workdir) / "latent_stats.json").write_text(json.dumps(stats, indent=2))
        path = epath.Path(workdir) / f"eval_{step:08d}.json"
        path.write_text(json.dumps(results, indent=2))
        logging.info("Eval at step %d: %s (written to %s)", step, results, path)
    return results


def _bpd_sums(
    params,
    batch,
    key,
    *,
    model,
    process,
    num_levels,
    null_label,
    t_samples=1,
    clip_denoised=True,
    conditioning_fn=None,
):
    """Returns masked sums over a batch of the bound's terms (bits/dim), and the example count.

    conditioning_fn(images, key) gives the backbone's further inputs (super-resolution: the
    bound is then of the image given its low-resolution copy)."""
    labels = batch["label"]
    cond = None
    if conditioning_fn is not None:
        cond = conditioning_fn(batch["image"], jax.random.fold_in(key, 1))
    if null_label is not None:
        labels = jnp.full_like(labels, null_label)
    mask = batch["mask"]
    if not isinstance(process, diffusion.GaussianDiffusion):  # Continuous: VDM's bound.
        from diffax import continuous

        out = continuous.bound_bpd(
            process.gamma_fn(params),
            models.model_fn(model, process.model_params(params), labels),
            batch["image"],
            key,
            t_samples,
            num_levels,
            mean_type=process.mean_type,
            gamma_range=process.gamma_range,
        )
        return {
            "total_bpd": jnp.sum(out["total_bpd"] * mask),
            "prior_bpd": jnp.sum(out["prior_bpd"] * mask),
            "decoder_bpd": jnp.sum(out["recon_bpd"] * mask),
            "diffusion_bpd": jnp.sum(out["diffusion_bpd"] * mask),
            "count": jnp.sum(mask),
        }
    out = diffusion.calc_bpd(
        process,
        models.model_fn(model, params, labels, conditioning=cond),
        batch["image"],
        key,
        clip_denoised=clip_denoised,
        num_levels=num_levels,
    )
    return {
        "total_bpd": jnp.sum(out["total_bpd"] * mask),
        "prior_bpd": jnp.sum(out["prior_bpd"] * mask),
        "decoder_bpd": jnp.sum(out["vb"][:, 0] * mask),  # The t = 0 term: the decoder's NLL.
        "count": jnp.sum(mask),
    }


def _load_latent(config: ml_collections.ConfigDict, mesh):
    """Returns the config's frozen autoencoder (diffax.latents), or None for pixel diffusion."""
    if not build.is_latent(config):
        return None
    from diffax import latents

    return latents.load(config, mesh)


def evaluate_latent_bpd(config, model, process, mesh, params, *, latent, workdir) -> dict:
    """Returns {"test/latent_bpd", "test/latent_prior_bpd", "test/latent_decoder_bpd",
    "test/latent_num_examples"}: the full-chain bound on the eval split's cached latents.

    The data are z = scale * posterior mean, continuous: the bound is on -log2 of a density
    (its t = 0 term a Gaussian density, not a discretized decoder), per latent dimension. It can
    be negative, shifts by -log2(scale) per dimension with the scale, and is no image bits/dim
    (it leaves out the autoencoder's p(x | z)).
    """
    from diffax import latent_cache

    cached = latent_cache.build_or_load(
        latent,
        config.data.eval_split,
        latent_cache.cache_dir(config, workdir),
        config.eval.batch_size,
    )
    local = sharding.per_process_batch_size(config.eval.batch_size, "eval.batch_size")
    batches = latent_cache.eval_iterator(
        cached, local, latent.scale, num_examples=config.eval.num_bpd_examples, shift=latent.shift
    )
    out = evaluate_bpd(config, model, process, mesh, params, batches=batches)
    return {f"test/latent_{k}": v for k, v in out.items()}


def evaluate_bpd(
    config, model, process, mesh, params, conditional: bool = False, batches=None
) -> dict:
    """Returns test-split bits/dim (mean per example) by the full-chain variational bound.

    A class-conditional model is scored through its null class (p(x)) unless conditional=True.
    Sums stay on the devices and are fetched once, after the last batch. batches: eval batches
    to score instead of data.eval_split's images (cached latents: then the bound ends in a
    Gaussian density, build.data_levels, and pred_x0 is not clipped).
    """
    num_classes = getattr(model, "num_classes", 0)
    null_label = num_classes if num_classes and not conditional else None
    bpd_sums = jax.jit(
        functools.partial(
            _bpd_sums,
            model=model,
            process=process,
            null_label=null_label,
            t_samples=config.eval.bpd_t_samples,
            conditioning_fn=build.conditioning_fn(config, train=False),
            num_levels=build.data_levels(config),
            clip_denoised=not build.is_latent(config),
        )
    )
    accumulate = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b), donate_argnums=(0,))
    local = sharding.per_process_batch_size(config.eval.batch_size, "eval.batch_size")
    data = (
        batches
        if batches is not None
        else input_pipeline.create_eval_iterator(
            config.data, local, num_examples=config.eval.num_bpd_examples
        )
    )
    totals = None
    for i, batch in enumerate(data):
        out = bpd_sums(params, sharding.global_batch(batch, mesh), jax.random.PRNGKey(i))
        totals = out if totals is None else accumulate(totals, out)
    totals = jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float64), totals)
    n = totals.pop("count")
    results = {
        "bpd": float(totals.pop("total_bpd") / n),
        **{name: float(value / n) for name, value in totals.items()},
    }
    return {**results, "num_examples": int(n)}


def evaluate_ode_bpd(config, model, process, mesh, params) -> dict:
    """Returns the eval split's probability-flow ODE bits/dim (Song et al. 2021, sec. D.2) with
    uniform dequantization: adaptive Dopri5 (diffrax) at eval.ode_tolerance, exact or Hutchinson
    divergence, unconditional (the null class for a class-conditional model)."""
    from diffax import ode_likelihood

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

    local = sharding.per_process_batch_size(config.eval.batch_size, "eval.batch_size")
    data = input_pipeline.create_eval_iterator(
        config.data, local, num_examples=config.eval.num_bpd_examples
    )
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


def save_samples(
    config: ml_collections.ConfigDict,
    workdir: str,
    name: str,
    samples: np.ndarray,
    labels=None,
    columns: int | None = None,
) -> str:
    """Writes the samples' grid and .npz into the workdir on process 0; returns the png path."""
    if jax.process_index() != 0:
        return os.path.join(workdir, name + ".png")
    classes = build.num_classes(config)
    if build.is_text_conditioned(config) and labels is not None:
        classes = config.data.num_classes  # Held-out prompts cycle through the digits.
    columns = columns or images.grid_columns(len(samples), classes)
    return images.save_samples(
        workdir, name, samples, config.data.num_levels, labels, columns=columns
    )


def save_sample_grid(
    config: ml_collections.ConfigDict,
    workdir: str,
    name: str,
    generator: generate.Generator,
    params: Any,
    seed: int,
    num_samples: int,
    latent=None,
) -> str:
    """Draws and writes a grid of num_samples samples (training's periodic grids), decoded by the
    latent autoencoder when there is one; an image-conditioned model shows 10 eval-split inputs,
    its outputs and the originals instead."""
    if build.is_super_resolution(config) or build.is_inpainting(config):
        from diffax import image_tasks

        _, _, figures = image_tasks.run_on_eval_split(config, generator, params, seed, 10)
        return save_samples(config, workdir, name, figures["grid"], columns=figures["grid_columns"])
    samples = generator.generate(params, num_samples, seed)
    if latent is not None:
        samples = latent.decode(samples, generator.batch_size)
    return save_samples(config, workdir, name, samples)


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
    latent=None,
) -> dict[str, Any]:
    """Computes bits/dim, samples and their quality for params; writes eval_<step>.json.

    With latent (a diffax.latents.LatentSpace: latent diffusion) the bound is on the eval split's
    cached latents, reported as test/latent_* (see `evaluate_latent_bpd`), and the samples are
    decoded to images before their grid and quality metrics.
    """
    results: dict[str, Any] = {"step": step, "params": "ema" if config.eval.use_ema else "raw"}
    args = (config, model, process, mesh, params)
    if latent is not None:
        results.update(evaluate_latent_bpd(*args, latent=latent, workdir=workdir))
    else:
        # An image-conditioned model's bound is of the image given its low-resolution copy or
        # its known part.
        suffix = "_given_low_res" if build.is_super_resolution(config) else ""
        suffix = "_given_known_part" if build.is_inpainting(config) else suffix
        bpd = evaluate_bpd(*args)
        results.update({f"test/{k}{suffix if 'bpd' in k else ''}": v for k, v in bpd.items()})
    if config.eval.ode_bpd:
        results.update({f"test/{k}": v for k, v in evaluate_ode_bpd(*args).items()})
    if build.num_classes(config) and config.eval.conditional_bpd and latent is None:
        # p(x|y) for the true labels; test/bpd above is p(x) through the learned null class.
        results["test/bpd_conditional"] = evaluate_bpd(*args, conditional=True)["bpd"]
    _check_finite({k: v for k, v in results.items() if k.startswith("test/")}, step)
    generator = generate.Generator(
        config, model, process, mesh, classifier=_guidance_classifier(config, mesh)
    )
    image_task = build.is_super_resolution(config) or build.is_inpainting(config)
    if image_task:
        # Upsample or fill in the eval split's own images; labels are the true ones.
        from diffax import image_tasks

        samples, labels, figures = image_tasks.run_on_eval_split(
            config, generator, params, step, config.eval.num_samples
        )
        grid, grid_columns = figures.pop("grid"), figures.pop("grid_columns")
        results.update(figures)
    else:
        samples = generator.generate(params, config.eval.num_samples, seed=step)
        if latent is not None:
            samples = latent.decode(samples, generator.batch_size)
        labels = generator.labels(len(samples))
    if not np.all(np.isfinite(samples)):
        raise FloatingPointError(
            f"Sampling at step {step} gave non-finite images; the parameters are not usable."
        )
    if image_task:
        kind = "super_resolution" if build.is_super_resolution(config) else "inpainting"
        results["samples_png"] = save_samples(
            config,
            workdir,
            f"eval_{kind}_{step:08d}",
            grid,
            columns=grid_columns,
        )
    if config.eval.quality_metrics:
        from diffax.metrics import quality

        templates = None if image_task else generator.prompt_templates(len(samples))
        results.update(
            quality.quality_metrics(
                config,
                samples,
                # Text: the digit each held-out prompt names is the label to recognise.
                labels
                if build.num_classes(config) or image_task or generator.text or generator.stored
                else None,
                workdir,
                functools.partial(
                    input_pipeline.eval_split_images,
                    config.data if latent is None else latent.image_data,
                ),
                # Held-out prompts: the accuracy of each template too.
                groups=templates,
            )
        )
        if generator.text and config.data.dataset == "digits":
            results["digits_read_as"] = _read_as_by_template(
                config, samples, labels, workdir, templates
            )
    if not image_task:
        results["samples_png"] = save_samples(
            config, workdir, f"eval_samples_{step:08d}", samples, labels
        )
    results["sampler"] = f"{config.eval.sampler}-{generator.num_steps}"
    results["sampler_nfe"] = generator.nfe  # Sequential model calls per batch.
    results["forward_passes_per_sample"] = generator.forward_passes_per_sample
    results["guidance_scale"] = config.eval.guidance_scale
    if generator.text:
        results["prompts"] = "held-out templates: " + " | ".join(captions.HELDOUT_TEMPLATES)
    if generator.stored:
        from diffax import text_embeddings

        path = text_embeddings.path_for(config.data.text_embeddings, config.data.eval_split)
        results["prompts"] = f"stored embeddings of {config.data.eval_split}: {path}"
    scalars = {k: v for k, v in results.items() if k.startswith(("test/", "samples/"))}
    _check_finite(scalars, step)
    summaries.write_scalars(writer, step, scalars)
    if jax.process_index() == 0:
        path = epath.Path(workdir) / f"eval_{step:08d}.json"
        path.write_text(json.dumps(results, indent=2))
        logging.info("Eval at step %d: %s (written to %s)", step, results, path)
    return results


def _read_as_by_template(config, samples, labels, workdir, templates) -> dict[str, dict]:
    """Returns {held-out template: {digit named: [10] counts of the digit the classifier reads]}}
    (quality.digits_read_as): which prompts a text model misreads, and as what."""
    from diffax.metrics import quality

    tables = quality.digits_read_as(config, samples, labels, workdir, groups=templates)
    return {
        captions.HELDOUT_TEMPLATES[g]: {str(d): row.tolist() for d, row in enumerate(table)}
        for g, table in tables.items()
    }


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Restores the newest checkpoint's eval parameters and runs the full evaluation (eval mode)."""
    validation.validate_config(config)
    mesh = sharding.create_mesh(config.mesh.data, config.mesh.fsdp)
    params, step = restore_eval_params(config, workdir, mesh)
    if build.is_classifier(config) or build.is_autoencoder(config):
        evaluator = evaluate_classifier if build.is_classifier(config) else evaluate_autoencoder
        return evaluator(
            config,
            workdir,
            model=build.create_model(config),
            process=build.create_process(config),
            mesh=mesh,
            params=params,
            step=step,
            writer=summaries.create_writer(workdir),
        )
    return evaluate_params(
        config,
        workdir,
        model=build.create_model(config),
        process=build.create_process(config),
        mesh=mesh,
        params=params,
        step=step,
        writer=summaries.create_writer(workdir),
        latent=_load_latent(config, mesh),
    )


def check_prompt(config: ml_collections.ConfigDict, prompt: str | None) -> None:
    """Raises ValueError in one sentence if a prompt is given to a model without text, or does
    not fit in data.text_length tokens."""
    if prompt is None:
        return
    if not build.is_text_conditioned(config):
        raise ValueError(
            "--prompt needs a text-conditioned model (model.text_cond=True, e.g. "
            "configs/digits_text.py); this config has none."
        )
    if build.has_stored_embeddings(config):
        raise ValueError(
            "--prompt: this model conditions on text embeddings stored beside the data "
            "(data.text_embeddings) and cannot encode new text; sample without --prompt to draw "
            "from the eval split's stored embeddings."
        )
    text_encoder.tokenize([prompt], config.data.text_length)


def sample_checkpoint(
    config: ml_collections.ConfigDict,
    workdir: str,
    num_samples: int | None = None,
    prompt: str | None = None,
) -> str:
    """Restores the newest checkpoint and writes num_samples samples as a PNG grid and .npz;
    a text-conditioned model draws them all from prompt when one is given."""
    validation.validate_config(config)
    check_prompt(config, prompt)
    if build.is_classifier(config) or build.is_autoencoder(config):
        kind = "a classifier" if build.is_classifier(config) else "an autoencoder"
        raise ValueError(
            f"--mode=sample: model.name={config.model.name!r} is {kind}, which draws no "
            "samples; sample from a diffusion model."
        )
    mesh = sharding.create_mesh(config.mesh.data, config.mesh.fsdp)
    classifier = _guidance_classifier(config, mesh)
    params, step = restore_eval_params(config, workdir, mesh)
    num_samples = num_samples or config.eval.num_samples
    model, process = build.create_model(config), build.create_process(config)
    generator = generate.Generator(
        config, model, process, mesh, num_samples=num_samples, classifier=classifier, prompt=prompt
    )
    if build.is_super_resolution(config):
        from diffax import image_tasks

        return image_tasks.sample_super_resolution(
            config, workdir, generator, params, step, num_samples
        )
    if build.is_inpainting(config) or config.inpainting.repaint:
        from diffax import image_tasks

        return image_tasks.sample_inpainting(config, workdir, generator, params, step, num_samples)
    frames = config.eval.chain_frames
    samples, chain = generator.generate_with_chain(params, num_samples, step + 1, frames)
    latent = _load_latent(config, mesh)
    if latent is not None:  # Latent diffusion: decode the samples (and the chain) to images.
        samples = latent.decode(samples, generator.batch_size)
        if chain is not None:
            decoded = latent.decode(chain.reshape(-1, *chain.shape[2:]), generator.batch_size)
            chain = decoded.reshape(*chain.shape[:2], *decoded.shape[1:])
    name = f"samples_{step:08d}_n{num_samples}"
    path = save_samples(config, workdir, name, samples, generator.labels(num_samples))
    logging.info("Wrote %d samples to %s", num_samples, path)
    if chain is not None and jax.process_index() == 0:
        shown = chain[:, : config.eval.chain_samples]
        gif, strip = images.save_chain(workdir, name + "_chain", shown, config.data.num_levels)
        logging.info(
            "Wrote the reverse chain of %d samples to %s and %s", shown.shape[1], gif, strip
        )
    return path
