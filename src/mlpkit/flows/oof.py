"""Out-of-fold predictions of a cross-validation's complete folds, and its baselines' scores
on the same rows.

Each fold's network is rebuilt from its run directory alone (flows.common.rebuild, as eval
does) and predicts the rows its fold validated on, found again from the fold's config (the
data file read once, and refused if it changed since the fold trained). Every non-test row is
in exactly one fold's part, so the rows together cover them once each. The baselines are
fitted on the fold's training inputs, as in its metrics.json, and scored on those same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlpkit.data.blocks import load_table
from mlpkit.data.table import Table
from mlpkit.errors import DataError, Problem
from mlpkit.flows.common import csv_rows, rebuild, refuse_non_finite_outputs
from mlpkit.rundir import runs
from mlpkit.train.loop import predict
from mlpkit.train.prepare import make_tensors, split_table
from mlpkit.train.tasks import Regression

Scores = dict[str, float]


@dataclass(frozen=True)
class OutOfFold:
    """oof_predictions.csv's rows (by line), and per fold the baselines' validation scores."""

    rows: list[dict[str, Any]]
    baselines: list[dict[str, Scores]]


def out_of_fold(fold_dirs: list[Path], device_name: str | None = None) -> OutOfFold:
    """Each fold's predictions for the rows it validated on, and the baselines' scores there.

    Raises:
        RunDirError: a fold is not a complete, usable run.
        DataError: the data file changed since the folds trained, or an output is not finite.
    """
    table: Table | None = None
    columns: list[dict[str, np.ndarray]] = []
    baselines = []
    for fold, path in enumerate(fold_dirs, start=1):
        run = runs.open_run(path)
        on_cuda = run.info.device.startswith("cuda") and torch.cuda.is_available()
        loaded, task, model = rebuild(run, device_name or ("cuda" if on_cuda else "cpu"))
        if table is None:
            table = load_table(loaded.data_path, loaded.config.data, loaded)
        _same_data(table, run)
        split = split_table(loaded, table)[0]
        device = next(model.parameters()).device
        val = make_tensors(table.frame.iloc[split.val], run.preprocessor, task, device)
        outputs = predict(model, val.x)  # [rows, outputs]
        lines = table.lines[split.val]
        refuse_non_finite_outputs(outputs, lines, table.unit, table.path)
        target = loaded.config.data.target
        truth = (  # regression: the file's own value; classes: their names, as predict gives
            table.frame[target].to_numpy()[split.val]
            if isinstance(task, Regression)
            else task.truth(val.y)
        )
        found = {table.unit: lines, "fold": np.full(len(lines), fold), target: truth}
        columns.append(found | task.columns(outputs))
        train = make_tensors(table.frame.iloc[split.train], run.preprocessor, task, device)
        baselines.append(
            task.baselines(train.x.cpu().numpy(), train.y.cpu(), val.x.cpu().numpy(), val.y.cpu())
        )
    joined = {name: np.concatenate([found[name] for found in columns]) for name in columns[0]}
    order = np.argsort(joined[next(iter(joined))], kind="stable")  # by line
    return OutOfFold(csv_rows({name: values[order] for name, values in joined.items()}), baselines)


def _same_data(table: Table, run: runs.Run) -> None:
    if table.sha256 != run.info.data.sha256:
        raise DataError(
            Problem(
                f"the data file changed since {run.path.name} was trained",
                file=str(table.path),
                hint="restore the original file, or cross-validate again",
            )
        )
