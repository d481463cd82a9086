"""mlpkit sweep: trials are ordinary runs in one sweep folder; the search is checked before it
runs; pruning, workers, a killed worker and resume; storage errors in one line."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from conftest import REPO, Cli, Project
from postgres import Postgres

GRID = """\
sweep:
  sampler: grid
  pruner: none
  space:
    training.optimizer.lr: {choice: [0.003, 0.03]}
    model.layers.0.units: {choice: [4, 16]}
"""


def with_sweep(project: Project, sweep: str) -> Path:
    return project.write_config(project.config.read_text() + sweep)


def rows_of(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def trials_of(folder: Path) -> list[dict[str, str]]:
    return rows_of(folder / "trials.csv")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def test_a_grid_sweep_runs_every_point_as_a_complete_run(cli: Cli, project: Project) -> None:
    with_sweep(project, GRID)
    result = cli("sweep", project.config, "--runs-dir", project.runs)
    assert result.code == 0, result.err
    folder = Path(result.last_line)
    assert folder.parent == project.runs / "tiny" and folder.name.startswith("sweep-")
    rows = trials_of(folder)
    assert [row["number"] for row in rows] == ["0", "1", "2", "3"]
    assert {row["state"] for row in rows} == {"complete"}
    points = set()
    for row in rows:
        run = folder / row["run"]
        assert read_json(run / "run.json")["status"] == "complete"
        config = yaml.safe_load((run / "config.yaml").read_text())
        lr, units = config["training"]["optimizer"]["lr"], config["model"]["layers"][0]["units"]
        assert (float(row["training.optimizer.lr"]), int(row["model.layers.0.units"])) == (
            lr,
            units,
        )
        assert config["sweep"] is None  # a trial is an ordinary run
        points.add((lr, units))
        history = rows_of(run / "history.csv")
        assert float(row["val_loss"]) == float(history[-1]["val_loss"])
    assert points == {(0.003, 4), (0.003, 16), (0.03, 4), (0.03, 16)}
    info = read_json(folder / "sweep.json")
    assert info["status"] == "complete" and info["trials"] == 4
    best = info["best"]
    assert best["value"] == min(float(row["val_loss"]) for row in rows)
    assert sorted(p.name for p in (folder / "plots").iterdir()) == [
        "optimization_history.png",
        "parallel_coordinate.png",
        "param_importances.png",
        "slice.png",
    ]
    assert f"best: trial {best['number']}, val_loss" in result.out
    # best.yaml trains to the reported metric
    again = cli("train", folder / "best.yaml", "--runs-dir", project.root / "again", "-q")
    assert again.code == 0, again.err
    history = rows_of(Path(again.last_line) / "history.csv")
    assert float(history[-1]["val_loss"]) == best["value"]


def test_a_sweep_with_the_median_pruner_prunes(cli: Cli, project: Project) -> None:
    project.edit_config("  epochs: 3", "  epochs: 8")
    with_sweep(
        project,
        "sweep:\n  sampler: grid\n  pruner: median\n  space:\n"
        "    training.optimizer.lr: {choice: [0.05, 0.02, 1.0e-5, 2.0e-5]}\n"
        "    model.layers.0.units: {choice: [8, 16]}\n",  # units: one trial at a time
    )
    result = cli("sweep", project.config, "--runs-dir", project.runs, "-q")
    assert result.code == 0, result.err
    folder = Path(result.last_line)
    rows = trials_of(folder)
    assert len(rows) == 8
    pruned = [row for row in rows if row["state"] == "pruned"]
    assert pruned, rows
    for row in pruned:
        assert float(row["training.optimizer.lr"]) < 1e-4  # only the hopeless rates
        info = read_json(folder / row["run"] / "run.json")
        assert info["status"] == "pruned" and "pruned by the median pruner" in info["error"]


def test_the_search_is_checked_before_anything_runs(cli: Cli, project: Project) -> None:
    with_sweep(
        project,
        "sweep:\n  trials: 2\n  space:\n    training.optimizer.lrr: {log_uniform: [1.0e-4, 0.1]}\n",
    )
    result = cli("check", project.config)
    assert result.code == 2
    assert f"{project.config}:21: sweep.space." in result.err
    assert "has no key 'lrr'" in result.err and "did you mean 'lr'" in result.err
    project.edit_config(
        "training.optimizer.lrr: {log_uniform: [1.0e-4, 0.1]}",
        "model.layers.0.units: {choice: [8, 0]}",
    )
    result = cli("sweep", project.config, "--runs-dir", project.runs)
    assert result.code == 2 and not project.runs.exists()
    assert "the value 0 makes the config invalid" in result.err
    project.edit_config(
        "model.layers.0.units: {choice: [8, 0]}", "training.optimizer.lr: {uniform: [0.1, 0.01]}"
    )
    assert "uniform needs low < high" in cli("check", project.config).err
    project.edit_config("  trials: 2\n", "  trials: 2\n  metric: val_accuracy\n")
    assert "'val_accuracy' is not computed each epoch" in cli("check", project.config).err


def test_two_workers_share_one_journal_study(cli: Cli, project: Project) -> None:
    with_sweep(
        project,
        "sweep:\n  sampler: random\n  trials: 6\n  pruner: none\n  space:\n"
        "    training.optimizer.lr: {log_uniform: [1.0e-3, 0.1]}\n",
    )
    result = cli("sweep", project.config, "--runs-dir", project.runs, "--workers", "2", "-q")
    assert result.code == 0, result.err
    folder = Path(result.last_line)
    rows = trials_of(folder)
    numbers = [int(row["number"]) for row in rows]
    assert len(numbers) == 6 and len(set(numbers)) == 6
    assert {row["state"] for row in rows} == {"complete"}
    workers = {read_json(folder / row["run"] / "run.json")["started"] for row in rows}
    assert len(workers) >= 1
    assert not list((folder / "workers").glob("*.lock"))  # each worker left


@pytest.mark.slow
def test_a_killed_sweep_resumes_to_its_budget(project: Project) -> None:
    project.edit_config("  epochs: 3", "  epochs: 40")
    with_sweep(
        project,
        "sweep:\n  sampler: random\n  trials: 4\n  pruner: none\n  space:\n"
        "    training.optimizer.lr: {log_uniform: [1.0e-3, 0.1]}\n",
    )
    command = [sys.executable, "-m", "mlpkit", "sweep", str(project.config)]
    command += ["--runs-dir", str(project.runs), "-q"]
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "MLPKIT_PLOTS": "off"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    folder = None
    while time.monotonic() < deadline:
        found = list(project.runs.glob("tiny/sweep-*/trial-0003/run.json"))  # all 4 training
        if found:
            folder = found[0].parent.parent
            break
        time.sleep(0.05)
    assert folder is not None, process.communicate()
    process.send_signal(signal.SIGKILL)
    process.communicate()  # reaped, its pipes closed
    resumed = subprocess.run(
        [sys.executable, "-m", "mlpkit", "sweep", "--resume", str(folder), "-q"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    rows = trials_of(folder)
    counted = [row for row in rows if row["state"] in ("complete", "pruned", "failed")]
    assert len(counted) == 4
    # the 4 trials training stacked when the sweep was killed were lost, then run again
    assert [row["state"] for row in rows] == ["lost"] * 4 + ["complete"] * 4
    numbers = [int(row["number"]) for row in rows]
    assert numbers == list(range(8))
    for row in rows[:4]:
        assert read_json(folder / row["run"] / "run.json")["status"] == "running"  # as killed
    assert read_json(folder / "sweep.json")["status"] == "complete"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+psycopg://nobody@127.0.0.1:9/none", "--storage: cannot open"),
        ("mysql://nobody@127.0.0.1:9/none", "--storage: the database driver"),
    ],
)
def test_a_storage_that_cannot_be_used_is_one_line(
    cli: Cli, project: Project, url: str, expected: str
) -> None:
    with_sweep(project, GRID)
    result = cli("sweep", project.config, "--runs-dir", project.runs, "--storage", url)
    assert result.code == 2
    assert result.err.count("\n") == 1 and expected in result.err, result.err
    assert not project.runs.exists()  # nothing written


def test_a_study_made_for_another_search_is_refused(cli: Cli, project: Project) -> None:
    with_sweep(project, GRID)
    url = f"sqlite:///{project.root / 'studies.db'}"
    first = cli("sweep", project.config, "--runs-dir", project.runs, "--storage", url, "-q")
    assert first.code == 0, first.err
    project.edit_config("{choice: [4, 16]}", "{choice: [4, 8]}")
    again = cli("sweep", project.config, "--runs-dir", project.root / "b", "--storage", url)
    assert again.code == 2
    assert "the study 'tiny' exists for another search" in again.err
    assert not (project.root / "b").exists()


def test_learning_rate_and_decay_trials_train_stacked(cli: Cli, project: Project) -> None:
    project.edit_config("{name: adam, lr: 1e-2}", "{name: adamw, lr: 1e-2}")
    with_sweep(
        project,
        "sweep:\n  sampler: random\n  trials: 5\n  pruner: none\n  space:\n"
        "    training.optimizer.lr: {log_uniform: [1.0e-3, 0.1]}\n"
        "    training.optimizer.weight_decay: {uniform: [0.0, 0.1]}\n",
    )
    result = cli("sweep", project.config, "--runs-dir", project.runs)
    assert result.code == 0, result.err
    folder = Path(result.last_line)
    rows = trials_of(folder)
    assert [row["state"] for row in rows] == ["complete"] * 5
    for row in rows:
        run = folder / row["run"]
        training = read_json(run / "run.json")["training"]
        assert training["engine"] == "stacked" and training["members"] == 5
        # the trial alone gives its value within float rounding
        alone = cli("train", run / "config.yaml", "--runs-dir", project.root / "alone", "-q")
        assert alone.code == 0, alone.err
        history = rows_of(Path(alone.last_line) / "history.csv")
        assert float(history[-1]["val_loss"]) == pytest.approx(float(row["val_loss"]), rel=1e-4)


@pytest.mark.slow
def test_two_sweeps_on_two_machines_share_one_postgresql_study(
    project: Project, postgres: Postgres
) -> None:
    """Two `mlpkit sweep --storage URL --study NAME` processes (as on two machines: each its
    own sweep folder) join one study and together finish its trials."""
    project.edit_config("  epochs: 3", "  epochs: 300")  # about a second a trial
    project.edit_config("  batch_size: 8", "  batch_size: 1")
    with_sweep(
        project,
        "sweep:\n  sampler: random\n  trials: 6\n  pruner: none\n  space:\n"
        "    training.optimizer.lr: {log_uniform: [1.0e-3, 0.1]}\n"
        "    model.layers.0.units: {choice: [4, 8]}\n",
    )
    url = postgres.new_database()
    optuna.storages.RDBStorage(url).engine.dispose()  # its tables made once, before both
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "MLPKIT_PLOTS": "off"}

    def start(machine: str) -> subprocess.Popen[str]:
        command = [sys.executable, "-m", "mlpkit", "sweep", str(project.config), "-q"]
        command += ["--runs-dir", str(project.root / machine), "--storage", url]
        command += ["--study", "shared"]
        return subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    first, second = start("a"), start("b")
    outputs = [process.communicate(timeout=120) for process in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    folders = [Path(out.strip().splitlines()[-1]) for out, _ in outputs]
    mine = [
        sorted(int(p.name.removeprefix("trial-")) for p in folder.glob("trial-*"))
        for folder in folders
    ]
    assert all(mine), mine  # both machines trained trials
    assert sorted(mine[0] + mine[1]) == list(range(6))  # 6 trials, none twice
    for folder in folders:
        info = read_json(folder / "sweep.json")
        assert info["study"] == "shared" and info["status"] == "complete"
        rows = trials_of(folder)  # the whole study, as each machine sees it at its end
        assert [row["number"] for row in rows][:6] == [str(n) for n in range(6)]


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.slow
def test_a_finished_sweep_opens_in_optuna_dashboard(cli: Cli, project: Project) -> None:
    import urllib.request

    with_sweep(project, GRID)
    result = cli("sweep", project.config, "--runs-dir", project.runs, "-q")
    assert result.code == 0, result.err
    folder = Path(result.last_line)
    port = free_port()
    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    command = [str(dashboard), str(folder / "journal.log"), "--host", "127.0.0.1"]
    server = subprocess.Popen(
        [*command, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline, study = time.monotonic() + 60, None
        while study is None:
            assert time.monotonic() < deadline and server.poll() is None
            try:
                url = f"http://127.0.0.1:{port}/api/studies/0?after=0"
                with urllib.request.urlopen(url, timeout=5) as answer:
                    study = json.loads(answer.read())
            except OSError:
                time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert study["name"] == folder.name
    assert [trial["state"] for trial in study["trials"]] == ["Complete"] * 4


@pytest.mark.parametrize(("sampler", "pruner"), [("tpe", "hyperband"), ("cmaes", "median")])
def test_every_sampler_and_pruner_runs(
    cli: Cli, project: Project, sampler: str, pruner: str
) -> None:
    with_sweep(
        project,
        f"sweep:\n  sampler: {sampler}\n  pruner: {pruner}\n  trials: 3\n  space:\n"
        "    training.optimizer.lr: {log_uniform: [1.0e-3, 0.1]}\n"
        "    model.layers.0.units: {int: [2, 16], log: true}\n",
    )
    result = cli("sweep", project.config, "--runs-dir", project.runs, "-q")
    assert result.code == 0, result.err
    rows = trials_of(Path(result.last_line))
    assert len(rows) == 3 and {row["state"] for row in rows} <= {"complete", "pruned"}
    assert all(2 <= int(row["model.layers.0.units"]) <= 16 for row in rows)


def test_a_sweep_of_its_own_settings_or_too_many_workers_is_refused(
    cli: Cli, project: Project
) -> None:
    plain = project.config.read_text()
    with_sweep(project, "sweep:\n  trials: 2\n  space:\n    sweep.trials: {int: [1, 5]}\n")
    result = cli("check", project.config)
    assert result.code == 2 and "a sweep cannot search its own settings" in result.err
    project.write_config(plain)
    with_sweep(project, GRID)
    too_many = str((os.cpu_count() or 1) + 1)
    result = cli("sweep", project.config, "--runs-dir", project.runs, "--workers", too_many)
    assert result.code == 2 and result.err.startswith("Error: --workers: ")
    assert result.err.count("\n") == 1 and not project.runs.exists()
