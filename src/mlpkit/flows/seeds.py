"""`mlpkit train CONFIG --seeds N`: the same config trained with N seeds, and the spread.

Each seed is an ordinary run (the config with `--set seed=S` appended, S = the config's seed,
seed + 1, ...), so every run directory is complete on its own. The summary (each test metric's
mean, sample standard deviation (ddof=1) and per-seed values, the same for the baselines' key
metrics) is written beside the runs as `<runs>/<name>/seeds-<time>-<id>.json`. The seed sets
the split, the initial weights and the batch order together, so the spread is what a user
would see by training again with another seed: a difference between two configs smaller than
it is noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.table import Table
from rich.text import Text

from mlpkit.rundir import catalog, runs

if TYPE_CHECKING:
    from mlpkit.flows.fit import Listener, TrainResult

SUMMARY_FORMAT = "mlpkit.seeds/1"
# (the seed, its place from 1, the finished run)
OnRun = Callable[[int, int, "TrainResult"], None]


@dataclass(frozen=True)
class Spread:
    """One metric over the seeds: mean, sample standard deviation (ddof=1), each value."""

    mean: float
    std: float
    values: list[float]


@dataclass(frozen=True)
class SeedsSummary:
    config: Path
    overrides: list[str]
    seeds: list[int]
    runs: list[Path]
    test: dict[str, Spread]  # the network's test metrics
    baselines: dict[str, dict[str, Spread]]  # baseline -> key metric -> spread
    folds: int | None = None  # each seed's values: the mean of a K-fold cross-validation

    def to_json(self) -> dict[str, Any]:
        def spreads(found: dict[str, Spread]) -> dict[str, Any]:
            return {
                name: {"mean": s.mean, "std": s.std, "values": s.values}
                for name, s in found.items()
            }

        return {
            "format": SUMMARY_FORMAT,
            "config": str(self.config),
            "overrides": self.overrides,
            "seeds": self.seeds,
            **({"folds": self.folds} if self.folds is not None else {}),
            "runs": [str(path) for path in self.runs],
            "std": "sample standard deviation (ddof=1)",
            "test": spreads(self.test),
            "baselines": {name: spreads(found) for name, found in self.baselines.items()},
        }


def seeds_for(config_path: Path, overrides: list[str], count: int) -> list[int]:
    """The config's seed (after `overrides`) and the count - 1 that follow it.

    Raises:
        ConfigError: the config, with its overrides, is not valid, or the last seed is out of
            range (checked here, before any run).
    """
    from mlpkit.config.load import load_config

    first = load_config(config_path, overrides).config.seed
    load_config(config_path, [*overrides, f"seed={first + count - 1}"])
    return list(range(first, first + count))


def repeat(
    config_path: Path,
    overrides: list[str],
    runs_dir: Path,
    count: int,
    device_name: str | None = None,
    listener: Listener | None = None,
    on_run: OnRun | None = None,
) -> tuple[SeedsSummary, Path]:
    """Train the config once per seed, then write the summary beside the runs.

    Returns the summary and where it was written. A failure stops the repeat: the runs
    finished before it stay (on_run has seen each).

    Raises:
        MlpkitError: as flows.train.train, for whichever seed fails.
    """
    from mlpkit.config.load import load_config
    from mlpkit.flows import group
    from mlpkit.flows.common import resolve_device
    from mlpkit.flows.train import train

    seeds = seeds_for(config_path, overrides, count)
    loadeds = [load_config(config_path, [*overrides, f"seed={seed}"]) for seed in seeds]
    device = resolve_device(loadeds[0], device_name)
    built = group.build_members(loadeds, device)  # every seed's checks, before any run
    why_not = group.stacking_refusal(built) if count > 1 else None
    results = []
    if count > 1 and why_not is None:
        outcome = group.train_group(built, runs_dir, device, listener)
        for place, (seed, found) in enumerate(zip(seeds, outcome.results, strict=True), start=1):
            if found is not None:
                results.append((seed, found))
                if on_run is not None:
                    on_run(seed, place, found)
        if outcome.failure is not None:
            raise outcome.failure
    else:
        for place, (seed, loaded) in enumerate(zip(seeds, loadeds, strict=True), start=1):
            result = train(loaded, runs_dir, device_name, listener, why_not_stacked=why_not)
            results.append((seed, result))
            if on_run is not None:
                on_run(seed, place, result)
    summary = summarize(
        config_path,
        overrides,
        [seed for seed, _ in results],
        [result.run_dir for _, result in results],
        [result.metrics for _, result in results],
    )
    path = results[0][1].run_dir.parent / f"{runs.unique_name('seeds-')}.json"
    runs.write_json(path, summary.to_json())
    return summary, path


def summarize(
    config_path: Path,
    overrides: list[str],
    seeds: list[int],
    run_dirs: list[Path],
    metrics: list[dict[str, Any]],
    folds: int | None = None,
) -> SeedsSummary:
    """The spread of every test metric all runs have (metrics.json's `test`), and of the
    baselines' key metrics. With `folds`, each "run" is a cross-validation folder and its
    metrics the folds' means."""
    tests = [found["test"] for found in metrics]
    names = [name for name in tests[0] if all(name in test for test in tests)]
    keys = [name for name in catalog.KEY_METRICS if name in names][:2]
    baselines: dict[str, dict[str, Spread]] = {}
    for baseline in metrics[0]["baselines"]:
        scores = [found["baselines"].get(baseline, {}) for found in metrics]
        baselines[baseline] = {
            name: spread([score[name] for score in scores])
            for name in keys
            if all(name in score for score in scores)
        }
    return SeedsSummary(
        config=config_path,
        overrides=overrides,
        seeds=seeds,
        runs=run_dirs,
        test={name: spread([test[name] for test in tests]) for name in names},
        baselines=baselines,
        folds=folds,
    )


def spread(values: list[float]) -> Spread:
    """Mean and sample standard deviation (ddof=1, as numpy's np.std(values, ddof=1))."""
    array = np.asarray(values, dtype=np.float64)
    std = float(np.std(array, ddof=1)) if len(array) > 1 else 0.0
    return Spread(float(np.mean(array)), std, [float(value) for value in values])


def render(summary: SeedsSummary) -> Table:
    """Metrics as rows: mean, std, then each seed's value; the baselines' key metrics below."""
    count = len(summary.seeds)
    table = Table(
        "metric",
        "mean",
        "std",
        *(f"seed {seed}" for seed in summary.seeds),
        title=f"test metrics over {count} seeds (std: sample, ddof=1)"
        + (f"; each the mean of {summary.folds} folds" if summary.folds else ""),
    )
    for column in table.columns[1:]:
        column.justify = "right"
    for name, found in summary.test.items():
        table.add_row(name, *_cells(found))
    if any(summary.baselines.values()):
        table.add_section()
        table.add_row(Text("baselines", style="bold"))
        for baseline, scores in summary.baselines.items():
            for name, values in scores.items():
                table.add_row(f"{baseline} {name}", *_cells(values))
    return table


def _cells(found: Spread) -> list[str]:
    return [f"{found.mean:.4f}", f"{found.std:.4f}", *(f"{value:.4f}" for value in found.values)]
