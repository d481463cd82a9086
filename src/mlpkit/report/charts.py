"""The figures of a run's plots, each a function of the run's files (plots.RunData) alone.

Figures are built on matplotlib's Figure directly (no pyplot, no global backend or style), with
margins computed in inches rather than found by a layout engine (see _Margins). plots.py reads
the run, picks the figures for its task and writes them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.ticker import FuncFormatter, MaxNLocator

if TYPE_CHECKING:
    from mlpkit.report.plots import RunData  # plots.py imports this module to draw

DPI = 100
SPLITS = ("train", "val", "test")
COLORS = {"train": "C0", "val": "C1", "lr": "C2"}
BEST = "0.45"  # the best-epoch line: a mid grey
MAX_POINTS = 20_000  # scatter plots show a fixed sample of larger test splits


# --- learning curves ------------------------------------------------------------------------


def learning_curves(data: RunData) -> Figure:
    """Loss, each metric history.csv holds (train_* / val_*) and a changing lr, one panel each."""
    history, best = data.history, data.metrics.best_epoch
    panels = _panels(history)
    columns = len(panels) if len(panels) <= 3 else (2 if len(panels) == 4 else 3)
    rows = -(-len(panels) // columns)
    notes = [] if "val_loss" in history else ["no validation split"]
    if "lr" in history and len(np.unique(history["lr"])) == 1:  # a constant rate: said, not drawn
        notes.append(f"lr {history['lr'][0]:g} throughout")
    heading = "learning curves" + (f" ({', '.join(notes)})" if notes else "")
    margins = _Margins(top=0.4, gap=0.7, row_gap=0.85)
    width = 4.4 if len(panels) > 1 else 5.4
    figure, axes = _figure(margins, [width] * columns, [3.0] * rows, (data.title, heading))
    for extra in axes[len(panels) :]:
        extra.remove()
    for ax, (name, series) in zip(axes, panels, strict=False):
        _learning_panel(ax, history, series, best)
        ax.set_title(name + _zoom(ax, history, series, best))
    return figure


def _learning_panel(
    ax: Axes, history: dict[str, np.ndarray], series: dict[str, str], best: int
) -> None:
    """One panel: each series per epoch, a dot at the best epoch, a dashed line through it."""
    epochs = history["epoch"]
    at_best = epochs == best
    for label, column in series.items():
        values = history[column]
        marker = "o" if len(epochs) <= 30 else None
        ax.plot(epochs, values, color=COLORS[label], label=label, marker=marker, markersize=3)
        if label != "lr" and at_best.any():
            ax.plot(epochs[at_best], values[at_best], "o", color=COLORS[label], markersize=7)
    ax.axvline(best, color=BEST, linestyle="--", linewidth=1, label=f"best epoch {best}")
    ax.set_xlabel("epoch")
    pad = max(0.5, 0.04 * (epochs.max() - epochs.min()))  # whole epochs, even for just one
    ax.set_xlim(epochs.min() - pad, epochs.max() + pad)
    if len(epochs) <= 10:
        ax.set_xticks(epochs)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def _panels(history: dict[str, np.ndarray]) -> list[tuple[str, dict[str, str]]]:
    """[(panel title, {series label: column})]: loss first, then the metrics, then lr if the
    rate changes (history.csv has an lr column when the run has a schedule)."""
    panels: dict[str, dict[str, str]] = {"loss": {}}
    for column in history:
        for split in ("train", "val"):
            if column.startswith(f"{split}_"):
                panels.setdefault(column.removeprefix(f"{split}_"), {})[split] = column
    found = [(name, series) for name, series in panels.items() if series]
    if "lr" in history and len(np.unique(history["lr"])) > 1:
        found.append(("learning rate", {"lr": "lr"}))
    return found


def _zoom(ax: Axes, history: dict[str, np.ndarray], series: dict[str, str], best: int) -> str:
    """Fit the y axis to what matters, and say how in the panel's title.

    Positive values spanning more than a decade (a loss falling from 475 to 6) get a log scale.
    Otherwise, when the first tenth of the epochs spans over three times the range of the rest
    (R2 from -1.5 to 0.89, then within 0.01), the axis is fitted to the rest and the best epoch.
    """
    values = np.stack([history[column] for column in series.values()])  # [series, epochs]
    finite = values[np.isfinite(values)]
    if not len(finite):
        return ""
    if finite.min() > 0 and finite.max() / finite.min() > 10:
        _plain_log_scale(ax)
        return " (log scale)"
    ax.ticklabel_format(axis="y", useOffset=False)
    skip = max(1, values.shape[1] // 10)
    kept = values[:, skip:]
    kept = np.concatenate([kept[np.isfinite(kept)], values[:, history["epoch"] == best].ravel()])
    kept = kept[np.isfinite(kept)]
    if values.shape[1] < 6 or not len(kept) or np.ptp(finite) <= 3 * np.ptp(kept):
        return ""
    pad = 0.1 * np.ptp(kept) or 0.05 * abs(kept[0]) or 0.1
    ax.set_ylim(kept.min() - pad, kept.max() + pad)
    first = int(history["epoch"][skip])
    return f" (y fitted to epochs {first}+)"


def _plain_log_scale(ax: Axes) -> None:
    """A log y axis labelled 0.05, 0.1, 0.2, 0.5, 1... rather than 5x10^-2."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(_two_and_five))


def _two_and_five(value: float, _: object) -> str:
    if value <= 0:
        return ""
    leading = round(value / 10 ** np.floor(np.log10(value)), 6)
    return f"{value:g}" if leading in (2, 5) else ""


# --- regression -----------------------------------------------------------------------------


def predicted_vs_actual(data: RunData, actual: np.ndarray, predicted: np.ndarray) -> Figure:
    shown = _sample(len(actual))
    heading = f"predicted vs actual, {_rows_shown(len(actual), len(shown))}"
    figure, (ax,) = _figure(_Margins(left=0.85), [4.6], [4.6], (data.title, heading))
    ax.scatter(actual[shown], predicted[shown], s=14, alpha=_alpha(len(shown)), label="test rows")
    low = float(min(actual.min(), predicted.min()))
    high = float(max(actual.max(), predicted.max()))
    ax.plot([low, high], [low, high], "--", color=BEST, linewidth=1, label="y = x")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel(f"actual {data.quantity}")
    ax.set_ylabel(f"predicted {data.quantity}")
    scores = data.metrics.test
    text = "\n".join(f"test {name} {scores[name]:.4g}" for name in ("r2", "mae") if name in scores)
    if text:
        ax.text(0.03, 0.97, text, transform=ax.transAxes, va="top", bbox=_BOX)
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)
    return figure


def residuals(data: RunData, actual: np.ndarray, predicted: np.ndarray) -> Figure:
    """Residuals against the prediction (a pattern means the model misses something) and their
    distribution, side by side on one axis."""
    error = actual - predicted
    shown = _sample(len(error))
    heading = (data.title, f"residuals, {_rows_shown(len(error), len(shown))}")
    margins = _Margins(left=0.85, gap=0.15)
    figure, (scatter, spread) = _figure(margins, [5.4, 1.8], [3.6], heading, sharey=True)
    scatter.scatter(predicted[shown], error[shown], s=14, alpha=_alpha(len(shown)))
    scatter.set_xlabel(f"predicted {data.quantity}")
    scatter.set_ylabel(f"actual - predicted {data.quantity}")
    spread.hist(error, bins=min(40, max(5, len(error) // 5)), orientation="horizontal")
    spread.set_xlabel("rows")
    spread.tick_params(axis="y", labelleft=False)
    for ax in (scatter, spread):
        ax.axhline(0, color=BEST, linestyle="--", linewidth=1)
        ax.grid(alpha=0.3)
    return figure


def _sample(rows: int) -> np.ndarray:
    """All rows, or a fixed random MAX_POINTS of them (the same on every redraw)."""
    if rows <= MAX_POINTS:
        return np.arange(rows)
    return np.sort(np.random.default_rng(0).choice(rows, MAX_POINTS, replace=False))


def _alpha(points: int) -> float:
    return float(np.clip(300 / max(points, 1), 0.15, 0.8))


def _rows_shown(rows: int, shown: int) -> str:
    if shown == rows:
        return f"test split ({rows:,} rows)"
    return f"test split ({shown:,} of {rows:,} rows shown)"


_BOX = {"boxstyle": "round", "facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"}


# --- classification -------------------------------------------------------------------------


def confusion_matrix(data: RunData, labels: list[str]) -> Figure:
    """One matrix per split (rows: true class, columns: predicted), each cell's count written
    in it and coloured by its share of the true class, so splits of any size compare."""
    confusion = cast(dict[str, list[list[int]]], data.metrics.confusion_matrix)
    splits = [split for split in SPLITS if split in confusion]
    labels = [literal(label) for label in labels]
    label_width = _text_width(labels)
    rotate = len(labels) > 3 and label_width > 0.4
    side = float(np.clip(0.45 * len(labels), 2.6, 7))
    margins = _Margins(
        top=0.6,  # the panels' two-line titles
        left=label_width + 0.5,
        bottom=(0.75 * label_width if rotate else 0.2) + 0.45,
        right=1.1,  # the colour bar
        gap=0.3,
    )
    heading = (data.title, "confusion matrix")
    figure, axes = _figure(margins, [side] * len(splits), [side], heading, sharey=True)
    ticks = np.arange(len(labels))
    for ax, split in zip(axes, splits, strict=True):
        counts = np.asarray(confusion[split])  # [true, predicted]
        share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        if len(labels) <= 15:
            for (row, col), count in np.ndenumerate(counts):
                color = "white" if share[row, col] > 0.6 else "black"
                ax.text(col, row, f"{count:,}", ha="center", va="center", color=color)
        ax.set_xticks(
            ticks, labels, rotation=45 if rotate else 0, ha="right" if rotate else "center"
        )
        ax.set_yticks(ticks, labels)
        ax.set_xlabel("predicted")
        accuracy = np.trace(counts) / max(counts.sum(), 1)
        ax.set_title(f"{split}: {counts.sum():,} rows\naccuracy {accuracy:.3f}")
    axes[0].set_ylabel(f"true {data.quantity}")
    box, width = axes[-1].get_position(), figure.get_figwidth()
    bar = figure.add_axes((box.x1 + 0.2 / width, box.y0, 0.15 / width, box.height))
    figure.colorbar(image, cax=bar, label="share of the true class")
    return figure


Curve = tuple[str, np.ndarray, np.ndarray]  # class label, rows of that class, its probability
Drawn = tuple[str, np.ndarray, np.ndarray, float]  # legend entry, x, y, the class's share


def roc_curve(data: RunData, curves: list[Curve]) -> Figure:
    from sklearn import metrics as sk  # classification only: a regression run never loads it

    drawn: list[Drawn] = []
    for label, positive, probability in curves:
        name = _curve_name(data, label, len(curves))
        if positive.all() or not positive.any():  # undefined: shown in the legend only
            drawn.append((f"{name}: undefined, one class in test", _NONE, _NONE, np.nan))
            continue
        fpr, tpr, _ = sk.roc_curve(positive, probability)
        drawn.append((f"{name} (AUC {sk.auc(fpr, tpr):.3f})", fpr, tpr, np.nan))
    figure, ax = _curve_axes((data.title, f"ROC{_curve_kind(data, curves)}"), drawn)
    ax.plot([0, 1], [0, 1], "--", color=BEST, linewidth=1, label="chance")
    for index, (text, x, y, _) in enumerate(drawn):
        ax.plot(x, y, **_curve_style(index, len(drawn)), label=text)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    _curve_legend(ax, len(drawn), "lower right")
    return figure


def pr_curve(data: RunData, curves: list[Curve]) -> Figure:
    from sklearn import metrics as sk

    drawn: list[Drawn] = []
    for label, positive, probability in curves:
        name = _curve_name(data, label, len(curves))
        if not positive.any():
            drawn.append((f"{name}: undefined, not in test", _NONE, _NONE, np.nan))
            continue
        precision, recall, _ = sk.precision_recall_curve(positive, probability)
        average = sk.average_precision_score(positive, probability)
        drawn.append((f"{name} (AP {average:.3f})", recall, precision, positive.mean()))
    figure, ax = _curve_axes((data.title, f"precision-recall{_curve_kind(data, curves)}"), drawn)
    for index, (text, x, y, share) in enumerate(drawn):
        style = _curve_style(index, len(drawn))
        ax.step(x, y, where="post", **style, label=text)
        if np.isfinite(share):  # a classifier that guesses: precision = the class's share
            ax.axhline(share, color=style["color"], linestyle=":", linewidth=1)
    ax.plot([], [], ":", color=BEST, label="chance: the class's share")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    _curve_legend(ax, len(drawn), "lower left")
    return figure


_NONE = np.array([])
MANY_CURVES = 4  # more get their legend beside the plot, where it hides none of them


def _curve_axes(heading: tuple[str, str], drawn: list[Drawn]) -> tuple[Figure, Axes]:
    margins = _Margins()
    if len(drawn) > MANY_CURVES:
        legend = _text_width([text for text, *_ in drawn], "small")
        margins = _Margins(right=legend + 0.9)  # the legend's handles, padding and frame
    figure, (ax,) = _figure(margins, [4.6], [4.6], heading)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    return figure, ax


def _curve_legend(ax: Axes, curves: int, inside: Literal["lower left", "lower right"]) -> None:
    if curves > MANY_CURVES:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize="small")
    else:
        ax.legend(loc=inside, fontsize="small")


def _curve_name(data: RunData, label: str, curves: int) -> str:
    return f"{data.quantity} = {literal(label)}" if curves == 1 else literal(label)


def _curve_style(index: int, curves: int) -> dict[str, Any]:
    """Colours from the cycle (dashed after ten). A few curves are drawn wider the earlier
    they come, so curves that coincide (a perfect classifier's) still show every colour."""

    width = 1.5
    if curves <= MANY_CURVES:
        width += 1.5 * (curves - 1 - index) / max(curves - 1, 1)
    return {"color": f"C{index % 10}", "linewidth": width, "linestyle": "-" if index < 10 else "--"}


def _curve_kind(data: RunData, curves: list[Curve]) -> str:
    kind = "" if len(curves) == 1 else " per class (one vs rest)"
    return f"{kind}, {data.test_rows:,} test rows"


# --- layout ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Margins:
    """Space around and between the panels, in inches. matplotlib's layout engines find it by
    measuring every label in an extra drawing pass, which costs more than the drawing itself;
    ours are known in advance (tick labels are measured where they vary: class names)."""

    top: float = 0.15  # below the heading: room for the panels' titles
    left: float = 0.75
    bottom: float = 0.6
    right: float = 0.25
    gap: float = 0.0  # between columns
    row_gap: float = 0.0  # between rows


def _figure(
    margins: _Margins,
    widths: list[float],
    heights: list[float],
    heading: tuple[str, str],
    sharey: bool = False,
) -> tuple[Figure, list[Axes]]:
    """A figure of panels with the given widths (columns) and heights (rows), in inches, under
    a heading: "<run>: <what>" on one line, or on two when one is too narrow for it."""
    width = margins.left + margins.right + sum(widths) + margins.gap * (len(widths) - 1)
    text = ": ".join(heading)
    if _text_width([text], "large") > width - 0.3:
        text = "\n".join(heading)
        width = max(width, _text_width(list(heading), "large") + 0.3)  # a long run name
        extra = width - (margins.left + margins.right + sum(widths))
        extra -= margins.gap * (len(widths) - 1)
        margins = replace(margins, left=margins.left + extra / 2, right=margins.right + extra / 2)
    top = margins.top + 0.12 + 0.25 * (text.count("\n") + 1)
    height = top + margins.bottom + sum(heights) + margins.row_gap * (len(heights) - 1)
    figure = Figure(figsize=(width, height), dpi=DPI)
    figure.suptitle(text, y=1 - 0.08 / height, va="top")
    figure.subplots_adjust(
        left=margins.left / width,
        right=1 - margins.right / width,
        bottom=margins.bottom / height,
        top=1 - top / height,
        wspace=margins.gap / float(np.mean(widths)),
        hspace=margins.row_gap / float(np.mean(heights)),
    )
    grid = figure.subplots(
        len(heights),
        len(widths),
        squeeze=False,
        sharey=sharey,
        width_ratios=widths,
        height_ratios=heights,
    )
    return figure, list(grid.flat)


def literal(text: str) -> str:
    """Text from the run (names, labels) shown as it is: a pair of $ would start mathtext."""
    return text.replace("$", r"\$")


def _text_width(texts: list[str], size: str = "medium") -> float:
    """The widest of `texts` in inches as Agg renders them (medium: a tick label, large: a
    title), measured without a drawing pass."""
    renderer = RendererAgg(1, 1, DPI)  # type: ignore[no-untyped-call]
    font = FontProperties(size=size)
    measure = renderer.get_text_width_height_descent
    widths = [measure(t, font, ismath=False)[0] for t in texts]  # type: ignore[no-untyped-call]
    return float(max(widths)) / DPI
