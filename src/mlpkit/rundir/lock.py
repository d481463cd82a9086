"""One process at a time in a run directory: an exclusive flock on run/.lock.

The kernel drops an flock when its process dies, however it dies, so a lock is never stale:
a run whose run.json says running while nobody holds its lock belongs to a dead process.
The lock is a regular file in the run, never followed through a link (taking it truncates and
writes it, which must never reach a file elsewhere) and never a FIFO or device waited on.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlpkit.errors import Problem, RunDirError
from mlpkit.reading import kind_of
from mlpkit.rundir import runs

# Never through a link; never waiting on a FIFO.
_FLAGS = os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


@contextmanager
def hold(run_dir: Path) -> Iterator[None]:
    """Hold the run's lock for the duration of the block.

    Raises:
        RunDirError: another process holds it (named by pid, host and start time), or .lock
            is a link, a FIFO or a device.
        EnvironmentFault: the lock file cannot be created.
    """
    path = run_dir / runs.LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _FLAGS, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _not_a_lock(path, "a link") from None
        raise runs.write_fault(exc, path) from None
    try:
        kind = kind_of(os.fstat(fd).st_mode)
        if kind is not None:
            raise _not_a_lock(path, kind)
        if not _take(fd):
            raise RunDirError(
                Problem(
                    f"is locked by {_holder(path)}",
                    file=str(run_dir),
                    hint="wait for that process to finish, or stop it first",
                )
            )
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": runs.now()}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        except OSError as exc:
            raise runs.write_fault(exc, path) from None
        yield
    finally:
        os.close(fd)  # releases the flock


def _not_a_lock(path: Path, kind: str) -> RunDirError:
    return RunDirError(
        Problem(
            f"is {kind}, not the regular file mlpkit locks",
            file=str(path),
            hint="remove it; mlpkit creates the lock itself",
        )
    )


def _take(fd: int, tries: int = 10) -> bool:
    """The exclusive lock, retried for ~0.2 s: `mlpkit runs` takes a shared one for an instant."""
    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt < tries - 1:
                time.sleep(0.02)
    return False


def is_held(run_dir: Path) -> bool:
    """Whether a live process holds the run's lock (checked by trying to take it)."""
    try:
        fd = os.open(run_dir / runs.LOCK, os.O_RDONLY | _FLAGS)
    except OSError:
        return False  # none, or a link: no live process holds either (hold refuses them)
    try:
        if kind_of(os.fstat(fd).st_mode) is not None:
            return False
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _holder(path: Path) -> str:
    holder = runs.read_json_or_empty(path)  # {} while the holder has yet to write itself
    if not {"pid", "host", "since"} <= holder.keys():
        return "another process"
    return f"process {holder['pid']} on {holder['host']} since {holder['since']}"
