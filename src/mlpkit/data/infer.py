"""`mlpkit init`, part one: what a data file says about each column and the task.

`infer` reads the table (CSV or Parquet, whole, with the same reader and cell checks as
training) and decides each column's kind and the task the target sets; flows/init.py turns
that into the config's text. The rules, also written into the config's comments:

- A feature whose every cell is a number is numeric (standardized). Integer columns with few
  values (at most FEW_VALUES) stay numeric, since their order usually means something (counts,
  years, ratings); they are named in a comment, because a number that is only a code (1 USA,
  2 Europe, 3 Japan) is better listed under data.categorical.
- Any other feature (text, true/false) is categorical (one-hot), unless it has more than
  MAX_CATEGORIES values or more values than half the rows: such a column is an identifier or
  free text, and is left out (named in a comment), since a one-hot code of it only memorizes
  rows.
- A feature with one value in every row is left out (named in a comment): nothing to learn.
- A column whose every cell is an ISO date or date-time is a date (data.dates: year, month,
  day of week and days since 1970 as numeric inputs).
- Missing cells (empty, NA, null, ...: data.missing's markers) are counted per column and
  do not decide its kind; the config then fills them (median, or most frequent for
  categories) and drops rows without a target, saying how many of each.
- The target decides the task: two values -> binary (bce); integers with at most FEW_VALUES
  values, or text with at most MAX_CATEGORIES values (and at most half the rows) -> multiclass
  (cross_entropy); other numbers -> regression (mse). A target with one value, or with text
  too varied to be classes, is refused.

Nothing here prints or writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from mlpkit.config.schema import DEFAULT_DATE_PARTS, DataConfig, MissingConfig, TaskKind
from mlpkit.data.blocks import check_parquet_footer, is_parquet, load_table
from mlpkit.data.csvtext import parse_header
from mlpkit.data.dates import is_date_text
from mlpkit.data.preprocessing import canonical_label
from mlpkit.data.table import check_data_file, read_first_line
from mlpkit.errors import DataError, Problem, clip, did_you_mean, escaped

FEW_VALUES = 10  # integer features: named as possible codes; integer targets: classes
MAX_CATEGORIES = 50  # more distinct texts than this: an identifier, not a category
STRAY_SHARE = 0.05  # a column of numbers with at most this share of other cells: a data error

Kind = Literal["numeric", "categorical", "date", "left out"]

# What the written config says when the table has missing cells: numbers take the median,
# categories the most frequent (missing_rules.column_strategy), rows without a target go.
FILLED = MissingConfig(strategy="median", target="drop")


@dataclass(frozen=True)
class Column:
    """A feature column as init sees it: its kind and why, in a few words."""

    name: str
    kind: Kind
    kind_note: str  # what its present cells are
    code_like: bool = False  # an integer column with few values: maybe a code
    constant: bool = False  # left out for having one value in every row
    missing: int = 0  # cells with no value

    @property
    def note(self) -> str:
        """The kind note, and the missing cells if any: 'numbers, 2 missing'."""
        return self.kind_note + (f", {self.missing} missing" if self.missing else "")


@dataclass(frozen=True)
class Target:
    """The target column as init sees it: the task it sets and why, in a few words."""

    name: str
    task: TaskKind
    classes: int  # distinct values (the output units of a multiclass head)
    note: str
    largest_class: int = 0  # classification: rows of its most common class


@dataclass(frozen=True)
class Starter:
    """What `render` needs: the file, its rows, the target and every other column."""

    data_path: Path
    rows: int  # with a target value
    target: Target
    columns: list[Column]
    dropped: int = 0  # rows without a target value

    @property
    def has_missing(self) -> bool:
        """Whether the config needs a data.missing section: a missing feature cell or target."""
        return self.dropped > 0 or any(column.missing for column in self.features)

    @property
    def features(self) -> list[Column]:
        """The columns the config lists as features: all but those left out."""
        return [column for column in self.columns if column.kind != "left out"]


def infer(path: Path, target: str) -> Starter:
    """Read `path` and infer each column's kind and the task `target` sets.

    Raises:
        DataError: the file is missing or unreadable, has fewer than two columns, lacks
            `target`, has a bad cell, has no row with a target, or its target has a single
            value or too many texts to be classes.
    """
    header = _header(path)
    if target not in header:
        raise DataError(
            Problem(
                f"column '{target}' is not in the header",
                file=str(path),
                where="--target",
                hint=did_you_mean(target, header),
            )
        )
    others = [name for name in header if name != target]
    if not others:
        raise DataError(
            Problem(
                f"has only the column '{target}'; a model needs feature columns to learn from",
                file=str(path),
            )
        )
    # Every column as text first, a missing cell as "" and a row without a target dropped.
    as_text = DataConfig(
        target=target,
        features=others,
        categorical=others,
        task="multiclass",
        missing=FILLED,
    )
    table = load_table(path, as_text)
    columns = [_column(path, table.frame[name], table.lines, table.unit) for name in others]
    target_column = _target(path, table.frame[target])
    inferred = Starter(path, table.n_rows, target_column, columns, dropped=table.dropped)
    if not inferred.features:
        raise DataError(
            Problem(
                "every column but the target is left out: an identifier or free text (more "
                "distinct texts than half the rows) or one value in every row; nothing to "
                "learn from",
                file=str(path),
            )
        )
    _check_cells(path, inferred)
    return inferred


def _header(path: Path) -> list[str]:
    """The column names: a CSV's first line (read alone), a Parquet file's schema.

    Raises:
        DataError: the file is missing, not a regular file, binary or unreadable.
    """
    if not is_parquet(path):
        return parse_header(path, read_first_line(path, None), "utf-8", None)
    import pyarrow as pa
    import pyarrow.parquet as pq

    check_data_file(path, None)  # pyarrow opens it by name: never a FIFO
    check_parquet_footer(path, None)
    try:
        return list(pq.ParquetFile(path).schema_arrow.names)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(Problem(f"cannot read it as Parquet ({exc})", file=str(path))) from None


def _numbers(cells: pd.Series) -> pd.Series:
    """The cells as float64, NaN where a cell is not a number."""
    return pd.to_numeric(cells, errors="coerce").astype("float64")


def _column(path: Path, cells: pd.Series, lines: np.ndarray, unit: str) -> Column:
    """A feature's kind from its present cells (text, as read, "" where missing); `lines`
    locate rows as `unit` N."""
    name = str(cells.name)
    absent = cells == ""
    missing = int(absent.sum())
    present = cells[~absent]
    if present.empty:
        note = "no value in any row: nothing to learn from"
        return Column(name, "left out", note, constant=True, missing=missing)
    values = _numbers(present)
    distinct = present.nunique()
    if values.notna().all():
        if values.nunique() == 1:  # 1, 1.0 and 01 alike
            return _constant(present, missing)
        if bool((values == values.round()).all()) and distinct <= FEW_VALUES:
            note = f"integers, {distinct} values"
            return Column(name, "numeric", note, code_like=distinct > 2, missing=missing)
        return Column(name, "numeric", "numbers", missing=missing)
    if is_date_text(present):
        kind = "dates" if present.str.len().max() <= len("2024-03-05") else "date-times"
        note = f"ISO {kind}, {present.min()} to {present.max()}"
        return Column(name, "date", note, missing=missing)
    strays = values.isna()
    if strays.mean() <= STRAY_SHARE:  # numbers but for a few cells, such as auto-mpg's '?'
        first = int(strays.to_numpy().nonzero()[0][0])
        stray = str(present.iloc[first])
        raise DataError(
            Problem(
                f"'{stray}' is not a number, in a column of numbers "
                f"({int(strays.sum())} of its {len(present)} cells are not)",
                file=str(path),
                where=f"column '{name}', {unit} {lines[~absent.to_numpy()][first]}",
                hint=f"fix those rows; if '{stray}' means no value, replace it with an empty "
                "cell and run init again",
            )
        )
    rows = len(present)
    if distinct == 1:
        return _constant(present, missing)
    if distinct > MAX_CATEGORIES or distinct > rows / 2:
        note = f"text, {distinct} values in {rows} rows: an identifier or free text"
        return Column(name, "left out", note, missing=missing)
    kind = "true/false" if set(present.str.lower()) <= {"true", "false"} else "text"
    return Column(name, "categorical", f"{kind}, {distinct} categories", missing=missing)


def _constant(present: pd.Series, missing: int) -> Column:
    """A column with one value in every row that has one: nothing to learn from, so left
    out (a value beside missing cells could only say "present", which it leaves to the user)."""
    shown = escaped(clip(str(present.iloc[0]).strip(), 40))
    note = f"one value in every row ({shown}): nothing to learn from"
    return Column(str(present.name), "left out", note, constant=True, missing=missing)


def _target(path: Path, cells: pd.Series) -> Target:
    name = str(cells.name)
    values = _numbers(cells)
    numeric = bool(values.notna().all())
    distinct = int(values.nunique()) if numeric else int(cells.nunique())
    if distinct < 2:
        raise DataError(
            Problem(
                f"has a single value ('{cells.iloc[0]}'), nothing to predict",
                file=str(path),
                where=f"column '{name}'",
                hint="choose another --target",
            )
        )
    integers = numeric and bool((values == values.round()).all())
    if numeric and distinct > 2 and (distinct > FEW_VALUES or not integers):
        return Target(name, "regression", distinct, f"numbers, {distinct} values: regression")
    if not numeric and distinct > 2 and (distinct > MAX_CATEGORIES or distinct > len(cells) / 2):
        raise DataError(
            Problem(
                f"has {distinct} different texts in {len(cells)} rows: too many to be classes",
                file=str(path),
                where=f"column '{name}'",
                hint="choose a numeric column or one with a few labels as --target",
            )
        )
    labels = [canonical_label(v) for v in sorted(set(values))] if numeric else sorted(set(cells))
    shown = ", ".join(labels[:5]) + (", ..." if len(labels) > 5 else "")
    largest = int((values if numeric else cells).value_counts().max())
    if distinct == 2:
        note = f"2 classes: {shown} (the second is positive)"
        return Target(name, "binary", 2, note, largest)
    kind = "integers" if numeric else "text"
    note = f"{kind}, {distinct} classes: {shown}"
    return Target(name, "multiclass", distinct, note, largest)


def _check_cells(path: Path, starter: Starter) -> None:
    """Read the file again as the written config will (numbers as numbers), so a cell training
    would refuse (inf, beyond float32) is refused now, with training's own message."""
    features = starter.features
    categorical = [c.name for c in features if c.kind == "categorical"]
    config = DataConfig(
        target=starter.target.name,
        features=[c.name for c in features],
        categorical=categorical,
        dates={c.name: list(DEFAULT_DATE_PARTS) for c in features if c.kind == "date"},
        task=starter.target.task,
        missing=FILLED if starter.has_missing else None,
    )
    load_table(path, config)
