"""Multi-process start-up: jax.distributed.initialize on pods, SLURM or an explicit coordinator."""

import os

import jax
from absl import logging


def cluster_detected() -> bool:
    """Returns whether the environment is a multi-process job JAX can auto-configure."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return "," in hosts or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ


def initialize(
    mode: str = "auto",
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Starts JAX's multi-controller runtime when asked or detected; returns whether it did."""
    explicit = coordinator_address is not None
    if mode == "off" or (mode == "auto" and not explicit and not cluster_detected()):
        return False
    if explicit and (num_processes is None or process_id is None):
        raise ValueError("--coordinator_address needs --num_processes and --process_id as well.")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )
    logging.info(
        "Process %d of %d; %d local and %d global devices.",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def barrier(name: str, timeout_s: int = 1800) -> None:
    """Waits until every process reaches `name` (a no-op alone), through the coordination service.

    Used after compiling so the first collective starts together: CPU collectives (gloo) give up
    after 30 s, and one process can finish compiling minutes after another.
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed as jax_distributed  # The public API has no host barrier.

    client = jax_distributed.global_state.client
    if client is None:  # A runtime not started by jax.distributed (e.g. some TPU setups).
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
        return
    client.wait_at_barrier(name, timeout_s * 1000)
