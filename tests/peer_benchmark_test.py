"""Tests of diffax.tools.peer_benchmark's pure parts; neither torch nor improved-diffusion needed.

The config translation (diffax -> improved-diffusion arguments), the figures (ratios, medians,
steps by a deadline, extrapolated bits/dim), the table, the plan and `--dry_run`.
"""

import os
import pathlib
import subprocess
import sys
import time

import pytest

from benchmarks import peer_benchmark
from diffax.tools import benchmark

REPO = pathlib.Path(__file__).resolve().parents[1]
MODULE = REPO / "benchmarks" / "peer_benchmark.py"


def test_digits_translates_to_the_issue_model():
    kwargs = peer_benchmark.peer_model_kwargs(peer_benchmark.cpu_config())
    assert kwargs == {
        "in_channels": 1,
        "model_channels": 32,
        "out_channels": 2,  # Learned range: mean and variance channels.
        "num_res_blocks": 1,
        "attention_resolutions": [2],  # 4x4 maps of an 8x8 image: downsampling rate 2.
        "dropout": 0.1,
        "channel_mult": [1, 2],
        "num_heads": 2,  # 64 channels at 4x4 and in the middle, 32 per head.
        "num_heads_upsample": -1,
        "use_scale_shift_norm": True,
        "use_checkpoint": False,
    }


def test_imagenet64_translates_to_improved_diffusions_own_flags():
    # improved-diffusion's README flags for ImageNet-64 give, in script_util.create_model,
    # channel_mult (1, 2, 3, 4) and attention_ds 64 // 16, 64 // 8 with num_heads 4.
    kwargs = peer_benchmark.peer_model_kwargs(peer_benchmark.gpu_config())
    assert kwargs["attention_resolutions"] == [4, 8]
    assert kwargs["channel_mult"] == [1, 2, 3, 4]
    assert (kwargs["in_channels"], kwargs["out_channels"]) == (3, 6)
    assert (kwargs["model_channels"], kwargs["num_res_blocks"], kwargs["num_heads"]) == (128, 3, 4)


def test_hybrid_loss_is_rescaled_mse_and_timesteps_are_raw():
    kwargs = peer_benchmark.peer_diffusion_kwargs(peer_benchmark.cpu_config(), "ddim50")
    assert kwargs["steps"] == 500 and kwargs["noise_schedule"] == "cosine"
    assert kwargs["learn_sigma"] and kwargs["rescale_learned_sigmas"]
    assert not kwargs["use_kl"] and not kwargs["predict_xstart"] and not kwargs["sigma_small"]
    assert kwargs["rescale_timesteps"] is False  # diffax feeds t in 0..T-1 to the network.
    assert kwargs["timestep_respacing"] == "ddim50"


def test_vlb_loss_becomes_use_kl():
    config = peer_benchmark.cpu_config()
    config.diffusion.loss_type = "vlb"
    assert peer_benchmark.peer_diffusion_kwargs(config)["use_kl"]


def test_training_settings_are_the_configs():
    assert not peer_benchmark.cpu_config().training.ema_warmup  # update_ema's fixed rate.
    training = peer_benchmark.peer_training_kwargs(peer_benchmark.cpu_config())
    assert training == {
        "batch_size": 128,
        "learning_rate": 1e-3,
        "warmup_steps": 200,
        "adam_b1": 0.9,
        "adam_b2": 0.999,
        "weight_decay": 0.0,
        "grad_clip": 1.0,
        "ema_rate": 0.999,
    }


@pytest.mark.parametrize(
    "field, value",
    [
        ("model.class_cond", True),
        ("model.unet.resblock_updown", True),
        ("model.unet.channel_mult", (2, 2)),
        ("model.unet.attention_resolutions", (8, 4)),  # 1 head of 32 at 8x8, 2 of 32 at 4x4.
        ("diffusion.mean_type", "v"),
        ("diffusion.var_type", "learned"),
        ("diffusion.loss_type", "kl"),
    ],
)
def test_untranslatable_configs_are_refused(field, value):
    config = peer_benchmark.cpu_config()
    config.update_from_flattened_dict({field: value})
    with pytest.raises(ValueError):
        peer_benchmark.peer_model_kwargs(config)
        peer_benchmark.peer_diffusion_kwargs(config)


def test_ratio_handles_missing_and_zero():
    assert peer_benchmark.ratio(3.0, 2.0) == 1.5
    assert peer_benchmark.ratio(None, 2.0) is None
    assert peer_benchmark.ratio(1.0, 0.0) is None


def test_window_rates_and_their_median():
    marks = [(1, 10.0), (11, 12.0), (21, 13.0), (31, 15.0)]  # 10 steps of 4 images per window
    assert peer_benchmark.window_rates(marks, 4) == [20.0, 40.0, 20.0]
    assert peer_benchmark.median_rate(marks, 4) == 20.0
    assert peer_benchmark.median_rate(marks[:1], 4) is None


def test_steps_at_interpolates_inside_the_crossing_window():
    marks = [(1, 50.0), (11, 58.0), (21, 62.0)]
    assert peer_benchmark.steps_at(marks, 60.0) == pytest.approx(16.0)
    assert peer_benchmark.steps_at(marks, 58.0) == 11.0
    assert peer_benchmark.steps_at(marks, 40.0) == 0.0  # Nothing done before the first mark.
    assert peer_benchmark.steps_at(marks, 99.0) == 21.0


def test_bpd_extrapolation_keeps_compile_once():
    out = peer_benchmark._bpd_section(wall=10.0, compile_s=4.0, k=20, num_timesteps=500, n=360)
    assert out["timesteps_per_sec"] == pytest.approx(20 / 6)
    assert out["full_chain_s"] == pytest.approx(4.0 + 6.0 * 25)
    assert out["extrapolated"]
    full = peer_benchmark._bpd_section(wall=10.0, compile_s=4.0, k=500, num_timesteps=500, n=360)
    assert full["full_chain_s"] == pytest.approx(10.0) and not full["extrapolated"]


def test_timed_training_runs_past_the_deadline_in_windows():
    calls = []
    launch = time.time()
    run = peer_benchmark.timed_training(
        lambda: calls.append(time.sleep(0.002)), lambda: None, launch, 0.05, window_steps=3
    )
    assert run["steps"] == len(calls) and (run["steps"] - 1) % 3 == 0
    times = [t for _, t in run["marks"]]
    assert times == sorted(times) and times[-1] >= 0.05 and times[-2] < 0.05
    summary = peer_benchmark.train_summary(run, 0.05, batch_size=8, compile_s=None)
    assert 0 < summary["steps_in_wall"] <= run["steps"]
    assert summary["images_per_sec"] == pytest.approx(3 * 8 / 0.002, rel=0.9)


def test_peak_flops_reads_benchmarks_table():
    table = benchmark.PEAK_FLOPS
    assert peer_benchmark.peak_flops("NVIDIA H100 80GB HBM3", "fp16", table) == 989.4e12
    assert peer_benchmark.peak_flops("NVIDIA H200", "bf16", table) == 989.4e12
    assert peer_benchmark.peak_flops("NVIDIA A100-SXM4-80GB", "fp32", table) == 156e12
    assert peer_benchmark.peak_flops("cpu", "bf16", table) is None


def record(images_per_sec, bpd_s, ddim, num_params=755_298):
    """A side's record with the fields the CPU table reads."""
    return {
        "num_params": num_params,
        "train": {
            "seconds": 610.0,
            "images_per_sec": images_per_sec,
            "steps_in_wall": 100.0,
            "images_per_sec_from_start": 1.0,
            "images_per_cpu_sec": None,
            "first_step_s": 5.0,
            "compile_s": None,
        },
        "bpd": {"timesteps": 50, "num_timesteps": 500, "full_chain_s": bpd_s},
        "ddim": {"steps": 50, "images_per_sec": ddim, "first_call_s": 1.0},
    }


def test_cpu_table_shows_every_run_and_ratios_of_the_better_runs():
    diffax = [record(400.0, 80.0, 50.0), record(300.0, 60.0, 70.0)]
    peer = [record(200.0, 160.0, 10.0), record(250.0, 200.0, 14.0)]
    diffax[0]["machine"] = {"load_avg_before": [0.4, 0.2, 0.1], "other_cpu_cores": 0.0123}
    rows = peer_benchmark.cpu_rows(diffax, peer)
    by_label = {row[0]: row for row in rows}
    assert by_label["parameters"][1:] == [755_298] * 4 + ["1.00x"]
    train = by_label["train images/s, steady state (median over windows)"]
    assert train[1:5] == [400.0, 300.0, 200.0, 250.0] and train[5] == "1.60x"  # 400 / 250
    assert by_label["DDIM-50 sampling images/s"][5] == "5.00x"  # 70 / 14
    bpd = [row for row in rows if row[0].startswith("full-chain")][0]
    assert "extrapolated from 50 timesteps" in bpd[0] and bpd[5] == "0.38x"  # 60 s / 160 s
    assert by_label["load average (1 min) at the run's start"][1:] == [0.4, None, None, None, None]
    assert by_label["other processes' CPU during the run (cores)"][1] == 0.01
    header = peer_benchmark.cpu_header(2, 2)
    assert header[1:5] == [
        "diffax run 1",
        "diffax run 2",
        "improved-diffusion run 1",
        "improved-diffusion run 2",
    ]
    table = peer_benchmark.markdown_table(header, rows)
    lines = table.splitlines()
    assert len(lines) == len(rows) + 2 and lines[1] == "| --- |" + " --- |" * 5
    assert "| 755,298 | 755,298 | 755,298 | 755,298 | 1.00x |" in lines[2]
    assert "n/a" in table  # The missing CPU-time figures and compile times.


def test_the_better_run_is_the_higher_rate_or_the_lower_time():
    assert peer_benchmark._best([1.0, None, 3.0], higher_is_better=True) == 3.0
    assert peer_benchmark._best([1.0, None, 3.0], higher_is_better=False) == 1.0
    assert peer_benchmark._best([None, "x"], higher_is_better=True) is None


def test_busy_seconds_from_proc_stat_count_steal_but_not_idle_or_iowait():
    tick = os.sysconf("SC_CLK_TCK")
    stat = f"cpu  {tick} {tick} {tick} 999999 888888 {tick} {tick} {tick} 5 5\ncpu0 1 2 3\n"
    assert peer_benchmark.cpu_seconds_from_stat(stat) == pytest.approx(6.0)
    assert peer_benchmark.other_cpu_cores(busy_s=3.0, own_s=1.0, wall_s=4.0) == 0.5
    assert peer_benchmark.other_cpu_cores(busy_s=1.0, own_s=1.5, wall_s=4.0) == 0.0


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="no /proc/stat (not Linux)")
def test_a_busy_process_beside_the_run_marks_it_contended():
    spin = "import time\nend = time.time() + 5\nwhile time.time() < end: pass\n"
    busy = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.3)  # Let the other process start spinning.
        with peer_benchmark.MachineClock(limit_cores=0.1) as clock:
            time.sleep(1.5)  # The benchmark's own side is idle: only the other one works.
    finally:
        busy.kill()
        busy.wait()
    assert clock.record["other_cpu_cores"] > 0.5 and clock.record["contended"]
    assert len(clock.record["load_avg_before"]) == 3 and clock.record["wall_s"] >= 1.5


def test_the_title_names_what_was_set_and_contention():
    plain = peer_benchmark.table_title("cpu", "", [])
    assert "each side at its library's defaults" in plain and "CONTENDED" not in plain
    label = peer_benchmark.settings_label(2, [0, 1], "PASSIVE", "")
    assert label == "2 threads each, pinned to cores [0, 1]; OMP_WAIT_POLICY=PASSIVE on both sides"
    assert peer_benchmark.settings_label(0, None, "", "") == ""
    busy = peer_benchmark.table_title("cpu", label, ["diffax run 2"])
    assert busy.startswith("CONTENDED, not a result to quote (diffax run 2") and label in busy
    assert "not measured" in peer_benchmark.table_title("cpu", "", None)


def test_gpu_table_compares_with_both_torch_precisions():
    diffax = {
        "config": {"num_params": 121_060_998},
        "train": {"images_per_sec": 1800.0, "mfu": 0.45, "peak_memory_gib": 30.0},
        "sampling": {"ddim": {"images_per_sec": 90.0, "mfu": 0.36}},
    }
    fp16 = {
        "num_params": 121_060_998,
        "train": {"images_per_sec": 900.0, "mfu": 0.225, "peak_memory_gib": 20.0},
        "ddim": {"images_per_sec": 45.0, "mfu": 0.18},
    }
    rows = peer_benchmark.gpu_rows(diffax, fp16, None)
    by_label = {row[0]: row for row in rows}
    assert by_label["train images/s"][1:] == [1800.0, 900.0, None, "2.00x", None]
    assert by_label["train MFU"][1:4] == ["45.0%", "22.5%", None]


def plan(**kwargs):
    args = dict(
        device="cpu",
        peer="/src/improved-diffusion",
        peer_python="/venv/bin/python",
        python="/main/bin/python",
        module_file="/main/diffax/tools/peer_benchmark.py",
        threads=0,
        cores=None,
        xla_flags="",
        base_env={},
    )
    return peer_benchmark.build_plan(**{**args, **kwargs})


def test_the_default_plan_sets_nothing_and_alternates_the_sides():
    base = {
        "JAX_COMPILATION_CACHE_DIR": "/tmp/cache",
        "XLA_FLAGS": "--xla_dump_to=/tmp/d",
        "OMP_WAIT_POLICY": "PASSIVE",
        "OMP_NUM_THREADS": "1",
        "HOME": "/root",
    }
    runs = plan(base_env=base, repeats=2)
    assert [(r["side"], r["repeat"]) for r in runs] == [
        ("diffax", 1),
        ("improved-diffusion", 1),
        ("diffax", 2),
        ("improved-diffusion", 2),
    ]
    for run in runs:
        assert run["cores"] is None and run["env"]["HOME"] == "/root"
        for name in (*peer_benchmark.THREAD_ENV, "JAX_COMPILATION_CACHE_DIR"):
            assert name not in run["env"], name
        assert run["side"] != "diffax" or "XLA_FLAGS" not in run["env"]
        assert set(run["env_changes"]) <= {"TF_CPP_MIN_LOG_LEVEL", "JAX_PLATFORMS"}
    assert runs[1]["argv"][:2] == ["/venv/bin/python", "/main/diffax/tools/peer_benchmark.py"]
    assert runs[1]["argv"][-1] == "--worker=improved-diffusion"
    assert peer_benchmark.pinned_cores(0, {0, 1}) is None


def test_settings_asked_for_by_flags_reach_both_sides():
    runs = plan(
        threads=2,
        cores=peer_benchmark.pinned_cores(2, {3, 1, 2}),
        xla_flags="--xla_cpu_use_thunk_runtime=false",
        omp_wait_policy="PASSIVE",
        base_env={"XLA_FLAGS": "--xla_dump_to=/tmp/d"},
    )
    assert [r["side"] for r in runs] == ["diffax", "improved-diffusion"]
    assert runs[0]["cores"] == runs[1]["cores"] == [1, 2]
    assert runs[0]["env"]["XLA_FLAGS"] == "--xla_cpu_use_thunk_runtime=false"
    assert runs[0]["env"]["JAX_PLATFORMS"] == "cpu"
    assert all(r["env"]["OMP_NUM_THREADS"] == "2" for r in runs)
    assert all(r["env"]["OMP_WAIT_POLICY"] == "PASSIVE" for r in runs)
    with pytest.raises(ValueError):
        peer_benchmark.pinned_cores(3, {0, 1})


def test_gpu_plan_runs_torch_twice_unpinned():
    runs = peer_benchmark.build_plan(
        device="gpu",
        peer="/p",
        peer_python="/v/python",
        python="/m/python",
        module_file="/m/peer_benchmark.py",
        threads=2,
        cores=None,
        xla_flags="",
        base_env={},
    )
    assert [(r["side"], r["mode"]) for r in runs] == [
        ("diffax", None),
        ("improved-diffusion", "fp16"),
        ("improved-diffusion", "bf16"),
    ]
    assert all(r["cores"] is None for r in runs) and "XLA_FLAGS" not in runs[0]["env"]
    assert all("OMP_WAIT_POLICY" not in r["env"] for r in runs)


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_dry_run_prints_the_plan_without_torch_or_a_gpu(device):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.peer_benchmark",
            "--dry_run",
            f"--device={device}",
            "--peer=/nonexistent/improved-diffusion",
            "--peer_python=/nonexistent/python",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "/nonexistent/python" in out and "--worker=improved-diffusion" in out
    if device == "cpu":
        assert '"attention_resolutions": [2]' in out and "XLA_FLAGS" not in out
        assert "each side at its library's defaults" in out and "OMP_" not in out
        assert out.count("cores: any (not pinned)") == 4  # Two runs of each side by default.
    else:
        assert "[fp16]" in out and "[bf16]" in out and '"attention_resolutions": [4, 8]' in out


def test_the_pytorch_side_imports_without_jax():
    # The PyTorch subprocess runs this file with a Python that may have no JAX (or diffax).
    code = (
        "import sys, importlib.util\n"
        "for name in ('jax', 'flax', 'diffax', 'absl', 'ml_collections'):\n"
        "    sys.modules[name] = None\n"
        f"spec = importlib.util.spec_from_file_location('pb', {str(MODULE)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "print(module.median_rate([(0, 0.0), (1, 1.0)], 2))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "2.0"


def test_the_peers_decoder_on_the_digits_levels_is_diffaxs():
    """levels_log_likelihood (written for torch) on a NumPy stand-in against diffax's decoder."""
    import types

    import jax.numpy as jnp
    import numpy as np

    from diffax import distributions

    clamp = lambda p, min: np.maximum(p, min)  # noqa: A006 (torch.clamp's keyword)
    shim = types.SimpleNamespace(tanh=np.tanh, exp=np.exp, log=np.log, where=np.where, clamp=clamp)
    rng = np.random.default_rng(0)
    for levels in (17, 256):
        x = rng.integers(0, levels, 2000) / (levels - 1) * 2 - 1  # On the grid, both ends too.
        means = x + rng.normal(0, 0.1, x.shape)
        log_scales = rng.uniform(-4, -1, x.shape)
        ours = peer_benchmark.levels_log_likelihood(shim, levels)(
            x, means=means, log_scales=log_scales
        )
        want = distributions.discretized_gaussian_log_likelihood(
            jnp.asarray(x), jnp.asarray(means), jnp.asarray(log_scales), num_levels=levels
        )
        likely = np.asarray(want) > -10  # Away from the 1e-12 floors, which differ in detail.
        assert likely.mean() > 0.5
        np.testing.assert_allclose(ours[likely], np.asarray(want)[likely], rtol=1e-4, atol=1e-5)
