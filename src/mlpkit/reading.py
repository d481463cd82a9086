"""Bounded reading of every input file: configs, data, run files, checkpoints, predict input.

A path is read only if it is a regular file (a FIFO would block, a device like /dev/zero never
ends, a socket or folder has no contents to read) and only if its size, taken from the open
file itself, is within the limit the caller gives; then exactly that many bytes are read, so a
read never holds more than the file. The checks run on the opened descriptor (fstat), not on
the path, so a file swapped between the check and the read is still the file checked.

`sniff` tells from a file's first bytes when it is not text at all (gzip, zip, Parquet, other
binary data), so a reader can say so instead of blaming the text encoding.
"""

from __future__ import annotations

import os
import resource
import stat
from pathlib import Path
from typing import BinaryIO

from mlpkit.errors import MlpkitError, Problem

MB = 1024 * 1024
CONFIG_LIMIT = 4 * MB  # a config is a page of YAML; 4 MB holds a 100,000-name feature list
RUN_FILE_LIMIT = 256 * MB  # run.json, metrics.json, history.csv, preprocessing.json, ...
LINE_LIMIT = 16 * MB  # one CSV line read alone (a header, a streamed row): 1M columns of 16
UNKNOWN_MEMORY = 1024**4  # the bound where the available memory cannot be found (1 TB)
SNIFF = 4096  # bytes `sniff` looks at

_KINDS = {
    stat.S_ISDIR: "a directory",
    stat.S_ISFIFO: "a FIFO (named pipe)",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISSOCK: "a socket",
}


class NotAFile(Exception):
    """The path is not a regular file (its kind in words) or is over the size limit."""

    def __init__(self, problem: str, kind: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.kind = kind  # "a directory", "a FIFO (named pipe)", ...; None when too large


class TooLarge(NotAFile):
    """The regular file holds more bytes than the caller's limit."""

    def __init__(self, problem: str, size: int, limit: int) -> None:
        super().__init__(problem)
        self.size, self.limit = size, limit


def kind_of(mode: int) -> str | None:
    """What a file mode is in words, or None for a regular file."""
    for test, name in _KINDS.items():
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) else "not a regular file"


def size_text(size: int) -> str:
    """A byte count for people: 3.2 GB, 12.0 MB, 512 bytes."""
    for unit, scale in (("TB", 1024**4), ("GB", 1024 * MB), ("MB", MB), ("kB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading in binary, if it is a regular file (checked on the open file).

    Raises:
        NotAFile: it is a FIFO, device, socket or folder (`kind` says which).
        OSError: it is missing or cannot be opened.
    """
    # O_NONBLOCK: opening a FIFO with no writer would otherwise wait forever.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        kind = kind_of(os.fstat(fd).st_mode)
        if kind is not None:
            raise NotAFile(f"is {kind}, not a regular file", kind)
        os.set_blocking(fd, True)  # a regular file: reads behave as usual
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """The bytes of the regular file at `path`, if it holds at most `limit` bytes.

    Raises:
        NotAFile: not a regular file; TooLarge: larger than `limit` (`what` names it).
        OSError: the file is missing or cannot be opened or read (callers word these).
    """
    with open_regular(path) as file:
        size = os.fstat(file.fileno()).st_size
        if size > limit:
            problem = f"is {size_text(size)}; {what} may be at most {size_text(limit)}"
            raise TooLarge(problem, size, limit)
        return _read_exactly(file, size)


def _read_exactly(file: BinaryIO, size: int) -> bytes:
    """Up to `size` bytes (a file that shrank gives fewer; one that grew, no more)."""
    chunks, left = [], size
    while left > 0:
        chunk = file.read(min(left, 8 * MB))
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
    """Bytes of memory this process may still take now, or 0 if unknown: the machine's
    MemAvailable, or less where a cgroup (a container) or an address-space limit caps us."""
    found = [
        value
        for value in (_meminfo_available(), _cgroup_headroom(), _address_space_headroom())
        if value is not None
    ]
    return min(found) if found else 0


def memory_bound(share: float) -> int:
    """`share` of the available memory: a bound for what one read may hold (UNKNOWN_MEMORY
    where that cannot be found)."""
    available = available_memory()
    return int(available * share) if available else UNKNOWN_MEMORY


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", "rb") as meminfo:
            for line in meminfo:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_headroom() -> int | None:
    """cgroup v2's memory.max less memory.current, when this process is in a capped cgroup."""
    try:
        with open("/proc/self/cgroup", "rb") as cgroup:
            relative = cgroup.read().split(b"::", 1)[1].strip().decode()
        folder = Path("/sys/fs/cgroup") / relative.lstrip("/")
        cap = (folder / "memory.max").read_text().strip()
        if cap == "max":
            return None
        return max(int(cap) - int((folder / "memory.current").read_text()), 0)
    except (OSError, ValueError, IndexError):
        return None


def _address_space_headroom() -> int | None:
    """RLIMIT_AS less the address space already mapped, when the address space is capped."""
    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    if limit == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmSize:"):
                    return max(limit - int(line.split()[1]) * 1024, 0)
    except (OSError, ValueError, IndexError):
        pass
    return None


# --- what a file looks like -----------------------------------------------------------------

# Leading bytes of formats that are never text, with what to do about them. "BZh" and "PAR1"
# could begin a CSV header, so for those the bytes after them must look binary too.
_MAGIC = (
    (b"\x1f\x8b", "a gzip file", "decompress it first (gunzip)"),
    (b"PK\x03\x04", "a zip file", "unzip it first (an .xlsx workbook is one too: save it as CSV)"),
    (b"PK\x05\x06", "an empty zip file", "unzip it first"),
    (b"\xfd7zXZ\x00", "an xz file", "decompress it first (unxz)"),
    (b"\x28\xb5\x2f\xfd", "a zstd file", "decompress it first (unzstd)"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an Excel .xls (OLE) file", "save it as CSV"),
)
_TEXT_LIKE_MAGIC = (
    (b"BZh", "a bzip2 file", "decompress it first (bunzip2)"),
    (b"PAR1", "a Parquet file", "name it .parquet (or .pq) to read it as Parquet"),
)
_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\xef\xbb\xbf")  # UTF-16 LE/BE (and UTF-32 LE), UTF-8
# Bytes that text does not hold: C0 controls but tab, newline, vertical tab, form feed and
# carriage return; and DEL.
_CONTROL = bytes([*range(0x00, 0x09), *range(0x0E, 0x20), 0x7F])
CONTROL_SHARE = 0.1  # more control bytes than this share of the first SNIFF: binary


def sniff(head: bytes, wide: bool = False) -> tuple[str, str] | None:
    """What a file whose first bytes are `head` looks like when it is not text, and what to do
    about it: ("a gzip file", "decompress it first (gunzip)"), ..., ("binary data", ...); None
    when it may be text in some encoding. `wide`: the text is expected in UTF-16 or UTF-32, so
    NUL bytes are no sign of binary data.
    """
    head = head[:SNIFF]
    for magic, name, hint in _MAGIC:
        if head.startswith(magic):
            return name, hint
    for magic, name, hint in _TEXT_LIKE_MAGIC:
        if head.startswith(magic) and _binary(head[len(magic) :]):
            return name, hint
    if wide or head.startswith(_BOMS) or _utf16_without_bom(head):
        return None
    if _binary(head):
        return "binary data", "expected text"
    return None


def _binary(head: bytes) -> bool:
    """A NUL byte, or more than CONTROL_SHARE control bytes."""
    if not head:
        return False
    controls = len(head) - len(head.translate(None, _CONTROL))
    return b"\x00" in head or controls > CONTROL_SHARE * len(head)


def _utf16_without_bom(head: bytes) -> bool:
    """Mostly-ASCII text in UTF-16 (no byte-order mark): NUL bytes at every odd position (LE)
    or every even one (BE), and none at the others."""
    even, odd = head[0::2], head[1::2]
    if len(head) < 4:
        return False
    for zeros, other in ((odd, even), (even, odd)):
        if zeros.count(0) >= 0.9 * len(zeros) and other.count(0) == 0:
            return True
    return False
