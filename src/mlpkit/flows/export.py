"""`mlpkit export`: a run's model with its preprocessing as one file, checked against predict.

The flow opens the run, rebuilds its network on the CPU, finds its test rows again, builds the
file (report/onnx_graph.py or report/torchscript.py), checks it, writes it and records it in
the run's info (`exports`) under the run's lock.

The exported model takes the raw feature columns, as the data file holds them, and gives the
numbers `mlpkit predict` gives, so whoever runs it needs neither mlpkit nor the run's fitted
preprocessing file:

- inputs: one per feature column, named after it, batch axis dynamic. A numeric column is
  float64 [batch], a categorical one text [batch] (ONNX: tensor(double) and tensor(string);
  TorchScript: forward(numbers: Dict[str, Tensor], categories: Dict[str, List[str]])).
- inside: standardizing in float64 and rounding to float32, exactly as preprocessing.transform
  does; one-hot (a category not seen in training is all zeros); the named inputs' columns; the
  network in float32.
- output, float64 as predict computes it: regression `prediction` [batch] in the target's
  units; binary `probability` [batch], P(the second class); multiclass `probabilities`
  [batch, classes], in the order of the fitted preprocessing's classes.

Every export is checked before it is written: the serialized model is loaded back (ONNX
Runtime, torch.jit.load), run on the run's test rows read from its data file (a synthetic
source's rows drawn again from the seed), and compared with the PyTorch model and preprocessing
as predict runs them. A largest difference above TOLERANCE is an error and nothing is written;
otherwise the file is written atomically and recorded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from mlpkit.config.load import LoadedConfig
from mlpkit.data.preprocessing import Preprocessor
from mlpkit.data.table import Table
from mlpkit.errors import MlpkitError, Problem, did_you_mean
from mlpkit.flows.common import rebuild, refuse_non_finite_outputs, trained_rows
from mlpkit.report.onnx_graph import onnx_bytes, run_onnx
from mlpkit.report.torchscript import run_torchscript, torchscript_bytes
from mlpkit.rundir import lock, runs
from mlpkit.train.loop import predict
from mlpkit.train.tasks import Regression, Task

# Largest |exported - predict| accepted: TOLERANCE, plus RELATIVE of the value, as
# numpy.isclose: float32 rounding grows with an output's size (one step is 1.5e-5 at 200), so
# an absolute bar alone would refuse every large-valued regression target.
TOLERANCE = 1e-5
RELATIVE = 1e-6

# Each format's writer (preprocessing, network, task -> the file's bytes) and runner (the
# bytes run on a frame's rows, as a user would run them); runs.EXPORTS names their files.
_FORMATS: dict[
    str,
    tuple[
        Callable[[Preprocessor, nn.Module, Task], bytes],
        Callable[[bytes, Preprocessor, pd.DataFrame], np.ndarray],
    ],
] = {"onnx": (onnx_bytes, run_onnx), "torchscript": (torchscript_bytes, run_torchscript)}


@dataclass(frozen=True)
class Exported:
    path: Path
    record: runs.ExportInfo


def export_run(run_dir: Path, fmt: str, out: Path | None = None, force: bool = False) -> Exported:
    """Export a complete run's model with its preprocessing, check it, write it, record it.

    `out` defaults to the format's file (runs.EXPORTS) inside the run directory.

    Raises:
        RunDirError: the run is not complete or not a run, its weights are not finite; out's
            folder does not exist.
        DataError: the data file changed since training (the run's test rows are gone), or
            the network's output for one of them is not finite.
        MlpkitError: an unknown format, out exists (without force), the format's packages are
            not installed, or the exported model differs from predict by more than TOLERANCE
            (nothing is written then).
    """
    if fmt not in runs.EXPORTS:
        problem = f"unknown format '{fmt}'"
        raise MlpkitError(Problem(problem, where="--format", hint=did_you_mean(fmt, runs.EXPORTS)))
    run = runs.open_run(run_dir)
    path = out if out is not None else run_dir / runs.EXPORTS[fmt]
    _refuse_run_files(path, run.path)
    if path.exists() and not force:
        raise MlpkitError(
            Problem("already exists", file=str(path), hint="pass --force to overwrite")
        )
    if fmt == "onnx":
        _require_onnx()
    loaded, task, model = rebuild(run, "cpu")
    model = model.eval().requires_grad_(False)  # no autograd graph in the export
    table, rows, part = check_rows(run, loaded)
    frame = table.frame.iloc[rows]
    x = torch.from_numpy(run.preprocessor.transform(frame))  # [rows, inputs]
    refuse_non_finite_outputs(predict(model, x), table.lines[rows], table.unit, table.path)
    serialize, execute = _FORMATS[fmt]
    data = serialize(run.preprocessor, model, task)
    expected = reference(run.preprocessor, model, task, frame)
    gaps = np.abs(execute(data, run.preprocessor, frame) - expected)
    difference = float(np.max(gaps))
    if not np.all(gaps <= TOLERANCE + RELATIVE * np.abs(expected)):  # NaN fails too
        raise MlpkitError(
            Problem(
                f"the exported model differs from mlpkit predict by up to {difference:.3g} on "
                f"the run's {len(frame)} {part} rows (tolerance {TOLERANCE:g} + {RELATIVE:g} "
                "x |value|); nothing was written",
                file=str(path),
                hint="please report it, with the run directory",
            )
        )
    record = runs.ExportInfo(
        format=fmt,
        path=_recorded_path(path, run.path),
        sha256=hashlib.sha256(data).hexdigest(),
        rows=len(frame),
        split=part,
        max_abs_diff=difference,
        exported=runs.now(),
    )
    _write(run.path, path, data, record)
    return Exported(path, record)


def _refuse_run_files(path: Path, run_dir: Path) -> None:
    """--out may point into the run directory, but never at a file the run itself owns."""
    try:
        inside = path.resolve().relative_to(run_dir.resolve())
    except ValueError:
        return
    if inside.parts and inside.parts[0] in runs.OWN_NAMES:
        raise MlpkitError(
            Problem(
                f"is part of the run ({inside.parts[0]}); an export never overwrites it",
                file=str(path),
                hint=f"choose another --out, e.g. the default {runs.EXPORTS['onnx']} in the "
                "run directory",
            )
        )


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise MlpkitError(
            Problem(
                "needs the onnx and onnxruntime packages, which are not installed",
                where="--format onnx",
                hint="pip install 'mlpkit[export]'",
            )
        ) from None


def _recorded_path(path: Path, run_dir: Path) -> str:
    """Relative to the run directory when inside it (the run stays movable), else absolute."""
    absolute = path.resolve()
    if absolute.is_relative_to(run_dir.resolve()):
        return str(absolute.relative_to(run_dir.resolve()))
    return str(absolute)


def _write(run_dir: Path, path: Path, data: bytes, record: runs.ExportInfo) -> None:
    """The file, then its record in the run's info (replacing one for the same path), under
    the run's lock so that two exports cannot lose each other's record."""
    with lock.hold(run_dir):
        runs.write_bytes(path, data)
        info = runs.open_run(run_dir).info  # as it is now that we hold the lock
        kept = [old for old in info.exports if old.path != record.path]
        runs.write_info(run_dir, info.model_copy(update={"exports": [*kept, record]}))


# --- the rows and numbers the check compares ------------------------------------------------


def check_rows(run: runs.Run, loaded: LoadedConfig) -> tuple[Table, np.ndarray, str]:
    """The run's data read again from its file (drawn again from the seed for a synthetic
    source), the positions of its test rows in it, and which part they are: the validation
    or else the training rows when the split has no test part.

    Raises:
        DataError: the data file changed since the run was trained.
    """
    hint = "restore the file the run was trained on: the export is checked on its test rows"
    table, split = trained_rows(run, loaded, hint)
    part = next(name for name in ("test", "val", "train") if len(getattr(split, name)))
    return table, getattr(split, part), part


def reference(
    preprocessor: Preprocessor, model: nn.Module, task: Task, frame: pd.DataFrame
) -> np.ndarray:
    """What predict computes for `frame`'s rows, as the exported model's output holds it."""
    x = torch.from_numpy(preprocessor.transform(frame))  # [rows, inputs] float32
    outputs = predict(model, x)  # [rows, outputs]
    if isinstance(task, Regression):
        return task.columns(outputs)["prediction"]  # [rows] float64, target units
    return task.probabilities(outputs)  # [rows] or [rows, classes] float64
