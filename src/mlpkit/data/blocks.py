"""Read a data file block by block: CSV in runs of lines, Parquet one row group at a time.

Every block is checked and converted exactly as table.read_table checks a whole file (the same
columns.convert_columns), so a streamed file and an in-memory one accept the same cells and
report the same problems. A CSV block is parsed by pyarrow (fast, and strict about the field
count); if pyarrow refuses it, the block is parsed again by csvtext.parse_text, which names the
exact line and cell. Streamed CSV rows may not span lines (no newline inside a quoted field):
a block boundary would cut them.

Every open goes through reading.open_regular (a FIFO or device is refused, never waited on),
a line is read with a bound (LINE_LIMIT), and a Parquet file's metadata and row groups are
sized before pyarrow reads them, so a hostile file is refused rather than read into memory.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from mlpkit.config.load import LoadedConfig
from mlpkit.config.schema import DataConfig
from mlpkit.data.columns import (
    convert_columns,
    drop_missing_target,
    locate_columns,
    no_rows_left,
    numeric_and_text,
)
from mlpkit.data.csvtext import parse_header, parse_text
from mlpkit.data.table import (
    Table,
    check_data_file,
    file_error,
    open_error,
    read_first_line,
    read_table,
    too_large,
)
from mlpkit.errors import DataError, Problem
from mlpkit.reading import LINE_LIMIT, NotAFile, memory_bound, open_regular, size_text

# What the in-memory reader treats as a missing number; other spellings fall back to it.
_NULLS = ["", "NA", "na", "N/A", "n/a", "NaN", "nan", "NAN", "null", "NULL", "None", "none"]
HASH_BLOCK = 1 << 20  # bytes read at a time to hash a Parquet file
# Peak memory of reading Parquet, per byte of its uncompressed data (measured 3-6x: pyarrow's
# columns, then pandas' and the converted ones).
PARQUET_COST = 8


@dataclass(frozen=True)
class BlockRef:
    """Where a block lies in its file, so a worker can read it alone."""

    start: int  # CSV: byte offset of its first line; Parquet: the row group
    end: int  # CSV: byte offset after its last line; Parquet: the row group
    first: int  # CSV: the line of its first line; Parquet: the row number of its first row


@dataclass(frozen=True)
class Block:
    """A block's configured columns, converted, and where each row is (`unit` N)."""

    ref: BlockRef
    frame: pd.DataFrame
    lines: np.ndarray
    dropped: int = 0  # rows left out for a missing target

    @classmethod
    def of_rows(
        cls, ref: BlockRef, frame: pd.DataFrame, lines: np.ndarray, data: DataConfig
    ) -> Block:
        """The block's rows, less those whose target is missing (data.missing drops them)."""
        return cls(ref, *drop_missing_target(frame, lines, data))


def is_parquet(path: Path) -> bool:
    """Whether `path` is read as Parquet (by its suffix, .parquet or .pq) rather than CSV."""
    return path.suffix.lower() in (".parquet", ".pq")


def open_blocks(
    path: Path,
    data: DataConfig,
    origin: LoadedConfig | None = None,
    with_target: bool = True,
) -> CsvBlocks | ParquetBlocks:
    """A block reader for `path`, its header already checked against the configured columns.

    Raises:
        DataError: the file is missing, unreadable, not CSV/Parquet, or lacks a column.
    """
    check_data_file(path, origin)
    if is_parquet(path):
        return ParquetBlocks(path, data, with_target, origin)
    return CsvBlocks(path, data, with_target, data.chunk_rows, origin)


class CsvBlocks:
    """A CSV file as blocks of `chunk_rows` lines."""

    unit = "line"

    def __init__(
        self,
        path: Path,
        data: DataConfig,
        with_target: bool,
        chunk_rows: int,
        origin: LoadedConfig | None,
    ) -> None:
        self.path, self.data, self.with_target, self.chunk_rows = (
            path,
            data,
            with_target,
            chunk_rows,
        )
        self.header_raw = read_first_line(path, origin, data.encoding)
        self.header = parse_header(path, self.header_raw, data.encoding, origin)
        numeric, categorical = numeric_and_text(data, with_target)
        _, problems = locate_columns(path, self.header, numeric + categorical)
        if problems:
            raise DataError(problems)
        self.numeric, self.categorical = numeric, categorical
        self.sha256 = ""  # set once scan() has read every byte

    def scan(self) -> Iterator[Block]:
        """Every block in file order; the file's sha256 is known when this ends."""
        digest = hashlib.sha256(self.header_raw)
        with _reopen(self.path) as file:
            file.seek(len(self.header_raw))
            offset, line = len(self.header_raw), 2
            bounded = iter(functools.partial(file.readline, LINE_LIMIT), b"")
            while lines := list(islice(bounded, self.chunk_rows)):
                _refuse_long_line(self.path, lines, line)
                raw = b"".join(lines)
                digest.update(raw)
                ref = BlockRef(offset, offset + len(raw), line)
                yield self._convert(ref, raw, lines)
                offset, line = ref.end, line + len(lines)
        self.sha256 = digest.hexdigest()

    def read(self, ref: BlockRef) -> Block:
        """The block at `ref` again, alone, as scan() gave it (how a worker reads its share)."""
        with _reopen(self.path) as file:
            file.seek(ref.start)
            raw = file.read(ref.end - ref.start)
        return self._convert(ref, raw, list(io.BytesIO(raw)))

    def _convert(self, ref: BlockRef, raw: bytes, lines: list[bytes]) -> Block:
        row_lines = ref.first + np.flatnonzero(~_blank(lines))
        if len(row_lines) == 0:
            empty = {c: pd.Series([], dtype=object) for c in self.numeric + self.categorical}
            frame = convert_columns(self.path, empty, row_lines, self.data, self.with_target)
            return Block.of_rows(ref, frame, row_lines, self.data)
        cells = self._pyarrow_cells(raw, len(row_lines))
        if cells is None:  # pyarrow refused the block: the strict reader says exactly why
            frame, found = parse_text(
                self.path,
                self.header_raw + raw,
                self.data,
                self.with_target,
                line_offset=ref.first - 2,
            )
            return Block.of_rows(ref, frame, found, self.data)
        frame = convert_columns(self.path, cells, row_lines, self.data, self.with_target)
        return Block.of_rows(ref, frame, row_lines, self.data)

    def _pyarrow_cells(self, raw: bytes, n_rows: int) -> dict[str, pd.Series] | None:
        import pyarrow as pa
        from pyarrow import csv as pa_csv

        types = {c: pa.float64() for c in self.numeric} | {c: pa.string() for c in self.categorical}
        try:
            table = pa_csv.read_csv(
                io.BytesIO(raw),
                read_options=pa_csv.ReadOptions(
                    column_names=self.header, encoding=self.data.encoding, use_threads=False
                ),
                parse_options=pa_csv.ParseOptions(newlines_in_values=False),
                convert_options=pa_csv.ConvertOptions(
                    include_columns=list(types),
                    column_types=types,
                    null_values=_NULLS,
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
        except (pa.ArrowInvalid, UnicodeError, LookupError):
            return None
        if table.num_rows != n_rows:
            return None
        return {name: table.column(name).to_pandas() for name in types}


def _reopen(path: Path) -> BinaryIO:
    """The data file opened again (a block read, a scan), still a regular file.

    Raises:
        DataError: it is gone, or is no longer a regular file.
    """
    try:
        return open_regular(path)
    except (NotAFile, OSError) as exc:
        raise open_error(path, None, exc) from None


def _refuse_long_line(path: Path, lines: list[bytes], first: int) -> None:
    """Raises DataError when a line of a block (`first` the line of lines[0]) was cut at
    LINE_LIMIT: a streamed file must have lines, not one endless run of bytes."""
    if max(map(len, lines)) < LINE_LIMIT:
        return
    for index, line in enumerate(lines):
        if len(line) == LINE_LIMIT and not line.endswith(b"\n"):
            problem = f"the line is longer than {size_text(LINE_LIMIT)}; is it a CSV file?"
            raise DataError(Problem(problem, file=str(path), where=f"line {first + index}"))


def _blank(lines: list[bytes]) -> np.ndarray:
    """Which lines are empty (a blank line is no row, for the csv module and pyarrow alike)."""
    lengths = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))
    blank = np.zeros(len(lines), dtype=bool)
    for i in np.flatnonzero(lengths <= 2):  # only "\n", "\r\n" or "" can be blank
        blank[i] = lines[i].strip(b"\r\n") == b""
    return blank


class ParquetBlocks:
    """A Parquet file as its row groups."""

    unit = "row"

    def __init__(
        self, path: Path, data: DataConfig, with_target: bool, origin: LoadedConfig | None
    ) -> None:
        self.path, self.data, self.with_target = path, data, with_target
        check_parquet_footer(path, origin)
        file = self._open(origin)
        metadata = file.metadata
        groups = [metadata.row_group(i) for i in range(metadata.num_row_groups)]
        self.group_rows = [group.num_rows for group in groups]
        self.group_bytes = [group.total_byte_size for group in groups]  # uncompressed
        largest = max(self.group_bytes, default=0)
        if largest * PARQUET_COST > memory_bound(1):
            problem = (
                f"a row group holds {size_text(largest)} uncompressed; reading it takes about "
                f"{size_text(largest * PARQUET_COST)} of memory, more than the "
                f"{size_text(memory_bound(1))} available"
            )
            hint = "write the file again with smaller row groups"
            raise DataError(Problem(problem, file=str(path), hint=hint))
        numeric, categorical = numeric_and_text(data, with_target)
        _, problems = locate_columns(path, file.schema_arrow.names, numeric + categorical)
        if problems:
            raise DataError(problems)
        self.columns = numeric + categorical
        self.sha256 = ""

    def _open(self, origin: LoadedConfig | None = None) -> Any:
        import pyarrow as pa
        import pyarrow.parquet as pq

        check_data_file(self.path, origin)  # pyarrow opens it by name: never a FIFO
        try:
            return pq.ParquetFile(self.path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise file_error(self.path, origin, f"cannot read it as Parquet ({exc})") from None

    def scan(self) -> Iterator[Block]:
        """Every row group in file order; the file's sha256 is known when this ends."""
        file = self._open()
        first = 1
        for group, rows in enumerate(self.group_rows):
            yield self._convert(BlockRef(group, group, first), file)
            first += rows
        self.sha256 = _file_sha256(self.path)

    def read(self, ref: BlockRef) -> Block:
        """The row group at `ref` again, alone, as scan() gave it."""
        return self._convert(ref, self._open())

    def _convert(self, ref: BlockRef, file: Any) -> Block:
        table = file.read_row_group(ref.start, columns=self.columns)
        rows = ref.first + np.arange(table.num_rows)
        cells = {name: table.column(name).to_pandas() for name in self.columns}
        frame = convert_columns(self.path, cells, rows, self.data, self.with_target, unit="row")
        return Block.of_rows(ref, frame, rows, self.data)


def check_parquet_footer(path: Path, origin: LoadedConfig | None) -> None:
    """Refuse a Parquet file whose footer claims more metadata than memory can take, before
    pyarrow reads it whole (the footer's length is in the file's last 8 bytes).

    Raises:
        DataError: the file cannot be opened, or its metadata is too large.
    """
    try:
        with open_regular(path) as file:
            size = os.fstat(file.fileno()).st_size
            file.seek(max(size - 8, 0))
            tail = file.read(8)
    except (NotAFile, OSError) as exc:
        raise open_error(path, origin, exc) from None
    claimed = int.from_bytes(tail[:4], "little") if len(tail) == 8 else 0
    if tail[4:] == b"PAR1" and claimed > memory_bound(1 / PARQUET_COST):
        said = f"its metadata claims {size_text(claimed)}"
        raise too_large(path, origin, said, claimed * PARQUET_COST)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with _reopen(path) as file:
        while chunk := file.read(HASH_BLOCK):
            digest.update(chunk)
    return digest.hexdigest()


def load_table(
    path: Path, data: DataConfig, origin: LoadedConfig | None = None, with_target: bool = True
) -> Table:
    """A whole CSV (read_table) or Parquet file in memory; for Parquet, `lines` are row numbers.

    Raises:
        DataError: as read_table.
    """
    if not is_parquet(path):
        return read_table(path, data, origin, with_target)
    reader = open_blocks(path, data, origin, with_target)
    assert isinstance(reader, ParquetBlocks)
    uncompressed = sum(reader.group_bytes)
    if uncompressed * PARQUET_COST > memory_bound(1):
        said = f"holds {size_text(uncompressed)} uncompressed"
        raise too_large(path, origin, said, uncompressed * PARQUET_COST)
    blocks = list(reader.scan())
    if not blocks or sum(len(b.lines) + b.dropped for b in blocks) == 0:
        raise DataError(Problem("the file has no rows", file=str(path)))
    frame = pd.concat([b.frame for b in blocks], ignore_index=True)
    lines = np.concatenate([b.lines for b in blocks])
    dropped = sum(b.dropped for b in blocks)
    if len(lines) == 0:
        raise no_rows_left(path, data, dropped)
    return Table(frame, lines, path, reader.sha256, unit="row", dropped=dropped)
