"""The rules of k-fold cross-validation (data.split.folds, set by `mlpkit train --folds K`).

The folds cut a table held in memory (data/folds.py): a synthetic source draws new rows and a
streamed file is never held whole, so neither takes folds; nor do split files, which give the
validation or test rows themselves. `fold` (the part one run validates on) is written by the
cross-validation into each fold's own config; it needs `folds` and lies within it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlpkit.errors import Problem

if TYPE_CHECKING:
    from mlpkit.config.load import LoadedConfig

_FOLDS = ("data", "split", "folds")
_REMOVE = "remove data.split.folds (or --folds)"


def fold_problems(loaded: LoadedConfig) -> list[Problem]:
    """Folds only over a data file read whole; a fold within the folds."""
    data = loaded.config.data
    split = data.split
    problems = []
    if split.fold is not None and split.folds is None:
        hint = "set data.split.folds too, or train every fold with --folds K"
        problems.append(loaded.problem(("data", "split", "fold"), "needs data.split.folds", hint))
    elif split.fold is not None and split.folds is not None and split.fold > split.folds:
        problem = f"is {split.fold} but there are {split.folds} folds"
        hint = f"a fold from 1 to {split.folds}"
        problems.append(loaded.problem(("data", "split", "fold"), problem, hint))
    if split.folds is None:
        return problems
    if data.source is not None:
        problem = "cross-validation needs a data file; a synthetic source draws new rows"
        problems.append(loaded.problem(_FOLDS, problem, _REMOVE))
    elif data.stream:
        problem = "cross-validation needs the table in memory, not data.stream: true"
        hint = f"{_REMOVE}, or set data.stream: false"
        problems.append(loaded.problem(_FOLDS, problem, hint))
    for key in ("val_path", "test_path"):
        if getattr(data, key) is not None:
            problem = f"cross-validation cuts its own validation and test rows, not data.{key}"
            problems.append(loaded.problem(_FOLDS, problem, f"{_REMOVE}, or data.{key}"))
    return problems
