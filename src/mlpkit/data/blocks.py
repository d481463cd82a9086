"""Read a data file block by block: CSV in runs of lines, Parquet one row group at a time.

Every block is checked and converted exactly as table.read_table checks a whole file (the same
columns.convert_columns), so a streamed file and an in-memory one accept the same cells and
report the same problems. A CSV block is parsed by pyarrow (fast, and strict about the field
count); if pyarrow refuses it, the block is parsed again by csvtext.parse_text, which names the
exact line and cell. Streamed CSV rows may not span lines (no newline inside a quoted field):
a block boundary would cut them.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlpkit.config.load import LoadedConfig
from mlpkit.config.schema import DataConfig
from mlpkit.data.columns import convert_columns, locate_columns, numeric_and_categorical
from mlpkit.data.csvtext import parse_header, parse_text
from mlpkit.data.table import Table, check_data_file, file_error, read_table
from mlpkit.errors import DataError, Problem

# What the in-memory reader treats as a missing number; other spellings fall back to it.
_NULLS = ["", "NA", "na", "N/A", "n/a", "NaN", "nan", "NAN", "null", "NULL", "None", "none"]
HASH_BLOCK = 1 << 20  # bytes read at a time to hash a Parquet file


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
        try:
            with path.open("rb") as file:
                self.header_raw = file.readline()
        except OSError as exc:
            raise file_error(path, origin, f"cannot read the data file ({exc.strerror})") from None
        self.header = parse_header(path, self.header_raw, data.encoding, origin)
        numeric, categorical = numeric_and_categorical(data, with_target)
        _, problems = locate_columns(path, self.header, numeric + categorical)
        if problems:
            raise DataError(problems)
        self.numeric, self.categorical = numeric, categorical
        self.sha256 = ""  # set once scan() has read every byte

    def scan(self) -> Iterator[Block]:
        """Every block in file order; the file's sha256 is known when this ends."""
        digest = hashlib.sha256(self.header_raw)
        with self.path.open("rb") as file:
            file.seek(len(self.header_raw))
            offset, line = len(self.header_raw), 2
            while lines := list(islice(file, self.chunk_rows)):
                raw = b"".join(lines)
                digest.update(raw)
                ref = BlockRef(offset, offset + len(raw), line)
                yield self._convert(ref, raw, lines)
                offset, line = ref.end, line + len(lines)
        self.sha256 = digest.hexdigest()

    def read(self, ref: BlockRef) -> Block:
        """The block at `ref` again, alone, as scan() gave it (how a worker reads its share)."""
        with self.path.open("rb") as file:
            file.seek(ref.start)
            raw = file.read(ref.end - ref.start)
        return self._convert(ref, raw, list(io.BytesIO(raw)))

    def _convert(self, ref: BlockRef, raw: bytes, lines: list[bytes]) -> Block:
        row_lines = ref.first + np.flatnonzero(~_blank(lines))
        if len(row_lines) == 0:
            empty = {c: pd.Series([], dtype=object) for c in self.numeric + self.categorical}
            frame = convert_columns(self.path, empty, row_lines, self.data, self.with_target)
            return Block(ref, frame, row_lines)
        cells = self._pyarrow_cells(raw, len(row_lines))
        if cells is None:  # pyarrow refused the block: the strict reader says exactly why
            frame, found = parse_text(
                self.path,
                self.header_raw + raw,
                self.data,
                self.with_target,
                line_offset=ref.first - 2,
            )
            return Block(ref, frame, found)
        frame = convert_columns(self.path, cells, row_lines, self.data, self.with_target)
        return Block(ref, frame, row_lines)

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
        file = self._open(origin)
        metadata = file.metadata
        self.group_rows = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
        numeric, categorical = numeric_and_categorical(data, with_target)
        _, problems = locate_columns(path, file.schema_arrow.names, numeric + categorical)
        if problems:
            raise DataError(problems)
        self.columns = numeric + categorical
        self.sha256 = ""

    def _open(self, origin: LoadedConfig | None = None) -> Any:
        import pyarrow as pa
        import pyarrow.parquet as pq

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
        return Block(ref, frame, rows)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
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
    blocks = list(reader.scan())
    if not blocks or sum(len(b.lines) for b in blocks) == 0:
        raise DataError(Problem("the file has no rows", file=str(path)))
    frame = pd.concat([b.frame for b in blocks], ignore_index=True)
    lines = np.concatenate([b.lines for b in blocks])
    return Table(frame, lines, path, reader.sha256, unit="row")
