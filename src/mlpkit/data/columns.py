"""Check and convert the configured columns of a table, whoever parsed it.

`locate_columns` finds each column in a header by name; `convert_columns` turns the cells of
each into float64 (numeric) or stripped text (categorical) and reports every unusable cell, one
problem per column and kind (first line, count), instead of letting it surface as a NaN loss.
The same checks serve a whole CSV (csvtext.py), a streamed block and a Parquet file
(blocks.py), so every reader accepts the same cells and reports the same problems.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mlpkit.config.schema import DataConfig
from mlpkit.errors import LISTED, SHOWN, DataError, Problem, clip, closest, did_you_mean

# Cells that mean "no value" in a numeric column. A categorical column only treats an empty cell
# as missing: "NA" may well be a category (North America).
MISSING_NUMBERS = {"", "na", "n/a", "nan", "null", "none"}
NO_IMPUTING = "mlpkit does not impute: drop or fill those rows"
FLOAT32_MAX = float(np.finfo(np.float32).max)


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
        # suggestions for the first few only: each one compares the name with the header
        named = ", ".join(
            _with_suggestion(name, header) if place < SHOWN else f"'{clip(name, 60)}'"
            for place, name in enumerate(missing[:LISTED])
        )
        if len(missing) > LISTED:
            named += f" and {len(missing) - LISTED:,} more"
        problem = f"{len(missing):,} columns missing from the header: {named}"
        problems.insert(0, Problem(problem, file=str(path)))
    return positions, problems


def _with_suggestion(name: str, header: list[str]) -> str:
    near = closest(name, header)
    return f"'{name}' (did you mean '{near}'?)" if near else f"'{name}'"


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


def _hint(data: DataConfig, column: str) -> str:
    """What a non-numeric cell of `column` should be, and the fix."""
    if column == data.target:
        return "expected a number (a regression target; for class labels set data.task)"
    return f"expected a number, or list '{column}' in data.categorical to one-hot encode it"


@dataclass(frozen=True)
class _Where:
    """Where a column's cells come from, to name the first bad one."""

    path: Path
    column: str
    lines: np.ndarray
    unit: str  # "line" (CSV) or "row" (Parquet)

    def problem(self, mask: np.ndarray, what: str, hint: str) -> Problem:
        """`what` at the first cell in `mask`, with the count of cells when there are several."""
        rows = mask.nonzero()[0]
        count = f" ({len(rows)} cells)" if len(rows) > 1 else ""
        return Problem(
            f"{what}{count}",
            file=str(self.path),
            where=f"column '{self.column}', {self.unit} {int(self.lines[rows[0]])}",
            hint=hint,
        )


def _as_text(cells: pd.Series) -> pd.Series:
    """Cells as stripped text, a null (Parquet, pyarrow) as "": " red" is "red" whichever reader
    parsed it."""
    if not isinstance(cells.dtype, np.dtypes.ObjectDType) or cells.isna().any():
        cells = cells.astype(object).where(cells.notna(), "").astype(str)
    return cells.str.strip()


def _check_categories(where: _Where, cells: pd.Series) -> tuple[pd.Series, list[Problem]]:
    """Categorical cells as text, and a problem for the empty ones (mlpkit does not impute)."""
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
