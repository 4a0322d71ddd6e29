"""Preemption: SIGTERM stops training at a step boundary all processes agree on."""

import signal
import threading

import jax

# Exit status of a run stopped by preemption after saving its checkpoint (EX_TEMPFAIL: retry).
PREEMPTED_EXIT_CODE = 75


class Preempted(Exception):
    """Training stopped at `step` on SIGTERM, after its checkpoint was written."""

    def __init__(self, step: int):
        super().__init__(f"Preempted: checkpoint saved at step {step}; rerun to resume.")
        self.step = step


class PreemptionGuard:
    """Catches SIGTERM; `should_stop(step)` is True at the step where training must save and stop.

    With several processes JAX's preemption sync point makes every process stop at the same
    step (the coordination service relays the signal); alone, a flag set by the handler does.
    """

    def __init__(self):
        self._requested = threading.Event()
        self._previous = None
        self._multi_process = jax.process_count() > 1
        if not self._multi_process and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self._requested.set()

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
