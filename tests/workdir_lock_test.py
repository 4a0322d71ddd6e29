"""Tests of diffax.workdir_lock: one live run per workdir, a dead run's lock taken over."""

import os
import signal
import socket
import subprocess
import sys

import pytest

from diffax import workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("XLA_FLAGS", None)
    return env


def test_a_second_holder_is_refused_with_the_first_ones_pid_and_host(tmp_path):
    lock = workdir_lock.acquire(str(tmp_path), "train")
    try:
        with pytest.raises(workdir_lock.WorkdirInUseError) as refused:
            workdir_lock.acquire(str(tmp_path), "sample")  # flock: per open file, same process.
        message = str(refused.value)
        assert f"--workdir={tmp_path} is in use by process {os.getpid()} on " in message
        assert socket.gethostname() in message and "--mode=train" in message
    finally:
        lock.release()
    again = workdir_lock.acquire(str(tmp_path), "eval")  # Released: free, and nothing stale.
    assert again.taken_over() is None
    again.release()


def test_main_refuses_a_workdir_locked_by_another_process_and_writes_nothing(tmp_path):
    """The test process holds the lock; `python -m diffax.main` on the workdir stops at once."""
    lock = workdir_lock.acquire(str(tmp_path), "train")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "diffax.main", "--config=configs/tiny.py"]
            + [f"--workdir={tmp_path}", "--config.training.num_steps=2"],
            cwd=ROOT,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        lock.release()
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"diffax: error: --workdir={tmp_path} is in use by process ")
    assert f"process {os.getpid()} on {socket.gethostname()}" in last
    assert "Traceback" not in done.stderr
    # Refused before logging or checkpointing: the live run's files are left alone.
    assert sorted(os.listdir(tmp_path)) == [workdir_lock.LOCK_FILE]


def test_the_lock_of_a_killed_process_is_taken_over_and_said_so(tmp_path):
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys; from diffax import workdir_lock; "
            "workdir_lock.acquire(sys.argv[1], 'train'); print(os.getpid(), flush=True); "
            "os.kill(os.getpid(), 9)",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    pid = killed.stdout.strip()
    lock = workdir_lock.acquire(str(tmp_path), "train")  # The kernel freed the flock.
    try:
        line = lock.taken_over()
        assert line is not None and f"left by process {pid} on {socket.gethostname()}" in line
        with open(tmp_path / workdir_lock.LOCK_FILE) as f:
            assert f'"pid": {os.getpid()}' in f.read()  # Now names this process.
    finally:
        lock.release()
