"""The MLflow tracker: one MLflow run per mlpkit run, kept in step across resumes.

tracking.py decides when it is on, which store it logs to and what its params are, and calls
it through the Tracking fan-out (whose failure policy applies); this module talks to MLflow,
which is imported only inside the calls (~2 s, and only when tracking.mlflow is on).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlpkit
from mlpkit.config.load import LoadedConfig
from mlpkit.errors import ConfigError
from mlpkit.report.tracking import flat_params, one_line, store_uri, without_tracking
from mlpkit.rundir import runs
from mlpkit.train.loop import EpochRecord

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Experiment

RUN_DIR_TAG = "mlpkit.run_dir"  # the MLflow run's tag naming the run directory
# How an mlpkit run's end reads in MLflow.
MLFLOW_STATUS: dict[runs.Status, str] = {
    "complete": "FINISHED",
    "interrupted": "KILLED",
    "failed": "FAILED",
    "diverged": "FAILED",
    "pruned": "KILLED",
    "running": "RUNNING",
}


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
        link = runs.read_json_or_empty(resumed / runs.MLFLOW_LINK) if resumed else {}
        logged_to = link.get("tracking_uri")
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
                problem = f"cannot open the MLflow store {uri}: {one_line(exc)}"
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

    def finish(self, status: runs.Status, test: runs.Scores | None) -> None:
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

        # missing or unreadable: a new MLflow run
        run_id = runs.read_json_or_empty(run_dir / runs.MLFLOW_LINK).get("run_id")
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
        runs.write_json(run_dir / runs.MLFLOW_LINK, link)
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
            if path.name.startswith(".") or path.name == runs.CHECKPOINTS:
                continue
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
            else:
                self.client.log_artifact(self.run_id, str(path))


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
