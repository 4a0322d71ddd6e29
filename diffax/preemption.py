"""Preemption: SIGTERM stops training at a step boundary all processes agree on."""

import contextlib
import signal
import threading

import jax

# Exit status of a run stopped by preemption after saving its checkpoint (EX_TEMPFAIL: retry).
PREEMPTED_EXIT_CODE = 75


class Preempted(Exception):
    """Stopped on SIGTERM: at `step` after its checkpoint was written, or (step None) outside the
    training steps, while compiling or evaluating, with the checkpoints left as they were."""

    def __init__(self, step: int | None):
        if step is None:
            message = (
                "Preempted outside the training steps; checkpoints unchanged; rerun to resume."
            )
        else:
            message = f"Preempted: checkpoint saved at step {step}; rerun to resume."
        super().__init__(message)
        self.step = step


class PreemptionGuard:
    """Catches SIGTERM; `should_stop(step)` is True at the step where training must save and stop.

    Inside `deferred()` (the training steps) the signal only sets a flag, so the loop saves at the
    next step boundary; elsewhere (compiling, restoring, evaluating: nothing unsaved) it raises
    Preempted at once. With several processes JAX's preemption sync point makes every process stop
    at the same step (the coordination service relays the signal); alone, a flag set by the
    handler does. Use as a context manager: the previous handler comes back on exit.
    """

    def __init__(self):
        self._requested = threading.Event()
        self._deferred = False
        self._previous = None
        self._multi_process = jax.process_count() > 1
        if not self._multi_process and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def __enter__(self) -> "PreemptionGuard":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _handle(self, signum, frame):
        del signum, frame
        self._requested.set()
        if not self._deferred:
            raise Preempted(None)

    @contextlib.contextmanager
    def deferred(self):
        """Within the block a SIGTERM waits for should_stop; one that came before raises now."""
        if self._requested.is_set():
            raise Preempted(None)
        self._deferred = True
        try:
            yield self
        finally:
            self._deferred = False
        if self._requested.is_set():  # Came after the last should_stop: do not go on to eval.
            raise Preempted(None)

    def should_stop(self, step: int) -> bool:
        """Returns whether to checkpoint and stop after `step` (no device sync)."""
        if self._multi_process:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self._requested.is_set()

    def close(self) -> None:
        """Restores the previous SIGTERM handler."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
