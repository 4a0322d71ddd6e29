"""Tests of diffax.console: which log records reach the console, and how."""

import logging
import os
import sys
import threading
import types

import pytest

from diffax import console

DIFFAX_FILE = os.path.join(os.path.dirname(console.__file__), "train.py")
ORBAX_FILE = os.path.join(sys.prefix, "site-packages", "orbax", "checkpoint", "manager.py")
JAX_FILE = os.path.join(sys.prefix, "site-packages", "jax", "_src", "xla_bridge.py")


def _record(level, path, message="m", name="absl", exc_info=None, **extra):
    record = logging.LogRecord(name, level, path, 1, message, (), exc_info)
    record.__dict__.update(extra)
    return record


@pytest.mark.parametrize(
    "record, shown",
    [
        (_record(logging.INFO, DIFFAX_FILE), True),  # Progress, metrics, results.
        (_record(logging.INFO, JAX_FILE, name="jax._src.xla_bridge"), False),
        (_record(logging.INFO, ORBAX_FILE), False),  # ~150 lines per tiny run.
        (_record(logging.WARNING, ORBAX_FILE), True),
        (_record(logging.WARNING, JAX_FILE, name="jax"), True),
        (_record(logging.ERROR, ORBAX_FILE), False),  # Re-raised to diffax, said once there.
        (_record(logging.ERROR, "/x/asyncio/base_events.py", "Task coro=</y/orbax/z.py>"), False),
        (_record(logging.ERROR, JAX_FILE), True),
        (_record(logging.ERROR, DIFFAX_FILE, **console.FILE_ONLY), False),
    ],
    ids=lambda value: "" if isinstance(value, bool) else f"{value.levelname}-{value.pathname}",
)
def test_the_console_shows_diffax_lines_and_other_libraries_warnings(record, shown):
    assert console.ConsoleFilter().filter(record) is shown


def test_after_mute_nothing_reaches_the_console():
    quiet = console.ConsoleFilter()
    quiet.muted = True
    assert not quiet.filter(_record(logging.ERROR, DIFFAX_FILE))


def test_another_librarys_traceback_stays_in_the_log_file():
    try:
        raise RuntimeError("deep inside")
    except RuntimeError:
        exc_info = sys.exc_info()
    formatter = console.ConsoleFormatter()
    theirs = formatter.format(_record(logging.WARNING, JAX_FILE, "it failed", exc_info=exc_info))
    ours = formatter.format(_record(logging.ERROR, DIFFAX_FILE, "it failed", exc_info=exc_info))
    assert theirs.endswith("] it failed") and "Traceback" not in theirs
    assert "Traceback" in ours and "deep inside" in ours


def test_what_a_library_thread_cannot_raise_goes_to_the_log_file_only(caplog):
    seen = []
    hook = console._log_other_threads(seen.append)
    unraisable = types.SimpleNamespace(
        exc_type=RuntimeError,
        exc_value=RuntimeError("Event loop is closed"),
        exc_traceback=None,
        err_msg=None,
        object=None,
    )
    with caplog.at_level(logging.ERROR):
        thread = threading.Thread(target=hook, args=(unraisable,))
        thread.start()
        thread.join()
    assert not seen  # Not the default hook: it would print the traceback on stderr.
    [record] = [r for r in caplog.records if "library thread" in r.getMessage()]
    assert record.exc_info[1] is unraisable.exc_value and not console.ConsoleFilter().filter(record)
    hook(unraisable)  # The main thread's go to the previous hook.
    assert seen == [unraisable]
