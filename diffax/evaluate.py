"""Evaluation: test-split bits/dim by the full-chain bound, sample grids, metric files."""

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
from PIL import Image

from diffax import diffusion, input_pipeline, sampling, schedules, sharding


def eval_params(state: Any, config: ml_collections.ConfigDict) -> Any:
    """Returns the parameters eval and sampling use: the first EMA, or the raw ones."""
    return state.ema_params[0] if config.eval.use_ema and state.ema_params else state.params


def to_host(x: jax.Array) -> np.ndarray:
    """Fetches a global (possibly multi-process) array to host memory on every process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def create_writer(workdir: str):
    """Returns a TensorBoard event writer for process 0, None elsewhere."""
    if jax.process_index() != 0:
        return None
    import tensorflow as tf

    return tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))


def write_scalars(writer, step: int, scalars: dict[str, float]) -> None:
    """Writes scalars to the TensorBoard event file (no-op without a writer)."""
    if writer is None:
        return
    import tensorflow as tf

    with writer.as_default(step=step):
        for name, value in scalars.items():
            tf.summary.scalar(name, value)
    writer.flush()


def sampling_process(config: ml_collections.ConfigDict, process: diffusion.GaussianDiffusion):
    """Returns the process to sample from: respaced to eval.sample_steps when that is set."""
    steps = config.eval.sample_steps
    if not steps or steps == process.num_timesteps:
        return process
    spec = f"ddim{steps}" if config.eval.sampler == "ddim" else str(steps)
    return process.respace(schedules.space_timesteps(process.num_timesteps, spec))


def conditional_model_fn(model, params, labels):
    """Returns model_fn(x, t) for fixed labels [B] (or an unconditional model when labels=None)."""
    return lambda x, t: model.apply({"params": params}, x, t, labels, train=False)


class Sampler:
    """Generates images with the config's sampler; compiled once per batch shape."""

    def __init__(self, config: ml_collections.ConfigDict, model, process, mesh, num_samples=None):
        self.config = config
        self.model = model
        self.mesh = mesh
        self.process = sampling_process(config, process)
        # Batches of eval.batch_size, or fewer when fewer samples are wanted (a multiple of the
        # device count, so the batch splits evenly over the mesh).
        devices = mesh.size
        wanted = -(-(num_samples or config.eval.num_samples) // devices) * devices
        self.batch_size = min(config.eval.batch_size, wanted)
        self.shape = (
            self.batch_size,
            config.data.image_size,
            config.data.image_size,
            config.data.num_channels,
        )
        self._sample = jax.jit(self._sample_batch, out_shardings=sharding.batch_sharding(mesh))

    def _sample_batch(self, params, key, labels):
        """Returns one batch of samples in [-1, 1]: [B, H, W, C]."""
        ev, model = self.config.eval, self.model
        if model.num_classes and ev.guidance_scale:
            cond = lambda x, t, y: model.apply({"params": params}, x, t, y, train=False)
            model_fn = sampling.classifier_free_guidance(
                cond, labels, null_label=model.num_classes, guidance_scale=ev.guidance_scale
            )
        else:
            model_fn = conditional_model_fn(model, params, labels if model.num_classes else None)
        if ev.sampler == "ddim":
            out = sampling.ddim_sample(
                self.process,
                model_fn,
                self.shape,
                key,
                eta=ev.ddim_eta,
                clip_denoised=ev.clip_denoised,
            )
        else:
            out = sampling.ddpm_sample(
                self.process, model_fn, self.shape, key, clip_denoised=ev.clip_denoised
            )
        return out["sample"]

    def labels(self, num_samples: int) -> np.ndarray:
        """Returns the class of each sample: 0, 1, ..., K-1, 0, 1, ... (a grid column per class)."""
        num_classes = max(self.model.num_classes, 1)
        return (np.arange(num_samples) % num_classes).astype(np.int32)

    def generate(self, params, num_samples: int, seed: int = 0) -> np.ndarray:
        """Returns num_samples images in [-1, 1] as float32 numpy [N, H, W, C]."""
        labels = self.labels(num_samples)
        batches = []
        for i in range(0, num_samples, self.batch_size):
            chunk = labels[i : i + self.batch_size]
            padded = np.resize(chunk, self.batch_size)  # Same shape every call: one compile.
            key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
            global_labels = jax.device_put(padded, sharding.batch_sharding(self.mesh))
            images = to_host(self._sample(params, key, global_labels))
            batches.append(images[: len(chunk)])
        return np.concatenate(batches)[:num_samples]


def to_levels(images: np.ndarray, num_levels: int) -> np.ndarray:
    """Maps [-1, 1] floats to the data's integer levels 0..num_levels-1."""
    return np.clip(np.round((images + 1) / 2 * (num_levels - 1)), 0, num_levels - 1).astype(
        np.int32
    )


def image_grid(images: np.ndarray, num_levels: int, columns: int, scale: int = 1) -> np.ndarray:
    """Returns uint8 [rows*(H+1)+1, columns*(W+1)+1, C] with a 1-pixel border, upscaled by scale."""
    levels = to_levels(images, num_levels).astype(np.float64)
    pixels = np.round(levels * 255 / (num_levels - 1)).astype(np.uint8)
    n, h, w, c = pixels.shape
    rows = -(-n // columns)
    grid = np.zeros((rows * (h + 1) + 1, columns * (w + 1) + 1, c), np.uint8)
    for i in range(n):
        r, col = divmod(i, columns)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + col * (w + 1) : 1 + col * (w + 1) + w] = (
            pixels[i]
        )
    return grid.repeat(scale, axis=0).repeat(scale, axis=1)


def save_samples(workdir: str, name: str, images: np.ndarray, config, labels=None) -> str:
    """Writes `name`.png (a grid) and `name`.npz (levels and labels) on process 0; returns png."""
    path = os.path.join(workdir, name + ".png")
    if jax.process_index() != 0:
        return path
    columns = config.data.num_classes if config.model.class_cond else 10
    columns = columns if 0 < columns <= 16 else int(np.ceil(np.sqrt(len(images))))
    scale = max(1, 64 // config.data.image_size)
    shown = images[: columns * 10]  # The grid shows ten rows; the .npz holds every sample.
    grid = image_grid(shown, config.data.num_levels, columns, scale)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
    np.savez_compressed(
        os.path.join(workdir, name + ".npz"),
        levels=to_levels(images, config.data.num_levels).astype(np.uint8),
        labels=np.asarray([] if labels is None else labels),
        num_levels=config.data.num_levels,
    )
    return path


def _bpd_batch(params, batch, key, *, model, process, num_levels, null_label):
    """Returns masked sums over a batch of the bound's terms (bits/dim), and the example count."""
    labels = None
    if model.num_classes:
        labels = batch["label"] if null_label is None else jnp.full_like(batch["label"], null_label)
    out = diffusion.calc_bpd(
        process,
        conditional_model_fn(model, params, labels),
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
    """Returns test-split bits/dim (mean per example) by the full-chain variational bound."""
    null_label = None if conditional or not model.num_classes else model.num_classes
    fn = jax.jit(
        functools.partial(
            _bpd_batch,
            model=model,
            process=process,
            num_levels=config.data.num_levels,
            null_label=null_label,
        )
    )
    local = sharding.per_process_batch_size(config.eval.batch_size, "eval.batch_size")
    data = input_pipeline.create_eval_iterator(
        config.data, local, num_examples=config.eval.num_bpd_examples
    )
    totals = None
    for i, batch in enumerate(data):
        out = fn(params, sharding.global_batch(batch, mesh), jax.random.PRNGKey(i))
        out = jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float64), out)
        totals = out if totals is None else jax.tree.map(np.add, totals, out)
    n = totals["count"]
    return {
        "bpd": float(totals["total_bpd"] / n),
        "prior_bpd": float(totals["prior_bpd"] / n),
        "decoder_bpd": float(totals["vb"][0] / n),
        "num_examples": int(n),
    }


def evaluate_state(config, workdir: str, trainer, state, writer=None) -> dict[str, Any]:
    """Computes bits/dim and a sample grid for a train state; writes eval_<step>.json."""
    step = int(jax.device_get(state.step))
    params = eval_params(state, config)
    results: dict[str, Any] = {"step": step, "params": "ema" if config.eval.use_ema else "raw"}
    args = (config, trainer.model, trainer.process, trainer.mesh, params)
    bpd = evaluate_bpd(*args)
    results.update({f"test/{k}": v for k, v in bpd.items()})
    if trainer.model.num_classes and config.eval.conditional_bpd:
        # p(x|y) for the true labels; test/bpd above is p(x) through the learned null class.
        results["test/bpd_conditional"] = evaluate_bpd(*args, conditional=True)["bpd"]
    sampler = Sampler(config, trainer.model, trainer.process, trainer.mesh)
    images = sampler.generate(params, config.eval.num_samples, seed=step)
    if config.eval.quality_metrics:
        from diffax import sample_quality

        labels = sampler.labels(len(images)) if trainer.model.num_classes else None
        results.update(sample_quality.quality_metrics(config, images, labels, workdir))
    name = f"eval_samples_{step:08d}"
    results["samples_png"] = save_samples(
        workdir, name, images, config, sampler.labels(len(images))
    )
    results["sampler"] = f"{config.eval.sampler}-{sampler.process.num_timesteps}"
    results["guidance_scale"] = config.eval.guidance_scale
    scalars = {k: v for k, v in results.items() if k.startswith(("test/", "samples/"))}
    write_scalars(writer, step, scalars)
    if jax.process_index() == 0:
        path = epath.Path(workdir) / f"eval_{step:08d}.json"
        path.write_text(json.dumps(results, indent=2))
        logging.info("Eval at step %d: %s (written to %s)", step, results, path)
    return results


def main() -> None:
    """Command line: sample-quality metrics of saved images (see sample_quality.cli_main)."""
    from diffax import sample_quality

    sample_quality.cli_main()


if __name__ == "__main__":
    main()
