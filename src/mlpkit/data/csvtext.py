"""Decode and parse CSV bytes strictly, keeping the physical line each row starts on.

The csv module parses the text, so a row with too few or too many fields is an error, never a
silent shift of columns, and a problem names the line it is on. Cells stay text until
columns.py checks each configured column. Bytes that are not text at all (gzip, zip, Parquet,
other binary data) are named for what they look like before any decoding, so the encoding
hint is given only for text in another encoding.
"""

from __future__ import annotations

import codecs
import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mlpkit.config.load import LoadedConfig
from mlpkit.config.schema import DataConfig
from mlpkit.data.columns import convert_columns, locate_columns, numeric_and_text
from mlpkit.errors import DataError, Problem
from mlpkit.reading import sniff


@dataclass(frozen=True)
class _Parsed:
    """A CSV's header and records, as text, and the line each record starts on."""

    header: list[str]
    records: list[list[str]]
    lines: list[int]


def parse_text(
    path: Path,
    raw: bytes,
    data: DataConfig,
    with_target: bool = True,
    origin: LoadedConfig | None = None,
    line_offset: int = 0,
) -> tuple[pd.DataFrame, np.ndarray]:
    """CSV bytes (header first) -> the checked, converted columns and each row's line.

    `line_offset` is added to every line reported: a streamed block is parsed as its own small
    file (the header, then the block) and still names the lines of the whole file.

    Raises:
        DataError: the text is not valid in data.encoding, is malformed or ragged, has no rows,
            lacks a configured column, or a cell is unusable.
    """
    if line_offset == 0:  # the file's own first bytes (a later block was checked with them)
        refuse_binary(path, raw, data.encoding)
    text = _decode(path, raw, data.encoding, origin, line_offset)
    parsed = _parse(path, text, line_offset)
    numeric, categorical = numeric_and_text(data, with_target)
    positions, problems = locate_columns(path, parsed.header, numeric + categorical)
    if problems:
        raise DataError(problems)
    lines = np.asarray(parsed.lines)
    cells = {
        column: pd.Series([record[index].strip() for record in parsed.records], dtype=object)
        for column, index in positions.items()
    }
    return convert_columns(path, cells, lines, data, with_target), lines


def parse_header(path: Path, raw: bytes, encoding: str, origin: LoadedConfig | None) -> list[str]:
    """The column names in a CSV's first line (`raw`).

    Raises:
        DataError: the line is binary, not valid text in `encoding`, malformed, or empty.
    """
    refuse_binary(path, raw, encoding)
    text = _decode(path, raw, encoding, origin)
    try:
        header = next(csv.reader(io.StringIO(text, newline=""), strict=True), [])
    except csv.Error as exc:
        raise DataError(Problem(f"malformed CSV: {exc}", file=str(path), where="line 1")) from None
    names = [name.strip() for name in header]
    if not any(names):
        raise DataError(
            Problem("the file is empty", file=str(path), hint="expected a CSV with a header line")
        )
    return names


def refuse_binary(path: Path, head: bytes, encoding: str = "utf-8") -> None:
    """Raises DataError when a file's first bytes (`head`) say it is not text: compressed, an
    archive, Parquet, or other binary data (reading.sniff). Whatever data.encoding says, such a
    file decodes to no table."""
    try:
        wide = codecs.lookup(encoding).name.startswith(("utf-16", "utf-32"))
    except LookupError:
        wide = False  # _decode names the unknown encoding
    looks = sniff(head, wide)
    if looks is not None:
        what, hint = looks
        if what == "binary data":
            hint = "expected CSV text with a header line"
        raise DataError(Problem(f"looks like {what}, not CSV text", file=str(path), hint=hint))


def _decode(
    path: Path, raw: bytes, encoding: str, origin: LoadedConfig | None, line_offset: int = 0
) -> str:
    """`raw` as text without a byte-order mark; a bad byte is named by its line."""
    try:
        text = raw.decode(encoding)
    except LookupError:
        problem = f"unknown encoding '{encoding}'"
        hint = "e.g. utf-8 or latin-1"
        if origin is not None:
            raise DataError(origin.problem(("data", "encoding"), problem, hint)) from None
        raise DataError(Problem(problem, file=str(path), hint=hint)) from None
    except UnicodeError as exc:
        start = exc.start if isinstance(exc, UnicodeDecodeError) else 0
        line = raw[:start].count(b"\n") + 1 + line_offset
        raise DataError(
            Problem(
                f"the file is not valid {encoding} text",
                file=str(path),
                where=f"line {line}",
                hint="set data.encoding, e.g. latin-1",
            )
        ) from None
    return text.removeprefix("\ufeff")  # a byte-order mark is not part of the first column name


def _parse(path: Path, text: str, line_offset: int = 0) -> _Parsed:
    """The header and every non-blank record, each with the line it starts on."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = [name.strip() for name in next(reader, [])]
        if not any(header):
            raise DataError(
                Problem(
                    "the file is empty", file=str(path), hint="expected a CSV with a header line"
                )
            )
        records, lines, ragged = [], [], []
        previous_end = reader.line_num
        for record in reader:
            start, previous_end = previous_end + 1 + line_offset, reader.line_num
            if not record:
                continue  # a blank line
            if len(record) != len(header):
                ragged.append((start, len(record)))
            records.append(record)
            lines.append(start)
    except csv.Error as exc:
        raise DataError(
            Problem(
                f"malformed CSV: {exc}",
                file=str(path),
                where=f"line {reader.line_num + line_offset}",
            )
        ) from None
    if ragged:
        raise DataError(_ragged_problem(path, header, ragged, records))
    if not records:
        raise DataError(Problem("the file has a header but no rows", file=str(path)))
    return _Parsed(header, records, lines)


def _ragged_problem(
    path: Path, header: list[str], ragged: list[tuple[int, int]], records: list[list[str]]
) -> Problem:
    line, fields = ragged[0]
    hint = None
    if len(ragged) == len(records) and all(
        r[-1] == "" and len(r) == len(header) + 1 for r in records
    ):
        hint = "every row ends with an empty extra field: remove the trailing commas"
    rows = f"{len(ragged)} row" + ("s" if len(ragged) > 1 else "")
    return Problem(
        f"has {fields} fields, expected {len(header)} like the header ({rows} so)",
        file=str(path),
        where=f"line {line}",
        hint=hint,
    )
