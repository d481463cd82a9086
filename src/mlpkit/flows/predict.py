"""`mlpkit predict RUN --data FILE`: a complete run's network and preprocessing on every row
of a file; columns matched by name, the target not needed, other columns ignored."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mlpkit.data.blocks import load_table
from mlpkit.flows.common import csv_rows, rebuild, refuse_non_finite_outputs
from mlpkit.rundir import runs
from mlpkit.train.loop import predict


@dataclass(frozen=True)
class Predictions:
    """One row per row of the input file: its line and the task's prediction columns."""

    columns: dict[str, np.ndarray]

    def to_csv(self) -> str:
        """The predictions as CSV text with a header."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(self.columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(csv_rows(self.columns))
        return buffer.getvalue()


def predict_run(run_dir: Path, data_path: Path, device_name: str | None = None) -> Predictions:
    """Predict every row of `data_path` with a complete run's model and preprocessing.

    A category never seen in training encodes as all zeros (data/preprocessing.py).

    Raises:
        RunDirError: the run is not usable (its weights not finite included).
        DataError: the file lacks columns or has bad cells, or the network's output for a row
            is not finite (nothing is returned, so nothing is written).
    """
    run = runs.open_run(run_dir)
    loaded, task, model = rebuild(run, device_name or "cpu")
    table = load_table(data_path, loaded.config.data, with_target=False)
    device = next(model.parameters()).device
    x = torch.from_numpy(run.preprocessor.transform(table.frame)).to(device)  # [rows, inputs]
    outputs = predict(model, x)  # [rows, outputs]
    refuse_non_finite_outputs(outputs, table.lines, table.unit, data_path)
    return Predictions({table.unit: table.lines, **task.columns(outputs)})
