"""diffax against PyTorch's openai/improved-diffusion, one model and the same work on each side.

`python -m benchmarks.peer_benchmark --peer=/path/to/improved-diffusion [--seconds=300]
[--repeats=2] [--out=F.json] [--device=cpu|gpu] [--dry_run]`, run from the repository root.

CPU (default): the U-Net of configs/digits.py made unconditional (755,298 parameters on both
sides), cosine T=500, learned-range variance with the hybrid loss, AdamW 1e-3 with 200 warm-up
steps and clipping at 1, EMA 0.999, batch 128 of the digits train split. Each side runs in its own
subprocess at its own library's defaults: no thread count, wait policy, affinity or XLA flag is
set unless a flag asks for it (`--threads`, `--omp_wait_policy`, `--xla_flags`), and then the
table's title and the JSON say so. The sides alternate, `--repeats` times each (diffax, peer,
diffax, peer); the table shows every run and the ratios use each side's better run. Each trains
until `--seconds` have passed since its launch (imports and compilation included), then times the
full-chain test bits/dim of the 360 test digits and DDIM-50 sampling with its EMA parameters, each
side with its own code: diffax `evaluators.bpd.evaluate_bpd` and `generate.Generator`;
improved-diffusion `calc_bpd_loop` and `ddim_sample_loop`. During each run the parent reads the
machine's busy CPU time (/proc/stat) and the worker's own (its rusage): when anything else took
more than `--contention_limit` of a core, the run and the table are marked contended, and such a
table is not a result to quote.

GPU (`--device=gpu`): `diffax.tools.benchmark.run` on configs/imagenet64.py (bf16), then
improved-diffusion's ImageNet-64 model trained in fp16 (its own `use_fp16` scheme: fp16 torso,
flat fp32 master weights, dynamic loss scale) and in bf16 (torch.autocast), with MFU, images/s,
peak memory and the XLA flags used. `--dry_run` prints the plan and runs nothing.

improved-diffusion is imported from `--peer` in the PyTorch subprocess (`--peer_python`, a Python
with torch and numpy); nothing of it is copied here. This module imports only the standard library
and NumPy at the top, so the PyTorch subprocess runs this same file without JAX installed.
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

DIFFAX = "diffax"
PEER = "improved-diffusion"
# jax.monitoring events whose durations add up to compilation (trace, lowering, XLA compile).
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
# Environment variables that change how a side's threads run; a default run removes any inherited
# ones, so each library runs as its users' would, and sets them only when a flag asks.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY")


# ----------------------------------------------------------------------------------------------
# Pure parts: the configs, their translation into improved-diffusion's arguments, the figures.


def cpu_config(data_dir: str | None = None):
    """Returns configs/digits.py made unconditional: the CPU comparison's model and process."""
    from configs import digits

    config = digits.get_config()
    config.model.class_cond = False  # improved-diffusion has no null label to match.
    config.training.label_dropout = 0.0
    config.training.ema_warmup = False  # improved-diffusion's update_ema has a fixed rate.
    config.eval.guidance_scale = 0.0
    if data_dir:
        config.data.data_dir = data_dir
    return config


def gpu_config():
    """Returns configs/imagenet64.py, the accelerator comparison's model and process."""
    from configs import imagenet64

    return imagenet64.get_config()


def attention_heads(config) -> int:
    """Returns the one head count every attention block of the diffax U-Net has.

    improved-diffusion's UNetModel takes a single num_heads for all of its attention blocks,
    while diffax may fix the channels per head; raises ValueError when the blocks differ.
    """
    m = config.model.unet
    size = config.data.image_size
    widths = [m.ch * m.channel_mult[-1]]  # The middle block always has attention.
    for level, mult in enumerate(m.channel_mult):
        if size // 2**level in m.attention_resolutions:
            widths.append(m.ch * mult)
    heads = {w // m.num_head_channels if m.num_head_channels > 0 else m.num_heads for w in widths}
    if len(heads) != 1:
        raise ValueError(
            f"diffax's attention blocks have {sorted(heads)} heads (channels {widths}); "
            "improved-diffusion's UNetModel takes one num_heads for all of them."
        )
    return heads.pop()


def peer_model_kwargs(config) -> dict[str, Any]:
    """Returns improved_diffusion.unet.UNetModel's keyword arguments for config's diffax U-Net.

    Attention resolutions become downsampling rates (image_size // resolution: improved-diffusion's
    `ds`); class-conditional models are refused (diffax adds a learned null label, so the
    parameter counts would differ).
    """
    m, data = config.model.unet, config.data
    if config.model.name != "unet":
        raise ValueError(
            f"model.name={config.model.name!r}: improved-diffusion has only the U-Net."
        )
    if config.model.class_cond:
        raise ValueError("class_cond=True: compare unconditional models (no null label there).")
    if m.resblock_updown:
        raise ValueError("resblock_updown=True: improved-diffusion's UNetModel lacks it.")
    if m.channel_mult[0] != 1:
        raise ValueError("channel_mult[0] != 1: improved-diffusion's input conv is ch wide.")
    learn_sigma = config.diffusion.var_type in ("learned", "learned_range")
    return {
        "in_channels": data.num_channels,
        "model_channels": m.ch,
        "out_channels": data.num_channels * (2 if learn_sigma else 1),
        "num_res_blocks": m.num_res_blocks,
        "attention_resolutions": [data.image_size // r for r in m.attention_resolutions],
        "dropout": m.dropout,
        "channel_mult": list(m.channel_mult),
        "num_heads": attention_heads(config),
        "num_heads_upsample": -1,
        "use_scale_shift_norm": m.use_scale_shift_norm,
        "use_checkpoint": config.model.remat,
    }


def peer_diffusion_kwargs(config, timestep_respacing: str = "") -> dict[str, Any]:
    """Returns improved_diffusion.script_util.create_gaussian_diffusion's keyword arguments.

    rescale_timesteps is False because diffax feeds the network the raw timestep 0..T-1.
    """
    d = config.diffusion
    loss = {"simple": "mse", "hybrid": "rescaled_mse", "vlb": "rescaled_kl"}.get(
        d.loss_type, d.loss_type
    )
    if d.var_type == "learned":
        raise ValueError("var_type='learned': improved-diffusion learns only the range.")
    if d.mean_type == "v":
        raise ValueError("mean_type='v': improved-diffusion predicts eps or x0 only.")
    if loss == "kl":
        raise ValueError("loss_type='kl': improved-diffusion's flags give only rescaled_kl.")
    return {
        "steps": d.num_timesteps,
        "learn_sigma": d.var_type == "learned_range",
        "sigma_small": d.var_type == "fixed_small",
        "noise_schedule": d.schedule,
        "use_kl": loss == "rescaled_kl",
        "predict_xstart": d.mean_type == "x0",
        "rescale_timesteps": False,
        "rescale_learned_sigmas": loss == "rescaled_mse",
        "timestep_respacing": timestep_respacing,
    }


def peer_training_kwargs(config) -> dict[str, Any]:
    """Returns the optimizer settings both sides use (AdamW, warm-up, clipping, EMA, batch)."""
    t = config.training
    return {
        "batch_size": t.batch_size,
        "learning_rate": t.learning_rate,
        "warmup_steps": t.warmup_steps,
        "adam_b1": t.adam_b1,
        "adam_b2": t.adam_b2,
        "weight_decay": t.weight_decay,
        "grad_clip": t.grad_clip,
        "ema_rate": t.ema_rates[0],
    }


def ratio(a: float | None, b: float | None) -> float | None:
    """Returns a / b, or None when either is missing or b is 0."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def window_rates(marks: Sequence[tuple[int, float]], batch_size: int) -> list[float]:
    """Returns images/s of each window between consecutive (steps done, time) marks."""
    return [
        (s1 - s0) * batch_size / (t1 - t0)
        for (s0, t0), (s1, t1) in zip(marks[:-1], marks[1:], strict=True)
        if t1 > t0
    ]


def median_rate(marks: Sequence[tuple[int, float]], batch_size: int) -> float | None:
    """Returns the median images/s over the windows (steady state), or None with no window."""
    rates = window_rates(marks, batch_size)
    return statistics.median(rates) if rates else None


def steps_at(marks: Sequence[tuple[int, float]], deadline: float) -> float:
    """Returns the steps done by `deadline`, interpolated linearly inside the window crossing it."""
    done, last = 0.0, None
    for steps, when in marks:
        if when <= deadline:
            done, last = float(steps), (steps, when)
            continue
        if last is not None and when > last[1]:
            done += (steps - last[0]) * (deadline - last[1]) / (when - last[1])
        break
    return done


def peak_flops(device_kind: str, dtype: str, table: dict[str, dict[str, float]]) -> float | None:
    """Returns the dense peak FLOP/s of a device for "bf16"/"fp16"/"fp32" compute from a table
    shaped like diffax.tools.benchmark.PEAK_FLOPS (fp16 runs at the bf16 peak), or None."""
    key = "fp32" if dtype in ("fp32", "float32") else "bf16"
    for name, peaks in table.items():
        if name.lower() in device_kind.lower():
            return peaks[key]
    return None


def _fmt(x: Any) -> str:
    """Returns a table cell: n/a, 1,234 for ints, three significant figures for floats."""
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    if isinstance(x, int):
        return f"{x:,}"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Returns a markdown table; None cells print as n/a, ratios as 0.00x (see `cpu_rows`)."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(cell) for cell in row) + " |")
    return "\n".join(lines)


def _x(r: float | None) -> str | None:
    return None if r is None else f"{r:.2f}x"


def _best(values: Sequence[Any], higher_is_better: bool) -> float | None:
    """Returns the better of the numeric values (max or min), or None when there is none."""
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not numbers:
        return None
    return max(numbers) if higher_is_better else min(numbers)


def cpu_rows(diffax_runs: Sequence[dict], peer_runs: Sequence[dict]) -> list[list[Any]]:
    """Returns the CPU table's rows: [quantity, each diffax run, each peer run, ratio].

    The ratio is diffax / PyTorch of each side's better run (the higher rate, the shorter time,
    the lower bits/dim), so one slow run of either side does not decide it.
    """
    first = diffax_runs[0]
    seconds = first["train"]["seconds"]
    bpd_label = "full-chain test bits/dim, 360 digits, T=500 (s, lower is better)"
    if first["bpd"]["timesteps"] < first["bpd"]["num_timesteps"]:
        bpd_label += f", extrapolated from {first['bpd']['timesteps']} timesteps"
    # (label, section, key, higher is better); key None: the section itself is the value.
    quantities = [
        ("parameters", "num_params", None, True),
        ("train images/s, steady state (median over windows)", "train", "images_per_sec", True),
        (f"train steps done {seconds:g} s after process start", "train", "steps_in_wall", True),
        ("train images/s over those seconds", "train", "images_per_sec_from_start", True),
        ("train images per CPU-second, all threads (median)", "train", "images_per_cpu_sec", True),
        ("process start -> first step done (s, lower is better)", "train", "first_step_s", False),
        ("  of which compilation (s)", "train", "compile_s", False),
        (bpd_label, "bpd", "full_chain_s", False),
        ("  test bits/dim of the EMA weights (lower is better)", "bpd", "bpd", False),
        ("  bits/dim timesteps/s (steady)", "bpd", "timesteps_per_sec", True),
        (f"DDIM-{first['ddim']['steps']} sampling images/s", "ddim", "images_per_sec", True),
        ("  first call, compile included (s)", "ddim", "first_call_s", False),
    ]
    out = []
    for label, section, key, higher in quantities:
        a, b = ([_cell(r, section, key) for r in runs] for runs in (diffax_runs, peer_runs))
        out.append([label, *a, *b, _x(ratio(_best(a, higher), _best(b, higher)))])
    # The machine during each run: the evidence that the comparison was not contended.
    for label, key in (
        ("load average (1 min) at the run's start", "load_avg_before"),
        ("other processes' CPU during the run (cores)", "other_cpu_cores"),
    ):
        cells = [_machine_cell(r.get("machine", {}), key) for r in (*diffax_runs, *peer_runs)]
        out.append([label, *cells, None])
    return out


def _cell(record: dict, section: str, key: str | None) -> Any:
    return record[section] if key is None else record[section].get(key)


def _machine_cell(machine: dict, key: str) -> Any:
    value = machine.get(key)
    if isinstance(value, list):
        return value[0] if value else None
    return None if value is None else round(value, 2)


def cpu_header(repeats_diffax: int, repeats_peer: int) -> list[str]:
    """Returns the CPU table's header for that many runs of each side."""
    return [
        "quantity",
        *(f"{DIFFAX} run {i + 1}" for i in range(repeats_diffax)),
        *(f"{PEER} run {i + 1}" for i in range(repeats_peer)),
        "diffax / PyTorch (better runs)",
    ]


def gpu_rows(diffax: dict, fp16: dict | None, bf16: dict | None) -> list[list[Any]]:
    """Returns the GPU table's rows [quantity, diffax bf16, torch fp16, torch bf16, ratios]."""

    def get(record, *keys):
        for key in keys:
            if record is None or key not in record:
                return None
            record = record[key]
        return record

    pct = lambda x: None if x is None else f"{100 * x:.1f}%"
    rows = [
        ("parameters", ("config", "num_params"), ("num_params",), None),
        ("train images/s", ("train", "images_per_sec"), ("train", "images_per_sec"), None),
        ("train MFU", ("train", "mfu"), ("train", "mfu"), pct),
        (
            "train peak memory (GiB)",
            ("train", "peak_memory_gib"),
            ("train", "peak_memory_gib"),
            None,
        ),
        (
            "DDIM-50 images/s",
            ("sampling", "ddim", "images_per_sec"),
            ("ddim", "images_per_sec"),
            None,
        ),
        ("DDIM-50 MFU", ("sampling", "ddim", "mfu"), ("ddim", "mfu"), pct),
    ]
    out = []
    for label, dkeys, pkeys, show in rows:
        a, b, c = get(diffax, *dkeys), get(fp16, *pkeys), get(bf16, *pkeys)
        numeric = show is None
        out.append(
            [
                label,
                a if numeric else show(a),
                b if numeric else show(b),
                c if numeric else show(c),
                _x(ratio(a, b)),
                _x(ratio(a, c)),
            ]
        )
    return out


# ----------------------------------------------------------------------------------------------
# The plan: which subprocesses run, with which environment and cores.


def pinned_cores(threads: int, available: Sequence[int]) -> list[int] | None:
    """Returns the first `threads` available cores for both sides; None for 0 (no pinning)."""
    if threads == 0:
        return None
    cores = sorted(available)
    if threads < 0 or threads > len(cores):
        raise ValueError(f"--threads={threads}: 0 (each library's default) or 1..{len(cores)}.")
    return cores[:threads]


def worker_env(
    side: str,
    device: str,
    threads: int,
    base: dict[str, str],
    xla_flags: str,
    omp_wait_policy: str = "",
) -> dict:
    """Returns the environment of one side's subprocess.

    By default it changes nothing that sets how a library runs: inherited thread and wait-policy
    variables (THREAD_ENV) and, for diffax, XLA_FLAGS are removed, so each side runs as its users'
    would. threads > 0 sets OMP/MKL/OpenBLAS thread counts for both sides; omp_wait_policy sets
    OMP_WAIT_POLICY for both (libgomp's default spins, which on a shared machine steals the cores
    PyTorch needs, and on an idle one saves wake-ups); xla_flags sets diffax's XLA_FLAGS. The
    persistent compilation cache is switched off so compile time is measured, not read back.
    """
    env = {k: v for k, v in base.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["TF_CPP_MIN_LOG_LEVEL"] = env.get("TF_CPP_MIN_LOG_LEVEL", "3")
    if device == "cpu":
        for name in THREAD_ENV:
            env.pop(name, None)
        if threads:
            for name in THREAD_ENV[:3]:
                env[name] = str(threads)
        if omp_wait_policy:
            env["OMP_WAIT_POLICY"] = omp_wait_policy
    if side == DIFFAX:
        env.pop("XLA_FLAGS", None)
        if xla_flags:
            env["XLA_FLAGS"] = xla_flags
        if device == "cpu":
            env["JAX_PLATFORMS"] = "cpu"
        else:
            env.pop("JAX_PLATFORMS", None)
    return env


def settings_label(
    threads: int, cores: Sequence[int] | None, omp_wait_policy: str, xla_flags: str
) -> str:
    """Returns what the run set on the sides, for the table's title: '' when nothing was set."""
    parts = []
    if threads:
        parts.append(f"{threads} threads each, pinned to cores {list(cores or [])}")
    if omp_wait_policy:
        parts.append(f"OMP_WAIT_POLICY={omp_wait_policy} on both sides")
    if xla_flags:
        parts.append(f"diffax XLA_FLAGS={xla_flags!r}")
    return "; ".join(parts)


def table_title(device: str, settings: str, contended_runs: Sequence[str] | None) -> str:
    """Returns the table's title: what was set (or that nothing was), and whether it was contended.

    contended_runs: names of the runs during which other processes took more than the limit
    (empty: none; None: not measured, e.g. without /proc/stat).
    """
    title = f"diffax vs {PEER} on the {device.upper()}, "
    title += f"settings: {settings}" if settings else "each side at its library's defaults"
    if contended_runs is None:
        title += " (contention not measured)"
    elif contended_runs:
        title = (
            f"CONTENDED, not a result to quote ({', '.join(contended_runs)}: other processes "
            f"took more than the limit): {title}"
        )
    return title


def build_plan(
    *,
    device: str,
    peer: str,
    peer_python: str,
    python: str,
    module_file: str,
    threads: int,
    cores: Sequence[int] | None,
    xla_flags: str,
    base_env: dict[str, str],
    omp_wait_policy: str = "",
    repeats: int = 1,
) -> list[dict[str, Any]]:
    """Returns the subprocesses to run one after the other: argv, env changes and cores each.

    On the CPU the two sides alternate `repeats` times (diffax, peer, diffax, peer, ...), so a
    drift of the machine's speed falls on both; each run carries its 1-based `repeat`.
    """
    torch_argv = [peer_python, module_file]
    diffax_argv = [python, "-m", "benchmarks.peer_benchmark"]
    runs = []
    if device == "cpu":
        for repeat in range(1, repeats + 1):
            runs.append({"side": DIFFAX, "argv": diffax_argv, "mode": None, "repeat": repeat})
            runs.append({"side": PEER, "argv": torch_argv, "mode": None, "repeat": repeat})
    else:
        runs.append({"side": DIFFAX, "argv": diffax_argv, "mode": None, "repeat": 1})
        runs += [
            {"side": PEER, "argv": torch_argv, "mode": "fp16", "repeat": 1},
            {"side": PEER, "argv": torch_argv, "mode": "bf16", "repeat": 1},
        ]
    for run in runs:
        env = worker_env(run["side"], device, threads, base_env, xla_flags, omp_wait_policy)
        run["argv"] = run["argv"] + [f"--worker={run['side']}"]
        run["env_changes"] = {
            k: v for k, v in env.items() if base_env.get(k) != v and k != "PYTHONPATH"
        }
        run["env_removed"] = sorted(set(base_env) - set(env))
        run["cores"] = list(cores) if cores is not None else None
        run["env"] = env
        run["peer"] = peer if run["side"] == PEER else None
    return runs


def describe_plan(runs: list[dict], spec: dict) -> str:
    """Returns the human-readable plan `--dry_run` prints."""
    lines = [
        f"device: {spec['device']}",
        "title: " + table_title(spec["device"], spec["settings"], []),
    ]
    if spec["device"] == "cpu":
        lines.append(
            f"work: configs/digits.py unconditional, batch {spec['training']['batch_size']}, "
            f"train until {spec['seconds']} s after each process starts, then bits/dim on the "
            f"360 test digits over {spec['bpd_timesteps'] or spec['diffusion']['steps']} of "
            f"{spec['diffusion']['steps']} timesteps and DDIM-{spec['ddim_steps']} on "
            f"{spec['num_samples']} samples"
        )
    else:
        lines.append(
            f"work: configs/imagenet64.py via diffax.tools.benchmark.run ({spec['gpu_steps']} "
            f"train steps, DDIM-{spec['ddim_steps']} on {spec['num_samples']} samples); "
            "improved-diffusion's ImageNet-64 model in fp16 (use_fp16) and bf16 (autocast)"
        )
    lines.append("improved-diffusion UNetModel(" + json.dumps(spec["model"]) + ")")
    lines.append("improved-diffusion create_gaussian_diffusion(" + json.dumps(spec["diffusion"]))
    lines.append("training: " + json.dumps(spec["training"]))
    for i, run in enumerate(runs, 1):
        mode = f" [{run['mode']}]" if run["mode"] else ""
        lines.append(f"{i}. {run['side']}{mode} run {run['repeat']}: {' '.join(run['argv'])}")
        lines.append(
            f"   cores: {run['cores'] if run['cores'] is not None else 'any (not pinned)'}"
        )
        changes = " ".join(f"{k}={v!r}" for k, v in sorted(run["env_changes"].items()))
        lines.append(f"   env: {changes or '(unchanged)'}")
        if run["env_removed"]:
            lines.append(f"   env removed: {' '.join(run['env_removed'])}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Both workers: a training loop clocked from the process launch.


def timed_training(step, sync, launch_time: float, seconds: float, window_steps: int) -> dict:
    """Runs `step()` until `seconds` after launch_time; `sync()` waits for the work queued.

    Marks (steps done, time) after the first step, then every window_steps steps; returns
    {"marks": [(steps, seconds since launch)], "cpu_marks": [(steps, process CPU seconds)],
    "steps": total}. The clock is checked only at marks, so asynchronous dispatch keeps
    overlapping steps inside a window.
    """
    step()
    sync()
    marks = [(1, time.time() - launch_time)]
    cpu_marks = [(1, time.process_time())]
    steps = 1
    while marks[-1][1] < seconds:
        for _ in range(window_steps):
            step()
        steps += window_steps
        sync()
        marks.append((steps, time.time() - launch_time))
        cpu_marks.append((steps, time.process_time()))
    return {"marks": marks, "cpu_marks": cpu_marks, "steps": steps}


def train_summary(run: dict, seconds: float, batch_size: int, compile_s: float | None) -> dict:
    """Returns the train section of a side's record from `timed_training`'s output."""
    marks = run["marks"]
    steps = steps_at(marks, seconds)
    return {
        "seconds": seconds,
        "batch_size": batch_size,
        "first_step_s": marks[0][1],
        "compile_s": compile_s,
        "images_per_sec": median_rate(marks[1:], batch_size) if len(marks) > 2 else None,
        # All threads' CPU time: less sensitive to other jobs on a shared machine than the
        # wall clock, but it counts spinning worker threads as work.
        "images_per_cpu_sec": (
            median_rate(run["cpu_marks"][1:], batch_size) if len(marks) > 2 else None
        ),
        "window_images_per_sec": window_rates(marks[1:], batch_size),
        "steps_in_wall": steps,
        "images_per_sec_from_start": steps * batch_size / seconds,
        "steps_run": run["steps"],
        "last_mark_s": marks[-1][1],
    }


def _load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_seconds_from_stat(stat: str) -> float:
    """Returns all CPUs' busy seconds from /proc/stat's text: user, nice, system, irq, softirq and
    steal (time the hypervisor gave this machine's cores to others) since boot; idle and iowait
    are not busy, and guest time is already inside user."""
    fields = [int(v) for v in stat.split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def other_cpu_cores(busy_s: float, own_s: float, wall_s: float) -> float:
    """Returns the cores' worth of CPU that others used over wall_s: the machine's busy seconds less
    this benchmark's own (parent and worker), per second."""
    return max(busy_s - own_s, 0.0) / max(wall_s, 1e-9)


class MachineClock:
    """Reads the machine's busy CPU time and this process tree's own around one worker's run."""

    def __init__(self, limit_cores: float):
        self.limit_cores = limit_cores

    @staticmethod
    def _busy() -> float | None:
        try:
            with open("/proc/stat") as f:
                return cpu_seconds_from_stat(f.read())
        except OSError:  # No /proc (macOS): contention is not measured.
            return None

    @staticmethod
    def _own() -> float:
        self_usage = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # Waited-for workers.
        return sum(u.ru_utime + u.ru_stime for u in (self_usage, children))

    def __enter__(self):
        self.load_before = _load_avg()
        self.busy, self.own, self.start = self._busy(), self._own(), time.time()
        return self

    def __exit__(self, *exc):
        wall = time.time() - self.start
        busy = self._busy()
        self.record = {"load_avg_before": self.load_before, "load_avg_after": _load_avg()}
        self.record["wall_s"] = wall
        if busy is None or self.busy is None:
            self.record.update(other_cpu_cores=None, contended=None)
            return
        other = other_cpu_cores(busy - self.busy, self._own() - self.own, wall)
        self.record.update(other_cpu_cores=other, contended=other > self.limit_cores)


# ----------------------------------------------------------------------------------------------
# The diffax subprocess.


class _CompileClock:
    """Adds up JAX's tracing, lowering and XLA compile durations while active."""

    def __init__(self):
        self.seconds = 0.0

    def _listen(self, event: str, duration: float, **kwargs) -> None:
        del kwargs
        if event in COMPILE_EVENTS:
            self.seconds += duration

    def __enter__(self):
        import jax

        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc):
        from jax._src import monitoring

        monitoring.unregister_event_duration_listener(self._listen)


def diffax_cpu_worker(spec: dict, launch_time: float) -> dict:
    """Trains, evaluates bits/dim and samples with diffax; returns the side's record."""
    import jax
    import jaxlib.version

    from diffax import (
        build,
        cpu_devices,
        input_pipeline,
        models,
        schedules,
        sharding,
        tasks,
        train,
    )
    from diffax.evaluators import bpd as bpd_evaluator
    from diffax.tools import benchmark, flops

    config = cpu_config(spec["data_dir"])
    cpu_devices.configure(config)  # One device per pinned core, as `python -m diffax.main` does.
    batch_size = spec["training"]["batch_size"]
    trainer = train.Trainer(config)
    state = trainer.init()
    start = time.time()
    step_fn = trainer.compile(batch_size)
    compile_s = time.time() - start
    batches = input_pipeline.create_train_iterator(config.data, batch_size, seed=config.seed)
    holder = {"state": state, "metrics": None}

    def step():
        batch = sharding.global_batch(next(batches), trainer.mesh)
        holder["state"], holder["metrics"] = step_fn(holder["state"], batch)

    run = timed_training(
        step,
        lambda: jax.block_until_ready(holder["metrics"]),
        launch_time,
        spec["seconds"],
        spec["window_steps"],
    )
    state = holder["state"]
    params = tasks.eval_params(state, config)
    record = {
        "side": DIFFAX,
        "num_params": models.count_params(state.params),
        "train": train_summary(run, spec["seconds"], batch_size, compile_s),
        "final_loss": float(holder["metrics"]["loss"]),
        "versions": {"jax": jax.__version__, "jaxlib": jaxlib.version.__version__},
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "device_kind": jax.devices()[0].device_kind,
        "num_devices": jax.device_count(),
    }
    shape = build.image_shape(config)
    record["train"]["flops_per_image"] = flops.train_flops_per_image(trainer.model, shape)

    # Bits/dim: the whole chain, or K evenly spaced timesteps of it (the same per-step work).
    num_timesteps = config.diffusion.num_timesteps
    k = spec["bpd_timesteps"] or num_timesteps
    process = trainer.process
    if k < num_timesteps:
        process = process.respace(schedules.space_timesteps(num_timesteps, str(k)))
    with config.unlocked():
        config.eval.batch_size = 360  # The whole test split in one batch, as configs/digits.py.
    with _CompileClock() as clock:
        start = time.time()
        bpd = bpd_evaluator.evaluate_bpd(config, trainer.model, process, trainer.mesh, params)
        wall = time.time() - start
    record["bpd"] = _bpd_section(wall, clock.seconds, k, num_timesteps, bpd["num_examples"])
    record["bpd"]["bpd"] = bpd["bpd"]

    with config.unlocked():
        config.eval.batch_size = spec["num_samples"]
    ddim = benchmark.benchmark_sampler(
        config, trainer, params, "ddim", spec["ddim_steps"], spec["num_samples"]
    )
    record["ddim"] = {
        "steps": ddim["steps"],
        "num_samples": spec["num_samples"],
        "first_call_s": ddim["compile_and_first_s"],
        "time_s": ddim["time_s"],
        "images_per_sec": ddim["images_per_sec"],
    }
    return record


def _bpd_section(wall: float, compile_s: float, k: int, num_timesteps: int, n: int) -> dict:
    """Returns the bits/dim timing: measured over k timesteps, full_chain_s scaled to all T."""
    steady = max(wall - compile_s, 1e-9)
    return {
        "timesteps": k,
        "num_timesteps": num_timesteps,
        "num_examples": n,
        "wall_s": wall,
        "compile_s": compile_s,
        "timesteps_per_sec": k / steady,
        # Extrapolated when k < T: compile once plus T steps at the measured steady rate.
        "full_chain_s": compile_s + steady * num_timesteps / k,
        "extrapolated": k < num_timesteps,
    }


def diffax_gpu_worker(spec: dict) -> dict:
    """Returns diffax.tools.benchmark.run's record on configs/imagenet64.py, plus the flags."""
    import jax
    import jaxlib.version

    from diffax.tools import benchmark

    config = gpu_config()
    record = benchmark.run(
        config,
        steps=spec["gpu_steps"],
        warmup_steps=spec["gpu_warmup_steps"],
        batch_size=spec["training"]["batch_size"],
        ddpm_steps=spec["gpu_ddpm_steps"],
        ddim_steps=spec["ddim_steps"],
        num_samples=spec["num_samples"],
    )
    record["side"] = DIFFAX
    record["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    record["jax_default_matmul_precision"] = jax.config.jax_default_matmul_precision
    record["versions"] = {"jax": jax.__version__, "jaxlib": jaxlib.version.__version__}
    memory = record["train"].get("peak_memory_bytes")
    record["train"]["peak_memory_gib"] = None if memory is None else memory / 2**30
    record["summary"] = benchmark.summary(record)
    return record


# ----------------------------------------------------------------------------------------------
# The PyTorch subprocess (torch and numpy only; improved-diffusion imported from spec["peer"]).


def _peer_modules(peer: str):
    """Returns improved-diffusion's modules, imported from the peer checkout."""
    # Running this file as a script puts benchmarks/ first on sys.path; the peer comes first.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.path.insert(0, peer)
    from improved_diffusion import fp16_util, gaussian_diffusion, nn, resample, script_util, unet

    return {
        "fp16_util": fp16_util,
        "gaussian_diffusion": gaussian_diffusion,
        "nn": nn,
        "resample": resample,
        "script_util": script_util,
        "unet": unet,
    }


def levels_log_likelihood(torch, num_levels: int):
    """Returns improved-diffusion's discretized_gaussian_log_likelihood(x, *, means, log_scales)
    for data on `num_levels` levels in [-1, 1] (its own assumes 256): log P(bin of x), in nats,
    bins of half-width 1 / (num_levels - 1), the end bins open, the tanh CDF approximation and
    1e-12 floor of its losses.py; with num_levels=256 it computes what the original does."""
    half = 1.0 / (num_levels - 1)

    def cdf(v):
        return 0.5 * (1.0 + torch.tanh(np.sqrt(2.0 / np.pi) * (v + 0.044715 * v**3)))

    def log_likelihood(x, *, means, log_scales):
        inv_std = torch.exp(-log_scales)
        cdf_upper = cdf(inv_std * (x - means + half))
        cdf_lower = cdf(inv_std * (x - means - half))
        log = lambda p: torch.log(torch.clamp(p, min=1e-12))
        return torch.where(
            x < -1.0 + half,
            log(cdf_upper),
            torch.where(x > 1.0 - half, log(1.0 - cdf_lower), log(cdf_upper - cdf_lower)),
        )

    return log_likelihood


def _torch_optimizer(torch, params, training: dict):
    """Returns (AdamW, LambdaLR) with linear warm-up from 0, as diffax's optax schedule."""
    opt = torch.optim.AdamW(
        params,
        lr=training["learning_rate"],
        betas=(training["adam_b1"], training["adam_b2"]),
        eps=1e-8,
        weight_decay=training["weight_decay"],
    )
    warmup = training["warmup_steps"]
    scale = (lambda s: min(s / warmup, 1.0)) if warmup > 0 else (lambda s: 1.0)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, scale)


def _ema_model(torch, model, ema_params):
    """Returns a copy of model holding the EMA parameters, in eval mode (no dropout)."""
    import copy

    ema_model = copy.deepcopy(model)
    with torch.no_grad():
        for p, e in zip(ema_model.parameters(), ema_params, strict=True):
            p.copy_(e.view_as(p))
    return ema_model.eval()


def torch_cpu_worker(spec: dict, launch_time: float) -> dict:
    """Trains, evaluates bits/dim and samples with improved-diffusion; returns the record."""
    import torch

    if spec["threads"]:  # Only when asked: by default PyTorch picks its own thread count.
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    np.random.seed(0)  # improved-diffusion's UniformSampler draws t with np.random.
    peer = _peer_modules(spec["peer"])
    # Its decoder assumes 256 levels, the digits have 17: both sides' hybrid loss (whose t = 0
    # term is the decoder) and bits/dim then use the same bins.
    peer["gaussian_diffusion"].discretized_gaussian_log_likelihood = levels_log_likelihood(
        torch, spec["num_levels"]
    )
    training = spec["training"]
    batch_size = training["batch_size"]
    arrays = np.load(spec["arrays"])
    train_images = torch.from_numpy(np.ascontiguousarray(arrays["train"].transpose(0, 3, 1, 2)))
    test_images = torch.from_numpy(np.ascontiguousarray(arrays["test"].transpose(0, 3, 1, 2)))

    model = peer["unet"].UNetModel(**spec["model"])
    diffusion = peer["script_util"].create_gaussian_diffusion(**spec["diffusion"])
    schedule_sampler = peer["resample"].UniformSampler(diffusion)
    params = list(model.parameters())
    ema = [p.detach().clone() for p in params]
    opt, lr_schedule = _torch_optimizer(torch, params, training)
    rng = np.random.default_rng(0)
    order, cursor = rng.permutation(len(train_images)), 0
    holder = {"loss": None}

    def step():
        nonlocal order, cursor
        if cursor + batch_size > len(order):  # A new epoch (the remainder is dropped).
            order, cursor = rng.permutation(len(train_images)), 0
        batch = train_images[order[cursor : cursor + batch_size]]
        cursor += batch_size
        model.train()
        opt.zero_grad(set_to_none=True)
        t, weights = schedule_sampler.sample(batch_size, torch.device("cpu"))
        losses = diffusion.training_losses(model, batch, t)
        loss = (losses["loss"] * weights).mean()
        loss.backward()
        if training["grad_clip"] > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, training["grad_clip"])
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        if torch.isfinite(norm):  # diffax skips non-finite updates; so does this side.
            opt.step()
            peer["nn"].update_ema(ema, params, rate=training["ema_rate"])
        lr_schedule.step()
        holder["loss"] = loss.detach()

    run = timed_training(step, lambda: None, launch_time, spec["seconds"], spec["window_steps"])
    record = {
        "side": PEER,
        "num_params": sum(p.numel() for p in params),
        "train": train_summary(run, spec["seconds"], batch_size, None),
        "final_loss": float(holder["loss"]),
        "versions": {"torch": torch.__version__},
        "torch_threads": torch.get_num_threads(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
    }
    ema_model = _ema_model(torch, model, ema)

    num_timesteps = spec["diffusion"]["steps"]
    k = spec["bpd_timesteps"] or num_timesteps
    bpd_diffusion = peer["script_util"].create_gaussian_diffusion(
        **{**spec["diffusion"], "timestep_respacing": "" if k == num_timesteps else str(k)}
    )
    start = time.time()
    out = bpd_diffusion.calc_bpd_loop(ema_model, test_images, clip_denoised=True)
    wall = time.time() - start
    record["bpd"] = _bpd_section(wall, 0.0, k, num_timesteps, len(test_images))
    record["bpd"]["bpd"] = float(out["total_bpd"].mean())  # On num_levels bins, as diffax's.

    ddim_diffusion = peer["script_util"].create_gaussian_diffusion(
        **{**spec["diffusion"], "timestep_respacing": f"ddim{spec['ddim_steps']}"}
    )
    shape = (spec["num_samples"], *test_images.shape[1:])
    times = []
    for _ in range(2):  # The first call as diffax's compile-and-first call, then the timed one.
        start = time.time()
        sample = ddim_diffusion.ddim_sample_loop(ema_model, shape, clip_denoised=True)
        times.append(time.time() - start)
    if not torch.isfinite(sample).all():
        raise FloatingPointError("improved-diffusion's DDIM produced non-finite samples")
    record["ddim"] = {
        "steps": ddim_diffusion.num_timesteps,
        "num_samples": spec["num_samples"],
        "first_call_s": times[0],
        "time_s": times[1],
        "images_per_sec": spec["num_samples"] / times[1],
    }
    return record


def torch_gpu_worker(spec: dict) -> dict:
    """Times improved-diffusion's ImageNet-64 model on CUDA in fp16 (use_fp16) or bf16."""
    import torch

    mode = spec["mode"]
    device = torch.device("cuda")
    torch.manual_seed(0)
    np.random.seed(0)
    peer = _peer_modules(spec["peer"])
    fp16 = peer["fp16_util"]
    training = spec["training"]
    batch_size = training["batch_size"]
    model = peer["unet"].UNetModel(**spec["model"]).to(device)
    diffusion = peer["script_util"].create_gaussian_diffusion(**spec["diffusion"])
    schedule_sampler = peer["resample"].UniformSampler(diffusion)
    model_params = list(model.parameters())
    num_params = sum(p.numel() for p in model_params)
    if mode == "fp16":
        # improved-diffusion's TrainLoop(use_fp16=True): fp16 torso, flat fp32 master weights.
        model.convert_to_fp16()
        master = fp16.make_master_params(model_params)
    else:
        master = model_params
    ema = [p.detach().clone() for p in master]
    opt, lr_schedule = _torch_optimizer(torch, master, training)
    size = spec["image_size"]
    gen = torch.Generator(device="cpu").manual_seed(0)
    images = torch.rand(batch_size, spec["model"]["in_channels"], size, size, generator=gen) * 2 - 1
    images = images.to(device)
    lg_loss_scale = 20.0  # TrainLoop's initial_lg_loss_scale.

    def step():
        nonlocal lg_loss_scale
        fp16.zero_grad(model_params)
        t, weights = schedule_sampler.sample(batch_size, device)
        if mode == "bf16":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                losses = diffusion.training_losses(model, images, t)
        else:
            losses = diffusion.training_losses(model, images, t)
        loss = (losses["loss"] * weights).mean()
        if mode == "fp16":
            (loss * 2**lg_loss_scale).backward()
            if any(not torch.isfinite(p.grad).all() for p in model_params):
                lg_loss_scale -= 1
                return
            fp16.model_grads_to_master_grads(model_params, master)
            master[0].grad.mul_(1.0 / 2**lg_loss_scale)
        else:
            loss.backward()
        if training["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(master, training["grad_clip"])
        opt.step()
        lr_schedule.step()
        peer["nn"].update_ema(ema, master, rate=training["ema_rate"])
        if mode == "fp16":
            fp16.master_params_to_model_params(model_params, master)
            lg_loss_scale += 1e-3  # TrainLoop's fp16_scale_growth.

    model.train()
    for _ in range(spec["gpu_warmup_steps"]):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(spec["gpu_steps"]):
        step()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    name = torch.cuda.get_device_name()
    peak = peak_flops(name, mode, spec["peak_flops_table"])
    per_sec = spec["gpu_steps"] * batch_size / elapsed
    train_flops = spec["flops"]["train_per_image"]
    record = {
        "side": PEER,
        "mode": mode,
        "num_params": num_params,
        "device_kind": name,
        "peak_flops": peak,
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda},
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "train": {
            "steps": spec["gpu_steps"],
            "step_time_s": elapsed / spec["gpu_steps"],
            "images_per_sec": per_sec,
            "mfu": None if peak is None else train_flops * per_sec / peak,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
            "lg_loss_scale": lg_loss_scale if mode == "fp16" else None,
        },
    }
    # DDIM sampling in the training precision (the fp16 torso stays fp16; bf16 by autocast).
    model.eval()
    ddim_diffusion = peer["script_util"].create_gaussian_diffusion(
        **{**spec["diffusion"], "timestep_respacing": f"ddim{spec['ddim_steps']}"}
    )
    shape = (spec["num_samples"], spec["model"]["in_channels"], size, size)
    times = []
    for _ in range(2):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=mode == "bf16"):
            sample = ddim_diffusion.ddim_sample_loop(model, shape, clip_denoised=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    ddim_flops = spec["flops"]["forward_per_image"] * ddim_diffusion.num_timesteps
    per_sec = spec["num_samples"] / times[1]
    record["ddim"] = {
        "steps": ddim_diffusion.num_timesteps,
        "first_call_s": times[0],
        "time_s": times[1],
        "images_per_sec": per_sec,
        "mfu": None if peak is None else ddim_flops * per_sec / peak,
        "finite": bool(torch.isfinite(sample).all()),
    }
    return record


def _torch_main(argv: Sequence[str]) -> int:
    """Entry of the PyTorch subprocess: `python peer_benchmark.py --worker=... --spec=F`."""
    args = dict(a[2:].split("=", 1) for a in argv[1:] if a.startswith("--") and "=" in a)
    with open(args["spec"]) as f:
        spec = json.load(f)
    launch_time = float(args["launch_time"])
    load_before = _load_avg()
    if spec["device"] == "cpu":
        record = torch_cpu_worker(spec, launch_time)
    else:
        record = torch_gpu_worker(spec)
    _write_record(record, load_before, args["result"])
    return 0


def _write_record(record: dict, load_before: list[float], path: str) -> None:
    """Adds the load averages around the work and the cores it could use; writes the JSON."""
    record["load_avg_before"], record["load_avg_after"] = load_before, _load_avg()
    record["cores"] = sorted(os.sched_getaffinity(0))
    with open(path, "w") as f:
        json.dump(record, f, indent=2)


# ----------------------------------------------------------------------------------------------
# The parent: flags, the plan, the subprocesses, the report.


def define_flags() -> None:
    """Defines the command-line flags (absl, as the other tools)."""
    from absl import flags

    flags.DEFINE_string("peer", None, "Checkout of openai/improved-diffusion (its root folder).")
    flags.DEFINE_string("peer_python", sys.executable, "Python with torch and numpy installed.")
    flags.DEFINE_enum("device", "cpu", ["cpu", "gpu"], "cpu: digits; gpu: imagenet64 on CUDA.")
    flags.DEFINE_float("seconds", 300.0, "CPU: train until this long after each process starts.")
    flags.DEFINE_integer(
        "threads",
        0,
        "CPU: 0 leaves each library's own thread count and affinity; N pins both sides to N cores "
        "and sets their thread counts (then named in the table's title).",
    )
    flags.DEFINE_integer("repeats", 2, "CPU: runs of each side, alternating (diffax, peer, ...).")
    flags.DEFINE_float(
        "contention_limit",
        0.1,
        "CPU: a run is contended when other processes used more than this many cores meanwhile.",
    )
    flags.DEFINE_integer("window_steps", 10, "Train steps between clock readings (CPU).")
    flags.DEFINE_integer(
        "bpd_timesteps", 0, "Bits/dim over this many evenly spaced timesteps (0: all T)."
    )
    flags.DEFINE_integer("ddim_steps", 50, "DDIM sampling steps.")
    flags.DEFINE_integer("num_samples", None, "Images per DDIM run (default cpu 360, gpu 256).")
    flags.DEFINE_string("data_dir", None, "TFDS data_dir of the digits (default TFDS's).")
    flags.DEFINE_string("xla_flags", "", "XLA_FLAGS for diffax ('' : none, JAX's defaults).")
    flags.DEFINE_string(
        "omp_wait_policy",
        "",
        "CPU: OMP_WAIT_POLICY for both sides; '' (default) leaves libgomp's own policy. PASSIVE "
        "helps PyTorch only on a machine others share; on an idle one it slows it.",
    )
    flags.DEFINE_integer("gpu_steps", 50, "GPU: timed train steps per side.")
    flags.DEFINE_integer("gpu_warmup_steps", 5, "GPU: untimed train steps first.")
    flags.DEFINE_integer("gpu_ddpm_steps", 50, "GPU: diffax benchmark.run's DDPM steps.")
    flags.DEFINE_string("out", None, "Write the JSON record here.")
    flags.DEFINE_bool("dry_run", False, "Print the plan and exit; runs nothing.")
    flags.DEFINE_enum("worker", None, [DIFFAX, PEER], "Internal: run one side.")
    flags.DEFINE_string("spec", None, "Internal: the worker's spec (JSON).")
    flags.DEFINE_string("result", None, "Internal: where the worker writes its record.")
    flags.DEFINE_float("launch_time", None, "Internal: time.time() when the parent launched it.")


def make_spec(device: str, flags_values: dict) -> dict:
    """Returns the spec every subprocess reads: translated model, process, optimizer, sizes."""
    config = cpu_config(flags_values.get("data_dir")) if device == "cpu" else gpu_config()
    return {
        "device": device,
        "peer": flags_values["peer"],
        "threads": flags_values["threads"],
        "repeats": flags_values["repeats"] if device == "cpu" else 1,
        "contention_limit": flags_values["contention_limit"],
        "omp_wait_policy": flags_values["omp_wait_policy"],
        "xla_flags": flags_values["xla_flags"],
        "seconds": flags_values["seconds"],
        "window_steps": flags_values["window_steps"],
        "bpd_timesteps": flags_values["bpd_timesteps"],
        "ddim_steps": flags_values["ddim_steps"],
        "num_samples": flags_values["num_samples"] or (360 if device == "cpu" else 256),
        "data_dir": flags_values.get("data_dir"),
        "image_size": config.data.image_size,
        "num_levels": config.data.num_levels,
        "model": peer_model_kwargs(config),
        "diffusion": peer_diffusion_kwargs(config),
        "training": peer_training_kwargs(config),
        "gpu_steps": flags_values["gpu_steps"],
        "gpu_warmup_steps": flags_values["gpu_warmup_steps"],
        "gpu_ddpm_steps": flags_values["gpu_ddpm_steps"],
    }


def _run_worker(run: dict, spec: dict, workdir: str, index: int) -> dict:
    """Runs one side's subprocess (pinned, its own environment) and returns its record."""
    spec_path = os.path.join(workdir, f"spec_{index}.json")
    result = os.path.join(workdir, f"result_{index}.json")
    with open(spec_path, "w") as f:
        json.dump({**spec, "mode": run["mode"]}, f)
    cores = run["cores"]
    preexec = (lambda: os.sched_setaffinity(0, cores)) if cores is not None else None
    name = f"{run['side']} {run['mode'] or ''} run {run['repeat']}".replace("  ", " ")
    print(f"[peer_benchmark] {name}: load {_load_avg()}", file=sys.stderr)
    with MachineClock(spec["contention_limit"]) as clock:
        launch = time.time()
        argv = run["argv"] + [
            f"--spec={spec_path}",
            f"--result={result}",
            f"--launch_time={launch}",
        ]
        proc = subprocess.run(
            argv, env=run["env"], preexec_fn=preexec, cwd=_repo_root(), check=False
        )
    if proc.returncode:
        raise RuntimeError(f"{run['side']} subprocess failed ({proc.returncode}): {argv}")
    with open(result) as f:
        record = json.load(f)
    record["process_wall_s"] = clock.record["wall_s"]
    record["machine"] = clock.record
    record["run_name"] = name
    print(f"[peer_benchmark] {name}: {json.dumps(clock.record)}", file=sys.stderr)
    return record


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_arrays(workdir: str) -> str:
    """Writes the digits train/test arrays ([-1, 1], NHWC float32) for the PyTorch side."""
    from diffax.metrics import digits_classifier

    train_images, _, test_images, _ = digits_classifier.load_digits_split()
    path = os.path.join(workdir, "digits.npz")
    np.savez(path, train=train_images, test=test_images)
    return path


def main(argv) -> None:
    """Plans, runs both sides one after the other, prints the table and writes the JSON."""
    del argv
    from absl import flags

    values = flags.FLAGS.flag_values_dict()
    if values["worker"] == DIFFAX:
        return _diffax_main(values)
    import jax

    jax.config.update("jax_platforms", "cpu")  # The parent never takes an accelerator.
    device = values["device"]
    if not values["peer"] and not values["dry_run"]:
        raise app_usage_error("--peer=/path/to/improved-diffusion is required.")
    spec = make_spec(device, values)
    cores = None
    if device == "cpu":
        cores = pinned_cores(values["threads"], os.sched_getaffinity(0))
    xla_flags = values["xla_flags"]
    omp = values["omp_wait_policy"] if device == "cpu" else ""
    spec["settings"] = settings_label(values["threads"], cores, omp, xla_flags)
    runs = build_plan(
        device=device,
        peer=values["peer"],
        peer_python=values["peer_python"],
        python=sys.executable,
        module_file=os.path.abspath(__file__),
        threads=values["threads"],
        cores=cores,
        xla_flags=xla_flags,
        base_env=dict(os.environ),
        omp_wait_policy=omp,
        repeats=spec["repeats"],
    )
    print(describe_plan(runs, spec))
    if values["dry_run"]:
        return None
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "device": device,
        "spec": spec,
        "load_avg_before": _load_avg(),
    }
    with tempfile.TemporaryDirectory(prefix="peer_benchmark_") as workdir:
        if device == "cpu":
            from diffax.datasets import digits

            digits.prepare_digits(values["data_dir"])  # Once, outside either side's clock.
            spec["arrays"] = _write_arrays(workdir)
        results = []
        for i, run in enumerate(runs):
            if device == "gpu" and run["side"] == PEER:
                spec["flops"] = {
                    "train_per_image": results[0]["flops"]["train_per_image_analytic"],
                    "forward_per_image": results[0]["flops"]["forward_per_image_analytic"],
                }
                from diffax.tools import benchmark

                spec["peak_flops_table"] = benchmark.PEAK_FLOPS
            results.append(_run_worker(run, spec, workdir, i))
    record["load_avg_after"] = _load_avg()
    measured = [r["machine"].get("contended") for r in results]
    contended = (
        None if None in measured else [r["run_name"] for r in results if r["machine"]["contended"]]
    )
    record["settings"] = spec["settings"]
    record["contended"] = None if contended is None else bool(contended)
    record["title"] = table_title(device, spec["settings"], contended)
    if device == "cpu":
        diffax = [r for r in results if r["side"] == DIFFAX]
        peer = [r for r in results if r["side"] == PEER]
        record.update({"diffax": diffax, "peer": peer})
        header = cpu_header(len(diffax), len(peer))
        table = markdown_table(header, cpu_rows(diffax, peer))
    else:
        diffax, fp16, bf16 = results
        record.update({"diffax": diffax, "peer_fp16": fp16, "peer_bf16": bf16})
        header = [
            "quantity",
            "diffax bf16",
            f"{PEER} fp16",
            f"{PEER} bf16",
            "diffax / fp16",
            "diffax / bf16",
        ]
        table = markdown_table(header, gpu_rows(diffax, fp16, bf16))
        print(f"diffax XLA_FLAGS: {diffax['xla_flags']!r}")
    record["table"] = table
    print(record["title"])
    print(table)
    print(f"load average before {record['load_avg_before']} after {record['load_avg_after']}")
    if values["out"]:
        with open(values["out"], "w") as f:
            json.dump(record, f, indent=2)
    return None


def app_usage_error(message: str):
    """Returns absl's UsageError (printed with the usage, exit status 1)."""
    from absl import app

    return app.UsageError(message)


def _diffax_main(values: dict) -> None:
    """Entry of the diffax subprocess."""
    with open(values["spec"]) as f:
        spec = json.load(f)
    load_before = _load_avg()
    if spec["device"] == "cpu":
        record = diffax_cpu_worker(spec, values["launch_time"])
    else:
        record = diffax_gpu_worker(spec)
    _write_record(record, load_before, values["result"])


if __name__ == "__main__":
    if f"--worker={PEER}" in sys.argv:
        sys.exit(_torch_main(sys.argv))
    from absl import app

    define_flags()
    app.run(main)
