"""One run per workdir: an OS lock on `<workdir>/diffax.lock` held for the whole run.

The lock is `fcntl.flock` on the file, so the kernel releases it when the holder exits, however it
exits (a crash, SIGKILL); the file's text (pid, host, start time, mode) only says who holds it. A
file whose lock is free was left by a run that is gone, and the next run takes it over. The lock
must be taken before orbax's CheckpointManager is created: orbax deletes unfinished
`*.orbax-checkpoint-tmp*` folders when it starts, which would destroy a live run's save in flight.

flock works on local disks and on NFS (Linux emulates it with POSIX locks there); it is not
available on object stores (gs://, s3://), where no lock is taken.
"""

import dataclasses
import fcntl
import json
import os
import socket
import time

LOCK_FILE = "diffax.lock"


class WorkdirInUseError(OSError):
    """Another live process holds the workdir's lock; the message names it."""


@dataclasses.dataclass
class WorkdirLock:
    """A held lock: `release()` it, or let the process exit (the kernel releases it then)."""

    path: str
    fd: int | None
    previous: dict | None  # What a run that is gone left in the file (taken over), else None.

    def taken_over(self) -> str | None:
        """Returns one line about the stale lock this run took over, None if there was none."""
        if not self.previous:
            return None
        return (
            f"Took over {self.path}, left by process {_holder(self.previous)}, which is no "
            "longer running."
        )

    def release(self) -> None:
        """Empties the file (a clean exit leaves no holder named) and releases the lock."""
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass  # The kernel still releases the lock below; the file only names a gone run.
        os.close(self.fd)  # Closing the last descriptor releases the flock.
        self.fd = None


def _holder(record: dict) -> str:
    """Returns 'PID on HOST (--mode=M since TIME)' of a lock file's record."""
    since = record.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "?"
    return (
        f"{record.get('pid', '?')} on {record.get('host', '?')} "
        f"(--mode={record.get('mode', '?')} since {when})"
    )


def _read(fd: int) -> dict | None:
    """Returns the record in the lock file, {} if it is not one, None if the file is empty."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode("utf-8", "replace").strip()
    if not text:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def acquire(workdir: str, mode: str) -> WorkdirLock:
    """Takes the workdir's lock for this process; returns it, or raises WorkdirInUseError.

    The workdir must exist. On an object store (a path with '://') returns a lock that holds
    nothing. Raises OSError (one sentence) if the lock file cannot be written.
    """
    path = os.path.join(workdir, LOCK_FILE)
    if "://" in workdir:
        return WorkdirLock(path, None, None)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read(fd) or {}
        os.close(fd)
        raise WorkdirInUseError(
            f"--workdir={workdir} is in use by process {_holder(holder)}; wait for that run to "
            "end or stop it, or give another --workdir."
        ) from None
    except OSError as e:
        os.close(fd)
        raise OSError(
            f"--workdir={workdir}: {path} cannot be locked ({e.strerror}); give a folder on a "
            "file system with locks."
        ) from None
    previous = _read(fd)
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.time(),
        "mode": mode,
    }
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(record) + "\n").encode())
    return WorkdirLock(path, fd, previous)
