"""Bounded reading of every input file: configs, data, run files, checkpoints, predict input.

A path is read only if it is a regular file (a FIFO would block, a device like /dev/zero never
ends, a socket or folder has no contents to read) and only if its size, taken from the open
file itself, is within the limit the caller gives; then exactly that many bytes are read, so a
read never holds more than the file. The checks run on the opened descriptor (fstat), not on
the path, so a file swapped between the check and the read is still the file checked.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mlpkit.errors import MlpkitError, Problem

MB = 1024 * 1024
CONFIG_LIMIT = 4 * MB  # a config is a page of YAML; 4 MB holds a 100,000-name feature list
RUN_FILE_LIMIT = 256 * MB  # run.json, metrics.json, history.csv, preprocessing.json, ...

_KINDS = {
    stat.S_ISDIR: "a directory",
    stat.S_ISFIFO: "a FIFO (named pipe)",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISSOCK: "a socket",
}


class NotAFile(Exception):
    """The path is not a regular file (its kind in words) or is over the size limit."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def kind_of(mode: int) -> str | None:
    """What a file mode is in words, or None for a regular file."""
    for test, name in _KINDS.items():
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) else "not a regular file"


def size_text(size: int) -> str:
    """A byte count for people: 3.2 GB, 12.0 MB, 512 bytes."""
    for unit, scale in (("GB", 1024 * MB), ("MB", MB), ("kB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """The bytes of the regular file at `path`, if it holds at most `limit` bytes.

    Raises:
        NotAFile: not a regular file, or larger than `limit` (`what` names it in the message).
        OSError: the file is missing or cannot be opened or read (callers word these).
    """
    # O_NONBLOCK: opening a FIFO with no writer would otherwise wait forever.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        kind = kind_of(info.st_mode)
        if kind is not None:
            raise NotAFile(f"is {kind}, not a regular file")
        if info.st_size > limit:
            raise NotAFile(
                f"is {size_text(info.st_size)}; {what} may be at most {size_text(limit)}"
            )
        return _read_exactly(fd, info.st_size)
    finally:
        os.close(fd)


def _read_exactly(fd: int, size: int) -> bytes:
    """Up to `size` bytes (a file that shrank gives fewer; one that grew, no more)."""
    chunks, left = [], size
    while left > 0:
        chunk = os.read(fd, min(left, 8 * MB))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def check_regular(path: Path, error: type[MlpkitError], where: str | None = None) -> None:
    """Refuse a path that exists but is not a regular file, before anything opens it for
    reading in another way (a CSV reader, pyarrow).

    Raises:
        `error`: the path is a FIFO, device, socket or folder.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing or unreadable: the caller's own read reports it in its words
    kind = kind_of(mode)
    if kind is not None:
        raise error(Problem(f"is {kind}, not a regular file", file=str(path), where=where))


def available_memory() -> int:
    """Bytes of memory available to this process now (MemAvailable), or 0 if unknown."""
    try:
        with open("/proc/meminfo", "rb") as meminfo:
            for line in meminfo:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
