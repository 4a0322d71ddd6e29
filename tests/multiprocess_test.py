"""Two processes with four CPU devices each train exactly like one process with eight."""

import os
import socket
import subprocess
import sys

import numpy as np

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


def test_sigterm_stops_two_processes_at_the_same_step_with_exit_75(tmp_path, data_dir):
    """JAX's preemption sync point: both processes save one checkpoint collectively and exit 75."""
    import time

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    workdir = str(tmp_path / "work")
    port = str(_free_port())
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "diffax.main",
                "--config=configs/tiny.py",
                f"--workdir={workdir}",
                f"--config.data.data_dir={data_dir}",
                "--config.training.num_steps=100000",
                "--config.training.log_every=1",
                "--config.training.checkpoint_every=100000",
                f"--coordinator_address=localhost:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]

    def logged_a_step():  # Process 0 logs the steps; each process has its own log file.
        names = os.listdir(workdir) if os.path.isdir(workdir) else []
        logs = [os.path.join(workdir, n) for n in names if ".log.INFO." in n]
        return any("step 1:" in open(path, errors="replace").read() for path in logs)

    deadline = time.time() + 600
    while time.time() < deadline:
        if logged_a_step():
            break
        assert all(p.poll() is None for p in procs), procs[0].stderr.read()[-3000:]
        time.sleep(0.2)
    for p in procs:
        p.send_signal(15)
    codes = [p.wait(timeout=180) for p in procs]
    assert codes == [75, 75], [p.stderr.read()[-2000:] for p in procs]
    steps = [
        int(name) for name in os.listdir(os.path.join(workdir, "checkpoints")) if name.isdigit()
    ]
    assert len(steps) == 1 and steps[0] >= 1  # One checkpoint, at the step both stopped at.
