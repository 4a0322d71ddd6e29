"""Two processes with four CPU devices each: they train exactly like one process with eight, and
SIGTERM stops both at the same step with one checkpoint and the preemption exit status."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import SMALL_UNET

from diffax import preemption

# Never two multi-process runs at once: gloo's 30 s rendezvous fails on 2 busy cores.
pytestmark = pytest.mark.xdist_group("multiprocess")

WORKER = os.path.join(os.path.dirname(__file__), "multiprocess_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run(num_processes: int, tmp_path) -> dict:
    out_dir = tmp_path / f"out{num_processes}"
    out_dir.mkdir()
    workdir = str(tmp_path / f"work{num_processes}")
    port = str(_free_port())
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, str(out_dir), workdir, str(i), str(num_processes), port],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(num_processes)
    ]
    logs = [p.communicate(timeout=400)[0] for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    with np.load(out_dir / "result.npz") as f:
        return dict(f)


def test_two_processes_match_one_process_and_restore_their_checkpoint(tmp_path):
    one = _run(1, tmp_path)
    two = _run(2, tmp_path)
    assert bool(two["restored_equal"]) and bool(one["restored_equal"])
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)
    keys = [k for k in one if k.startswith("[")]
    assert keys and set(keys) == {k for k in two if k.startswith("[")}
    for k in keys:
        np.testing.assert_allclose(two[k], one[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_sigterm_stops_two_processes_at_one_step_with_exit_75(tmp_path):
    """`python -m diffax.main` as 2 processes x 4 CPU devices; SIGTERM to both while training."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    workdir, port = tmp_path / "work", _free_port()
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    logs = [tmp_path / f"process{i}.log" for i in range(2)]
    procs = []
    for i, log in enumerate(logs):
        command = [
            sys.executable, "-m", "diffax.main", "--config=configs/tiny.py",
            f"--workdir={workdir}", f"--config.data.data_dir={tmp_path / 'tfds'}",
            f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}",
            "--config.training.num_steps=100000", "--config.training.log_every=1",
            "--config.training.checkpoint_every=100000", *SMALL_UNET,
        ]  # fmt: skip
        with open(log, "w") as out:
            procs.append(subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=out))
    try:
        deadline = time.time() + 400
        while "step 2:" not in logs[0].read_text(errors="replace"):
            for p, log in zip(procs, logs, strict=True):
                assert p.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.time() < deadline, logs[0].read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    texts = [log.read_text(errors="replace") for log in logs]
    assert codes == [preemption.PREEMPTED_EXIT_CODE] * 2, [t[-2000:] for t in texts]
    steps = sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit())
    assert len(steps) == 1 and steps[0] >= 2, steps  # One checkpoint, at the agreed step.
    for text in texts:
        assert f"Preempted: checkpoint saved at step {steps[0]}" in text
