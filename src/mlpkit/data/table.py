"""The data table: read a CSV file into checked columns, and split its rows.

The file is read once: its bytes are hashed, then parsed (csvtext.py) and each configured
column checked and converted (columns.py), so a problem is reported precisely (column, first
line, count). It is read only if it is a regular file and small enough to parse in the memory
available (reading.py): parsing holds about CSV_COST times the file. Splitting the rows, and
checking that each part the config asks for has rows, lives here too: a split is positions into
this table.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mlpkit.config.load import LoadedConfig
from mlpkit.config.schema import DataConfig
from mlpkit.data.columns import drop_missing_target, no_rows_left
from mlpkit.data.csvtext import parse_text, refuse_binary
from mlpkit.data.folds import cut_folds
from mlpkit.errors import DataError, Problem
from mlpkit.reading import (
    LINE_LIMIT,
    SNIFF,
    NotAFile,
    TooLarge,
    memory_bound,
    open_regular,
    read_bounded,
    size_text,
)

# Peak memory of reading a CSV whole, per byte of the file: the bytes, the text, the csv
# module's records (a str object a cell) and the converted columns. Measured 15-18x on
# numeric and mixed tables of 25-30 MB.
CSV_COST = 16


@dataclass(frozen=True)
class Table:
    """The configured columns, converted: numeric ones float64, categorical ones text."""

    frame: pd.DataFrame
    lines: np.ndarray  # the line of the file each row starts on (the header is line 1)
    path: Path
    sha256: str
    unit: str = "line"  # what `lines` count: a CSV's lines, or a Parquet file's rows
    dropped: int = 0  # rows left out for a missing target (data.missing.target: drop)

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
    frame, lines, dropped = drop_missing_target(frame, lines, data)
    if len(lines) == 0:
        raise no_rows_left(path, data, dropped)
    sha256 = hashlib.sha256(raw).hexdigest()
    return Table(frame=frame, lines=lines, path=path, sha256=sha256, dropped=dropped)


def read_bytes(path: Path, origin: LoadedConfig | None) -> bytes:
    """The whole file's bytes, if parsing them fits in the memory available.

    Raises:
        DataError: it is missing, not a regular file, too large or unreadable, located at
            data.path when known.
    """
    try:
        return read_bounded(path, memory_bound(1 / CSV_COST), "a CSV file read whole")
    except TooLarge as exc:
        raise too_large(path, origin, f"is {size_text(exc.size)}", exc.size * CSV_COST) from None
    except (NotAFile, OSError) as exc:
        raise open_error(path, origin, exc) from None


def read_first_line(path: Path, origin: LoadedConfig | None, encoding: str = "utf-8") -> bytes:
    """A CSV file's first line (its header), read alone: at most LINE_LIMIT bytes, and only
    after its first bytes are seen to be text (csvtext.refuse_binary).

    Raises:
        DataError: it is missing, not a regular file, unreadable, binary, or its first line
            is longer than LINE_LIMIT.
    """
    try:
        with open_regular(path) as file:
            refuse_binary(path, file.read(SNIFF), encoding)
            file.seek(0)
            line = file.readline(LINE_LIMIT)
    except (NotAFile, OSError) as exc:
        raise open_error(path, origin, exc) from None
    if len(line) == LINE_LIMIT and not line.endswith(b"\n"):
        problem = f"the first line is longer than {size_text(LINE_LIMIT)}; is it a CSV file?"
        raise DataError(Problem(problem, file=str(path), where="line 1"))
    return line


def check_data_file(path: Path, origin: LoadedConfig | None) -> None:
    """Raises DataError when `path` is missing, a folder or another non-file (a FIFO, a
    device), before a reader that opens it by name (pyarrow) could block on it."""
    try:
        with open_regular(path):
            pass
    except (NotAFile, OSError) as exc:
        raise open_error(path, origin, exc) from None


def open_error(path: Path, origin: LoadedConfig | None, exc: NotAFile | OSError) -> DataError:
    """Why the data file could not be opened, as a DataError (located as file_error)."""
    if isinstance(exc, NotAFile):
        folder = exc.kind == "a directory"
        problem = "is a directory, not a data file" if folder else exc.problem
        return file_error(path, origin, problem, where_from=folder)
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        return file_error(path, origin, "data file not found")
    return file_error(path, origin, f"cannot read the data file ({exc.strerror})")


def too_large(path: Path, origin: LoadedConfig | None, said: str, needs: int) -> DataError:
    """A data file too large to read whole: what it is (`said`: "is 3.0 GB"), the memory
    reading it would take, and how to read it block by block instead."""
    problem = (
        f"{said}; reading it whole takes about {size_text(needs)} of memory, more than the "
        f"{size_text(memory_bound(1))} available"
    )
    if origin is None:
        return DataError(Problem(problem, file=str(path), hint="split it into smaller files"))
    hint = "set data.stream: true to read it block by block"
    return DataError(origin.problem(("data", "path"), f"{problem}: {path}", hint))


def file_error(
    path: Path, origin: LoadedConfig | None, problem: str, where_from: bool = True
) -> DataError:
    """A problem with the data file itself, at the config key that named it when there is one;
    `where_from`: say which folder a relative data.path is read from."""
    if origin is None:
        return DataError(Problem(problem, file=str(path)))
    written = str(origin.config.data.path)
    relative = f"data.path '{written}' is relative to {origin.source.parent}/"
    hint = None if Path(written).is_absolute() or not where_from else relative
    return DataError(origin.problem(("data", "path"), f"{problem}: {path}", hint))


def split_rows(n_rows: int, data: DataConfig, seed: int, labels: np.ndarray | None = None) -> Split:
    """Shuffle row positions with the seed and cut them by the configured fractions.

    train and val take floor(fraction * n); test takes the rest, so no row is lost. With
    `labels` (classification) each class is cut separately, so every part keeps the class mix.
    With data.split.folds, the test rows and then the folds (folds.py): val is the part of
    data.split.fold (the first when unset, as `mlpkit check` shows), train the other parts.
    """
    split = data.split
    if split.folds is not None:
        found = cut_folds(n_rows, split.test, split.folds, seed, labels)
        fold = split.fold or 1
        return Split(found.rest(fold), found.part(fold), found.test)
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
    folds = cfg.data.split.folds
    if folds is not None and counts["train"] + counts["val"] < folds:
        problem = (
            f"{folds} folds need at least {folds} rows besides the {counts['test']} test rows, "
            f"and there are {counts['train'] + counts['val']}"
        )
        problems.append(loaded.problem(("data", "split", "folds"), problem, "use fewer folds"))
    for part in ("train", "val", "test"):
        if folds is not None and part != "test":
            continue  # the folds' parts: checked above
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
