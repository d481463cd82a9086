"""`mlpkit runs`: the runs under a folder, each with its status, progress and key metrics.

Reading is forgiving where opening a run (runs.open_run) is strict: a damaged or foreign folder
becomes a row that says what is wrong, never a crash, and every file is read bounded (a FIFO,
a device, a huge or undecodable file is junk, never waited on or read whole). A run whose
run.json says running while no process holds its lock died without saying so (kill -9, power
loss): it shows as interrupted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlpkit.errors import Problem, RunDirError
from mlpkit.reading import RUN_FILE_LIMIT, NotAFile, read_bounded
from mlpkit.rundir import lock, runs

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
    return sorted(rows, key=lambda row: (row.started, str(row.path)))


def _run_files(root: Path) -> list[Path]:
    found = []
    for depth in range(1, MAX_DEPTH + 1):
        pattern = "/".join(["*"] * depth + [runs.RUN_INFO])
        found += [p for p in root.glob(pattern) if p.is_file()]
    return found


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
