"""One process of a multi-process test run: N CPU devices, gloo collectives, a few train steps.

Usage: multiprocess_worker.py OUT_DIR WORKDIR PROCESS_ID NUM_PROCESSES PORT
With NUM_PROCESSES=1 it is the single-process reference. Each process feeds only its own rows of
fixed global batches, trains 3 steps, checkpoints, restores the checkpoint into a fresh abstract
state, and writes its losses and (gathered) parameters to OUT_DIR.
"""

import os
import sys

out_dir, workdir, process_id, num_processes, port = sys.argv[1:6]
process_id, num_processes = int(process_id), int(num_processes)
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={8 // num_processes}"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
if num_processes > 1:
    jax.distributed.initialize(f"localhost:{port}", num_processes, process_id)

import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from configs import tiny  # noqa: E402
from diffax import checkpointing, sharding, train  # noqa: E402


def main():
    config = tiny.get_config()
    config.diffusion.timestep_sampler = "loss_second_moment"
    # One 8x8 level, attention in the middle block only (conftest.SMALL_UNET): what is tested is
    # how the processes split the batch and meet in the collectives, not the network.
    config.model.unet.channel_mult, config.model.unet.attention_resolutions = (1,), ()
    trainer = train.Trainer(config)
    assert trainer.mesh.size == 8 and jax.process_count() == num_processes
    state = trainer.init()
    step_fn = trainer.compile(config.training.batch_size)
    if num_processes > 1:
        # Start the collectives together: gloo's rendezvous times out after 30 s, and one process
        # can finish compiling much later than the other on 2 busy cores.
        from jax._src import distributed as jax_distributed

        jax_distributed.global_state.client.wait_at_barrier("compiled", 600_000)
    local = config.training.batch_size // num_processes
    rows = slice(process_id * local, (process_id + 1) * local)
    losses = []
    for i in range(3):
        rng = np.random.default_rng(i)
        b, s = config.training.batch_size, config.data.image_size
        batch = {
            "image": (rng.integers(0, 17, size=(b, s, s, 1)) / 8 - 1).astype(np.float32),
            "label": rng.integers(0, 10, size=(b,)).astype(np.int32),
        }
        global_batch = sharding.global_batch({k: v[rows] for k, v in batch.items()}, trainer.mesh)
        state, metrics = step_fn(state, global_batch)
        losses.append(float(metrics["loss"]))
    manager = checkpointing.create_manager(workdir)
    checkpointing.save(manager, 3, state, config)
    manager.wait_until_finished()
    restored, step = checkpointing.restore(manager, trainer.abstract_state)
    assert step == 3
    gather = lambda tree: jax.tree.map(
        lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), tree
    )
    params, restored_params = gather(state.params), gather(restored.params)
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(params)}
    same = all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(restored_params), strict=True)
    )
    if process_id == 0:
        np.savez(
            os.path.join(out_dir, "result.npz"),
            losses=np.array(losses),
            restored_equal=np.array(same),
            **flat,
        )
    multihost_utils.sync_global_devices("done")


if __name__ == "__main__":
    main()
