"""What a run prints: diffax's own lines and every library's warnings on the console, the rest in
the workdir's log file.

orbax, JAX and TensorFlow log dozens of INFO lines per checkpoint and compile (orbax alone ~170
for a tiny run); they go to `<workdir>/diffax.INFO` only. The console keeps the lines logged from
diffax's own files (progress, metrics, results, where things were written) and WARNING or worse
from anyone, without another library's traceback (in the file). Orbax's ERROR records, and
exceptions printed by native library threads, go to the file only: orbax raises the same error
where diffax waits for the save and reports it in one sentence. `--verbose` puts every line on
the console. A record logged with `extra=FILE_ONLY` (a traceback already said in one sentence)
goes to the file only, and after `mute()` (the run's last line said) nothing more is printed.
"""

import logging
import os
import sys
import threading

from absl import flags
from absl import logging as absl_logging

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
FILE_ONLY = {"console": False}  # `extra` of a record for the log file only.


def _ours(record: logging.LogRecord) -> bool:
    """Returns whether a record was logged from diffax's own files (or a logger named diffax*)."""
    return record.name.startswith("diffax") or record.pathname.startswith(_PACKAGE)


def _orbax_error(record: logging.LogRecord) -> bool:
    """Returns whether a record is an orbax ERROR: a failed save or read, once per thread.

    Orbax raises each such error to its caller too, where diffax reports it in one sentence (a
    full disk, a damaged checkpoint, a save that did not finish); on the console the records
    would only repeat it, with tracebacks. They stay in the log file."""
    if record.levelno != logging.ERROR:
        return False
    # asyncio's "Task exception was never retrieved" names the orbax coroutine in its message.
    orbax = f"{os.sep}orbax{os.sep}"
    return orbax in record.pathname or orbax in record.getMessage()


class ConsoleFilter(logging.Filter):
    """Passes records logged from diffax's files and other libraries' WARNING or worse; none
    once `mute` ran."""

    muted = False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.muted or not getattr(record, "console", True):
            return False
        if _ours(record):
            return True
        return record.levelno >= logging.WARNING and not _orbax_error(record)


class ConsoleFormatter(absl_logging.PythonFormatter):
    """absl's line format; another library's record without its traceback (in the log file)."""

    def format(self, record: logging.LogRecord) -> str:
        if _ours(record) or not (record.exc_info or record.exc_text or record.stack_info):
            return super().format(record)
        bare = logging.makeLogRecord(record.__dict__)
        bare.exc_info = bare.exc_text = bare.stack_info = None
        return super().format(bare)


_FILTER = ConsoleFilter()
_console_handler: logging.Handler | None = None


def quiet(verbose: bool) -> None:
    """Until `log_to` runs, absl's handler writes to the console: keep it to the filter's lines
    (with verbose, everything). Call first thing in main."""
    if not verbose:
        absl_logging.get_absl_handler().addFilter(_FILTER)


def log_to(workdir: str, verbose: bool) -> None:
    """Logs everything to `<workdir>/diffax.INFO` (absl's log file), and to the console the
    filter's lines (with verbose, everything)."""
    global _console_handler
    handler = absl_logging.get_absl_handler()
    handler.removeFilter(_FILTER)
    handler.use_absl_log_file("diffax", workdir)
    if verbose:
        flags.FLAGS.alsologtostderr = True
        return
    # A line that cannot be written (a full disk) is dropped, not a traceback on the console.
    logging.raiseExceptions = False
    sys.unraisablehook = _log_other_threads(sys.unraisablehook)
    if _console_handler is None:
        _console_handler = logging.StreamHandler(sys.stderr)
        _console_handler.setFormatter(ConsoleFormatter())
        _console_handler.addFilter(_FILTER)
        logging.getLogger().addHandler(_console_handler)


def _log_other_threads(previous):
    """Returns an unraisablehook sending what native threads cannot raise (tensorstore's
    callbacks into the event loop orbax closed after a failed save: dozens of tracebacks) to
    the log file only; the main thread's go to `previous`."""

    def hook(unraisable):
        if threading.current_thread() is threading.main_thread():
            return previous(unraisable)
        exc = unraisable.exc_value
        absl_logging.error(
            "Ignored in a library thread (%s):",
            unraisable.err_msg or "an exception",
            exc_info=(unraisable.exc_type, exc, unraisable.exc_traceback),
            extra=FILE_ONLY,
        )
        return None

    return hook


def mute() -> None:
    """Sends nothing more to the console (the log file still gets it): the run's last line is
    said, and what libraries log while exiting (orbax's abandoned tasks) would bury it."""
    _FILTER.muted = True
