"""Entry point: `python -m diffax.main --config=configs/digits.py --workdir=DIR [--mode=...]`.

Kept short on purpose: flags, distributed start-up, then one call into the library. Wrong input
(a flag, a config field, a file) stops the run with one sentence, `diffax: error: ...`, and exit
status 1; the traceback goes to the workdir's log, or to the console with --verbose.
"""

import os
import sys
import tempfile
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file (with --config.a.b=v overrides).")
flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs, samples and eval files.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "sample"], "What to run.")
flags.DEFINE_integer(
    "num_samples", None, "sample mode: images to generate (default eval.num_samples)."
)
flags.DEFINE_string(
    "prompt", None, "sample mode: draw every sample from this caption (text-conditioned models)."
)
flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "on", "off"],
    "jax.distributed.initialize(): auto starts it on TPU pods, SLURM and when a "
    "coordinator address is given.",
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")
flags.DEFINE_integer(
    "cpu_devices",
    0,
    "JAX CPU devices per process: 0 makes one per core that the batches split over; 1 is JAX's "
    "default. XLA_FLAGS' --xla_force_host_platform_device_count wins over it.",
)
flags.DEFINE_string(
    "compilation_cache",
    None,
    "Folder of JAX's persistent compilation cache, so a second run skips compiling (default "
    "$DIFFAX_COMPILATION_CACHE or ~/.cache/diffax/jax); '' turns it off.",
)
flags.DEFINE_bool(
    "allow_config_change",
    False,
    "eval and sample modes: run although the config differs from the one saved with the "
    "checkpoint on fields that change what its parameters mean (the process, the model, the "
    "data's shape, the conditioning).",
)
flags.DEFINE_bool(
    "verbose",
    False,
    "Print every log line (other libraries' INFO too) and the tracebacks of errors on the "
    "console; without it they go to the workdir's log file only.",
)
FLAGS = flags.FLAGS

# Errors that mean "wrong input": one sentence and exit 1, never a traceback on the console.
INPUT_ERRORS = (ValueError, OSError, FloatingPointError)


def _fail(message: str, verbose: bool) -> None:
    """Prints one `diffax: error:` sentence (and the traceback with --verbose); exits 1."""
    from diffax import console

    if verbose:
        traceback.print_exc()
    print(f"diffax: error: {' '.join(message.split())}", file=sys.stderr)
    console.mute()
    sys.exit(1)


def _parse_flags(argv: list[str]) -> list[str]:
    """Parses the command line; a bad flag or config file is one sentence (flag_errors)."""
    from diffax import flag_errors

    if any(a in ("--help", "-h", "-?", "--helpshort", "--helpfull") for a in argv[1:]):
        app.usage(shorthelp="--helpfull" not in argv, writeto_stdout=True, exitcode=0)
    try:
        remaining = FLAGS(argv)
        for name in ("config", "workdir"):
            if FLAGS[name].value is None:
                raise flags.IllegalFlagValueError(f"--{name} is required")
        FLAGS.config.get("data")  # A config file loads lazily: make it fail here, if it fails.
        return remaining
    except Exception as error:  # noqa: BLE001 (any parse failure is the user's input)
        _fail(flag_errors.describe(error, argv), "--verbose" in argv)
    return []


def _check_workdir(workdir: str) -> None:
    """Raises NotADirectoryError in one sentence if the workdir is a file; creates nothing."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise NotADirectoryError(f"--workdir={workdir} is a file, not a folder.")


def _prepare_workdir(workdir: str) -> None:
    """Creates the workdir, or raises OSError in one sentence if it is not writable."""
    _check_workdir(workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.TemporaryFile(dir=workdir):
            pass
    except OSError as e:
        raise PermissionError(
            f"--workdir={workdir} cannot be written ({e.strerror}); give a writable folder."
        ) from None


def _check_input(config, workdir: str) -> int:
    """Runs every check that needs no workdir (so a rejected run creates nothing on disk);
    raises INPUT_ERRORS in one sentence; returns the CPU devices asked of JAX (0: left alone)."""
    from diffax import cpu_devices, distributed, validation  # Not the jobs: a quick refusal.

    if FLAGS.num_samples is not None and FLAGS.num_samples < 1:
        raise ValueError(f"--num_samples={FLAGS.num_samples} must be a positive integer.")
    _check_workdir(workdir)
    cpus = cpu_devices.configure(config, FLAGS.cpu_devices, processes=FLAGS.num_processes or 1)
    distributed.initialize(
        FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
    )
    validation.validate_config(config)
    if FLAGS.prompt is not None and FLAGS.mode != "sample":
        raise ValueError(f"--prompt is for --mode=sample, not --mode={FLAGS.mode}.")
    if FLAGS.mode == "sample":
        from diffax import evaluate

        evaluate.check_sample_mode(config, FLAGS.prompt)
        validation.check_num_samples(config, FLAGS.num_samples)
    if FLAGS.mode != "train":
        from diffax import restore

        restore.require_checkpoints(workdir, config)
        restore.check_saved_config(config, workdir, FLAGS.allow_config_change)
    if FLAGS.mode != "sample":  # Train and eval read the data: is it there? (imports TensorFlow)
        from diffax import input_pipeline

        input_pipeline.check_available(config.data)
    return cpus


def main(argv):
    del argv
    from diffax import console

    console.quiet(FLAGS.verbose)  # Libraries' INFO lines: the workdir's log file only.
    config, workdir = FLAGS.config, FLAGS.workdir
    try:
        cpus = _check_input(config, workdir)
        _prepare_workdir(workdir)  # The first thing written.
        lock = _lock_workdir(workdir)  # Before any log file or checkpoint manager.
    except INPUT_ERRORS as e:
        _fail(str(e), FLAGS.verbose)
    try:
        _run(config, workdir, cpus, lock)
    finally:
        if lock is not None:
            lock.release()


def _stop(line: str, status: int) -> None:
    """Logs the run's last console line (a warning) and exits with `status`."""
    from diffax import console

    logging.warning("%s", line)
    console.mute()
    sys.exit(status)


def _lock_workdir(workdir: str):
    """Returns the workdir's lock, taken by process 0 (None on the others); see workdir_lock."""
    import jax

    from diffax import workdir_lock

    if jax.process_index() != 0:
        return None
    return workdir_lock.acquire(workdir, FLAGS.mode)


def _run(config, workdir: str, cpus: int, lock) -> None:
    """Logs to the workdir and runs the mode; Preempted and wrong input exit as documented."""
    from diffax import compilation_cache, console, evaluate, preemption, train

    console.log_to(workdir, FLAGS.verbose)
    if lock is not None and lock.taken_over():
        logging.warning("%s", lock.taken_over())
    if cpus:
        logging.info("JAX CPU devices per process: %d (--cpu_devices).", cpus)
    cache = compilation_cache.configure(FLAGS.compilation_cache)
    logging.info(
        "Persistent compilation cache: %s.", cache or "off (--compilation_cache='' or unset)"
    )
    try:
        if FLAGS.mode == "train":
            train.train_and_evaluate(config, workdir)
        elif FLAGS.mode == "eval":
            evaluate.evaluate_checkpoint(config, workdir)
        else:
            evaluate.sample_checkpoint(config, workdir, FLAGS.num_samples, FLAGS.prompt)
    except preemption.Preempted as e:  # SIGTERM or Ctrl-C, saved or with nothing to save.
        _stop(str(e), e.exit_code)
    except preemption.StoppedAtOnce:
        _stop(
            "Stopped at once by a second Ctrl-C: the steps since the newest checkpoint are not "
            "saved; the checkpoints on disk are intact.",
            preemption.INTERRUPTED_EXIT_CODE,
        )
    except KeyboardInterrupt:  # Ctrl-C where no guard defers it (eval, sample, several hosts).
        _stop("Interrupted (Ctrl-C); checkpoints unchanged.", preemption.INTERRUPTED_EXIT_CODE)
    except INPUT_ERRORS as e:
        # One sentence on the console; the traceback goes to the log file in the workdir.
        FLAGS.alsologtostderr = False
        logging.error("Stopped: %s\n%s", e, traceback.format_exc(), extra=console.FILE_ONLY)
        _fail(str(e), FLAGS.verbose)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
