"""One process at a time in a run directory: an exclusive flock on run/.lock.

The kernel drops an flock when its process dies, however it dies, so a lock is never stale:
a run whose run.json says running while nobody holds its lock belongs to a dead process.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlpkit.errors import Problem, RunDirError
from mlpkit.rundir import runs


@contextmanager
def hold(run_dir: Path) -> Iterator[None]:
    """Hold the run's lock for the duration of the block.

    Raises:
        RunDirError: another process holds it (named by pid, host and start time).
        EnvironmentFault: the lock file cannot be created.
    """
    path = run_dir / runs.LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise runs.write_fault(exc, path) from None
    try:
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
        fd = os.open(run_dir / runs.LOCK, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
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
