"""TensorBoard and MLflow tracking, against the real libraries: whatever a run logs is read back
with TensorBoard's EventAccumulator and MLflow's client and compared with the run's own files.

A new MLflow SQLite store takes seconds to set up, so the tests share one (the module's runs
folder), each run under a config name of its own.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from subprocess import PIPE
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import yaml
from conftest import TINY_CONFIG, Cli, EpochListener, Project, stop_at_poll, tiny_csv

from mlpkit.config.load import load_config
from mlpkit.errors import ConfigError
from mlpkit.flows.train import train
from mlpkit.report import tracking
from mlpkit.rundir import checkpoints

if TYPE_CHECKING:
    from mlflow import MlflowClient

# mlflow and tensorboard are imported where they read a run back, not here: collecting the
# suite should not pay seconds for them.
TRACKED = TINY_CONFIG + "tracking:\n  tensorboard: true\n  mlflow: {enabled: true}\n"


@pytest.fixture(autouse=True)
def _no_tracking_uri_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the tiny data and a runs/ whose mlflow.db every test here may use."""
    root = tmp_path_factory.mktemp("tracking")
    (root / "data.csv").write_text(tiny_csv())
    (root / "config.yaml").write_text(TRACKED)
    return root


@pytest.fixture(scope="module")
def trained(shared: Path) -> tuple[Path, list[tuple[int, str, str]]]:
    """`mlpkit train` as a user runs it, both trackers on, twice at the same moment on a new
    default store (which MLflow sets up on first use): the first run, and how each ended.
    About 10 s: the tests that use it are marked slow."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    command = [sys.executable, "-m", "mlpkit", "train", "config.yaml", "-q"]
    started = [
        subprocess.Popen(command, cwd=shared, env=env, stdout=PIPE, stderr=PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in started]
    ended = [(p.returncode, out, err) for p, (out, err) in zip(started, outputs, strict=True)]
    assert ended[0][0] == 0, ended[0][2]
    return shared / ended[0][1].strip(), ended


def project_in(shared: Path, root: Path, name: str, config: str = TRACKED) -> Project:
    """A project whose runs go to the shared runs/ (and its store) under config `name`."""
    project = Project(root)
    project.write_config(config.replace("name: tiny", f"name: {name}"))
    project.data.write_text((shared / "data.csv").read_text())
    return project


def history_of(run: Path) -> list[dict[str, float]]:
    with open(run / "history.csv") as rows:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(rows)]


def scores_of(run: Path) -> dict[str, float]:
    return dict(json.loads((run / "metrics.json").read_text())["test"])


def scalars_of(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in RUN/tensorboard/ as (step, value), as TensorBoard shows them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def client_of(run: Path) -> tuple[MlflowClient, str]:
    """A client on the store RUN/mlflow.json names, and the MLflow run's id."""
    from mlflow import MlflowClient

    link = json.loads((run / "mlflow.json").read_text())
    with warnings.catch_warnings():  # the SQLAlchemy deprecation tracking._quiet explains
        warnings.filterwarnings("ignore", "The ``noload`` loader strategy", DeprecationWarning)
        return MlflowClient(link["tracking_uri"]), link["run_id"]


def artifacts_of(client: MlflowClient, run_id: str, folder: str | None = None) -> set[str]:
    found: set[str] = set()
    for item in client.list_artifacts(run_id, folder):
        found |= artifacts_of(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def assert_tensorboard_matches(run: Path) -> None:
    """One scalar per history column per epoch, each step once, equal to history.csv's value
    in TensorBoard's float32; the test metrics at the last epoch."""
    history, scalars = history_of(run), scalars_of(run)
    columns = [name for name in history[0] if name != "epoch"]
    test = scores_of(run)
    assert set(scalars) == set(columns) | {f"test_{name}" for name in test}
    for name in columns:
        expected = [(int(row["epoch"]), float(np.float32(row[name]))) for row in history]
        assert scalars[name] == expected, name
    for name, value in test.items():
        assert scalars[f"test_{name}"] == [(len(history), float(np.float32(value)))]


def assert_mlflow_matches(run: Path) -> None:
    """Each column's metric history equals history.csv exactly, each epoch once; the test
    metrics equal metrics.json; params are the config; the files are artifacts."""
    client, run_id = client_of(run)
    logged = client.get_run(run_id)
    history = history_of(run)
    for name in (name for name in history[0] if name != "epoch"):
        steps = [(m.step, m.value) for m in client.get_metric_history(run_id, name)]
        assert sorted(steps) == [(int(row["epoch"]), row[name]) for row in history], name
    test = scores_of(run)
    assert {k: v for k, v in logged.data.metrics.items() if k.startswith("test_")} == {
        f"test_{name}": value for name, value in test.items()
    }
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert logged.data.params == tracking.flat_params(tracking.without_tracking(config))
    assert logged.data.params["training.optimizer.lr"] == "0.01"
    assert logged.data.params["model.layers.0.units"] == "8"
    assert logged.data.params["data.features"] == '["a", "b", "color"]'
    assert logged.data.tags["mlpkit.run_dir"] == str(run.resolve())
    assert logged.data.tags["mlpkit.status"] == "complete"
    assert logged.info.status == "FINISHED"
    files = {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}
    kept = {f for f in files if not f.startswith((".", "checkpoints/"))}
    assert artifacts_of(client, run_id) == kept
    assert {"model.safetensors", "run.json", "mlflow.json"} < kept
    assert any(f.startswith("tensorboard/events.out.tfevents.") for f in kept)


@pytest.mark.slow
def test_the_cli_trains_with_both_trackers_and_prints_nothing_else(
    trained: tuple[Path, list[tuple[int, str, str]]], shared: Path
) -> None:
    run, ended = trained
    first, second = ended  # both set up the new store at once: neither fails
    assert (first[0], first[2], second[0], second[2]) == (0, "", 0, "")  # no MLflow log lines
    assert first[1] == f"runs/tiny/{run.name}\n" != second[1]
    link = json.loads((run / "mlflow.json").read_text())
    assert link["tracking_uri"] == f"sqlite:///{shared / 'runs' / 'mlflow.db'}"  # the default
    assert (shared / "runs" / "mlartifacts" / "tiny" / link["run_id"]).is_dir()
    assert not (shared / "mlruns").exists()  # nothing in the working directory


@pytest.mark.slow
def test_tensorboard_events_equal_the_history(
    trained: tuple[Path, list[tuple[int, str, str]]],
) -> None:
    assert_tensorboard_matches(trained[0])


@pytest.mark.slow
def test_mlflow_run_equals_the_run_directory(
    trained: tuple[Path, list[tuple[int, str, str]]],
) -> None:
    assert_mlflow_matches(trained[0])


def test_an_explicit_uri_is_read_from_the_config_folder(
    cli: Cli, project: Project, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for it: file stores
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    overrides = ["tracking.mlflow.enabled=true", "tracking.mlflow.uri=file:store"]
    overrides.append("tracking.mlflow.experiment=my experiment")
    result = cli("train", project.config, "--runs-dir", project.runs, "-q", *_sets(overrides))
    assert (result.code, result.err) == (0, "")
    run = Path(result.last_line)
    store = (project.root / "store").as_uri()  # from the config's folder, not the cwd
    assert json.loads((run / "mlflow.json").read_text())["tracking_uri"] == store
    assert yaml.safe_load((run / "config.yaml").read_text())["tracking"]["mlflow"]["uri"] == store
    client, run_id = client_of(run)
    experiment_id = client.get_run(run_id).info.experiment_id
    assert client.get_experiment(experiment_id).name == "my experiment"
    assert client.get_run(run_id).data.metrics["test_r2"] == scores_of(run)["r2"]
    assert not (elsewhere / "mlruns").exists() and not (project.runs / "mlflow.db").exists()


def _sets(overrides: list[str]) -> list[str]:
    return [arg for text in overrides for arg in ("--set", text)]


@pytest.mark.parametrize(
    ("name", "poll", "first", "trained_before"),
    [
        pytest.param(name, poll, config, epochs, id=name)
        for name, poll, config, epochs in [
            ("after-epoch-1", 5, TRACKED, [1]),
            ("mid-epoch-3", 11, TRACKED, [1, 2]),
            ("turned-on-at-resume", 11, TINY_CONFIG, [1, 2]),
        ]
    ],
)
def test_resume_carries_on_the_same_mlflow_run_and_event_files(
    cli: Cli,
    shared: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    poll: int,
    first: str,
    trained_before: list[int],
) -> None:
    project = project_in(shared, tmp_path, name, first)
    project.edit_config("epochs: 3", "epochs: 4")
    with monkeypatch.context() as stopping:
        stop_at_poll(stopping, poll)
        stopped = cli("train", project.config, "--runs-dir", shared / "runs", "-q")
    assert stopped.code == 130
    (run,) = (shared / "runs" / name).iterdir()
    assert [int(row["epoch"]) for row in history_of_checkpoint(run)] == trained_before
    sets: list[str] = []
    if first == TRACKED:
        client, run_id = client_of(run)
        assert client.get_run(run_id).info.status == "KILLED"
        assert client.get_run(run_id).data.tags["mlpkit.status"] == "interrupted"
    else:  # off before: the settings may change on resume, and what was missed is logged
        assert not (run / "mlflow.json").exists()
        sets = _sets(["tracking.tensorboard=true", "tracking.mlflow.enabled=true"])
        run_id = ""
    resumed = cli("train", "--resume", run, "-q", *sets)
    assert (resumed.code, resumed.err) == (0, "")
    assert [int(row["epoch"]) for row in history_of(run)] == [1, 2, 3, 4]
    assert not run_id or client_of(run)[1] == run_id  # the same MLflow run
    assert_mlflow_matches(run)
    assert_tensorboard_matches(run)


def history_of_checkpoint(run: Path) -> list[dict[str, float]]:
    checkpoint, _ = checkpoints.latest(run)
    return checkpoint.position.history


def test_a_tracker_failing_mid_training_warns_once_and_the_run_completes(
    shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = project_in(shared, tmp_path, "failing")

    def break_the_mlflow_run(record: dict[str, float]) -> None:
        if record["epoch"] == 1:  # the store now refuses this run's writes
            (link,) = (shared / "runs" / "failing").glob("*/mlflow.json")
            client, run_id = client_of(link.parent)
            client.delete_run(run_id)

    listener = EpochListener(break_the_mlflow_run)
    result = train(load_config(project.config), shared / "runs", listener=listener)
    (warning,) = capsys.readouterr().err.splitlines()
    assert warning.startswith("Warning: tracking.mlflow: ")
    assert "must be in the 'active' state" in warning
    assert warning.endswith(
        "; it is off for the rest of this process and training goes on without it "
        "(history.csv and metrics.json have every result)"
    )
    run = result.run_dir
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    assert [int(row["epoch"]) for row in history_of(run)] == [1, 2, 3]
    assert_tensorboard_matches(run)  # the other tracker went on


MISSING = {
    "tensorboard": (
        "tracking.tensorboard: needs the tensorboard package, which is not installed; "
        "pip install 'mlpkit[tensorboard]', or set it to false"
    ),
    "mlflow": (
        "tracking.mlflow.enabled: needs the mlflow package, which is not installed; "
        "pip install 'mlpkit[mlflow]', or set it to false"
    ),
}


@pytest.mark.parametrize(
    "missing", [["tensorboard"], ["mlflow"], ["tensorboard", "mlflow"]], ids="+".join
)
def test_a_missing_library_is_a_config_error_before_the_run_exists(
    cli: Cli, project: Project, monkeypatch: pytest.MonkeyPatch, missing: list[str]
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name in missing else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    project.write_config(TRACKED)
    lines = {"tensorboard": 19, "mlflow": 20}  # the line of each setting in the file
    expected = [f"Error: {project.config}:{lines[name]}: {MISSING[name]}" for name in missing]
    for command in ("train", "check"):
        args: list[str | Path] = ["--runs-dir", project.runs] if command == "train" else []
        result = cli(command, project.config, *args)
        assert (result.code, result.out, result.err.splitlines()) == (2, "", expected)
    assert not project.runs.exists()


def test_an_unreachable_store_is_an_error_before_the_run_exists(
    cli: Cli, project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MLflow retries a failed request for minutes by default; this store is down for good.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    overrides = _sets(["tracking.mlflow.enabled=true", f"tracking.mlflow.uri={uri}"])
    result = cli("train", project.config, "--runs-dir", project.runs, *overrides)
    assert result.code == 2
    (line,) = result.err.splitlines()
    assert line.startswith(
        f"Error: --set: tracking.mlflow.uri: cannot open the MLflow store {uri}: "
    )
    assert "Connection refused" in line
    assert line.endswith("; check the URI, or set tracking.mlflow.enabled: false")
    assert not project.runs.exists()


def test_tracking_keys_are_strict(project: Project) -> None:
    project.write_config(TINY_CONFIG + "tracking:\n  tensorbord: true\n  mlflow: {uri: ''}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(project.config)
    assert caught.value.render().splitlines() == [
        f"Error: {project.config}:19: tracking.tensorbord: unknown key; did you mean "
        "'tensorboard'? expected one of: mlflow, tensorboard",
        f"Error: {project.config}:20: tracking.mlflow.uri: string should have at least 1 "
        'character, got ""',
    ]
    assert load_config(project.config, ["tracking={}"]).config.tracking.tensorboard is False


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sqlite:///mlflow.db", "sqlite:////base/mlflow.db"),
        ("sqlite:///../x/m.db?timeout=5", "sqlite:////x/m.db?timeout=5"),
        ("sqlite:////abs/m.db", "sqlite:////abs/m.db"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("file:mlruns", "file:///base/mlruns"),
        ("file:///abs/mlruns", "file:///abs/mlruns"),
        ("mlruns", "/base/mlruns"),
        ("/abs/mlruns", "/abs/mlruns"),
        ("http://host:5000", "http://host:5000"),
        ("postgresql://u@host/db", "postgresql://u@host/db"),
        ("databricks", "databricks"),
        ("databricks://profile", "databricks://profile"),
    ],
)
def test_absolute_uri(uri: str, expected: str) -> None:
    assert tracking.absolute_uri(uri, Path("/base")) == expected


def test_flat_params() -> None:
    config = {
        "name": "x",
        "model": {"layers": [{"units": 8}, {"units": 1}], "inputs": None},
        "training": {"optimizer": {"betas": [0.9, 0.999], "amsgrad": False}, "metrics": []},
        "tracking": {"tensorboard": True},
    }
    assert tracking.flat_params(tracking.without_tracking(config)) == {
        "name": "x",
        "model.layers.0.units": "8",
        "model.layers.1.units": "1",
        "model.inputs": "null",
        "training.optimizer.betas": "[0.9, 0.999]",
        "training.optimizer.amsgrad": "false",
        "training.metrics": "[]",
    }


def test_the_store_is_the_config_s_else_the_environment_s_else_beside_the_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    runs, config_dir = Path("runs"), Path("/configs")
    assert tracking.store_uri(None, config_dir, runs) == f"sqlite:///{tmp_path}/runs/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")  # as MLflow reads it: from cwd
    assert tracking.store_uri(None, config_dir, runs) == f"sqlite:///{tmp_path}/env.db"
    assert tracking.store_uri("sqlite:///m.db", config_dir, runs) == "sqlite:////configs/m.db"


def test_resume_goes_back_to_the_store_the_run_logged_to(
    cli: Cli, shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trained with $MLFLOW_TRACKING_URI set, resumed without it: the run's own store (in
    RUN/mlflow.json) is used, not the default beside the runs."""
    project = project_in(shared, tmp_path, "env-store")
    project.edit_config("epochs: 3", "epochs: 4")
    store = f"sqlite:///{shared / 'runs' / 'mlflow.db'}"  # set up already: no table creation
    with monkeypatch.context() as stopping:
        stopping.setenv("MLFLOW_TRACKING_URI", store)
        stop_at_poll(stopping, 11)
        runs_dir = tmp_path / "elsewhere"
        assert cli("train", project.config, "--runs-dir", runs_dir, "-q").code == 130
    (run,) = (runs_dir / "env-store").iterdir()
    run_id = json.loads((run / "mlflow.json").read_text())["run_id"]
    resumed = cli("train", "--resume", run, "-q")
    assert (resumed.code, resumed.err) == (0, "")
    assert not (runs_dir / "mlflow.db").exists()
    client, same = client_of(run)
    assert same == run_id and client.get_run(run_id).info.status == "FINISHED"
    assert_mlflow_matches(run)
