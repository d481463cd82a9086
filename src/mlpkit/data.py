"""Read the data table, check every cell the config relies on, and split the rows.

Cells are read as text first, so each problem can be reported precisely (column, first line,
count) instead of surfacing later as a NaN in the loss. Line numbers count the header as line 1.
"""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mlpkit.config import DataConfig, LoadedConfig
from mlpkit.errors import DataError, Problem, did_you_mean

MISSING_TOKENS = {"", "na", "n/a", "nan", "null", "none"}
FIRST_DATA_LINE = 2  # line 1 is the header


@dataclass(frozen=True)
class Table:
    """The configured columns, converted: numeric ones float64, categorical ones text."""

    frame: pd.DataFrame
    path: Path
    sha256: str

    @property
    def n_rows(self) -> int:
        return len(self.frame)


@dataclass(frozen=True)
class Split:
    """Row positions of each part of the table."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def read_table(
    path: Path, data: DataConfig, origin: LoadedConfig | None = None, need_target: bool = True
) -> Table:
    """Read `path` and check the columns `data` names.

    `origin` locates a missing file at the config key that named it.

    Raises:
        DataError: the file is missing, unreadable, malformed, or a column or cell is unusable.
    """
    raw_bytes = _read_bytes(path, origin)
    text = _read_frame(path, data.encoding)
    numeric, categorical = numeric_and_categorical(data, need_target)
    problems = _missing_columns(path, text, numeric + categorical)
    if problems:
        raise DataError(problems)
    problems = _ragged_rows(path, text, data.encoding)
    if problems:
        raise DataError(problems)
    frame = pd.DataFrame(index=text.index)
    for column in numeric + categorical:
        cells = text[column].astype(str).str.strip()
        if column not in numeric:
            hint = None
        elif column == data.target:
            hint = "expected a number (a regression target is numeric)"
        else:
            hint = f"expected a number, or list '{column}' in data.categorical to one-hot encode it"
        converted, column_problems = _convert(path, column, cells, numeric_hint=hint)
        frame[column] = converted
        problems += column_problems
    if problems:
        raise DataError(problems)
    return Table(frame=frame, path=path, sha256=hashlib.sha256(raw_bytes).hexdigest())


def numeric_and_categorical(
    data: DataConfig, need_target: bool = True
) -> tuple[list[str], list[str]]:
    """Columns to read as numbers and as categories, in the config's order."""
    numeric = [c for c in data.features if c not in data.categorical]
    categorical = [c for c in data.features if c in data.categorical]
    return ([*numeric, data.target] if need_target else numeric), categorical


def _read_bytes(path: Path, origin: LoadedConfig | None) -> bytes:
    def fail(problem: str, hint: str | None = None) -> DataError:
        if origin is not None:
            written = origin.config.data.path
            relative = f"data.path '{written}' is relative to {origin.source.parent}/"
            where = None if Path(written).is_absolute() else relative
            return DataError(origin.problem(("data", "path"), f"{problem}: {path}", hint or where))
        return DataError(Problem(problem, file=str(path), hint=hint))

    if not path.exists():
        raise fail("data file not found")
    if path.is_dir():
        raise fail("is a directory, not a data file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read the data file ({exc.strerror})") from None


def _read_frame(path: Path, encoding: str) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding=encoding)
    except UnicodeDecodeError:
        raise DataError(
            Problem(
                f"the file is not valid {encoding} text",
                file=str(path),
                hint="set data.encoding, e.g. latin-1",
            )
        ) from None
    except LookupError:
        raise DataError(
            Problem(f"unknown encoding '{encoding}'", file=str(path), where="data.encoding")
        ) from None
    except pd.errors.EmptyDataError:
        raise DataError(
            Problem("the file is empty", file=str(path), hint="expected a CSV with a header line")
        ) from None
    except pd.errors.ParserError as exc:
        raise DataError(Problem(f"malformed CSV: {_first_line(exc)}", file=str(path))) from None
    if frame.empty:
        raise DataError(Problem("the file has a header but no rows", file=str(path)))
    return frame


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[-1].removeprefix("Error tokenizing data. C error: ")


def _missing_columns(path: Path, frame: pd.DataFrame, wanted: list[str]) -> list[Problem]:
    header = [str(c) for c in frame.columns]
    return [
        Problem(
            "column missing from the header",
            file=str(path),
            where=f"column '{name}'",
            hint=did_you_mean(name, header),
        )
        for name in wanted
        if name not in header
    ]


def _ragged_rows(path: Path, frame: pd.DataFrame, encoding: str) -> list[Problem]:
    """Rows with fewer fields than the header (pandas pads them with empty cells)."""
    if not (frame.to_numpy() == "").any():
        return []  # no empty cell, so no short row: skip the scan
    with path.open(newline="", encoding=encoding) as handle:
        widths = [len(row) for row in csv.reader(handle) if row]
    short = [i for i, width in enumerate(widths[1:]) if width < frame.shape[1]]
    if not short:
        return []
    first = short[0]
    return [
        Problem(
            f"has {widths[first + 1]} fields, expected {frame.shape[1]} ({len(short)} short rows)",
            file=str(path),
            where=f"line {first + FIRST_DATA_LINE}",
        )
    ]


def _convert(
    path: Path, column: str, cells: pd.Series, numeric_hint: str | None
) -> tuple[pd.Series, list[Problem]]:
    """Check one column's cells; convert to float64 when `numeric_hint` says it is numeric."""
    missing = cells.str.lower().isin(MISSING_TOKENS).to_numpy()
    problems = []
    if missing.any():
        problems.append(
            _cell_problem(
                path,
                column,
                missing,
                "missing value",
                "mlpkit does not impute: drop or fill those rows",
            )
        )
    if numeric_hint is None:
        return cells, problems
    values = pd.to_numeric(cells.where(~missing), errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(values) & ~missing
    if bad.any():
        first = str(cells.iloc[int(bad.nonzero()[0][0])])
        problems.append(
            _cell_problem(path, column, bad, f"non-numeric value '{first}'", numeric_hint)
        )
    infinite = np.isinf(values)
    if infinite.any():
        problems.append(
            _cell_problem(path, column, infinite, "infinite value", "expected a finite number")
        )
    return pd.Series(values, index=cells.index), problems


def _cell_problem(path: Path, column: str, mask: np.ndarray, what: str, hint: str) -> Problem:
    rows = mask.nonzero()[0]
    count = f" ({len(rows)} cells)" if len(rows) > 1 else ""
    return Problem(
        f"{what}{count}",
        file=str(path),
        where=f"column '{column}', line {int(rows[0]) + FIRST_DATA_LINE}",
        hint=hint,
    )


def split_rows(n_rows: int, data: DataConfig, seed: int) -> Split:
    """Shuffle row positions with the seed and cut them by the configured fractions.

    train and val take floor(fraction * n); test takes the rest, so no row is lost.
    """
    order = np.random.default_rng(seed).permutation(n_rows)
    n_train = math.floor(data.split.train * n_rows)
    n_val = math.floor(data.split.val * n_rows)
    return Split(order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :])


def check_split(split: Split, loaded: LoadedConfig) -> list[Problem]:
    """Every part the config asks for has rows, and a batch fits in the training rows."""
    cfg = loaded.config
    problems = []
    n_rows = len(split.train) + len(split.val) + len(split.test)
    for part in ("train", "val", "test"):
        if getattr(cfg.data.split, part) > 0 and len(getattr(split, part)) == 0:
            problems.append(
                loaded.problem(
                    ("data", "split", part),
                    f"{n_rows} data rows leave the {part} split empty",
                    f"add rows or raise data.split.{part}",
                )
            )
    batch_size = cfg.training.batch_size
    if 0 < len(split.train) < batch_size:
        problems.append(
            loaded.problem(
                ("training", "batch_size"),
                f"{batch_size} is larger than the {len(split.train)} training rows",
                "lower it or add rows",
            )
        )
    return problems
