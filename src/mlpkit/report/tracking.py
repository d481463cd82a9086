"""Experiment tracking: each epoch's record also goes to TensorBoard and/or MLflow.

Both are optional (the config's `tracking:` section, off by default) and their libraries are
imported only when on. history.csv and metrics.json stay the record of a run; a tracker holds a
copy for dashboards, and the failure policy follows from that:

- before the run directory exists: a backend whose library is missing is a config error
  (`check`), and the MLflow store is opened (`open_tracking`), so a wrong URI or a server that
  is down stops the command at once instead of after hours of training;
- once training runs, a tracker that fails (disk full, store unwritable, server gone) is
  switched off with one warning on stderr and training carries on: losing the dashboard copy
  must not lose the run, whose files have every epoch anyway.

Resume: RUN/mlflow.json keeps the MLflow run's id, so a resumed run carries on the same MLflow
run, and RUN/tensorboard/ is appended to. Each tracker takes the epochs it may have missed from
the checkpoint's history (killed between a checkpoint and the epoch's report, or turned on only
at the resume) and shows each epoch once.

This module holds the fan-out (Tracking), the TensorBoard tracker, and where and what MLflow
logs (its store's URI, the config as params: no MLflow needed, and resolving a config uses
them); the MLflow tracker itself is in mlflow_tracker.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlparse

from mlpkit.config.load import LoadedConfig
from mlpkit.errors import ConfigError
from mlpkit.rundir import runs

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from mlpkit.train.loop import EpochRecord, OnEpoch

Scores = runs.Scores
Warn = Callable[[str], None]


class Tracker(Protocol):
    """One backend. Calls come in order: start, then epoch per epoch, then finish once."""

    key: str  # its config key, which names it in warnings

    def start(self, run_dir: Path, history: list[EpochRecord]) -> None:
        """Begin logging the run; `history` holds the epochs a resumed run already trained."""

    def epoch(self, record: EpochRecord) -> None:
        """Log one epoch's record (a row of history.csv)."""

    def finish(self, status: runs.Status, test: Scores | None) -> None:
        """Log how the run ended, with the test metrics of a complete run."""


def check(loaded: LoadedConfig) -> None:
    """Every backend the config turns on has its library installed.

    Raises:
        ConfigError: one problem per missing library, each naming its setting and the fix.
    """
    settings = loaded.config.tracking
    wanted = {
        ("tracking", "tensorboard"): ("tensorboard", settings.tensorboard),
        ("tracking", "mlflow", "enabled"): ("mlflow", settings.mlflow.enabled),
    }
    problems = [
        loaded.problem(
            path,
            f"needs the {package} package, which is not installed",
            f"pip install 'mlpkit[{package}]', or set it to false",
        )
        for path, (package, on) in wanted.items()
        if on and importlib.util.find_spec(package) is None
    ]
    if problems:
        raise ConfigError(problems)


def open_tracking(
    loaded: LoadedConfig,
    params: dict[str, Any],
    runs_dir: Path,
    warn: Warn | None = None,
    resumed: Path | None = None,
) -> Tracking:
    """The trackers the config turns on, their stores opened; call before the run exists.

    `params` is the resolved config (MLflow's params); `runs_dir` holds the default MLflow store.
    `resumed` is the run a resume carries on: without a URI in the config, MLflow goes back to
    the store that run logged to (RUN/mlflow.json), whatever $MLFLOW_TRACKING_URI says now.

    Raises:
        ConfigError: a library is missing, or the MLflow store cannot be opened.
    """
    check(loaded)
    settings = loaded.config.tracking
    trackers: list[Tracker] = []
    if settings.tensorboard:
        trackers.append(TensorBoard())
    if settings.mlflow.enabled:
        # Imported here, as its library is: it builds on this module's URI and param helpers.
        from mlpkit.report.mlflow_tracker import MLflow

        trackers.append(MLflow.connect(loaded, params, runs_dir, resumed))
    return Tracking(trackers, warn or _stderr)


class Tracking:
    """The trackers of one run, called together. One that raises is dropped with a warning
    and the rest go on (the module's failure policy); with none, every call does nothing."""

    def __init__(self, trackers: list[Tracker] | None = None, warn: Warn | None = None) -> None:
        self.trackers = list(trackers or [])
        self.warn = warn or _stderr

    def start(self, run_dir: Path, history: list[EpochRecord]) -> None:
        self._each(lambda t: t.start(run_dir, history), "training goes on without it")

    def epoch(self, record: EpochRecord) -> None:
        self._each(lambda t: t.epoch(record), "training goes on without it")

    def finish(self, status: runs.Status, test: Scores | None = None) -> None:
        self._each(lambda t: t.finish(status, test), "the run directory is not affected")
        self.trackers = []  # finished: nothing more to log

    def wrap(self, on_epoch: OnEpoch | None) -> OnEpoch | None:
        """`on_epoch` (the caller's progress display), then every tracker."""
        if not self.trackers:
            return on_epoch

        def both(record: EpochRecord) -> None:
            if on_epoch is not None:
                on_epoch(record)
            self.epoch(record)

        return both

    def _each(self, call: Callable[[Tracker], None], then: str) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            # Any failure of a tracking library (OSError, MlflowException, SQLAlchemy's and
            # requests' errors...) costs the dashboard copy, never the run: see the docstring.
            except Exception as exc:
                self.trackers.remove(tracker)
                self.warn(
                    f"Warning: {tracker.key}: {one_line(exc)}; it is off for the rest of this "
                    f"process and {then} (history.csv and metrics.json have every result)"
                )


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")


def one_line(exc: BaseException, limit: int = 400) -> str:
    """A library's message as one line of bounded length (some carry SQL or HTML): its start
    says what failed, its end why (`... [Errno 111] Connection refused`), so the middle goes."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    half = (limit - 5) // 2
    return text if len(text) <= limit else f"{text[:half]} ... {text[-half:]}"


# --- TensorBoard ----------------------------------------------------------------------------


class TensorBoard:
    """Event files in RUN/tensorboard/: a scalar per history column per epoch (step = epoch),
    tagged with the column's name, and the test metrics as test_<metric> at the last epoch.

    TensorBoard stores scalars as float32: the values are history.csv's, rounded to float32.
    """

    key = "tracking.tensorboard"

    def __init__(self) -> None:
        self.writer: SummaryWriter | None = None
        self.step = 0  # the last epoch written

    def start(self, run_dir: Path, history: list[EpochRecord]) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        folder = run_dir / runs.TENSORBOARD
        appending = folder.is_dir() and any(folder.glob("events.out.tfevents.*"))
        # A resumed run: TensorBoard hides the older files' events from purge_step on, and the
        # checkpoint's history is written again, so the curves are exactly the history: no
        # epoch doubled (logged past the checkpoint) or missing (lost to a kill, or tracking
        # off for a while). Those epochs' wall times become the resume's.
        self.writer = SummaryWriter(str(folder), purge_step=1 if appending else None)
        for record in history:
            self.epoch(record)

    def epoch(self, record: EpochRecord) -> None:
        assert self.writer is not None, "start first"
        self.step = int(record["epoch"])
        for name, value in record.items():
            if name != "epoch":
                self.writer.add_scalar(name, value, self.step)
        self.writer.flush()  # on disk each epoch: a kill loses at most the epoch in progress

    def finish(self, status: runs.Status, test: Scores | None) -> None:
        assert self.writer is not None, "start first"
        for name, value in (test or {}).items():
            self.writer.add_scalar(f"test_{name}", value, self.step)
        self.writer.close()


def default_uri(runs_dir: Path) -> str:
    """The store when none is configured: one SQLite file beside the runs, for all of them."""
    return f"sqlite:///{(runs_dir / 'mlflow.db').resolve()}"


def store_uri(setting: str | None, config_dir: Path, runs_dir: Path) -> str:
    """The MLflow tracking URI: tracking.mlflow.uri (a relative path read from the config's
    folder, like data.path), else $MLFLOW_TRACKING_URI (relative to the working directory, as
    MLflow reads it), else default_uri(runs_dir)."""
    if setting is not None:
        return absolute_uri(setting, config_dir)
    from_environment = os.environ.get("MLFLOW_TRACKING_URI")
    if from_environment:
        return absolute_uri(from_environment, Path.cwd())
    return default_uri(runs_dir)


def absolute_uri(uri: str, base: Path) -> str:
    """`uri` with a relative local path made absolute from `base`: sqlite:///x.db, file:x or a
    bare path; an absolute one, and any other URI (http:, postgresql:, databricks), as it is."""
    if uri.startswith("sqlite:///"):
        path, sep, query = uri.removeprefix("sqlite:///").partition("?")
        if path and path != ":memory:":
            path = str((base / path).resolve())  # base / "/abs.db" is "/abs.db"
        return f"sqlite:///{path}{sep}{query}"
    parsed = urlparse(uri)
    if parsed.scheme == "file" and not parsed.netloc and not Path(parsed.path).is_absolute():
        return (base / parsed.path).resolve().as_uri()
    if not parsed.scheme and uri != "databricks" and not Path(uri).is_absolute():
        return str((base / uri).resolve())
    return uri


def without_tracking(config: dict[str, Any]) -> dict[str, Any]:
    """The config without its tracking section: where a run is logged is no hyperparameter,
    and a resume may change it (params, once logged, cannot change)."""
    return {key: value for key, value in config.items() if key != "tracking"}


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A resolved config as MLflow params: dotted keys (`training.optimizer.lr`), lists of
    mappings by index (`model.layers.0.units`), other values as JSON (`[0.9, 0.999]`, `null`,
    `true`), text as it is. MLflow keeps at most 6000 characters of a value."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flat_params(value, f"{name}.")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            flat |= flat_params({str(i): v for i, v in enumerate(value)}, f"{name}.")
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            flat[name] = text if len(text) <= 6000 else text[:5997] + "..."
    return flat
