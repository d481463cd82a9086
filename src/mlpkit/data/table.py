"""Read the data table, check every cell the config relies on, and split the rows.

The file is read once: its bytes are hashed, decoded and parsed with the csv module, so every
row keeps the physical line it starts on and a row with too few or too many fields is an error,
never a silent shift of columns. Cells stay text until each configured column is checked, so a
problem is reported precisely (column, first line, count) instead of surfacing as a NaN loss.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mlpkit.config.load import LoadedConfig
from mlpkit.config.schema import DataConfig
from mlpkit.errors import DataError, Problem, did_you_mean

# Cells that mean "no value" in a numeric column. A categorical column only treats an empty cell
# as missing: "NA" may well be a category (North America).
MISSING_NUMBERS = {"", "na", "n/a", "nan", "null", "none"}
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Table:
    """The configured columns, converted: numeric ones float64, categorical ones text."""

    frame: pd.DataFrame
    lines: np.ndarray  # the line of the file each row starts on (the header is line 1)
    path: Path
    sha256: str
    unit: str = "line"  # what `lines` count: a CSV's lines, or a Parquet file's rows

    @property
    def n_rows(self) -> int:
        return len(self.frame)


@dataclass(frozen=True)
class Split:
    """Row positions of each part of the table."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


@dataclass(frozen=True)
class _Parsed:
    header: list[str]
    records: list[list[str]]
    lines: list[int]


def read_table(
    path: Path, data: DataConfig, origin: LoadedConfig | None = None, with_target: bool = True
) -> Table:
    """Read `path` and check the columns `data` names (the target too, unless `with_target`).

    `origin` locates problems with the file itself at the config key that named it. Columns are
    found by name; others in the file are ignored.

    Raises:
        DataError: the file is missing, unreadable, malformed, or a column or cell is unusable.
    """
    raw = read_bytes(path, origin)
    frame, lines = parse_text(path, raw, data, with_target, origin)
    return Table(frame=frame, lines=lines, path=path, sha256=hashlib.sha256(raw).hexdigest())


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
    """
    text = _decode(path, raw, data.encoding, origin, line_offset)
    parsed = _parse(path, text, line_offset)
    numeric, categorical = numeric_and_categorical(data, with_target)
    positions, problems = locate_columns(path, parsed.header, numeric + categorical)
    if problems:
        raise DataError(problems)
    lines = np.asarray(parsed.lines)
    cells = {
        column: pd.Series([record[index].strip() for record in parsed.records], dtype=object)
        for column, index in positions.items()
    }
    return convert_columns(path, cells, lines, data, with_target), lines


def convert_columns(
    path: Path,
    cells: dict[str, pd.Series],
    lines: np.ndarray,
    data: DataConfig,
    with_target: bool = True,
    unit: str = "line",
) -> pd.DataFrame:
    """Numeric columns as float64 and categorical ones as text, every unusable cell reported.

    Cells are text (a CSV) or already typed (Parquet, or a CSV block parsed by pyarrow).
    `lines` locate the rows in problems, as `unit` N (a CSV's line, a Parquet file's row).

    Raises:
        DataError: one problem per column and kind of bad cell (first row and count).
    """
    numeric, categorical = numeric_and_categorical(data, with_target)
    frame = pd.DataFrame(index=pd.RangeIndex(len(lines)))
    problems: list[Problem] = []
    for column in numeric + categorical:
        where = _Where(path, column, lines, unit)
        if column in numeric:
            frame[column], found = _convert_numbers(where, cells[column], _hint(data, column))
        else:
            frame[column], found = _check_categories(where, cells[column])
        problems += found
    if problems:
        raise DataError(problems)
    return frame


def numeric_and_categorical(
    data: DataConfig, with_target: bool = True
) -> tuple[list[str], list[str]]:
    """Columns to read as numbers (features, then the target) and as categories."""
    numeric = [c for c in data.features if c not in data.categorical]
    categorical = [c for c in data.features if c in data.categorical]
    if not with_target:
        return numeric, categorical
    if data.task in ("binary", "multiclass"):
        return numeric, [*categorical, data.target]  # class labels are read as text
    return [*numeric, data.target], categorical


def _hint(data: DataConfig, column: str) -> str:
    if column == data.target:
        return "expected a number (a regression target; for class labels set data.task)"
    return f"expected a number, or list '{column}' in data.categorical to one-hot encode it"


def read_bytes(path: Path, origin: LoadedConfig | None) -> bytes:
    """The whole file's bytes.

    Raises:
        DataError: it is missing, a folder or unreadable, located at data.path when known.
    """
    check_data_file(path, origin)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise file_error(path, origin, f"cannot read the data file ({exc.strerror})") from None


def check_data_file(path: Path, origin: LoadedConfig | None) -> None:
    """Raises DataError when `path` is missing or a folder."""
    if not path.exists():
        raise file_error(path, origin, "data file not found")
    if path.is_dir():
        raise file_error(path, origin, "is a directory, not a data file")


def file_error(path: Path, origin: LoadedConfig | None, problem: str) -> DataError:
    """A problem with the data file itself, at the config key that named it when there is one."""
    if origin is None:
        return DataError(Problem(problem, file=str(path)))
    written = str(origin.config.data.path)
    relative = f"data.path '{written}' is relative to {origin.source.parent}/"
    hint = None if Path(written).is_absolute() else relative
    return DataError(origin.problem(("data", "path"), f"{problem}: {path}", hint))


def parse_header(path: Path, raw: bytes, encoding: str, origin: LoadedConfig | None) -> list[str]:
    """The column names in a CSV's first line (`raw`).

    Raises:
        DataError: the line is not valid text in `encoding`, malformed, or empty.
    """
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


def _decode(
    path: Path, raw: bytes, encoding: str, origin: LoadedConfig | None, line_offset: int = 0
) -> str:
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


def locate_columns(
    path: Path, header: list[str], wanted: list[str]
) -> tuple[dict[str, int], list[Problem]]:
    """Each wanted column's field position; every missing column named in one problem."""
    positions: dict[str, int] = {}
    missing: list[str] = []
    problems = []
    for name in wanted:
        found = [i for i, column in enumerate(header) if column == name]
        if not found:
            missing.append(name)
        elif len(found) > 1:
            fields = ", ".join(str(i + 1) for i in found)
            problems.append(
                Problem(
                    f"the header names it {len(found)} times (fields {fields})",
                    file=str(path),
                    where=f"column '{name}'",
                    hint="rename the copies",
                )
            )
        else:
            positions[name] = found[0]
    if len(missing) == 1:
        problems.insert(
            0,
            Problem(
                "column missing from the header",
                file=str(path),
                where=f"column '{missing[0]}'",
                hint=did_you_mean(missing[0], header),
            ),
        )
    elif missing:
        named = ", ".join(_with_suggestion(name, header) for name in missing)
        problems.insert(
            0, Problem(f"{len(missing)} columns missing from the header: {named}", file=str(path))
        )
    return positions, problems


def _with_suggestion(name: str, header: list[str]) -> str:
    close = difflib.get_close_matches(name, header, n=1, cutoff=0.6)
    return f"'{name}' (did you mean '{close[0]}'?)" if close else f"'{name}'"


@dataclass(frozen=True)
class _Where:
    """Where a column's cells come from, to name the first bad one."""

    path: Path
    column: str
    lines: np.ndarray
    unit: str  # "line" (CSV) or "row" (Parquet)

    def problem(self, mask: np.ndarray, what: str, hint: str) -> Problem:
        rows = mask.nonzero()[0]
        count = f" ({len(rows)} cells)" if len(rows) > 1 else ""
        return Problem(
            f"{what}{count}",
            file=str(self.path),
            where=f"column '{self.column}', {self.unit} {int(self.lines[rows[0]])}",
            hint=hint,
        )


NO_IMPUTING = "mlpkit does not impute: drop or fill those rows"


def _as_text(cells: pd.Series) -> pd.Series:
    """Cells as stripped text, a null (Parquet, pyarrow) as "": " red" is "red" whichever reader
    parsed it."""
    if not isinstance(cells.dtype, np.dtypes.ObjectDType) or cells.isna().any():
        cells = cells.astype(object).where(cells.notna(), "").astype(str)
    return cells.str.strip()


def _check_categories(where: _Where, cells: pd.Series) -> tuple[pd.Series, list[Problem]]:
    cells = _as_text(cells)
    empty = (cells == "").to_numpy()
    if not empty.any():
        return cells, []
    return cells, [where.problem(empty, "missing value", NO_IMPUTING)]


def _convert_numbers(where: _Where, cells: pd.Series, hint: str) -> tuple[pd.Series, list[Problem]]:
    """float64 values of a numeric column, and a problem for each kind of unusable cell."""
    if pd.api.types.is_numeric_dtype(cells.dtype) and not pd.api.types.is_bool_dtype(cells.dtype):
        values = cells.to_numpy(dtype=np.float64, na_value=np.nan)  # typed: null -> NaN
        missing = np.isnan(values)
        bad = np.zeros(len(values), dtype=bool)
    else:
        text = _as_text(cells)
        missing = text.str.lower().isin(MISSING_NUMBERS).to_numpy()
        values = pd.to_numeric(text.where(~missing), errors="coerce").to_numpy(dtype=np.float64)
        bad = np.isnan(values) & ~missing
        cells = text
    problems = []
    if missing.any():
        problems.append(where.problem(missing, "missing value", NO_IMPUTING))
    if bad.any():
        first = str(cells.iloc[int(bad.nonzero()[0][0])])
        problems.append(where.problem(bad, f"non-numeric value '{first}'", hint))
    infinite = np.isinf(values)
    if infinite.any():
        problems.append(where.problem(infinite, "infinite value", "expected a finite number"))
    huge = (np.abs(values) > FLOAT32_MAX) & ~infinite
    if huge.any():
        problems.append(where.problem(huge, "value beyond float32's range", "rescale the column"))
    return pd.Series(values), problems


def split_rows(n_rows: int, data: DataConfig, seed: int, labels: np.ndarray | None = None) -> Split:
    """Shuffle row positions with the seed and cut them by the configured fractions.

    train and val take floor(fraction * n); test takes the rest, so no row is lost. With
    `labels` (classification) each class is cut separately, so every part keeps the class mix.
    """
    rng = np.random.default_rng(seed)
    if labels is None:
        return _cut(rng.permutation(n_rows), data)
    parts = [
        _cut(rng.permutation(np.flatnonzero(labels == label)), data)
        for label in sorted(set(labels.tolist()))
    ]
    return Split(
        *(
            rng.permutation(np.concatenate([getattr(p, name) for p in parts]))
            for name in ("train", "val", "test")
        )
    )


def _cut(order: np.ndarray, data: DataConfig) -> Split:
    n_train = math.floor(data.split.train * len(order))
    n_val = math.floor(data.split.val * len(order))
    return Split(order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :])


def check_split(counts: dict[str, int], loaded: LoadedConfig) -> list[Problem]:
    """Every part the config asks for has rows, and a batch fits in the training rows.

    `counts` are the rows of each part (train, val, test)."""
    cfg = loaded.config
    problems = []
    n_rows = sum(counts.values())
    for part in ("train", "val", "test"):
        if getattr(cfg.data.split, part) > 0 and counts[part] == 0:
            problems.append(
                loaded.problem(
                    ("data", "split", part),
                    f"{n_rows} data rows leave the {part} split empty",
                    f"add rows or raise data.split.{part}",
                )
            )
    batch_size = cfg.training.batch_size
    if 0 < counts["train"] < batch_size:
        problems.append(
            loaded.problem(
                ("training", "batch_size"),
                f"{batch_size} is larger than the {counts['train']} training rows",
                "lower it or add rows",
            )
        )
    return problems
