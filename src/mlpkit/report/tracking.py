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
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlparse

import mlpkit
from mlpkit.config.load import LoadedConfig
from mlpkit.errors import ConfigError
from mlpkit.rundir import runs
from mlpkit.train.loop import EpochRecord, OnEpoch

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Experiment
    from torch.utils.tensorboard import SummaryWriter

Scores = dict[str, float]
Warn = Callable[[str], None]

TENSORBOARD_DIR = "tensorboard"  # in the run directory
MLFLOW_LINK = "mlflow.json"  # in the run directory: the MLflow store, experiment and run ids
RUN_DIR_TAG = "mlpkit.run_dir"  # the MLflow run's tag naming the run directory
# How an mlpkit run's end reads in MLflow.
MLFLOW_STATUS: dict[runs.Status, str] = {
    "complete": "FINISHED",
    "interrupted": "KILLED",
    "failed": "FAILED",
    "diverged": "FAILED",
    "running": "RUNNING",
}


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
                    f"Warning: {tracker.key}: {_one_line(exc)}; it is off for the rest of this "
                    f"process and {then} (history.csv and metrics.json have every result)"
                )


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")


def _one_line(exc: BaseException, limit: int = 400) -> str:
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

        folder = run_dir / TENSORBOARD_DIR
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


# --- MLflow ---------------------------------------------------------------------------------


class MLflow:
    """One MLflow run per mlpkit run: the flattened config as params, tags `mlpkit.run_dir` and
    `mlpkit.status`, each history column as a metric (step = epoch), test_<metric> at the last
    epoch, and the run directory's files (not its checkpoints) as artifacts once complete."""

    key = "tracking.mlflow"

    def __init__(
        self, client: MlflowClient, uri: str, experiment_id: str, params: dict[str, str]
    ) -> None:
        self.client = client
        self.uri = uri
        self.experiment_id = experiment_id
        self.params = params
        self.run_id = ""
        self.run_dir = Path()
        self.logged: set[int] = set()  # epochs the MLflow run has
        self.step = 0  # the last epoch logged

    @classmethod
    def connect(
        cls,
        loaded: LoadedConfig,
        config: dict[str, Any],
        runs_dir: Path,
        resumed: Path | None = None,
    ) -> MLflow:
        """Open the store and find (or create) the experiment; no MLflow run yet.

        Raises:
            ConfigError: the store cannot be opened (bad URI, server down, deleted experiment).
        """
        settings = loaded.config.tracking.mlflow
        uri = store_uri(settings.uri, loaded.source.parent, runs_dir)
        logged_to = _read_link(resumed / MLFLOW_LINK).get("tracking_uri") if resumed else None
        if settings.uri is None and isinstance(logged_to, str):
            uri = logged_to
        name = settings.experiment or loaded.config.name
        where = ("tracking", "mlflow", "uri" if settings.uri else "enabled")
        with _quiet():
            try:
                client, experiment = _open_store(uri, name)
            # MlflowException, requests' and SQLAlchemy's errors, OSError: whatever the store's
            # library raises, the user's fix is the same.
            except Exception as exc:
                problem = f"cannot open the MLflow store {uri}: {_one_line(exc)}"
                hint = "check the URI, or set tracking.mlflow.enabled: false"
                raise ConfigError(loaded.problem(where, problem, hint)) from None
        if experiment.lifecycle_stage == "deleted":
            problem = f"experiment '{name}' is deleted in the MLflow store {uri}"
            hint = "restore it (mlflow experiments restore) or name another experiment"
            raise ConfigError(loaded.problem(where, problem, hint))
        params = flat_params(without_tracking(config))
        return cls(client, uri, str(experiment.experiment_id), params)

    def start(self, run_dir: Path, history: list[EpochRecord]) -> None:
        self.run_dir = run_dir
        with _quiet():
            self.run_id = self._continued(run_dir) or self._created(run_dir)
            missing = [record for record in history if int(record["epoch"]) not in self.logged]
            self._log_epochs(missing)
            self.step = int(history[-1]["epoch"]) if history else 0

    def epoch(self, record: EpochRecord) -> None:
        if int(record["epoch"]) in self.logged:  # trained again after a checkpoint fallback
            return
        with _quiet():
            self._log_epochs([record])

    def finish(self, status: runs.Status, test: Scores | None) -> None:
        from mlflow.entities import Metric, RunTag

        with _quiet():
            try:
                now = _milliseconds()
                scores = [Metric(f"test_{k}", v, now, self.step) for k, v in (test or {}).items()]
                tags = [RunTag("mlpkit.status", status)]
                self.client.log_batch(self.run_id, metrics=scores, tags=tags)
                if status == "complete":
                    self._log_files()
            finally:  # whatever failed above, the MLflow run does not stay RUNNING
                self.client.set_terminated(self.run_id, MLFLOW_STATUS[status])

    def _continued(self, run_dir: Path) -> str | None:
        """The MLflow run RUN/mlflow.json names, if this store has it, marked running again."""
        from mlflow.exceptions import MlflowException

        link = _read_link(run_dir / MLFLOW_LINK)
        run_id = link.get("run_id")
        if not isinstance(run_id, str):
            return None
        try:
            run = self.client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":  # another store: a new MLflow run
                return None
            raise
        if run.info.lifecycle_stage == "deleted":
            return None
        self.client.update_run(run_id, status="RUNNING")
        self.client.set_tag(run_id, "mlpkit.status", "running")
        self.logged = {
            metric.step for metric in self.client.get_metric_history(run_id, "train_loss")
        }
        return run_id

    def _created(self, run_dir: Path) -> str:
        """A new MLflow run with the config as params, its id kept in RUN/mlflow.json."""
        from mlflow.entities import Param

        tags = {RUN_DIR_TAG: str(run_dir.resolve()), "mlpkit.status": "running"}
        tags["mlpkit.version"] = mlpkit.__version__
        run = self.client.create_run(self.experiment_id, run_name=run_dir.name, tags=tags)
        run_id = str(run.info.run_id)
        params = [Param(key, value) for key, value in self.params.items()]
        for first in range(0, len(params), 100):  # MLflow takes at most 100 params a call
            self.client.log_batch(run_id, params=params[first : first + 100])
        link = {"tracking_uri": self.uri, "experiment_id": self.experiment_id, "run_id": run_id}
        runs.write_json(run_dir / MLFLOW_LINK, link)
        self.logged = set()
        return run_id

    def _log_epochs(self, records: list[EpochRecord]) -> None:
        from mlflow.entities import Metric

        now = _milliseconds()
        metrics = [
            Metric(name, float(value), now, int(record["epoch"]))
            for record in records
            for name, value in record.items()
            if name != "epoch"
        ]
        for first in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics a call
            self.client.log_batch(self.run_id, metrics=metrics[first : first + 1000])
        self.logged.update(int(record["epoch"]) for record in records)
        if records:
            self.step = int(records[-1]["epoch"])

    def _log_files(self) -> None:
        """The run directory's files, without checkpoints/ (training state) and hidden files."""
        for path in sorted(self.run_dir.iterdir()):
            if path.name.startswith(".") or path.name == "checkpoints":
                continue
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
            else:
                self.client.log_artifact(self.run_id, str(path))


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


def _open_store(uri: str, name: str) -> tuple[MlflowClient, Experiment]:
    """A client on the store, and its experiment `name`, created if new."""
    from mlflow import MlflowClient

    database = _sqlite_file(uri)
    with _one_at_a_time(database):
        client = MlflowClient(tracking_uri=uri)  # a new SQLite store: ~5 s creating tables
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            _create_experiment(client, name, database)
            experiment = client.get_experiment_by_name(name)
    assert experiment is not None, "just created"
    return client, experiment


def _create_experiment(client: MlflowClient, name: str, database: Path | None) -> None:
    """A new experiment; beside a SQLite store its files go to <store folder>/mlartifacts/
    (MLflow's own default is ./mlruns in the working directory). Another process may create
    it at the same moment (a server's store): then that one is used."""
    from mlflow.exceptions import MlflowException

    location = None
    if database is not None:
        folder = re.sub(r"[^A-Za-z0-9._-]", "_", name)
        location = (database.parent / "mlartifacts" / folder).as_uri()
    try:
        client.create_experiment(name, artifact_location=location)
    except MlflowException:
        if client.get_experiment_by_name(name) is None:
            raise


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI with an absolute path, else None."""
    path = Path(uri.removeprefix("sqlite:///").partition("?")[0])
    return path if uri.startswith("sqlite:///") and path.is_absolute() else None


@contextlib.contextmanager
def _one_at_a_time(database: Path | None) -> Iterator[None]:
    """With a SQLite store, one process at a time opens it: MLflow creates (or upgrades) its
    tables on first use, and two trainings started together on a new store would race that,
    one failing. An flock on <database>.lock, which the kernel drops with its process."""
    if database is None:
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{database}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits while another process sets the store up
        yield
    finally:
        os.close(fd)


def _read_link(path: Path) -> dict[str, Any]:
    """RUN/mlflow.json, or {} when it is missing or unreadable (then a new MLflow run)."""
    try:
        link = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return link if isinstance(link, dict) else {}


def _milliseconds() -> int:
    return int(time.time() * 1000)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Import mlflow, and keep its INFO lines ("Creating initial MLflow database tables...")
    off the user's terminal while we call it; its warnings and errors still show."""
    with warnings.catch_warnings():
        # SQLAlchemy 2.1 deprecates a loader option mlflow's SQL store still uses: mlflow's
        # to fix, nothing the user can act on. It fires once, when that module is imported.
        warnings.filterwarnings(
            "ignore", "The ``noload`` loader strategy is deprecated", DeprecationWarning
        )
        import mlflow  # noqa: F401  (~2 s, once; it sets its logger to INFO on import)

        logger = logging.getLogger("mlflow")
        level = logger.level
        logger.setLevel(max(level, logging.WARNING))
        try:
            yield
        finally:
            logger.setLevel(level)
