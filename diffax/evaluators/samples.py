"""Samples of a diffusion model and their quality: the grid and .npz, FID / the digits score,
the class or prompt accuracy; for an image-conditioned model its outputs on the eval split."""

import functools
from typing import Any

from diffax import (
    build,
    generate,
    input_pipeline,
    restore,
    sample_files,
    sample_quality,
    sr_and_inpainting,
    text_embeddings,
)
from diffax.datasets import captions
from diffax.evaluators import common


def evaluate(context: common.Context) -> dict[str, Any]:
    """Draws eval.num_samples samples (decoded by the latent autoencoder when there is one; an
    image-conditioned model upsamples or fills in the eval split's own images), writes their grid
    and returns samples_png, the sampler's description and the quality figures (samples/*)."""
    config, workdir, step = context.config, context.workdir, context.step
    model, process, mesh, params = context.model, context.process, context.mesh, context.params
    latent = context.latent
    results: dict[str, Any] = {}
    generator = generate.Generator(
        config,
        model,
        process,
        mesh,
        classifier=restore.guidance_classifier(config.eval, config.diffusion, mesh),
    )
    image_task = build.is_super_resolution(config) or build.is_inpainting(config)
    if image_task:
        # Upsample or fill in the eval split's own images; labels are the true ones.
        samples, labels, figures = sr_and_inpainting.run_on_eval_split(
            config, generator, params, step, config.eval.num_samples
        )
        grid, grid_columns = figures.pop("grid"), figures.pop("grid_columns")
        results.update(figures)
    else:
        samples = generator.generate(params, config.eval.num_samples, seed=step)
        if latent is not None:
            samples = latent.decode(samples, generator.batch_size)
        labels = generator.labels(len(samples))
    sample_files.check_finite(config.eval, samples, f"Sampling at step {step}")
    if image_task:
        kind = "super_resolution" if build.is_super_resolution(config) else "inpainting"
        results["samples_png"] = sample_files.save_samples(
            config,
            workdir,
            f"eval_{kind}_{step:08d}",
            grid,
            columns=grid_columns,
        )
    if config.eval.quality_metrics:
        templates = None if image_task else generator.prompt_templates(len(samples))
        results.update(
            sample_quality.quality_metrics(
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
        results["samples_png"] = sample_files.save_samples(
            config, workdir, f"eval_samples_{step:08d}", samples, labels
        )
    results["sampler"] = f"{config.eval.sampler}-{generator.num_steps}"
    results["sampler_nfe"] = generator.nfe  # Sequential model calls per batch.
    results["forward_passes_per_sample"] = generator.forward_passes_per_sample
    results["guidance_scale"] = config.eval.guidance_scale
    if generator.text:
        results["prompts"] = "held-out templates: " + " | ".join(captions.HELDOUT_TEMPLATES)
    if generator.stored:
        path = text_embeddings.path_for(config.data.text_embeddings, config.data.eval_split)
        results["prompts"] = f"stored embeddings of {config.data.eval_split}: {path}"
    return results


def _read_as_by_template(config, samples, labels, workdir, templates) -> dict[str, dict]:
    """Returns {held-out template: {digit named: [10] counts of the digit the classifier reads]}}
    (sample_quality.digits_read_as): which prompts a text model misreads, and as what."""
    tables = sample_quality.digits_read_as(config, samples, labels, workdir, groups=templates)
    return {
        captions.HELDOUT_TEMPLATES[g]: {str(d): row.tolist() for d, row in enumerate(table)}
        for g, table in tables.items()
    }
