"""`mlpkit runs`: the runs under a folder, each with its status, progress and key metrics.

Reading is forgiving where opening a run (runs.open_run) is strict: a damaged or foreign folder
becomes a row that says what is wrong, never a crash, and every file is read bounded (a FIFO,
a device, a huge or undecodable file is junk, never waited on or read whole). A run whose
run.json says running while no process holds its lock died without saying so (kill -9, power
loss): it shows as interrupted. A cross-validation folder (rundir/crossval.py) is a row of its
own, before its folds: how many folds are complete, and its mean key test metrics with their
standard deviation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mlpkit.errors import Problem, RunDirError
from mlpkit.reading import RUN_FILE_LIMIT, NotAFile, read_bounded
from mlpkit.rundir import crossval, lock, runs

KEY_METRICS = ("r2", "mae", "accuracy", "f1", "f1_macro")  # the first two a run has are shown
MAX_DEPTH = 3  # runs/<name>/<stamp>/run.json below the folder given


@dataclass(frozen=True)
class RunRow:
    path: Path
    name: str  # the config's name, or "?" when unreadable
    status: str  # running, interrupted, failed, diverged, complete, or unreadable
    epochs: str  # "12/40": epochs trained of those configured, "?" when unknown
    metrics: dict[str, float]  # key test metrics of a complete run
    note: str  # why: "process died", the error of a failed run, what is unreadable
    started: str
    kind: Literal["run", "crossval"] = "run"
    spread: dict[str, float] = field(default_factory=dict)  # crossval: each metric's std


def list_runs(root: Path) -> list[RunRow]:
    """Every folder holding a run.json at or below `root`, oldest first.

    Raises:
        RunDirError: `root` is not a folder.
    """
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise RunDirError(Problem(f"{what}; expected a folder of runs", file=str(root)))
    here = root / runs.RUN_INFO
    found = [here] if here.is_file() else _run_files(root)
    rows = [read_row(path.parent) for path in found]
    if not here.is_file():
        rows += [read_crossval_row(path.parent) for path in _run_files(root, crossval.CROSSVAL, 0)]
    rows.sort(key=lambda row: (row.started, str(row.path)))
    return _folds_after_their_folder(rows)


def _folds_after_their_folder(rows: list[RunRow]) -> list[RunRow]:
    """Each cross-validation's folds right after its own row (in the order they began)."""
    folders = {row.path for row in rows if row.kind == "crossval"}
    ordered = []
    for row in rows:
        if row.path.parent in folders:
            continue
        ordered.append(row)
        if row.kind == "crossval":
            ordered += [fold for fold in rows if fold.path.parent == row.path]
    return ordered


def _run_files(root: Path, name: str = runs.RUN_INFO, first: int = 1) -> list[Path]:
    found = []
    for depth in range(first, MAX_DEPTH + 1):
        pattern = "/".join(["*"] * depth + [name])
        found += [p for p in root.glob(pattern) if p.is_file()]
    return found


def read_crossval_row(cv_dir: Path) -> RunRow:
    """A cross-validation folder's row: its status, complete folds of K, mean key metrics."""
    try:
        info = crossval.read_info(cv_dir)
    except RunDirError as exc:
        return RunRow(cv_dir, "?", "unreadable", "?", {}, exc.problems[0].problem, "", "crossval")
    status, note = info.status, info.error or ""
    if status == "running" and not lock.is_held(cv_dir):
        status, note = "interrupted", "process died"
    done = sum(
        read_row(crossval.fold_dir(cv_dir, fold)).status == "complete"
        for fold in range(1, info.folds + 1)
        if (crossval.fold_dir(cv_dir, fold) / runs.RUN_INFO).is_file()
    )
    keys = [name for name in KEY_METRICS if name in info.test][:2]
    return RunRow(
        path=cv_dir,
        name=info.name,
        status=status,
        epochs=f"{done}/{info.folds} folds",
        metrics={name: info.test[name].mean for name in keys},
        note=note,
        started=info.started,
        kind="crossval",
        spread={name: info.test[name].std for name in keys},
    )


def read_row(run_dir: Path) -> RunRow:
    """One run's row; whatever cannot be read is said in the row."""
    try:  # read here rather than with runs.read_json_or_empty: the row says what is wrong
        info = json.loads(read_bounded(run_dir / runs.RUN_INFO, RUN_FILE_LIMIT, runs.RUN_INFO))
        if not isinstance(info, dict) or not str(info.get("format", "")).startswith("mlpkit.run/"):
            raise ValueError("not an mlpkit run.json")
        status, note = str(info["status"]), str(info.get("error") or "")
    except (NotAFile, OSError, ValueError, KeyError, RecursionError) as exc:
        return RunRow(run_dir, "?", "unreadable", "?", {}, f"{runs.RUN_INFO}: {exc}", "")
    if status == "running" and not lock.is_held(run_dir):
        status, note = "interrupted", "process died"
    metrics = _key_metrics(run_dir) if status == "complete" else {}
    return RunRow(
        path=run_dir,
        name=str(info.get("name", "?")),
        status=status,
        epochs=_epochs(run_dir, status),
        metrics=metrics,
        note=note,
        started=str(info.get("started", "")),
    )


def _key_metrics(run_dir: Path) -> dict[str, float]:
    test = runs.read_json_or_empty(run_dir / runs.METRICS).get("test", {})
    if not isinstance(test, dict):
        return {}
    names = [name for name in KEY_METRICS if isinstance(test.get(name), int | float)]
    return {name: float(test[name]) for name in names[:2]}


def _epochs(run_dir: Path, status: str) -> str:
    """Epochs trained / configured: history.csv of a complete run, else the newest checkpoint."""
    config = runs.read_yaml_or_none(run_dir / runs.CONFIG)
    training = config.get("training") if isinstance(config, dict) else None
    planned = training.get("epochs") if isinstance(training, dict) else None
    planned = planned if isinstance(planned, int) and not isinstance(planned, bool) else "?"
    done: Any = "?"
    if status == "complete":
        history = runs.read_bytes_or_none(run_dir / runs.HISTORY)
        try:  # a history.csv that is not UTF-8 is junk like any other
            done = len(history.decode().splitlines()) - 1 if history is not None else "?"
        except UnicodeDecodeError:
            done = "?"
    else:
        manifests = f"ckpt-*/{runs.CHECKPOINT_MANIFEST}"
        newest = sorted((run_dir / runs.CHECKPOINTS).glob(manifests))
        epoch = runs.read_json_or_empty(newest[-1]).get("epoch") if newest else 1  # in progress
        done = epoch - 1 if isinstance(epoch, int) else "?"
    return f"{done}/{planned}"
