"""What a cross-validation shows: the spread of each metric over the folds, its table, and the
lines printed while the folds train.

`spreads` turns the folds' metrics.json values into mean, sample standard deviation (ddof=1)
and the values; `render` draws crossval.json as one table (validation, test, then the
baselines' key metrics, each `mean ± std` and a column per fold); `FoldsPrinter` is the CLI's
listener: the headline once, a line per finished fold, a transient bar of its epochs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table
from rich.text import Text

from mlpkit.rundir import catalog
from mlpkit.rundir.crossval import CrossvalInfo, Spread, Spreads

if TYPE_CHECKING:
    from mlpkit.train.loop import EpochRecord

PARTS = ("train", "val", "test")
SHOWN = {"val": "validation", "test": "test"}  # the parts the table shows, and their titles


def spread(values: list[float]) -> Spread:
    """Mean and sample standard deviation (ddof=1, as np.std(values, ddof=1))."""
    array = np.asarray(values, dtype=np.float64)
    std = float(np.std(array, ddof=1)) if len(array) > 1 else 0.0
    return Spread(mean=float(np.mean(array)), std=std, values=[float(v) for v in values])


def spreads(scores: list[dict[str, Any]]) -> Spreads:
    """Each metric every fold has (in the first fold's order), over the folds."""
    names = [name for name in scores[0] if all(name in found for found in scores)]
    return {name: spread([found[name] for found in scores]) for name in names}


def summarize(
    metrics: list[dict[str, Any]], val_baselines: list[dict[str, dict[str, float]]]
) -> dict[str, Any]:
    """crossval.json's results from the folds' metrics.json values and the baselines'
    validation scores (one dict per fold, in fold order): train, val, test, baselines."""
    found: dict[str, Any] = {
        part: spreads([fold[part] for fold in metrics])
        for part in PARTS
        if all(fold.get(part) for fold in metrics)
    }
    per_part = {"val": val_baselines, "test": [fold["baselines"] for fold in metrics]}
    found["baselines"] = {
        part: {
            name: spreads([fold.get(name, {}) for fold in folds])
            for name in folds[0]
            if all(name in fold for fold in folds)
        }
        for part, folds in per_part.items()
        if folds
    }
    return found


def key_metrics(found: Spreads) -> list[str]:
    """The first two key metrics present (catalog.KEY_METRICS): r2 and mae, accuracy and f1."""
    return [name for name in catalog.KEY_METRICS if name in found][:2]


def mean_line(info: CrossvalInfo) -> str:
    """`val r2 0.8512 ± 0.0312, mae 2.1000 ± 0.1000; test ...`: the key metrics' spreads."""
    parts = []
    for part in SHOWN:
        found: Spreads = getattr(info, part)
        cells = [f"{name} {_pm(found[name])}" for name in key_metrics(found)]
        if cells:
            parts.append(f"{part} " + ", ".join(cells))
    return "; ".join(parts)


def render(info: CrossvalInfo) -> Table:
    """Metrics as rows: `mean ± std`, then each fold's value; validation and test metrics,
    then the baselines' key metrics on the validation and the test rows."""
    table = Table(
        "metric",
        "mean ± std",
        *(f"fold {fold}" for fold in range(1, info.folds + 1)),
        title=f"{info.folds}-fold cross-validation (std: sample, ddof=1)",
    )
    for column in table.columns[1:]:
        column.justify = "right"
    for part, title in SHOWN.items():
        found: Spreads = getattr(info, part)
        _section(table, title, [(name, found[name]) for name in found])
    for part, title in SHOWN.items():
        scores = info.baselines.get(part, {})
        keys = key_metrics(getattr(info, part))
        rows = [
            (f"{name} {metric}", found[metric])
            for name, found in scores.items()
            for metric in keys
            if metric in found
        ]
        _section(table, f"baselines ({title})", rows)
    return table


def _section(table: Table, title: str, rows: list[tuple[str, Spread]]) -> None:
    if not rows:
        return
    if table.rows:
        table.add_section()
    table.add_row(Text(title, style="bold"))
    for name, found in rows:
        table.add_row(name, _pm(found), *(f"{value:.4f}" for value in found.values))


def _pm(found: Spread) -> str:
    return f"{found.mean:.4f} ± {found.std:.4f}"


class FoldsPrinter:
    """The callbacks of `mlpkit train --folds K`: what trains (once), a line per finished fold
    with its key validation and test metrics, and on a terminal a bar of the fold's epochs."""

    def __init__(self, console: Console, folds: int) -> None:
        self.console = console
        self.folds = folds
        self.started = False
        self.bar: Progress | None = None
        self.task: TaskID | None = None

    def start(self, headline: str, label: str, epochs: int, epochs_done: int = 0) -> None:
        """A fold starts (or resumes): the headline the first time; the bar counts its epochs."""
        if not self.started:
            self.started = True
            self.console.print(headline)
            if self.console.is_terminal:
                self.bar = Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    console=self.console,
                    transient=True,
                )
                self.bar.start()
                self.task = self.bar.add_task("", total=epochs)
        if self.bar is not None and self.task is not None:
            description = f"{label}: epoch"
            self.bar.reset(self.task, total=epochs, completed=epochs_done, description=description)

    def __call__(self, record: EpochRecord) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.advance(self.task)

    def finished(self, label: str, metrics: dict[str, Any], run_dir: object) -> None:
        """A fold ended: `fold i/K: val <key metrics>; test <key metrics>  <run directory>`."""
        parts = []
        for part in SHOWN:
            scores = metrics.get(part) or {}
            keys = [name for name in catalog.KEY_METRICS if name in scores][:2]
            if keys:
                parts.append(f"{part} " + ", ".join(f"{k} {scores[k]:.4f}" for k in keys))
        self.console.print(f"{label}: {'; '.join(parts)}  {run_dir}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
