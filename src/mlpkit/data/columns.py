"""Check and convert the configured columns of a table, whoever parsed it.

`locate_columns` finds each column in a header by name; `convert_columns` turns the cells of
each into float64 (numeric), seconds since 1970 (dates: data/dates.py) or stripped text
(categorical) and reports every unusable cell, one
problem per column and kind (first line, count), instead of letting it surface as a NaN loss.
A missing cell is NaN (numeric, dates) or "" (categorical) where data.missing fills that column or
drops the row (the target: `drop_missing_target`), and otherwise one problem for all the columns
that have them, with the lines to add to the config.
The same checks serve a whole CSV (csvtext.py), a streamed block and a Parquet file
(blocks.py), so every reader accepts the same cells and reports the same problems.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mlpkit.config.missing_rules import column_strategy
from mlpkit.config.schema import MISSING_MARKERS, DataConfig
from mlpkit.data.dates import EXPECTED as DATE_EXPECTED
from mlpkit.data.dates import ISO_DATE, parse_dates
from mlpkit.errors import (
    LISTED,
    SHOWN,
    DataError,
    Problem,
    clip,
    closest,
    did_you_mean,
    escaped,
)

# Cells that mean "no value" in a numeric column. Until data.missing is set, a categorical
# column only treats an empty cell as missing: "NA" may well be a category (North America).
MISSING_NUMBERS = set(MISSING_MARKERS)
FLOAT32_MAX = float(np.finfo(np.float32).max)


def numeric_and_text(data: DataConfig, with_target: bool = True) -> tuple[list[str], list[str]]:
    """Columns to read as numbers (features, then the target) and as text: categorical
    features, date features (parsed from their text), class labels."""
    numeric = [c for c in data.features if c not in data.categorical and c not in data.dates]
    text = [c for c in data.features if c in data.categorical or c in data.dates]
    if not with_target:
        return numeric, text
    if data.task in ("binary", "multiclass"):
        return numeric, [*text, data.target]  # class labels are read as text
    return [*numeric, data.target], text


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
        DataError: one problem per column and kind of bad cell (first row and count), and one
            for the missing cells data.missing does not fill.
    """
    numeric, text = numeric_and_text(data, with_target)
    markers = _markers(data)
    frame = pd.DataFrame(index=pd.RangeIndex(len(lines)))
    problems: list[Problem] = []
    unfilled: list[tuple[_Where, np.ndarray]] = []
    for column in numeric + text:
        where = _Where(path, column, lines, unit)
        if column in numeric:
            frame[column], missing, found = _convert_numbers(
                where, cells[column], _hint(data, column), markers or MISSING_NUMBERS
            )
        elif column in data.dates:
            frame[column], missing, found = _convert_dates(
                where, cells[column], markers or MISSING_NUMBERS
            )
        else:
            frame[column], missing, found = _check_categories(where, cells[column], markers)
        if missing.any() and not _fills(data, column):
            unfilled.append((where, missing))
        problems += found
    if unfilled:
        problems.insert(0, _unfilled_problem(data, unfilled))
    if problems:
        raise DataError(problems)
    return frame


def drop_missing_target(
    frame: pd.DataFrame, lines: np.ndarray, data: DataConfig
) -> tuple[pd.DataFrame, np.ndarray, int]:
    """The rows whose target is present (NaN, or "" for class labels, is missing: only there
    when data.missing drops them), their lines, and how many were dropped."""
    if data.target not in frame:
        return frame, lines, 0
    target = frame[data.target]
    if pd.api.types.is_float_dtype(target.dtype):
        missing = target.isna().to_numpy()
    else:
        missing = (target == "").to_numpy()
    if not missing.any():
        return frame, lines, 0
    kept = ~missing
    return frame[kept].reset_index(drop=True), lines[kept], int(missing.sum())


def no_rows_left(path: Path, data: DataConfig, dropped: int) -> DataError:
    """Every row of the file misses the target: none is left to train or score on."""
    return DataError(
        Problem(
            f"all {dropped:,} rows miss the target, so none is left",
            file=str(path),
            where=f"column '{data.target}'",
            hint="check data.target",
        )
    )


def _markers(data: DataConfig) -> set[str] | None:
    """The text that means missing once data.missing is set (lowercase), else None."""
    if data.missing is None:
        return None
    return {marker.strip().lower() for marker in data.missing.markers}


def _fills(data: DataConfig, column: str) -> bool:
    """data.missing fills this feature's missing cells, or drops the row (the target)."""
    if data.missing is None:
        return False
    if column == data.target:
        return data.missing.target == "drop"
    return column_strategy(data, column) != "error"


def _unfilled_problem(data: DataConfig, unfilled: list[tuple[_Where, np.ndarray]]) -> Problem:
    """One problem for every column with missing cells nothing fills, with the fix."""
    if data.missing is None:
        numeric = [w.column for w, _ in unfilled if w.column not in data.categorical]
        target_only = [w.column for w, _ in unfilled] == [data.target]
        setting = "missing: median" if numeric else "missing: most_frequent"
        if target_only:
            setting = "missing: {target: drop}"
        hint = (
            f"to fill them from the training rows (numbers: median, categories: most "
            f'frequent; rows missing the target dropped), add "{setting}" under data'
        )
    elif any(where.column == data.target for where, _ in unfilled):
        hint = "set data.missing.target: drop, or give the columns a strategy"
    else:
        column = unfilled[0][0].column
        hint = f"give them a strategy, e.g. data.missing.columns: {{{column}: most_frequent}}"
    if len(unfilled) == 1:
        where, mask = unfilled[0]
        return where.problem(mask, "missing value", hint)
    path = unfilled[0][0].path
    named = ", ".join(
        f"'{clip(where.column, 60)}' ({int(mask.sum())} from {where.unit} "
        f"{int(where.lines[mask.nonzero()[0][0]])})"
        for where, mask in unfilled[:LISTED]
    )
    more = f" and {len(unfilled) - LISTED} more" if len(unfilled) > LISTED else ""
    problem = f"missing values in {len(unfilled)} columns: {named}{more}"
    return Problem(problem, str(path), hint=hint)


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


def _check_categories(
    where: _Where, cells: pd.Series, markers: set[str] | None
) -> tuple[pd.Series, np.ndarray, list[Problem]]:
    """Categorical cells as text (a missing one as ""), and which are missing: empty cells, or
    the markers once data.missing is set."""
    cells = _as_text(cells)
    if markers is None:
        return cells, (cells == "").to_numpy(), []
    missing = cells.str.lower().isin(markers).to_numpy()
    if missing.any():
        cells = cells.where(~missing, "")
    return cells, missing, []


def _convert_dates(
    where: _Where, cells: pd.Series, markers: set[str]
) -> tuple[pd.Series, np.ndarray, list[Problem]]:
    """A date column as float64 seconds since 1970-01-01 UTC (NaN where missing), which cells
    are missing, and a problem for the cells that are not ISO dates."""
    if pd.api.types.is_datetime64_any_dtype(cells.dtype):  # Parquet's own timestamps
        seconds, bad = parse_dates(cells)
        return pd.Series(seconds), np.isnan(seconds), []
    text = _as_text(cells)
    missing = text.str.lower().isin(markers).to_numpy()
    seconds, bad = parse_dates(text.where(~missing, ""))
    problems = []
    if bad.any():
        first = escaped(clip(str(text.iloc[int(bad.nonzero()[0][0])]), 40))
        problems.append(where.problem(bad, f"'{first}' is not a date", DATE_EXPECTED))
    return pd.Series(seconds), missing, problems


def _convert_numbers(
    where: _Where, cells: pd.Series, hint: str, markers: set[str]
) -> tuple[pd.Series, np.ndarray, list[Problem]]:
    """float64 values of a numeric column (NaN where missing), which cells are missing, and a
    problem for each kind of unusable cell."""
    if pd.api.types.is_numeric_dtype(cells.dtype) and not pd.api.types.is_bool_dtype(cells.dtype):
        values = cells.to_numpy(dtype=np.float64, na_value=np.nan)  # typed: null -> NaN
        missing = np.isnan(values)
        bad = np.zeros(len(values), dtype=bool)
    else:
        text = _as_text(cells)
        missing = text.str.lower().isin(markers).to_numpy()
        values = pd.to_numeric(text.where(~missing), errors="coerce").to_numpy(dtype=np.float64)
        bad = np.isnan(values) & ~missing
        cells = text
    problems = []
    if bad.any():
        first = str(cells.iloc[int(bad.nonzero()[0][0])])
        if ISO_DATE.fullmatch(first):  # a date column not yet listed as one
            hint = f"a date: list '{where.column}' in data.dates for its year, month, ..."
        problems.append(where.problem(bad, f"non-numeric value '{first}'", hint))
    infinite = np.isinf(values)
    if infinite.any():
        problems.append(where.problem(infinite, "infinite value", "expected a finite number"))
    huge = (np.abs(values) > FLOAT32_MAX) & ~infinite
    if huge.any():
        problems.append(where.problem(huge, "value beyond float32's range", "rescale the column"))
    return pd.Series(values), missing, problems
