"""One JAX CPU device per core, so a CPU run is data-parallel over its cores.

XLA's CPU client makes one device by default, and one device runs a small model's ops one or two
at a time: on 2 cores the digits train step keeps ~1.4 of them busy. Split into one device per
core, each core runs its shard of the batch and the gradients meet in one all-reduce; the step
is the same computation (the same random draws: threefry is partitionable), summed in another
order. benchmarks/RESULTS.md has the measurements.
"""

import os
from collections.abc import Mapping

import jax
import ml_collections
from absl import logging

FORCE_FLAG = "xla_force_host_platform_device_count"


def usable_cores() -> int:
    """Returns the cores this process may run on (its affinity mask, e.g. under taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # No affinity call (macOS).
        return os.cpu_count() or 1


def count_for(config: ml_collections.ConfigDict, cores: int, processes: int = 1) -> int:
    """Returns the most devices per process, at most `cores`, that the mesh and batches split over.

    A mesh with mesh.data set names its own size (data x fsdp over all processes). Otherwise
    every batch the run shards (training.batch_size over grad_accum_steps micro-batches,
    eval.batch_size) must be divisible by the global count, as validation requires, and the
    global count by mesh.fsdp.
    """
    mesh = config.mesh
    if mesh.data != -1:
        return max(mesh.data * mesh.fsdp // processes, 1)
    micro = config.training.batch_size // max(config.training.grad_accum_steps, 1)
    for n in range(max(cores, 1), 0, -1):
        total = n * processes
        if total % mesh.fsdp == 0 and micro % total == 0 and config.eval.batch_size % total == 0:
            return n
    return 1


def set_by_user(environ: Mapping[str, str]) -> bool:
    """Returns whether the environment already fixes the CPU device count (XLA_FLAGS or JAX)."""
    return FORCE_FLAG in environ.get("XLA_FLAGS", "") or "JAX_NUM_CPU_DEVICES" in environ


def configure(
    config: ml_collections.ConfigDict,
    requested: int = 0,
    environ: Mapping[str, str] = os.environ,
    cores: int | None = None,
    processes: int = 1,
) -> int | None:
    """Sets jax_num_cpu_devices before JAX starts; returns the count set, or None if left alone.

    requested > 0 is taken as given; 0 picks `count_for` the usable cores. The count is left alone
    when the environment sets it (XLA_FLAGS' --xla_force_host_platform_device_count or
    JAX_NUM_CPU_DEVICES) or JAX's backends have already started. It only shapes the CPU client:
    on a machine with accelerators the mesh is made of those, and the CPU devices stay unused.
    """
    if requested < 0:
        raise ValueError(f"--cpu_devices={requested} must be 0 (one per core) or a device count.")
    if set_by_user(environ):
        return None
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        logging.info("JAX has started: the CPU device count stays %d.", jax.local_device_count())
        return None
    cores = usable_cores() if cores is None else cores
    count = requested or count_for(config, cores, processes)
    jax.config.update("jax_num_cpu_devices", count)
    return count
