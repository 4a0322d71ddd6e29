"""One JAX CPU device per core: the count chosen for a config, and when it is left alone."""

import os
import subprocess
import sys

import jax
import pytest

from configs import digits, tiny
from diffax import cpu_devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_count_is_the_most_cores_every_batch_splits_over():
    config = digits.get_config()  # Train batch 128, eval batch 360.
    assert cpu_devices.count_for(config, cores=2) == 2
    assert cpu_devices.count_for(config, cores=3) == 2  # 128 does not split in 3.
    assert cpu_devices.count_for(config, cores=16) == 8  # 360 does not split in 16.
    config.training.grad_accum_steps = 32  # Micro-batches of 4.
    assert cpu_devices.count_for(config, cores=16) == 4
    assert cpu_devices.count_for(config, cores=4, processes=2) == 2  # 8 in all.
    config.mesh.data, config.mesh.fsdp = 3, 2  # A mesh that names its size wins.
    assert cpu_devices.count_for(config, cores=16) == 6
    assert cpu_devices.count_for(config, cores=1, processes=2) == 3


def test_the_environment_and_a_started_jax_keep_their_count():
    config = tiny.get_config()
    flags = {"XLA_FLAGS": f"--xla_cpu_multi_thread_eigen=true --{cpu_devices.FORCE_FLAG}=8"}
    assert cpu_devices.set_by_user(flags)
    assert cpu_devices.set_by_user({"JAX_NUM_CPU_DEVICES": "4"})
    assert not cpu_devices.set_by_user({"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=true"})
    assert cpu_devices.configure(config, environ=flags) is None
    before = jax.device_count()  # Starts JAX here if nothing has yet.
    assert cpu_devices.configure(config, requested=3, environ={}) is None
    assert jax.device_count() == before
    with pytest.raises(ValueError, match="--cpu_devices=-1"):
        cpu_devices.configure(config, requested=-1, environ={})


def test_a_fresh_process_gets_one_device_per_core():
    code = (
        "from configs import tiny; from diffax import cpu_devices; import jax; "
        "n = cpu_devices.configure(tiny.get_config(), cores=2); print(n, jax.device_count())"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["2", "2"]
