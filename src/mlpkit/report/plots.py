"""The run's plots: PNG files in RUN/plots/, drawn from the run's own files alone.

history.csv, metrics.json and predictions.csv (the test rows) hold everything drawn, so a run
can be plotted again anywhere, without its data, model or torch's help:

    learning_curves.png       loss (train, val) and each validation metric per epoch, the
                              learning rate when history.csv has an `lr` column; the best
                              epoch (metrics.json) marked on every panel
    predicted_vs_actual.png   regression: the test rows, predicted against actual, with y = x
    residuals.png             regression: actual - predicted against predicted, and their spread
    confusion_matrix.png      classification: one matrix per split, counts coloured by the share
                              of each true class
    roc_curve.png             classification: ROC of the positive class (binary) or of each class
                              against the rest (multiclass), from the p_<class> columns
    pr_curve.png              classification: precision-recall, the same way

Figures are drawn by charts.py on matplotlib's Agg canvas directly (no pyplot, no global
backend or style), rendered to bytes and written with runs.write_bytes, so a reader never sees
a torn PNG.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pydantic import ValidationError

from mlpkit.errors import Problem, RunDirError
from mlpkit.report import charts
from mlpkit.rundir import runs


@dataclass(frozen=True)
class RunData:
    """What the plots are drawn from: a run's history, metrics and test predictions."""

    folder: Path  # the run directory
    history: dict[str, np.ndarray]  # column -> one value per epoch (an empty cell is NaN)
    metrics: runs.MetricsFile
    predictions: dict[str, list[str]]  # column -> its cells, one per test row

    @property
    def title(self) -> str:
        """<name>/<stamp>: the tail of the run's path, enough to tell runs apart."""
        return charts.literal(f"{self.folder.parent.name}/{self.folder.name}")

    @property
    def quantity(self) -> str:
        """The target's name as the plots show it."""
        return charts.literal(self.target)

    @property
    def test_rows(self) -> int:
        return len(self.predictions[self.target])

    @property
    def target(self) -> str:
        """predictions.csv is line (or row), the target, prediction, then p_<class> columns."""
        return list(self.predictions)[1]

    def column(self, name: str) -> np.ndarray:
        return _floats(name, self.predictions[name], self.folder / runs.PREDICTIONS)


def draw_run(run_dir: Path) -> list[Path]:
    """Draw every plot of the run into run_dir/plots/ and return their paths.

    Raises:
        RunDirError: history.csv, metrics.json or predictions.csv is missing or malformed.
        EnvironmentFault: a PNG cannot be written (disk full, permissions).
    """
    with _without_font_warnings():
        figures = draw(read_run(run_dir))
        pictures = {name: png(figure) for name, figure in figures.items()}
    folder = run_dir / runs.PLOTS
    try:
        folder.mkdir(exist_ok=True)
    except OSError as exc:
        raise runs.write_fault(exc, folder) from None
    paths = []
    for name, picture in pictures.items():
        paths.append(folder / f"{name}.png")
        runs.write_bytes(paths[-1], picture)
    (run_dir / runs.PLOTS_LOG).unlink(missing_ok=True)  # a background failure, now mended
    return paths


@contextlib.contextmanager
def _without_font_warnings() -> Iterator[None]:
    """A label the font cannot draw (an emoji, a control character from the data) is drawn
    as a box; matplotlib's warning about it would print raw user text on stderr."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s)Glyph .* missing", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"Matplotlib currently does not support")
        yield


def redraw(run_dir: Path) -> list[Path]:
    """`mlpkit plot`: draw a complete run's plots again.

    Raises:
        RunDirError: not a run, or not complete (its history, metrics and predictions are
            written when training ends), or one of those files is damaged.
    """
    status = runs.open_run(run_dir, require_complete=False).info.status
    if status != "complete":
        problem = f"the run is {status}, not complete: plots are drawn when a run completes"
        hint = runs.next_step(run_dir, status)
        raise RunDirError(Problem(problem, file=str(run_dir), hint=hint))
    return draw_run(run_dir)


def read_run(run_dir: Path) -> RunData:
    """The three files the plots need.

    Raises:
        RunDirError: one is missing or malformed.
    """
    path = run_dir / runs.METRICS
    try:
        metrics = runs.MetricsFile.model_validate_json(runs.read_file(path))
    except ValidationError as exc:
        problem = f"not a valid {path.name}: {exc.errors()[0]['msg'].lower()}"
        raise RunDirError(Problem(problem, file=str(path))) from None
    path = run_dir / runs.HISTORY
    history = {name: _floats(name, cells, path) for name, cells in runs.read_csv(path).items()}
    predictions = runs.read_csv(run_dir / runs.PREDICTIONS)
    if "epoch" not in history or list(predictions)[2:3] != ["prediction"]:
        problem = "not a file written by mlpkit train (expected columns missing)"
        raise RunDirError(Problem(problem, file=str(run_dir)))
    return RunData(run_dir, history, metrics, predictions)


def draw(data: RunData) -> dict[str, Figure]:
    """Every figure of the run, by file name (without .png)."""
    figures = {"learning_curves": charts.learning_curves(data)}
    confusion = data.metrics.confusion_matrix
    if confusion is None:  # regression
        actual, predicted = data.column(data.target), data.column("prediction")
        figures["predicted_vs_actual"] = charts.predicted_vs_actual(data, actual, predicted)
        figures["residuals"] = charts.residuals(data, actual, predicted)
        return figures
    labels = cast(list[str], confusion["labels"])
    figures["confusion_matrix"] = charts.confusion_matrix(data, labels)
    truth = np.asarray(data.predictions[data.target])
    curves = [  # (class, is it this class, its probability): one per p_<class> column
        (label, truth == label, data.column(f"p_{label}"))
        for label in labels
        if f"p_{label}" in data.predictions
    ]
    figures["roc_curve"] = charts.roc_curve(data, curves)
    figures["pr_curve"] = charts.pr_curve(data, curves)
    return figures


def png(figure: Figure) -> bytes:
    """The figure as PNG bytes, rendered by Agg (no display, no global backend)."""
    FigureCanvasAgg(figure)  # attaches itself: the figure renders with Agg, whatever the backend
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _floats(column: str, cells: list[str], path: Path) -> np.ndarray:
    """A column of numbers; an empty cell (a value some epochs lack) is NaN, a gap in a line."""
    values = []
    for cell in cells:
        try:
            values.append(float(cell) if cell else np.nan)
        except ValueError:
            problem = f"column '{column}' holds '{cell}', not a number"
            raise RunDirError(Problem(problem, file=str(path))) from None
    return np.array(values)
