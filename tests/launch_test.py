"""Tests of launch/*.sh: dry runs print the launcher command; real runs run exactly that command.

Real runs use fake `gcloud`, `sbatch` and `python3` executables placed first on PATH, which only
record the arguments (or stdin) they were given, so nothing is contacted or trained.
"""

import os
import pathlib
import shlex
import stat
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
CONFIG = "configs/imagenet64.py"
WORKDIR = "gs://bucket/run 1"  # A space, to check the quoting.
EXTRA = ["--config.training.batch_size=256", "--config.model.unet.attention_resolutions=(16, 8)"]
LAUNCHER_ENV = (
    "DRY_RUN",
    "TPU_NAME",
    "TPU_ZONE",
    "TPU_PROJECT",
    "DIFFAX_REPO",
    "PYTHON",
    "NODES",
    "GPUS_PER_NODE",
    "TIME",
    "PARTITION",
    "ACCOUNT",
    "JOB_NAME",
    "CUDA_VISIBLE_DEVICES",
)


@pytest.fixture
def fake_bin(tmp_path):
    """Returns (bin dir, record file): fake gcloud/sbatch/python3 that only record their input."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "record"
    scripts = {
        # NUL-separated argv, so arguments with spaces or quotes survive intact.
        "gcloud": 'printf \'%s\\0\' "$@" > "$RECORD"',
        "python3": 'printf \'%s\\0\' "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}" "$@" '
        '> "$RECORD"',
        "sbatch": 'cat > "$RECORD"',
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/bash\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return bin_dir, record


def run_script(name, args, fake_bin=None, **env_overrides):
    """Runs launch/<name> with bash in a clean launcher environment; returns the result."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV}
    if fake_bin is not None:
        bin_dir, record = fake_bin
        env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
        env["RECORD"] = str(record)
    env.update(env_overrides)
    return subprocess.run(
        ["bash", str(LAUNCH / name), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


def recorded_argv(record):
    """Returns the argv a fake executable recorded."""
    return record.read_bytes().decode().split("\0")[:-1]


def main_argv(tokens):
    """Returns the tokens from `python3 -m diffax.main` on, checking that part is present."""
    i = tokens.index("-m")
    assert tokens[i - 1] == "python3" and tokens[i + 1] == "diffax.main"
    return tokens[i - 1 :]


def test_tpu_pod_dry_run_prints_gcloud_ssh_to_all_workers(fake_bin):
    result = run_script(
        "tpu_pod.sh",
        ["--dry-run", "--tpu=my-pod", "--zone=us-central2-b", CONFIG, WORKDIR, *EXTRA],
        fake_bin,
    )
    assert result.returncode == 0, result.stderr
    assert not fake_bin[1].exists()  # Nothing was run.
    tokens = shlex.split(result.stdout)
    assert tokens[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-pod"]
    assert "--zone=us-central2-b" in tokens and "--worker=all" in tokens
    (command,) = [t for t in tokens if t.startswith("--command=")]
    remote = shlex.split(command.removeprefix("--command="))
    assert remote[:3] == ["cd", "~/diffax", "&&"]
    assert main_argv(remote)[3:] == [f"--config={CONFIG}", f"--workdir={WORKDIR}", *EXTRA]


def test_tpu_pod_reads_name_and_zone_from_env_and_runs_the_printed_command(fake_bin):
    args = [CONFIG, WORKDIR, *EXTRA]
    env = {"TPU_NAME": "env-pod", "TPU_ZONE": "europe-west4-a", "DIFFAX_REPO": "/opt/diffax"}
    printed = run_script("tpu_pod.sh", args, fake_bin, DRY_RUN="1", **env)
    assert printed.returncode == 0, printed.stderr
    ran = run_script("tpu_pod.sh", args, fake_bin, **env)
    assert ran.returncode == 0, ran.stderr
    assert ["gcloud", *recorded_argv(fake_bin[1])] == shlex.split(printed.stdout)
    assert "env-pod" in printed.stdout and "--zone=europe-west4-a" in printed.stdout
    assert "cd /opt/diffax &&" in printed.stdout


def test_slurm_dry_run_prints_sbatch_script_with_srun(fake_bin):
    result = run_script(
        "slurm.sh",
        ["--dry-run", "--nodes=4", "--gpus-per-node=8", CONFIG, WORKDIR, *EXTRA],
        fake_bin,
    )
    assert result.returncode == 0, result.stderr
    assert not fake_bin[1].exists()
    lines = result.stdout.splitlines()
    assert lines[0] == "sbatch <<'SBATCH_EOF'" and lines[-1] == "SBATCH_EOF"
    assert "#SBATCH --nodes=4" in lines and "#SBATCH --gpus-per-node=8" in lines
    # One process per GPU: JAX's SLURM detection gives each process the GPU SLURM_LOCALID.
    assert "#SBATCH --ntasks-per-node=8" in lines
    assert "#SBATCH --signal=TERM@120" in lines  # Time to checkpoint before the time limit.
    (srun,) = [line for line in lines if line.startswith("srun ")]
    assert main_argv(shlex.split(srun))[3:] == [
        f"--config={CONFIG}",
        f"--workdir={WORKDIR}",
        *EXTRA,
    ]


def test_slurm_submits_the_printed_script(fake_bin):
    args = ["--partition=gpu", "--account=proj", CONFIG, WORKDIR, *EXTRA]
    printed = run_script("slurm.sh", args, fake_bin, DRY_RUN="1", NODES="2")
    assert printed.returncode == 0, printed.stderr
    ran = run_script("slurm.sh", args, fake_bin, NODES="2")
    assert ran.returncode == 0, ran.stderr
    script = "\n".join(printed.stdout.splitlines()[1:-1]) + "\n"
    assert fake_bin[1].read_text() == script
    assert "#SBATCH --nodes=2" in script and "#SBATCH --partition=gpu" in script
    assert "#SBATCH --account=proj" in script


def test_multi_gpu_dry_run_prints_one_python_process(fake_bin):
    result = run_script(
        "multi_gpu.sh", [CONFIG, WORKDIR, "--dry-run", *EXTRA], fake_bin, CUDA_VISIBLE_DEVICES="0,3"
    )
    assert result.returncode == 0, result.stderr
    assert not fake_bin[1].exists()
    tokens = shlex.split(result.stdout)
    assert tokens[:2] == ["env", "CUDA_VISIBLE_DEVICES=0,3"]
    flags = main_argv(tokens)[3:]
    assert flags[:2] == [f"--config={CONFIG}", f"--workdir={WORKDIR}"]
    assert flags[-len(EXTRA) :] == EXTRA  # Passthrough flags last, so they win.


def test_multi_gpu_runs_the_printed_command_with_the_chosen_gpus(fake_bin):
    args = ["--gpus=1,2", CONFIG, WORKDIR, *EXTRA]
    printed = run_script("multi_gpu.sh", args, fake_bin, DRY_RUN="1")
    ran = run_script("multi_gpu.sh", args, fake_bin)
    assert printed.returncode == 0 and ran.returncode == 0, (printed.stderr, ran.stderr)
    visible, *argv = recorded_argv(fake_bin[1])
    assert visible == "CUDA_VISIBLE_DEVICES=1,2"
    assert shlex.split(printed.stdout) == ["env", visible, "python3", *argv]


def test_multi_gpu_without_gpu_choice_leaves_cuda_visible_devices_unset(fake_bin):
    result = run_script("multi_gpu.sh", [CONFIG, WORKDIR], fake_bin)
    assert result.returncode == 0, result.stderr
    assert recorded_argv(fake_bin[1])[0] == "CUDA_VISIBLE_DEVICES=unset"


@pytest.mark.parametrize(
    "name,args",
    [
        ("tpu_pod.sh", ["--tpu=pod", "--zone=z", CONFIG]),  # No workdir.
        ("tpu_pod.sh", [CONFIG, WORKDIR]),  # No TPU name or zone.
        ("slurm.sh", []),
        ("slurm.sh", ["--bogus=1", CONFIG, WORKDIR]),
        ("multi_gpu.sh", [CONFIG]),
    ],
)
def test_bad_usage_exits_nonzero_with_usage_line(fake_bin, name, args):
    result = run_script(name, ["--dry-run", *args], fake_bin)
    assert result.returncode != 0
    assert f"usage: launch/{name}" in result.stderr
    assert result.stdout == ""
    assert not fake_bin[1].exists()
