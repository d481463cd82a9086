"""`mlpkit eval RUN [--data FILE]`: rebuild a complete run's network from its directory alone
and score it on its own test split (the data file unchanged), its test file (data.test_path,
unchanged), or every row of a file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mlpkit.config.load import LoadedConfig
from mlpkit.data.blocks import load_table
from mlpkit.data.table import Table
from mlpkit.errors import DataError, Problem
from mlpkit.flows.common import rebuild, refuse_non_finite_outputs, trained_rows
from mlpkit.rundir import runs
from mlpkit.train.loop import predict
from mlpkit.train.prepare import make_tensors
from mlpkit.train.tasks import Regression, Task


@dataclass(frozen=True)
class EvalResult:
    """The scores of a run's network on some rows, and which rows they were."""

    run: runs.Run
    scores: dict[str, float]
    rows: int
    source: str  # "test split" or the data file evaluated


def evaluate_run(
    run_dir: Path, data_path: Path | None = None, device_name: str | None = None
) -> EvalResult:
    """Score the run's network: on its own test split by default, on every row of `data_path`
    when given.

    Raises:
        RunDirError: the run is not usable (its weights not finite included).
        DataError: the data does not fit the run, or the network's output for a row is not
            finite.
    """
    run = runs.open_run(run_dir)
    # The training device by default, so the run's own test split scores exactly as it did.
    trained_on_cuda = run.info.device.startswith("cuda") and torch.cuda.is_available()
    loaded, task, model = rebuild(run, device_name or ("cuda" if trained_on_cuda else "cpu"))
    if data_path is None:
        table, split = trained_rows(run, loaded, "pass --data to score a new file")
        rows = split.test
    else:
        table = load_table(data_path, loaded.config.data)
        _check_known_labels(task, table.frame[loaded.config.data.target].to_numpy(), table)
        rows = np.arange(table.n_rows)
    device = next(model.parameters()).device
    tensors = make_tensors(table.frame.iloc[rows], run.preprocessor, task, device)
    outputs = predict(model, tensors.x)  # [rows, outputs]
    refuse_non_finite_outputs(outputs, table.lines[rows], table.unit, table.path)
    scores = task.score(tensors.y, outputs, None)
    return EvalResult(run, scores, len(rows), _source(loaded, table, data_path))


def _source(loaded: LoadedConfig, table: Table, data_path: Path | None) -> str:
    """Which rows were scored: the run's test split, its test file, or the file given."""
    if data_path is not None:
        return str(data_path)
    return "test split" if loaded.config.data.test_path is None else f"test file {table.path}"


def _check_known_labels(task: Task, target: np.ndarray, table: Table) -> None:
    """A classification file may only hold the classes the run was trained on."""
    if isinstance(task, Regression):
        return
    unknown = task.labels.encode(target) < 0
    if unknown.any():
        first = int(np.flatnonzero(unknown)[0])
        raise DataError(
            Problem(
                f"label '{target[first]}' was not a class in training ({unknown.sum()} rows)",
                file=str(table.path),
                where=f"column '{task.labels.name}', {table.unit} {table.lines[first]}",
                hint="expected one of: " + ", ".join(task.labels.classes),
            )
        )
