"""What the commands show a person: epoch lines, result tables. Rendering only, no training.

On a terminal a transient bar counts epochs while each epoch's line stays on screen; anywhere
else (CI, a pipe) the same lines come out as plain text.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from mlpkit.rundir import catalog, runs

if TYPE_CHECKING:
    from mlpkit.train.loop import EpochRecord

BEST_MARK = "*"


def _epoch_bar(console: Console, label: str) -> Progress:
    """A started, transient bar counting epochs: label, bar, done/total, time left."""
    bar = Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    bar.start()
    return bar


class EpochPrinter:
    """The on_epoch callback of `mlpkit train`: one line per epoch, the best one marked."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.epochs = 0
        self.best_key = "val_loss"
        self.best = float("inf")
        self.bar: Progress | None = None
        self.task: TaskID | None = None
        self.header_shown = False
        self.hidden = {"epoch", "seconds", "lr", "member"}
        self.members = 1  # model.ensemble: records carry their `member`, trained in turn
        self.member = 0

    def start(
        self,
        headline: str,
        epochs: int,
        has_val: bool,
        epochs_done: int = 0,
        show_lr: bool = False,
        members: int = 1,
    ) -> None:
        """Print the headline; on a terminal show a bar of `epochs`, `epochs_done` of them
        already trained (a resumed run). The lr column shows when a schedule changes it. An
        ensemble's `members` train in turn: `epochs` each, under a line naming the member."""
        self.console.print(headline)
        if show_lr:
            self.hidden.discard("lr")
        self.epochs, self.members = epochs, members
        self.best_key = "val_loss" if has_val else "train_loss"
        if self.console.is_terminal:
            self.bar = _epoch_bar(self.console, "epoch")
            total = epochs * members
            self.task = self.bar.add_task("train", total=total, completed=epochs_done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def __call__(self, record: EpochRecord) -> None:
        member = int(record.get("member", 0))
        if member != self.member:  # the next ensemble member: its own best
            self.member, self.best = member, float("inf")
            self.console.print(Text(f"member {member}/{self.members}", style="bold"))
        columns = [key for key in record if key not in self.hidden]
        width = len(str(self.epochs))
        counter = max(2 * width + 1, len("epoch"))
        if not self.header_shown:  # a header once, then aligned values: fits 80 columns
            self.header_shown = True
            header = f"{'epoch':>{counter}}" + "".join(f"  {k:>10}" for k in columns)
            self.console.print(Text(header + "    time", style="bold"))
        improved = record[self.best_key] < self.best
        self.best = min(self.best, record[self.best_key])
        line = Text(f"{int(record['epoch']):>{width}}/{self.epochs}".rjust(counter))
        line.append("".join(f"  {record[k]:>10.4g}" for k in columns))
        line.append(f"  {record['seconds']:5.2f}s")
        if improved:
            line.append(f"  {BEST_MARK} best", style="bold green")
        self.console.print(line)
        if self.bar is not None and self.task is not None:
            self.bar.advance(self.task)


def metrics_table(metrics: dict[str, Any]) -> Table:
    """The network's metrics per split beside the baselines' test metrics."""
    splits = [part for part in ("train", "val", "test") if part in metrics]
    baselines = metrics.get("baselines", {})
    table = Table(
        "metric", *splits, *(f"{name} (test)" for name in baselines), title="network vs baselines"
    )
    names = dict.fromkeys(name for part in splits for name in metrics[part])
    for name in names:  # a metric undefined on one split (roc_auc on one class) shows as -
        cells = [metrics[part].get(name) for part in splits]
        cells += [scores.get(name) for scores in baselines.values()]
        table.add_row(name, *("-" if value is None else f"{value:.4f}" for value in cells))
    return table


def scores_table(scores: dict[str, float], reference: dict[str, float] | None) -> Table:
    """Eval's scores, beside the run's metrics.json when scoring its own test split."""
    columns = ["metric", "value"] + ([runs.METRICS, "same"] if reference else [])
    table = Table(*columns)
    for name, value in scores.items():
        row = [name, f"{value:.6g}"]
        if reference:
            row += [
                f"{reference.get(name, float('nan')):.6g}",
                "yes" if reference.get(name) == value else "no",
            ]
        table.add_row(*row)
    return table


class SeedsPrinter:
    """The callbacks of `mlpkit train --seeds N`: what trains (once), a line per finished run
    with its key test metrics, and on a terminal a transient bar of the running seed's epochs."""

    def __init__(self, console: Console, count: int) -> None:
        self.console = console
        self.count = count
        self.started = False
        self.bar: Progress | None = None
        self.task: TaskID | None = None

    def start(self, headline: str, seed: int, epochs: int) -> None:
        """A seed starts: the headline the first time (it is the same for every seed); the
        bar counts this seed's epochs."""
        if not self.started:
            self.started = True
            self.console.print(headline)
            if self.console.is_terminal:
                self.bar = _epoch_bar(self.console, "{task.description}")
                self.task = self.bar.add_task("", total=epochs)
        if self.bar is not None and self.task is not None:
            self.bar.reset(self.task, total=epochs, description=f"seed {seed}: epoch")

    def __call__(self, record: EpochRecord) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.advance(self.task)

    def finished(self, seed: int, place: int, run_dir: object, test: dict[str, float]) -> None:
        """A run ended: `seed N (i/count): test <key metrics>  <run directory>`."""
        keys = [name for name in catalog.KEY_METRICS if name in test][:2]
        scores = ", ".join(f"{name} {test[name]:.4f}" for name in keys)
        self.console.print(f"seed {seed} ({place}/{self.count}): test {scores}  {run_dir}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


class TrialLines:
    """sweep's progress: a line per trial as it ends, and the best so far."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __call__(self, outcome: Any, best: Any) -> None:
        """A trial ended (flows.sweep_worker.TrialOutcome); `best`: the study's best so far."""
        if self.quiet:
            return
        value = "" if outcome.value is None else f" {outcome.value:.6g}"
        params = " ".join(f"{path}={short_value(value)}" for path, value in outcome.params.items())
        best_text = "" if best is None else f"  (best: trial {best.number}, {best.value:.6g})"
        why = f": {outcome.error}" if outcome.error else ""
        print(f"trial {outcome.number}: {outcome.state}{value}  {params}{best_text}{why}")


def short_value(value: Any) -> str:
    """A sampled value in a few characters: floats to 4 significant digits."""
    if isinstance(value, float):
        return f"{value:.4g}"
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
