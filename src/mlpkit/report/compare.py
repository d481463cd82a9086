"""`mlpkit compare`: complete runs side by side.

`compare` opens the runs (strictly: runs.open_run, complete only; a folder stands for the
complete runs under it) and collects, per run, the network's test metrics, the baselines' test
scores on the key metrics, and the config fields whose values differ between the runs;
`render` draws that as one table. Runs of different tasks are refused: their metrics share no
meaning (a binary and a multiclass accuracy have different chance levels), so a "best" marked
across them would mislead. A cross-validation folder (rundir/crossval.py) is one entry: its
folds' mean test metrics, shown as `mean ± std` (its folds are not listed apart).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.table import Column, Table
from rich.text import Text

from mlpkit.config import registries
from mlpkit.config.load import differences, load_config
from mlpkit.errors import MlpkitError, Problem, RunDirError
from mlpkit.rundir import catalog, crossval, runs

BEST_MARK = "*"


@dataclass(frozen=True)
class Comparison:
    """Rows of the table, each with one value per run (None: the run has no such value)."""

    runs: list[Path]
    labels: list[str]  # the runs' paths below `folder`, for the column headers
    folder: Path | None  # the folder all runs share, when they share one
    task: str
    metrics: dict[str, list[float | None]]  # test metric -> value per run
    best: dict[str, set[int]]  # test metric -> the runs with the best value
    baselines: dict[str, list[float | None]]  # "<baseline> <metric>" -> value per run
    config: dict[str, list[str]]  # dotted path that differs -> each run's value, as YAML
    # runs left out: (path, status) of a folder's incomplete runs, or (path, "given twice")
    skipped: list[tuple[Path, str]]
    # a cross-validation's standard deviation beside its mean, per row of metrics or baselines
    spreads: dict[str, list[float | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Entry:
    """What is compared of one run, or of one cross-validation (means, with their std)."""

    config: dict[str, Any]
    test: dict[str, float]
    baselines: dict[str, dict[str, float]]
    test_std: dict[str, float]
    baselines_std: dict[str, dict[str, float]]


def compare(paths: list[Path]) -> Comparison:
    """Open the runs (or the complete runs under a folder) and compare them.

    Raises:
        RunDirError: a path is not a complete run, or a folder holds none.
        ConfigError: a run's config.yaml is not a valid config.
        MlpkitError: the runs are of different tasks.
    """
    found, skipped = expand(paths)
    entries = [_open(path) for path in found]
    configs = [entry.config for entry in entries]
    _alike(found, configs)
    metrics = _rows([{"": entry.test} for entry in entries])
    keys = [name for name in catalog.KEY_METRICS if name in metrics][:2]
    baselines = [entry.baselines for entry in entries]
    spreads = _rows([{"": entry.test_std} for entry in entries])
    spreads |= _rows([entry.baselines_std for entry in entries], keys)
    folder, labels = _labels(found)
    return Comparison(
        runs=found,
        labels=labels,
        folder=folder,
        task=configs[0]["data"]["task"],
        metrics=metrics,
        best={name: best_of(name, values) for name, values in metrics.items()},
        baselines=_rows(baselines, keys),
        config=config_differences(configs),
        skipped=skipped,
        spreads=spreads,
    )


def _open(path: Path) -> _Entry:
    """A complete run, or a complete cross-validation, as compared.

    Raises:
        RunDirError: not a complete run or cross-validation; ConfigError: its config.yaml
            is not a valid config.
    """
    if not crossval.is_crossval(path):
        run = runs.open_run(path)
        config = load_config(run.config_path).config.model_dump(mode="json")
        assert run.metrics is not None  # open_run: complete
        return _Entry(config, run.metrics.test, run.metrics.baselines, {}, {})
    info = crossval.read_info(path)
    if info.status != "complete":
        hint = f"resume it: mlpkit train --resume {path}"
        problem = f"the cross-validation is {info.status}, not complete"
        raise RunDirError(Problem(problem, file=str(path), hint=hint))
    config = load_config(path / runs.CONFIG).config.model_dump(mode="json")
    tests = info.baselines.get("test", {})
    return _Entry(
        config,
        {name: found.mean for name, found in info.test.items()},
        {name: {m: s.mean for m, s in scores.items()} for name, scores in tests.items()},
        {name: found.std for name, found in info.test.items()},
        {name: {m: s.std for m, s in scores.items()} for name, scores in tests.items()},
    )


def expand(paths: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Each path that is a run, and the complete runs under each that is a folder of runs
    (oldest first), once each; the folders' incomplete runs as (path, status).

    Raises:
        RunDirError: a folder holds no complete run.
    """
    found: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for path in paths:
        if (path / runs.RUN_INFO).exists() or crossval.is_crossval(path) or not path.is_dir():
            found.append(path)  # a run or cross-validation, or a mistake _open names
            continue
        rows = _entries(catalog.list_runs(path))
        complete = [row.path for row in rows if row.status == "complete"]
        if not complete:
            raise RunDirError(
                Problem(
                    f"no complete runs under it ({len(rows)} incomplete)"
                    if rows
                    else "no runs under it",
                    file=str(path),
                    hint="pass run directories that mlpkit train printed",
                )
            )
        found += complete
        skipped += [(row.path, row.status) for row in rows if row.status != "complete"]
    unique = list({path.resolve(): path for path in found}.values())
    if len(unique) < len(found):  # a run named twice, or also found in a folder given
        seen: set[Path] = set()
        for path in found:
            if path.resolve() in seen:
                skipped.append((path, "given twice"))
            seen.add(path.resolve())
    return unique, skipped


def _entries(rows: list[catalog.RunRow]) -> list[catalog.RunRow]:
    """The rows a folder stands for: its runs and cross-validations, not the folds apart."""
    folders = {row.path for row in rows if row.kind == "crossval"}
    return [row for row in rows if row.path.parent not in folders]


def _alike(paths: list[Path], configs: list[dict[str, Any]]) -> None:
    """One task (chance levels differ) and one target (errors in its units): else no run is
    'best' among them."""
    for path, config in zip(paths, configs, strict=True):
        data, first = config["data"], configs[0]["data"]
        if data["task"] != first["task"]:
            what = f"is a {data['task']} run, and {paths[0]} a {first['task']} run"
            hint = "compare runs of one task"
        elif data["target"] != first["target"]:
            what = f"predicts '{data['target']}', and {paths[0]} predicts '{first['target']}'"
            hint = "compare runs of one target"
        else:
            continue
        problem = Problem(f"{what}: their metrics do not compare", file=str(path), hint=hint)
        raise MlpkitError(problem)


def _rows(
    per_run: list[dict[str, dict[str, float]]], only: list[str] | None = None
) -> dict[str, list[float | None]]:
    """`{group: {metric: value}}` per run -> `{"group metric": [value per run]}`, in the order
    the names first appear; `only` keeps those metrics."""
    names = dict.fromkeys(
        (group, metric)
        for scores in per_run
        for group, values in scores.items()
        for metric in values
        if only is None or metric in only
    )
    return {
        f"{group} {metric}".strip(): [scores.get(group, {}).get(metric) for scores in per_run]
        for group, metric in names
    }


def best_of(metric: str, values: list[float | None]) -> set[int]:
    """The runs holding the best value of `metric` (every one of a tie); none for one run."""
    present = [value for value in values if value is not None]
    if len(present) < 2:
        return set()
    best = min(present) if metric in registries.LOWER_IS_BETTER else max(present)
    return {index for index, value in enumerate(values) if value == best}


def config_differences(configs: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The dotted paths where the runs' configs differ, each run's value as YAML text ("-"
    where a run has no such key). A section set in one run and not in another (early_stopping
    against null, a third layer) is shown field by field, so no cell holds a whole mapping."""
    paths = dict.fromkeys(
        path for config in configs[1:] for path in differences(config, configs[0])
    )
    rows = {}
    for leaf in (leaf for path in paths for leaf in _leaves(configs, path)):
        texts = [_yaml(_at(config, leaf)) for config in configs]
        if len(set(texts)) > 1:
            rows[leaf] = texts
    return rows


def _leaves(configs: list[dict[str, Any]], path: str) -> list[str]:
    """`path`, or the paths of its fields where any run holds a mapping or a list of them."""
    values = [_at(config, path) for config in configs]
    keys = dict.fromkeys(
        str(key)
        for value in values
        if isinstance(value, dict) or _mappings(value)
        for key in (value if isinstance(value, dict) else range(len(value)))
    )
    if not keys:
        return [path]
    return [leaf for key in keys for leaf in _leaves(configs, f"{path}.{key}")]


def _mappings(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


_MISSING = object()


def _at(config: Any, path: str) -> Any:
    node = config
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _yaml(value: Any) -> str:
    if value is _MISSING:
        return "-"
    text: str = yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False)
    return text.removesuffix("\n").removesuffix("\n...")


def _labels(paths: list[Path]) -> tuple[Path | None, list[str]]:
    """Column headers: each run's path below the folder all share, else the path as given."""
    absolute = [str(path.resolve()) for path in paths]
    try:
        common = os.path.commonpath([os.path.dirname(path) for path in absolute])
    except ValueError:  # different drives
        return None, [str(path) for path in paths]
    folder = Path(os.path.relpath(common)) if not paths[0].is_absolute() else Path(common)
    return folder, [os.path.relpath(path, common) for path in absolute]


def render(comparison: Comparison, width: int = 120) -> Table:
    """One table: the runs as columns; test metrics (the best marked with BEST_MARK and bold),
    the baselines' test scores, then the config fields that differ.

    The columns are headed by the runs' paths when the table fits in `width`; otherwise by
    numbers, and a caption lists which run is which.
    """
    sections = _sections(comparison)
    labels = comparison.labels
    rows = [row for found in sections.values() for row in found]
    needed = max(len(name) for name in [*sections, *(name for name, _ in rows)]) + 4
    for index, label in enumerate(labels):  # each column: its widest cell, plus borders
        needed += max([len(label), *(len(cells[index]) for _, cells in rows)]) + 3
    numbered = needed > width
    headers = [f"run {n}" for n in range(1, len(labels) + 1)] if numbered else labels
    where = f" in {comparison.folder}" if comparison.folder is not None else ""
    count = len(comparison.runs)
    table = Table(
        Column("", no_wrap=True),
        *(Column(Text(header), justify="right") for header in headers),
        title=f"{count} {comparison.task} run{'s' if count > 1 else ''}{where}"
        f" ({BEST_MARK} best test value)",
        caption="\n".join(f"run {n}: {label}" for n, label in enumerate(labels, 1))
        if numbered
        else None,
        caption_justify="left",
    )
    for title, rows in sections.items():
        if table.rows:
            table.add_section()
        table.add_row(Text(title, style="bold"))
        for name, row in rows:
            table.add_row(name, *row)
    return table


def _sections(comparison: Comparison) -> dict[str, list[tuple[str, list[Text]]]]:
    """The table's sections: title -> rows of (name, a cell per run)."""
    spreads = comparison.spreads
    metrics = [
        (
            name,
            [
                _cell(value, index in comparison.best[name], _std(spreads, name, index))
                for index, value in enumerate(values)
            ],
        )
        for name, values in comparison.metrics.items()
    ]
    baselines = [
        (name, [_cell(value, False, _std(spreads, name, i)) for i, value in enumerate(values)])
        for name, values in comparison.baselines.items()
    ]
    config = [(path, [Text(text) for text in texts]) for path, texts in comparison.config.items()]
    title = "config: fields that differ" if config else "config: the same in every run"
    return {"test metrics": metrics, "baselines (test)": baselines, title: config}


def _std(spreads: dict[str, list[float | None]], name: str, index: int) -> float | None:
    found = spreads.get(name)
    return found[index] if found is not None else None


def _cell(value: float | None, best: bool, std: float | None = None) -> Text:
    """A value (a cross-validation's: mean ± std); the best marked before it, so the numbers
    stay aligned on the right."""
    if value is None:
        return Text("-")
    shown = f"{value:.4f}" if std is None else f"{value:.4f} ± {std:.4f}"
    if best:
        return Text(f"{BEST_MARK} {shown}", style="bold")
    return Text(shown)
