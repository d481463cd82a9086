"""Validation and test rows from their own files (data.val_path, data.test_path).

Each file is read and checked exactly as data.path is (blocks.load_table: the same configured
columns, the same cell checks, CSV or Parquet), and every problem with it is located at the
config key that named it, so `data.test_path` shows in the message whatever went wrong inside
the file. A classification file may only hold classes of data.path (as `mlpkit eval --data`
requires). The training file is cut by config/split_rules.py's fractions (no rows for a part a
file gives), and `joined` appends the files' rows to its table, so a Split stays positions
into one Table wherever its rows came from.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from mlpkit.config.load import LoadedConfig
from mlpkit.config.schema import DataConfig
from mlpkit.config.split_rules import file_parts, training_file_fractions
from mlpkit.data.blocks import load_table
from mlpkit.data.preprocessing import canonical_label
from mlpkit.data.table import Split, Table, split_rows
from mlpkit.errors import DataError, Problem, listed


def split_training_file(
    n_rows: int, data: DataConfig, seed: int, labels: np.ndarray | None = None
) -> Split:
    """data.path's rows split (table.split_rows, seeded, stratified with `labels`) by the
    fractions of split_rules.training_file_fractions: without split files, data.split itself.

    With the test rows from a file, train takes every row validation does not: split_rows
    gives the rounding's rest (a row or so per class) to test, which moves to train here.
    """
    fractions = training_file_fractions(data)
    if fractions is data.split:
        return split_rows(n_rows, data, seed, labels)
    split = split_rows(n_rows, data.model_copy(update={"split": fractions}), seed, labels)
    if data.test_path is None:
        return split
    return replace(split, train=np.concatenate([split.train, split.test]), test=split.test[:0])


def read_split_files(loaded: LoadedConfig, classes: list[str] | None) -> dict[str, Table]:
    """Each split file the config names ("val", "test"), read and checked like data.path;
    `classes`: data.path's classes, which a classification file's labels must be among.

    Raises:
        DataError: every problem of every file, each located at data.val_path or
            data.test_path.
    """
    files: dict[str, Table] = {}
    problems: list[Problem] = []
    for part in file_parts(loaded.config.data):
        try:
            files[part] = read_split_file(loaded, part, classes)
        except DataError as exc:
            problems += exc.problems
    if problems:
        raise DataError(problems)
    return files


def read_split_file(loaded: LoadedConfig, part: str, classes: list[str] | None = None) -> Table:
    """The file data.<part>_path names, read and checked like data.path.

    Raises:
        DataError: the file is missing or unreadable, lacks a column, has a bad cell, or (with
            `classes`) a label data.path does not have; located at data.<part>_path.
    """
    key = f"{part}_path"
    path = loaded.file_path(key)
    assert path is not None, f"data.{key} is not set"
    try:
        table = load_table(path, loaded.config.data)
    except DataError as exc:
        hint = _relative_hint(loaded, key) if not path.exists() else None
        raise DataError([_at_key(loaded, key, p, hint) for p in exc.problems]) from None
    unknown = None if classes is None else _unknown_label(loaded, table, classes)
    if unknown is not None:
        raise DataError(_at_key(loaded, key, unknown))
    return table


def joined(table: Table, split: Split, files: dict[str, Table]) -> tuple[Table, Split]:
    """data.path's table with each file's rows appended (their own lines kept), and the split
    with each file's rows as its part. Nothing changes without files."""
    if not files:
        return table, split
    frame = pd.concat([table.frame, *(f.frame for f in files.values())], ignore_index=True)
    lines = np.concatenate([table.lines, *(f.lines for f in files.values())])
    parts: dict[str, np.ndarray] = {}
    start = table.n_rows
    for part, file in files.items():
        parts[part] = start + np.arange(file.n_rows)
        start += file.n_rows
    return replace(table, frame=frame, lines=lines), replace(split, **parts)


def _unknown_label(loaded: LoadedConfig, table: Table, classes: list[str]) -> Problem | None:
    """The first row whose label is not among `classes`, as eval refuses one (None if none)."""
    target = loaded.config.data.target
    labels = np.asarray([canonical_label(v) for v in table.frame[target].to_numpy()])
    unknown = ~np.isin(labels, classes)
    if not unknown.any():
        return None
    first = int(np.flatnonzero(unknown)[0])
    return Problem(
        f"label '{labels[first]}' is not a class of data.path ({int(unknown.sum())} rows)",
        file=str(table.path),
        where=f"column '{target}', {table.unit} {table.lines[first]}",
        hint="expected one of: " + listed(classes),
    )


def _at_key(loaded: LoadedConfig, key: str, problem: Problem, hint: str | None = None) -> Problem:
    """A problem found in a split file, located at the config key that named the file: the
    file, its line and column come first in the message."""
    where = problem.file or ""
    if problem.line is not None:
        where += f":{problem.line}"
    text = ": ".join(part for part in (where, problem.where, problem.problem) if part)
    return loaded.problem(("data", key), text, problem.hint or hint)


def _relative_hint(loaded: LoadedConfig, key: str) -> str | None:
    """For a file not found: which folder a relative path is read from."""
    written = str(getattr(loaded.config.data, key))
    if Path(written).is_absolute():  # `~` is expanded when the config is loaded
        return None
    return f"data.{key} '{written}' is relative to {loaded.source.parent}/"
