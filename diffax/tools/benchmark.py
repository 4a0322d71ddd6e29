"""Throughput benchmark: `python -m diffax.tools.benchmark --config=CONFIG [--out F.json]`.

Measures the real jitted, sharded train step and the config's samplers on synthetic data, on
whatever devices are present, and reports images/s per device, analytic and XLA FLOPs, MFU against
the device's dense peak (null on CPU, which has no peak in the table) and peak device memory.
"""

import copy
import json
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from diffax import build, cpu_devices, generate, models, sharding, tasks, tools, train
from diffax.tools import flops

# Dense (no structured sparsity) peak FLOP/s per device, by the device_kind substring JAX reports.
# "fp32" is what float32 matmuls run at under XLA's default precision: TF32 tensor cores on
# A100/H100/H200, single bf16 passes on TPUs (so the TPU entries repeat the bf16 peak).
# Sources (datasheets quote "with sparsity" figures, twice the dense ones):
# - NVIDIA H100 Tensor Core GPU datasheet: SXM5 BF16 1,979 / TF32 989 TFLOPS with sparsity
#   (989.4 / 494.7 dense); PCIe 1,513 / 756 (756 / 378 dense); NVL 1,671 / 835 (835.5 / 417.5).
# - NVIDIA H200 Tensor Core GPU datasheet: SXM BF16 1,979 / TF32 989 TFLOPS with sparsity.
# - NVIDIA A100 Tensor Core GPU datasheet: BF16 312 / TF32 156 TFLOPS dense.
# - Cloud TPU docs (cloud.google.com/tpu/docs/v4, /v5e, /v5p), "peak compute per chip (bf16)":
#   v4 275, v5e 197, v5p 459 TFLOPS.
PEAK_FLOPS = {
    # Order matters: the first substring found in device_kind wins.
    "H100 PCIe": {"bf16": 756e12, "fp32": 378e12},
    "H100 NVL": {"bf16": 835.5e12, "fp32": 417.5e12},
    "H100": {"bf16": 989.4e12, "fp32": 494.7e12},  # SXM5 ("NVIDIA H100 80GB HBM3")
    "H200": {"bf16": 989.4e12, "fp32": 494.7e12},
    "A100": {"bf16": 312e12, "fp32": 156e12},
    "TPU v4": {"bf16": 275e12, "fp32": 275e12},
    "TPU v5 lite": {"bf16": 197e12, "fp32": 197e12},  # v5e
    "TPU v5e": {"bf16": 197e12, "fp32": 197e12},
    "TPU v5p": {"bf16": 459e12, "fp32": 459e12},
    "TPU v5": {"bf16": 459e12, "fp32": 459e12},  # v5p reports "TPU v5"
}

FLAGS = flags.FLAGS


def peak_flops_per_device(device_kind: str, dtype: str) -> float | None:
    """Returns the dense peak FLOP/s of one device for a compute dtype, or None if unknown (CPU)."""
    key = "bf16" if jnp.dtype(dtype) == jnp.bfloat16 else "fp32"
    for name, peaks in PEAK_FLOPS.items():
        if name.lower() in device_kind.lower():
            return peaks[key]
    return None


def mfu(flops_per_second_per_device: float, peak: float | None) -> float | None:
    """Returns model FLOPs utilisation in [0, 1] (achieved / peak), or None without a peak."""
    return None if peak is None else flops_per_second_per_device / peak


def peak_memory_bytes() -> int | None:
    """Returns the largest peak_bytes_in_use over local devices, or None where not reported."""
    peaks = []
    for device in jax.local_devices():
        try:
            stats = device.memory_stats()
        except Exception:  # Some backends raise instead of returning None.
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


def synthetic_batch(config: ml_collections.ConfigDict, batch_size: int, seed: int = 0) -> dict:
    """Returns a host batch {"image": float32 [B, H, W, C] in [-1, 1], "label": int32 [B]}."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(-1.0, 1.0, (batch_size, *build.image_shape(config))).astype(np.float32)
    label = rng.integers(0, max(config.data.num_classes, 1), batch_size).astype(np.int32)
    return {"image": image, "label": label}


def benchmark_train(
    trainer: train.Trainer, batch_size: int, steps: int, warmup_steps: int = 2
) -> tuple[Any, dict]:
    """Returns (state, {"compile_s", "step_time_s", "images_per_sec", "xla_flops_per_device",
    "xla_bytes_accessed_per_device"}) of the compiled train step (XLA figures: one step).

    The clock runs from a block_until_ready after warm-up to one after `steps` more steps, so
    asynchronous dispatch overlaps steps as in training; step_time_s is the mean per step.
    """
    state = trainer.init()
    start = time.perf_counter()
    step_fn = trainer.compile(batch_size)
    compile_s = time.perf_counter() - start
    cost = flops.xla_cost(step_fn)
    if trainer.mesh.size > 1:
        # XLA's cost model charges every slice of the raveled gradients (sharding.data_parallel)
        # as a read of the whole vector (3x the tiny step's FLOPs on 8 devices): count one
        # device's arithmetic as the same step compiled for one device on its share of the batch.
        single = train.Trainer(trainer.config, jax.local_devices()[:1])
        cost = flops.xla_cost(single.compile(batch_size // trainer.mesh.size))
    local = sharding.per_process_batch_size(batch_size)
    batch = sharding.global_batch(
        synthetic_batch(trainer.config, local, jax.process_index()), trainer.mesh
    )
    for _ in range(max(warmup_steps, 1)):
        state, metrics = step_fn(state, batch)
    jax.block_until_ready((state, metrics))
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step_fn(state, batch)
    jax.block_until_ready((state, metrics))
    elapsed = time.perf_counter() - start
    step_time = elapsed / steps
    return state, {
        "compile_s": compile_s,
        "step_time_s": step_time,
        "images_per_sec": batch_size / step_time,
        "xla_flops_per_device": cost["flops"],
        "xla_bytes_accessed_per_device": cost["bytes_accessed"],
    }


def benchmark_sampler(
    config: ml_collections.ConfigDict,
    trainer: train.Trainer,
    params: Any,
    sampler_name: str,
    sample_steps: int,
    num_samples: int,
) -> dict:
    """Returns {"steps", "compile_and_first_s", "time_s", "images_per_sec", "guidance"} of one
    sampler; the timed call is the second (compiled) one, and returns host numpy (synchronous)."""
    config = copy.deepcopy(config)
    with config.unlocked():
        config.eval.sampler = sampler_name
        config.eval.sample_steps = sample_steps
        config.eval.batch_size = num_samples
    generator = generate.Generator(config, trainer.model, trainer.process, trainer.mesh)
    start = time.perf_counter()
    generator.generate(params, num_samples, seed=0)
    first = time.perf_counter() - start
    start = time.perf_counter()
    images = generator.generate(params, num_samples, seed=1)
    elapsed = time.perf_counter() - start
    if not np.all(np.isfinite(images)):
        raise FloatingPointError(f"{sampler_name} produced non-finite samples")
    return {
        "steps": int(generator.process.num_timesteps),
        "compile_and_first_s": first,
        "time_s": elapsed,
        "images_per_sec": num_samples / elapsed,
        "guidance": bool(build.num_classes(config) and config.eval.guidance_scale),
    }


def run(
    config: ml_collections.ConfigDict,
    steps: int = 20,
    warmup_steps: int = 2,
    batch_size: int | None = None,
    ddpm_steps: int = 1000,
    ddim_steps: int = 50,
    num_samples: int | None = None,
) -> dict[str, Any]:
    """Returns the benchmark record (see the keys below); FLOPs are per image, rates per device.

    Sampling step counts are capped at the process's diffusion.num_timesteps; num_samples defaults
    to config.eval.batch_size and is one sampler batch.
    """
    n = jax.device_count()
    device = jax.devices()[0]
    batch_size = batch_size or config.training.batch_size
    num_samples = num_samples or config.eval.batch_size
    if num_samples % n:
        raise ValueError(f"num_samples={num_samples} must be divisible by the {n} devices.")
    trainer = train.Trainer(config)
    shape = build.image_shape(config)
    peak = peak_flops_per_device(device.device_kind, config.model.dtype)

    macs = flops.forward_macs(trainer.model, shape)
    forward = flops.forward_flops_per_image(trainer.model, shape)
    train_flops = flops.train_flops_per_image(trainer.model, shape)
    state, timing = benchmark_train(trainer, batch_size, steps, warmup_steps)
    per_device = timing["images_per_sec"] / n
    train_peak_memory = peak_memory_bytes()  # Before sampling adds its own buffers.
    xla_forward = flops.xla_forward_flops_per_image(
        trainer.model, state.params, shape, max(1, batch_size // n)
    )
    record: dict[str, Any] = {
        "config": {
            "image_shape": list(shape),
            "dtype": config.model.dtype,
            "batch_size": batch_size,
            "num_params": models.count_params(state.params),
        },
        "devices": {
            "platform": device.platform,
            "device_kind": device.device_kind,
            "num_devices": n,
            "num_processes": jax.process_count(),
            "peak_flops_per_device": peak,
        },
        "flops": {
            "forward_per_image_analytic": forward,
            "forward_per_image_xla": xla_forward,
            "analytic_over_xla": forward / xla_forward,
            "train_per_image_analytic": train_flops,
            "train_per_image_xla": timing["xla_flops_per_device"] * n / batch_size,
            "forward_macs_breakdown": macs,
        },
        "train": {
            **timing,
            "steps": steps,
            "images_per_sec_per_device": per_device,
            "achieved_flops_per_sec_per_device": train_flops * per_device,
            "mfu": mfu(train_flops * per_device, peak),
            "peak_memory_bytes": train_peak_memory,
        },
        "sampling": {},
        "peak_memory_bytes": None,
        "notes": [] if peak else [f"no peak FLOP/s known for {device.device_kind!r}: MFU is null"],
    }
    params = tasks.eval_params(state, config)
    for name, sampler, sample_steps in (
        ("ddpm", "ddpm", ddpm_steps),
        ("ddim", "ddim", ddim_steps),
    ):
        sample_steps = min(sample_steps, config.diffusion.num_timesteps)
        result = benchmark_sampler(config, trainer, params, sampler, sample_steps, num_samples)
        total = flops.sampling_flops(forward, result["steps"], num_samples, result["guidance"])
        result["images_per_sec_per_device"] = result["images_per_sec"] / n
        result["flops_per_image"] = total / num_samples
        result["achieved_flops_per_sec_per_device"] = total / result["time_s"] / n
        result["mfu"] = mfu(result["achieved_flops_per_sec_per_device"], peak)
        record["sampling"][name] = result
    record["peak_memory_bytes"] = peak_memory_bytes()
    return record


def summary(record: dict[str, Any]) -> str:
    """Returns a one-line human summary of a benchmark record."""

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}%"

    parts = [
        f"{record['devices']['num_devices']}x {record['devices']['device_kind']}",
        f"train {record['train']['images_per_sec_per_device']:.1f} img/s/dev "
        f"({1e3 * record['train']['step_time_s']:.1f} ms/step, MFU {pct(record['train']['mfu'])})",
    ]
    for name, s in record["sampling"].items():
        parts.append(
            f"{name}-{s['steps']} {s['images_per_sec_per_device']:.3g} img/s/dev "
            f"(MFU {pct(s['mfu'])})"
        )
    parts.append(f"fwd {record['flops']['forward_per_image_analytic'] / 1e9:.3g} GFLOP/img")
    parts.append(f"analytic/XLA {record['flops']['analytic_over_xla']:.2f}")
    return " | ".join(parts)


def _json_ready(x: Any) -> Any:
    """Returns x with non-finite floats as None, so the JSON stays standard."""
    if isinstance(x, dict):
        return {k: _json_ready(v) for k, v in x.items()}
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def define_flags() -> None:
    """Defines the benchmark's command-line flags."""
    config_flags.DEFINE_config_file("config", None, "Config file (with --config.a.b=v overrides).")
    flags.DEFINE_integer("steps", 20, "Timed train steps (after compilation and warm-up).")
    flags.DEFINE_integer("warmup_steps", 2, "Untimed train steps after compilation.")
    flags.DEFINE_integer("batch_size", None, "Global train batch (default training.batch_size).")
    flags.DEFINE_integer("ddpm_steps", 1000, "DDPM sampling steps (capped at num_timesteps).")
    flags.DEFINE_integer("ddim_steps", 50, "DDIM sampling steps (capped at num_timesteps).")
    flags.DEFINE_integer("num_samples", None, "Images per sampler run (default eval.batch_size).")
    flags.DEFINE_string("out", None, "Write the JSON record here as well as to stdout.")


def main(argv) -> None:
    """Runs the benchmark on --config; prints the JSON record, then a one-line summary."""
    del argv
    cpu_devices.configure(FLAGS.config)  # As `python -m diffax.main` does (CPU runs only).
    record = run(
        FLAGS.config,
        steps=FLAGS.steps,
        warmup_steps=FLAGS.warmup_steps,
        batch_size=FLAGS.batch_size,
        ddpm_steps=FLAGS.ddpm_steps,
        ddim_steps=FLAGS.ddim_steps,
        num_samples=FLAGS.num_samples,
    )
    record = _json_ready(record)
    text = json.dumps(record, indent=2)
    if FLAGS.out and jax.process_index() == 0:
        with open(FLAGS.out, "w") as f:
            f.write(text + "\n")
    print(text)
    print(summary(record))
    logging.info("%s", summary(record))


if __name__ == "__main__":
    define_flags()
    tools.run(main, required=["config"])
