"""Super-resolution at evaluation and sampling time: upsampling the eval split's low-resolution
copies (PSNR / SSIM next to bicubic) and a cascade that upsamples a base model's samples.

The math (downsampling, noise conditioning augmentation, PSNR, SSIM) is diffax.super_resolution;
this module runs it with a trained model through generate.Generator.
"""

import functools
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from diffax import build, evaluate, generate, input_pipeline, super_resolution


def super_resolve_eval_split(
    config: ml_collections.ConfigDict, generator, params: Any, seed: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Upsamples the low-resolution copies of the first eval.num_samples eval-split images.

    Returns (samples [N, H, W, C], their true labels [N], figures): "samples/psnr" and
    "samples/ssim" of the samples against the high-resolution images, the same for bicubic
    upsampling ("samples/bicubic_psnr", "samples/bicubic_ssim"), and "grid": rows of low
    resolution (nearest), bicubic, samples and the originals, 10 examples wide.
    """
    from diffax import super_resolution

    sr = config.super_resolution
    images, labels = input_pipeline.eval_split_examples(config.data, config.eval.num_samples)
    make = jax.jit(
        functools.partial(
            super_resolution.conditioning,
            low_res_size=sr.low_res_size,
            aug_level=sr.sample_aug_level,
            random_level=False,
            method=sr.upsample_method,
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
    saved = evaluate.workdir_config(base_workdir)
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
    params, _ = evaluate.restore_eval_params(base, base_workdir, mesh)
    generator = generate.Generator(
        base, build.create_model(base), build.create_process(base), mesh, num_samples=num_samples
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
    name = f"super_resolution_{step:08d}_n{len(low)}"
    path = evaluate.save_samples(config, workdir, name, np.concatenate(rows), columns=columns)
    if jax.process_index() == 0:
        np.savez(f"{workdir}/{name}_io.npz", low_res=low, samples=samples, labels=labels)
    logging.info("Upsampled %d images from %s; wrote %s", len(low), source, path)
    return path
