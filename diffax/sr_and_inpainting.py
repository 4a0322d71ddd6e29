"""Image-conditioned tasks at evaluation and sampling time, on the eval split or a base model.

Super-resolution: upsampling the eval split's low-resolution copies (PSNR / SSIM next to bicubic)
and a cascade that upsamples a base model's samples. Inpainting: filling in the eval split's
eval_mask region with a mask-conditioned model or, for any other model, by RePaint. The math is
diffax.super_resolution and diffax.inpainting; this module runs it with trained parameters.
"""

import functools
import json
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from diffax import (
    build,
    generate,
    inpainting,
    input_pipeline,
    models,
    restore,
    sample_files,
    sample_quality,
    sharding,
    super_resolution,
    tasks,
)


def super_resolve_eval_split(
    config: ml_collections.ConfigDict,
    generator,
    params: Any,
    seed: int,
    num_examples: int | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Upsamples the low-resolution copies of the first num_examples (default eval.num_samples)
    eval-split images.

    Returns (samples [N, H, W, C], their true labels [N], figures): "samples/psnr" and
    "samples/ssim" of the samples against the high-resolution images, the same for bicubic
    upsampling ("samples/bicubic_psnr", "samples/bicubic_ssim"), and "grid": rows of low
    resolution (nearest), bicubic, samples and the originals, 10 examples wide.
    """
    sr = config.super_resolution
    n = num_examples or config.eval.num_samples
    images, labels = input_pipeline.eval_split_examples(config.data, n)
    make = jax.jit(
        functools.partial(
            super_resolution.conditioning,
            low_res_size=sr.low_res_size,
            aug_level=sr.sample_aug_level,
            random_level=False,
            method=sr.upsample_method,
            embed_level=build.embeds_level(config),
        )
    )
    conditioning = jax.device_get(make(images, jax.random.PRNGKey(seed)))
    samples = generator.generate(
        params, len(images), seed=seed, labels=labels, conditioning=conditioning
    )
    low = super_resolution.downsample(images, sr.low_res_size)
    size = config.data.image_size
    bicubic = np.clip(np.asarray(super_resolution.upsample(low, size, "cubic")), -1, 1)
    nearest = np.asarray(super_resolution.upsample(low, size, "nearest"))
    figures = {
        "samples/psnr": float(np.mean(super_resolution.psnr(samples, images))),
        "samples/ssim": float(np.mean(super_resolution.ssim(samples, images))),
        "samples/bicubic_psnr": float(np.mean(super_resolution.psnr(bicubic, images))),
        "samples/bicubic_ssim": float(np.mean(super_resolution.ssim(bicubic, images))),
        "samples/num_examples": len(images),
    }
    n = min(10, len(images))
    figures["grid"] = np.concatenate([nearest[:n], bicubic[:n], samples[:n], images[:n]])
    figures["grid_columns"] = n
    return samples, labels, figures


def _base_samples(
    config: ml_collections.ConfigDict, mesh, num_samples: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (samples [N, h, h, C], labels [N]) of the base model in
    super_resolution.base_workdir, drawn with its own saved config."""
    sr, base_workdir = config.super_resolution, config.super_resolution.base_workdir
    saved = restore.workdir_config(base_workdir)
    if saved is None:
        raise FileNotFoundError(
            f"super_resolution.base_workdir={base_workdir!r} holds no checkpoint: train the base "
            "model there first."
        )
    base = ml_collections.ConfigDict(saved)
    base_shape = build.image_shape(base)
    wanted = (sr.low_res_size, sr.low_res_size, config.data.num_channels)
    if base_shape != wanted:
        raise ValueError(
            f"super_resolution.base_workdir={base_workdir!r} draws {base_shape} images; this "
            f"upsampler takes {wanted} (super_resolution.low_res_size, data.num_channels)."
        )
    params, _ = restore.restore_eval_params(base, base_workdir, mesh)
    generator = generate.Generator(
        base, build.create_model(base), tasks.create_process(base), mesh, num_samples=num_samples
    )
    samples = generator.generate(params, num_samples, seed=seed)
    return samples, generator.labels(num_samples)


def sample_super_resolution(
    config: ml_collections.ConfigDict,
    workdir: str,
    generator: generate.Generator,
    params: Any,
    step: int,
    num_samples: int,
) -> str:
    """--mode=sample of an upsampler: upsamples the base model's samples (a cascade, when
    super_resolution.base_workdir is set) or the eval split's low-resolution copies; writes a grid
    whose rows alternate the inputs (nearest-upsampled) and the outputs, and the .npz."""
    sr = config.super_resolution
    if sr.base_workdir:
        low, labels = _base_samples(config, generator.mesh, num_samples, seed=step)
        source = f"the base model in {sr.base_workdir}"
    else:
        images, labels = input_pipeline.eval_split_examples(config.data, num_samples)
        low = np.asarray(super_resolution.downsample(images, sr.low_res_size))
        source = f"the {config.data.eval_split} split's low-resolution copies"
    make = jax.jit(
        functools.partial(
            super_resolution.conditioning_from_low_res,
            image_size=config.data.image_size,
            aug_level=sr.sample_aug_level,
            method=sr.upsample_method,
            embed_level=build.embeds_level(config),
        )
    )
    conditioning = jax.device_get(make(low, jax.random.PRNGKey(step + 1)))
    samples = generator.generate(
        params, len(low), seed=step + 1, labels=labels, conditioning=conditioning
    )
    inputs = np.asarray(super_resolution.upsample(low, config.data.image_size, "nearest"))
    columns = min(10, len(low))
    rows = []
    for i in range(0, len(low) - len(low) % columns, columns):
        rows += [inputs[i : i + columns], samples[i : i + columns]]
    sample_files.check_finite(config.eval, samples, "Super-resolution")
    name = sample_files.sample_name(config, "super_resolution", step, len(low))
    name = sample_files.unused_name(workdir, name)
    path = sample_files.save_samples(config, workdir, name, np.concatenate(rows), columns=columns)
    if jax.process_index() == 0:
        np.savez(f"{workdir}/{name}_io.npz", low_res=low, samples=samples, labels=labels)
    logging.info("Upsampled %d images from %s; wrote %s", len(low), source, path)
    return path


def _inpainting_inputs(config: ml_collections.ConfigDict, num_examples: int):
    """Returns (images [N, H, W, C], labels [N], masks [N, H, W, 1]) of the eval split."""
    images, labels = input_pipeline.eval_split_examples(config.data, num_examples)
    mask = inpainting.fixed_mask(config.inpainting.eval_mask, config.data.image_size)
    return images, labels, np.broadcast_to(mask, (*images.shape[:3], 1)).copy()


def _repaint(config, generator: generate.Generator, params, images, masks, seed: int):
    """Returns RePaint's inpainting [N, H, W, C] of images by the generator's model: its DDPM
    process respaced to eval.sample_steps, the null class of a class-conditional model."""
    ip, mesh = config.inpainting, generator.mesh
    process = generate.sampling_process(config, generator.process)
    model, null = generator.model, generator.num_classes

    def run(params, known, mask, key):
        labels = jnp.full((known.shape[0],), null, jnp.int32) if null else None
        return inpainting.repaint_sample(
            process,
            models.model_fn(model, params, labels),
            known,
            mask,
            key,
            jump_length=ip.repaint_jump,
            resamplings=ip.repaint_resamplings,
            clip_denoised=config.eval.clip_denoised,
        )

    batch_sharding = sharding.batch_sharding(mesh)
    fn = jax.jit(run, out_shardings=batch_sharding)
    size, out = generator.batch_size, []
    for i in range(0, len(images), size):
        rows = np.arange(i, i + size) % len(images)  # A short last batch, padded.
        known = jax.device_put(images[rows], batch_sharding)
        mask = jax.device_put(masks[rows], batch_sharding)
        key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
        out.append(sharding.to_host(fn(params, known, mask, key))[: len(images) - i])
    return np.concatenate(out)


def inpaint(
    config: ml_collections.ConfigDict, generator: generate.Generator, params, seed: int, n: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Fills in eval_mask of the first n eval-split images: with the mask-conditioned model, else
    by RePaint. Returns (samples, true labels, figures): "samples/masked_psnr" over the unknown
    pixels, the method, and "grid": rows of masked inputs, samples and originals."""
    images, labels, masks = _inpainting_inputs(config, n)
    if build.is_inpainting(config):
        method = "mask-conditioned"
        conditioning = inpainting.conditioning(images, masks)
        samples = generator.generate(
            params, len(images), seed=seed, labels=labels, conditioning=jax.device_get(conditioning)
        )
    else:
        method = (
            f"RePaint (j={config.inpainting.repaint_jump}, "
            f"r={config.inpainting.repaint_resamplings})"
        )
        samples = _repaint(config, generator, params, images, masks, seed)
    shown = min(10, len(images))
    masked = np.where(masks > 0, images, -1.0)  # Unknown pixels shown black.
    figures = {
        "samples/masked_psnr": float(np.mean(inpainting.masked_psnr(samples, images, masks))),
        "samples/num_examples": len(images),
        "inpainting": f"{method}, {config.inpainting.eval_mask} unknown",
        "grid": np.concatenate([masked[:shown], samples[:shown], images[:shown]]),
        "grid_columns": shown,
    }
    return samples, labels, figures


def run_on_eval_split(
    config: ml_collections.ConfigDict, generator: generate.Generator, params, seed: int, n: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Returns (samples, true labels, figures) of the config's image task on the first n
    eval-split images: super_resolve_eval_split or inpaint."""
    if build.is_super_resolution(config):
        return super_resolve_eval_split(config, generator, params, seed, n)
    return inpaint(config, generator, params, seed, n)


def sample_inpainting(
    config: ml_collections.ConfigDict,
    workdir: str,
    generator: generate.Generator,
    params: Any,
    step: int,
    num_samples: int,
) -> str:
    """--mode=sample with inpainting: fills in eval_mask of num_samples eval-split images; writes
    the grid (masked inputs, samples, originals), the .npz, and logs the masked PSNR."""
    samples, labels, figures = inpaint(config, generator, params, step + 1, num_samples)
    sample_files.check_finite(config.eval, samples, "Inpainting")
    name = sample_files.unused_name(
        workdir, sample_files.sample_name(config, "inpainting", step, len(samples))
    )
    path = sample_files.save_samples(
        config, workdir, name, figures.pop("grid"), columns=figures.pop("grid_columns")
    )
    if config.eval.quality_metrics:  # The digits: class accuracy against the true labels.
        eval_images = functools.partial(input_pipeline.eval_split_images, config.data)
        quality = sample_quality.quality_metrics(config, samples, labels, workdir, eval_images)
        figures.update(quality)
    if jax.process_index() == 0:
        np.savez(f"{workdir}/{name}_io.npz", samples=samples, labels=labels)
        with open(f"{workdir}/{name}.json", "w") as f:
            json.dump({"step": step, **figures}, f, indent=2)
    logging.info("Inpainted %d images: %s; wrote %s", len(samples), figures, path)
    return path
