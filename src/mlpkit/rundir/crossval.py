"""The cross-validation folder's format: its file names, crossval.json, the fold directories.

`mlpkit train CONFIG --folds K` trains into `<runs>/<name>/cv-<YYYYmmdd-HHMMSS>-<id>/`:

    config.yaml           the resolved config (data.split.folds: K): what every fold trains with
    crossval.json         status, folds, seed, started/finished; once complete every metric per
                          fold (train, val, test) with mean and sample std, and the baselines'
    oof_predictions.csv   every non-test row once: its line, fold, target and the prediction of
                          the fold that validated it (written when complete)
    fold-1/ ... fold-K/   ordinary run directories, each with data.split.fold: i
    .lock                 held while the cross-validation trains

crossval.json is written when the folder is made (status running) and again, whole, when it
ends; `complete` comes last, after oof_predictions.csv. A folder whose crossval.json says
running while nobody holds its lock was stopped (kill -9): it shows as interrupted and resumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from mlpkit.rundir import runs

CROSSVAL = "crossval.json"
OOF_PREDICTIONS = "oof_predictions.csv"
FORMAT = "mlpkit.crossval/1"
PREFIX = "cv-"  # the folder's name: cv-<stamp>-<id>
STD = "sample standard deviation (ddof=1)"
Status = Literal["running", "interrupted", "failed", "complete"]


class Spread(BaseModel):
    """One metric over the folds: mean, sample standard deviation (ddof=1), each fold's value."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    mean: float
    std: float
    values: list[float]


Spreads = dict[str, Spread]  # metric -> its spread


class CrossvalInfo(BaseModel):
    """crossval.json: what the cross-validation is, how far it got, and once complete, its
    results. `baselines` holds the baselines' spreads per part: {"val" | "test": {baseline:
    {metric: spread}}}, each fitted on its fold's training rows."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    format: Literal["mlpkit.crossval/1"] = "mlpkit.crossval/1"
    name: str
    status: Status
    folds: int
    seed: int
    started: str
    finished: str | None = None
    error: str | None = None
    resumed: list[str] = []
    runs: list[str] = []  # the fold directories, relative to the folder (once complete)
    std: str = STD
    train: Spreads = {}
    val: Spreads = {}
    test: Spreads = {}
    baselines: dict[str, dict[str, Spreads]] = {}


def fold_dir(cv_dir: Path, fold: int) -> Path:
    """The run directory of fold `fold` (from 1)."""
    return cv_dir / f"fold-{fold}"


def is_crossval(path: Path) -> bool:
    """Whether `path` is a cross-validation folder (it holds crossval.json)."""
    return (path / CROSSVAL).is_file()


def runs_dir_of(run_dir: Path) -> Path:
    """The --runs-dir a run was trained into: <runs>/<name>/<run>, or <runs>/<name>/cv-.../
    fold-i for a fold (the default MLflow store lives there)."""
    parent = run_dir.resolve().parent
    return parent.parent.parent if is_crossval(parent) else parent.parent


def create_cv_dir(runs_dir: Path, name: str) -> Path:
    """Make `runs_dir/name/cv-<stamp>-<id>` exclusively.

    Raises:
        EnvironmentFault, RunDirError: the folder cannot be created.
    """
    return runs.create_unique_dir(runs_dir / name, PREFIX)


def create_fold_dir(path: Path) -> Path:
    """Make a fold's run directory, which must not exist yet.

    Raises:
        EnvironmentFault, RunDirError: it exists, or cannot be created.
    """
    try:
        path.mkdir()
    except OSError as exc:
        raise runs.write_fault(exc, path) from None
    return path


def write_info(cv_dir: Path, info: CrossvalInfo) -> None:
    runs.write_json(cv_dir / CROSSVAL, info.model_dump(mode="json"))


def read_info(cv_dir: Path) -> CrossvalInfo:
    """crossval.json, checked.

    Raises:
        RunDirError: missing, unreadable, or not a crossval.json mlpkit wrote.
    """
    hint = f"expected a cross-validation folder written by mlpkit train --folds ({FORMAT})"
    return runs.validated(CrossvalInfo, cv_dir / CROSSVAL, hint)
