"""Tests of diffax.tools.benchmark: a CPU smoke run of the CLI on configs/tiny.py, the peaks."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

from diffax.tools import benchmark

# One worker runs the module-scoped smoke run once (on two workers it ran twice).
pytestmark = pytest.mark.xdist_group("benchmark")

REPO = pathlib.Path(__file__).resolve().parents[1]
BATCH = 16  # configs/tiny.py's training.batch_size
NUM_SAMPLES = 8


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """Returns (record read from --out, stdout) of one quick CLI run on the 8 fake CPU devices."""
    out = tmp_path_factory.mktemp("bench") / "result.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffax.tools.benchmark",
            "--config=configs/tiny.py",
            "--steps=2",
            "--warmup_steps=1",
            "--ddpm_steps=1000",  # Capped at the tiny process's T = 20.
            "--ddim_steps=5",
            f"--num_samples={NUM_SAMPLES}",
            f"--out={out}",
        ],
        cwd=REPO,
        env=dict(os.environ),  # conftest.py's XLA_FLAGS (8 CPU devices) and JAX_PLATFORMS=cpu
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text()), result.stdout


def all_numbers(tree):
    """Yields every int/float leaf of a nested dict."""
    for value in tree.values():
        if isinstance(value, dict):
            yield from all_numbers(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield value


def test_record_has_the_documented_keys(smoke_run):
    record, _ = smoke_run
    assert set(record) >= {"config", "devices", "flops", "train", "sampling", "peak_memory_bytes"}
    assert set(record["train"]) >= {"step_time_s", "images_per_sec_per_device", "mfu"}
    assert set(record["sampling"]) == {"ddpm", "ddim"}
    for sampler in record["sampling"].values():
        assert set(sampler) >= {"steps", "images_per_sec_per_device", "flops_per_image", "mfu"}


def test_numbers_are_positive_and_finite(smoke_run):
    record, _ = smoke_run
    numbers = list(all_numbers(record))
    assert len(numbers) > 20
    assert all(math.isfinite(x) and x > 0 for x in numbers), record


def test_rates_are_consistent_with_step_time_and_devices(smoke_run):
    record, _ = smoke_run
    n = record["devices"]["num_devices"]
    assert n == 8
    train = record["train"]
    assert math.isclose(train["images_per_sec"], BATCH / train["step_time_s"], rel_tol=1e-9)
    assert math.isclose(train["images_per_sec_per_device"] * n, train["images_per_sec"])
    assert record["sampling"]["ddpm"]["steps"] == 20  # min(1000, T)
    assert record["sampling"]["ddim"]["steps"] == 5
    ddim = record["sampling"]["ddim"]
    assert math.isclose(ddim["images_per_sec"], NUM_SAMPLES / ddim["time_s"], rel_tol=1e-9)
    # configs/tiny.py keeps digits' guidance_scale = 1: two model calls per step.
    forward = record["flops"]["forward_per_image_analytic"]
    assert math.isclose(ddim["flops_per_image"], 2 * 5 * forward)


def test_analytic_flops_agree_with_xla_within_a_sane_band(smoke_run):
    # XLA adds elementwise work (norms, SiLU, softmax, the optimizer) and skips conv zero padding.
    flops = smoke_run[0]["flops"]
    assert 0.7 < flops["analytic_over_xla"] < 1.5
    assert math.isclose(
        flops["analytic_over_xla"],
        flops["forward_per_image_analytic"] / flops["forward_per_image_xla"],
    )
    assert 0.7 < flops["train_per_image_analytic"] / flops["train_per_image_xla"] < 1.5


def test_cpu_reports_null_mfu_and_memory_with_a_note(smoke_run):
    record, _ = smoke_run
    assert record["devices"]["platform"] == "cpu"
    assert record["devices"]["peak_flops_per_device"] is None
    assert record["train"]["mfu"] is None
    assert all(s["mfu"] is None for s in record["sampling"].values())
    assert record["peak_memory_bytes"] is None
    assert any("MFU is null" in note for note in record["notes"])


def test_stdout_has_the_json_and_a_one_line_summary(smoke_run):
    record, stdout = smoke_run
    *json_lines, summary = stdout.strip().splitlines()
    assert json.loads("\n".join(json_lines)) == record
    assert summary.startswith("8x cpu | train ") and "ddim-5" in summary


@pytest.mark.parametrize("kind", list(benchmark.PEAK_FLOPS))
def test_every_device_kind_finds_its_own_peak_not_a_shorter_name(kind):
    """The table is searched by substring in order: "H100 PCIe" must not resolve to "H100"."""
    for dtype, key in (("bfloat16", "bf16"), ("float32", "fp32")):
        assert benchmark.peak_flops_per_device(kind, dtype) == (benchmark.PEAK_FLOPS[kind][key])


def test_nvidia_dense_bf16_peaks_are_twice_tf32_and_cpu_has_none():
    for kind, peaks in benchmark.PEAK_FLOPS.items():
        if kind.startswith(("H1", "H2", "A1")):
            assert peaks["bf16"] == pytest.approx(2 * peaks["fp32"], rel=2e-3), kind  # Rounded.
    assert benchmark.peak_flops_per_device("cpu", "bfloat16") is None
    assert benchmark.mfu(1e9, None) is None
