"""Stopping cleanly: SIGTERM (preemption) and Ctrl-C (SIGINT) save at the next step boundary.

SIGTERM exits with PREEMPTED_EXIT_CODE (75, EX_TEMPFAIL: a scheduler may retry); Ctrl-C with
INTERRUPTED_EXIT_CODE (130, the shell's 128 + SIGINT), so that a run the user stopped is not taken
for a preemption and restarted. A second Ctrl-C stops at once, unsaved (KeyboardInterrupt).
"""

import contextlib
import signal
import threading

import jax

# Exit status of a run stopped by preemption after saving its checkpoint (EX_TEMPFAIL: retry).
PREEMPTED_EXIT_CODE = 75
# Exit status of a run stopped by Ctrl-C (128 + SIGINT, as a shell reports it).
INTERRUPTED_EXIT_CODE = 128 + signal.SIGINT


class Preempted(Exception):
    """Stopped on SIGTERM or Ctrl-C: at `step` after its checkpoint was written, or (step None)
    outside the training steps, while compiling or evaluating, with the checkpoints left as they
    were. `exit_code` is the process's exit status for it."""

    def __init__(self, step: int | None, signum: int = signal.SIGTERM):
        what = "Interrupted (Ctrl-C)" if signum == signal.SIGINT else "Preempted"
        if step is None:
            message = f"{what} outside the training steps; checkpoints unchanged; rerun to resume."
        else:
            message = f"{what}: checkpoint saved at step {step}; rerun to resume."
        super().__init__(message)
        self.step, self.signum = step, signum
        interrupted = signum == signal.SIGINT
        self.exit_code = INTERRUPTED_EXIT_CODE if interrupted else PREEMPTED_EXIT_CODE


class StoppedAtOnce(KeyboardInterrupt):
    """A Ctrl-C after the first signal: stopped where it came, the newest steps unsaved."""


class PreemptionGuard:
    """Catches SIGTERM and SIGINT; `should_stop(step)` is True at the step where training must
    save and stop, and `stopped(step)` is the Preempted to raise there.

    Inside `deferred()` (the training steps) the signal only sets a flag, so the loop saves at the
    next step boundary; elsewhere (compiling, restoring, evaluating: nothing unsaved) it raises
    Preempted at once. A SIGINT after the first signal raises StoppedAtOnce (a KeyboardInterrupt).
    With several processes JAX's preemption sync point makes every process stop at the same step
    (the coordination service relays SIGTERM) and SIGINT is left to Python (KeyboardInterrupt: a
    per-process flag would stop the processes at different steps); alone, a flag set by the
    handler does. Use as a context manager: the previous handlers come back on exit.
    """

    def __init__(self):
        self._requested = threading.Event()
        self._signum = signal.SIGTERM
        self._deferred = False
        self._previous = {}
        self._multi_process = jax.process_count() > 1
        if not self._multi_process and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)

    def __enter__(self) -> "PreemptionGuard":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _handle(self, signum, frame):
        del frame
        if signum == signal.SIGINT and self._requested.is_set():
            raise StoppedAtOnce  # The second Ctrl-C: at once, unsaved.
        if not self._requested.is_set():
            self._signum = signum
        self._requested.set()
        if not self._deferred:
            raise Preempted(None, self._signum)

    @contextlib.contextmanager
    def deferred(self):
        """Within the block a signal waits for should_stop; one that came before raises now."""
        if self._requested.is_set():
            raise Preempted(None, self._signum)
        self._deferred = True
        try:
            yield self
        finally:
            self._deferred = False
        if self._requested.is_set():  # Came after the last should_stop: do not go on to eval.
            raise Preempted(None, self._signum)

    def should_stop(self, step: int) -> bool:
        """Returns whether to checkpoint and stop after `step` (no device sync)."""
        if self._multi_process:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self._requested.is_set()

    def stopped(self, step: int) -> Preempted:
        """Returns the Preempted to raise after saving the checkpoint of `step`."""
        return Preempted(step, self._signum)

    def close(self) -> None:
        """Restores the previous SIGTERM and SIGINT handlers."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
