"""The sweep folder's format (`mlpkit sweep`): `<runs>/<name>/sweep-<stamp>-<id>/` holding

config.yaml     the sweep's config, resolved (its `sweep:` section included)
sweep.json      what the sweep is (study, storage, metric, budget), how far it got, its best
journal.log     the Optuna study, when no --storage URL was given (a journal file: safe
                for many writer processes, unlike SQLite)
trial-NNNN/     each trial an ordinary run directory (config.yaml holds its sampled values)
trials.csv      every trial: number, state, parameters, metric, run directory, seconds, error
best.yaml       the best trial's config, ready for `mlpkit train`
plots/          Optuna's history, parameter importances, parallel coordinates, slice
workers/        one lock file per worker process while it runs (a trial whose worker's lock
                is free was lost with its worker)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from mlpkit.rundir import runs

PREFIX = "sweep-"
FORMAT = "mlpkit.sweep/1"
SWEEP = "sweep.json"
JOURNAL = "journal.log"
TRIALS = "trials.csv"
BEST = "best.yaml"
PLOTS = "plots"
WORKERS = "workers"

Status = Literal["running", "interrupted", "failed", "complete"]


class Best(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    number: int
    value: float
    run: str  # the trial's run directory, relative to the sweep folder
    params: dict[str, object]


class SweepInfo(BaseModel):
    """sweep.json."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    format: Literal["mlpkit.sweep/1"] = "mlpkit.sweep/1"
    name: str
    status: Status
    study: str
    storage: str  # "journal" (this folder's journal.log) or the RDB URL, password hidden
    metric: str
    direction: Literal["minimize", "maximize"]
    trials: int | None  # the budget: trials that ran to an end (complete, pruned, failed)
    timeout: float | None
    started: str
    finished: str | None = None
    error: str | None = None
    resumed: list[str] = []
    best: Best | None = None


def create_sweep_dir(runs_dir: Path, name: str) -> Path:
    """Make `runs_dir/name/sweep-<stamp>-<id>` exclusively.

    Raises:
        EnvironmentFault: the folder cannot be created.
    """
    return runs.create_unique_dir(runs_dir / name, PREFIX)


def trial_dir(sweep_dir: Path, number: int) -> Path:
    return sweep_dir / f"trial-{number:04d}"


def write_info(sweep_dir: Path, info: SweepInfo) -> None:
    runs.write_json(sweep_dir / SWEEP, info.model_dump(mode="json"))


def read_info(sweep_dir: Path) -> SweepInfo:
    """sweep.json, checked.

    Raises:
        RunDirError: missing, unreadable, or not a sweep.json mlpkit wrote.
    """
    hint = f"expected a sweep folder written by mlpkit sweep ({FORMAT})"
    return runs.validated(SweepInfo, sweep_dir / SWEEP, hint)
