"""The split when validation or test rows come from their own files (data.val_path,
data.test_path): which parts the files give, the fractions the training file is cut by, and
the rules and warnings about them.

A part given by a file takes no rows of data.path: its fraction is not used (a warning says so
when the config wrote it). The other part keeps its fraction of data.path's rows, and train
takes the rest; with both files, every row of data.path trains. A streamed file or a synthetic
source cuts its own parts and takes no split files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlpkit.config.schema import DataConfig, SplitConfig
from mlpkit.errors import Problem

if TYPE_CHECKING:
    from mlpkit.config.load import LoadedConfig

FILE_PARTS = ("val", "test")  # the parts a file may give


def file_parts(data: DataConfig) -> list[str]:
    """The parts given by their own files, in split order."""
    return [part for part in FILE_PARTS if getattr(data, f"{part}_path") is not None]


def has_val_rows(data: DataConfig) -> bool:
    """Whether the config asks for validation rows: a fraction of data.path, a file, or a
    fold's part (data.split.folds)."""
    return data.split.val > 0 or data.val_path is not None or data.split.folds is not None


def training_file_fractions(data: DataConfig) -> SplitConfig:
    """The fractions data.path's rows are cut by: data.split as written without split files;
    else 0 for each part a file gives, the other part's own fraction, train the rest.

    Built without validation: train may be 1 and test 0 here, which a config may not write.
    """
    parts = file_parts(data)
    if not parts:
        return data.split
    val = 0.0 if "val" in parts else data.split.val
    test = 0.0 if "test" in parts else data.split.test
    return SplitConfig.model_construct(train=1.0 - val - test, val=val, test=test)


def split_file_problems(loaded: LoadedConfig) -> list[Problem]:
    """Split files go with a data file read whole: a synthetic source draws its own parts, and
    a streamed file cuts its parts by a hash of each row as it reads."""
    data = loaded.config.data
    problems = []
    for part in file_parts(data):
        key = ("data", f"{part}_path")
        if data.source is not None:
            problem = "a synthetic source draws its own validation and test rows"
            problems.append(loaded.problem(key, problem, f"remove data.{part}_path"))
        elif data.stream:
            problem = "is not read with data.stream: true (a streamed file cuts its own parts)"
            hint = f"remove data.{part}_path, or set data.stream: false to read the files whole"
            problems.append(loaded.problem(key, problem, hint))
    return problems


def ignored_fractions(loaded: LoadedConfig) -> tuple[Problem, ...]:
    """Warnings for fractions the config wrote that split files make unused: a part's own
    fraction when a file gives it, and train's when it is not the rest of data.path."""
    data = loaded.config.data
    parts = file_parts(data)
    written = data.split.model_fields_set
    used = training_file_fractions(data)
    warnings = []
    for part in parts:
        if part in written and getattr(data.split, part) > 0:
            warnings.append(
                loaded.problem(
                    ("data", "split", part),
                    f"{getattr(data.split, part):g} is not used: the {part} rows come from "
                    f"data.{part}_path",
                    "remove it",
                )
            )
    if parts and "train" in written and abs(data.split.train - used.train) > 1e-9:
        warnings.append(
            loaded.problem(
                ("data", "split", "train"),
                f"{data.split.train:g} is not used: with split files, train is the rest of "
                f"data.path's rows ({used.train:g})",
                "remove it",
            )
        )
    return tuple(warnings)
