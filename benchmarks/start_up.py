"""Start-up of the main job: seconds from process start to the end of training step 1.

    python benchmarks/start_up.py --runs=2 [--config=configs/digits.py] [-- extra main flags]

Runs `python -m diffax.main --config=... --workdir=<new> --config.training.log_every=1
--config.training.num_steps=2 --compilation_cache=<C>` `--runs` times, every run on a new
workdir and the same new compilation-cache folder C (so run 1 compiles, later runs read the
cache), and prints, per run, when each console line appeared (seconds since the process
started) and the time of the first "step 1:" line, which the main job prints when step 1 is done.
The machine's load average is printed before each run; quote only runs on an idle machine.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_once(config: str, workdir: str, cache: str, extra: list[str]) -> tuple[float | None, list]:
    """Returns (seconds to the 'step 1:' line or None, [(seconds, line)] of every line)."""
    command = [
        sys.executable,
        "-m",
        "diffax.main",
        f"--config={config}",
        f"--workdir={workdir}",
        "--config.training.log_every=1",
        f"--compilation_cache={cache}",
        *extra,
    ]
    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines, first_step = [], None
    for line in process.stdout:
        elapsed = time.perf_counter() - start
        lines.append((elapsed, line.rstrip()))
        if first_step is None and "step 1:" in line:
            first_step = elapsed
            process.terminate()  # The start-up is measured; the rest is not.
    process.wait()
    return first_step, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/digits.py")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--show_lines", action="store_true", help="Print every console line.")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    scratch = tempfile.mkdtemp(prefix="diffax-start-up-")
    cache = os.path.join(scratch, "cache")
    for run in range(1, args.runs + 1):
        load = os.getloadavg()[0]
        first_step, lines = run_once(args.config, os.path.join(scratch, f"run{run}"), cache, extra)
        if args.show_lines:
            for elapsed, line in lines:
                print(f"  {elapsed:6.2f} s  {line[:150]}")
        said = f"{first_step:.1f} s" if first_step is not None else "no step 1 line"
        print(f"run {run} (load average {load:.2f} at start): process start -> step 1 done: {said}")
        compiled = [line for _, line in lines if "Compiled the train step" in line]
        if compiled:
            print(f"  {compiled[0].strip()[:160]}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
