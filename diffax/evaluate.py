"""Evaluation and sampling of a trained model: the loop over the task's evaluators.

`evaluate_params` runs the config's evaluators (`diffax.evaluators`, chosen by its task) on a set
of parameters and writes `eval_<step>.json`; `evaluate_checkpoint` (--mode=eval) and
`sample_checkpoint` (--mode=sample) restore the parameters they need from the workdir's newest
checkpoint first (`diffax.restore`).
"""

from typing import Any

import jax
import ml_collections
from absl import logging

from diffax import (
    build,
    evaluators,
    generate,
    images,
    latents,
    restore,
    sample_files,
    sharding,
    sr_and_inpainting,
    summaries,
    tasks,
)


def evaluate_params(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    model,
    process,
    mesh: jax.sharding.Mesh,
    params: Any,
    step: int,
    writer=None,
    latent=None,
) -> dict[str, Any]:
    """Runs the config's evaluators on params and writes eval_<step>.json; returns its figures.

    With latent (a diffax.latents.LatentSpace: latent diffusion) the bound is on the eval split's
    cached latents, reported as test/latent_*, and the samples are decoded to images before their
    grid and quality metrics.
    """
    context = evaluators.Context(config, workdir, model, process, mesh, params, step, latent)
    return evaluators.run(tasks.get(config).evaluators(config), context, writer)


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
        _, _, figures = sr_and_inpainting.run_on_eval_split(config, generator, params, seed, 10)
        return sample_files.save_samples(
            config, workdir, name, figures["grid"], columns=figures["grid_columns"]
        )
    samples = generator.generate(params, num_samples, seed)
    if latent is not None:
        samples = latent.decode(samples, generator.batch_size)
    return sample_files.save_samples(config, workdir, name, samples)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Restores the newest checkpoint's eval parameters and runs the evaluators (eval mode)."""
    mesh = sharding.create_mesh(config.mesh.data, config.mesh.fsdp)
    params, step = restore.restore_eval_params(config, workdir, mesh)
    return evaluate_params(
        config,
        workdir,
        model=build.create_model(config),
        process=tasks.create_process(config),
        mesh=mesh,
        params=params,
        step=step,
        writer=summaries.create_writer(workdir),
        latent=latents.load(config, mesh) if build.is_latent(config) else None,
    )


def check_prompt(config: ml_collections.ConfigDict, prompt: str | None) -> None:
    """Raises ValueError in one sentence if the config's model cannot draw from the prompt."""
    stored = build.is_text_conditioned(config) and build.has_stored_embeddings(config)
    text = build.is_text_conditioned(config) and not stored
    generate.check_prompt(prompt, text, stored, config.data.get("text_length", 0))


def check_sample_mode(config: ml_collections.ConfigDict, prompt: str | None) -> None:
    """Raises ValueError in one sentence if --mode=sample cannot run this config (and prompt)."""
    check_prompt(config, prompt)
    task = tasks.get(config)
    if not task.draws_samples:
        raise ValueError(
            f"--mode=sample: model.name={config.model.name!r} is a {task.name}, which draws no "
            "samples; sample from a diffusion model."
        )


def sample_checkpoint(
    config: ml_collections.ConfigDict,
    workdir: str,
    num_samples: int | None = None,
    prompt: str | None = None,
) -> str:
    """Restores the newest checkpoint and writes num_samples samples as a PNG grid and .npz;
    a text-conditioned model draws them all from prompt when one is given."""
    check_sample_mode(config, prompt)
    task = tasks.get(config)
    mesh = sharding.create_mesh(config.mesh.data, config.mesh.fsdp)
    classifier = restore.guidance_classifier(config.eval, config.diffusion, mesh)
    params, step = restore.restore_eval_params(config, workdir, mesh)
    num_samples = num_samples or config.eval.num_samples
    model, process = build.create_model(config), task.create_process(config)
    generator = generate.Generator(
        config, model, process, mesh, num_samples=num_samples, classifier=classifier, prompt=prompt
    )
    if build.is_super_resolution(config):
        return sr_and_inpainting.sample_super_resolution(
            config, workdir, generator, params, step, num_samples
        )
    if build.is_inpainting(config) or config.inpainting.repaint:
        return sr_and_inpainting.sample_inpainting(
            config, workdir, generator, params, step, num_samples
        )
    frames = config.eval.chain_frames
    samples, chain = generator.generate_with_chain(params, num_samples, step + 1, frames)
    latent = latents.load(config, mesh) if build.is_latent(config) else None
    if latent is not None:  # Latent diffusion: decode the samples (and the chain) to images.
        samples = latent.decode(samples, generator.batch_size)
        if chain is not None:
            decoded = latent.decode(chain.reshape(-1, *chain.shape[2:]), generator.batch_size)
            chain = decoded.reshape(*chain.shape[:2], *decoded.shape[1:])
    sample_files.check_finite(config.eval, samples, "--mode=sample")
    name = sample_files.sample_name(config, "samples", step, num_samples, prompt)
    name = sample_files.unused_name(workdir, name)
    path = sample_files.save_samples(
        config, workdir, name, samples, generator.labels(num_samples), prompt=prompt
    )
    logging.info("Wrote %d samples to %s", num_samples, path)
    if chain is not None and jax.process_index() == 0:
        shown = chain[:, : config.eval.chain_samples]
        gif, strip = images.save_chain(workdir, name + "_chain", shown, config.data.num_levels)
        logging.info(
            "Wrote the reverse chain of %d samples to %s and %s", shown.shape[1], gif, strip
        )
    return path
