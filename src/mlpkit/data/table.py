"""The data table: read a CSV file into checked columns, and split its rows.

The file is read once: its bytes are hashed, then parsed (csvtext.py) and each configured
column checked and converted (columns.py), so a problem is reported precisely (column, first
line, count). Splitting the rows, and checking that each part the config asks for has rows,
lives here too: a split is positions into this table.
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
from mlpkit.data.csvtext import parse_text
from mlpkit.errors import DataError, Problem


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
