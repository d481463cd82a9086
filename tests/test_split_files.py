"""data.val_path and data.test_path: validation and test rows from their own files."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_CONFIG, Cli, Project, stop_at_poll, tiny_csv

from mlpkit.config.load import load_config
from mlpkit.flows.evaluate import evaluate_run
from mlpkit.train.prepare import prepare

# The tiny config without a written split: the fractions are the defaults (0.8 / 0.1 / 0.1).
NO_SPLIT = TINY_CONFIG.replace("  split: {train: 0.6, val: 0.2, test: 0.2}\n", "")


@pytest.fixture
def files(project: Project) -> Project:
    """The tiny project with a test file (20 rows) and a validation file (15 rows) beside it,
    the config naming the test file only."""
    (project.root / "test.csv").write_text(tiny_csv(20, seed=1))
    (project.root / "val.csv").write_text(tiny_csv(15, seed=2))
    project.write_config(
        NO_SPLIT.replace("  path: data.csv\n", "  path: data.csv\n  test_path: test.csv\n")
    )
    return project


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_test_file_gives_the_test_rows_and_run_json_records_it(
    cli: Cli, files: Project
) -> None:
    check = cli("check", files.config)
    assert check.code == 0, check.err
    # data.csv's 50 rows: val 0.1 of them (5), train the rest (45); test: all of test.csv.
    assert check.out.startswith(
        f"ok: {files.config}: 50 rows (test: 20 rows of test.csv), split 45/5/20,"
    )
    assert check.err == ""
    run = files.train(cli)
    info = json.loads((run / "run.json").read_text())["data"]
    assert info["test_file"] == {
        "path": str(files.root / "test.csv"),
        "sha256": sha256(files.root / "test.csv"),
        "rows": 20,
    }
    assert info["val_file"] is None and (info["rows"], info["sha256"]) == (50, sha256(files.data))
    config = (run / "config.yaml").read_text()
    assert f"test_path: {files.root / 'test.csv'}" in config  # absolute, as data.path is
    with (run / "predictions.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [row["line"] for row in rows] == [str(n) for n in range(2, 22)]  # test.csv's lines
    truth = pd.read_csv(files.root / "test.csv")["y"].tolist()
    assert [float(row["y"]) for row in rows] == truth


def test_eval_scores_the_test_file_alone_and_refuses_a_changed_one(
    cli: Cli, files: Project
) -> None:
    run = files.train(cli)
    stored = json.loads((run / "metrics.json").read_text())["test"]
    files.data.unlink()  # the test file is all eval needs
    assert evaluate_run(run).scores == stored  # exactly, as metrics.json has them
    result = cli("eval", run)
    assert result.code == 0, result.err
    assert result.out.startswith(f"{run}: 20 rows of the test file {files.root / 'test.csv'}")
    (files.root / "test.csv").write_text(tiny_csv(20, seed=3))
    result = cli("eval", run)
    assert (result.code, result.out) == (2, "")
    assert result.err == (
        f"Error: {files.root / 'test.csv'}: the test file (data.test_path) changed since the run "
        "was trained; pass --data to score a new file\n"
    )


def test_a_validation_file_leaves_data_path_to_train_and_test(cli: Cli, files: Project) -> None:
    files.edit_config("  test_path: test.csv\n", "  val_path: val.csv\n")
    prepared = prepare(load_config(files.config))
    # data.csv: test 0.1 of its 50 rows (5), train the rest; val: all of val.csv.
    assert prepared.split_counts == {"train": 45, "val": 15, "test": 5}
    assert prepared.data_rows == 50
    run = files.train(cli)
    info = json.loads((run / "run.json").read_text())["data"]
    assert info["val_file"]["sha256"] == sha256(files.root / "val.csv")
    stored = json.loads((run / "metrics.json").read_text())["test"]
    assert evaluate_run(run).scores == stored  # the test split of data.csv, derived again


def test_both_files_leave_every_row_of_data_path_to_train(cli: Cli, files: Project) -> None:
    files.edit_config("  test_path: test.csv\n", "  val_path: val.csv\n  test_path: test.csv\n")
    prepared = prepare(load_config(files.config))
    assert prepared.split_counts == {"train": 50, "val": 15, "test": 20}
    check = cli("check", files.config)
    assert "50 rows (val: 15 rows of val.csv; test: 20 rows of test.csv)" in check.out


def test_a_written_fraction_of_a_part_from_a_file_is_not_used_and_said_so(
    cli: Cli, files: Project
) -> None:
    files.edit_config(
        "  test_path: test.csv\n",
        "  test_path: test.csv\n  split: {train: 0.6, val: 0.2, test: 0.2}\n",
    )
    check = cli("check", files.config)
    assert check.code == 0, check.err
    assert "split 40/10/20," in check.out  # val 0.2 of data.csv, train the rest (not 0.6)
    assert check.err == (
        f"Warning: {files.config}:6: data.split.test: 0.2 is not used: the test rows come from "
        "data.test_path; remove it\n"
        f"Warning: {files.config}:6: data.split.train: 0.6 is not used: with split files, train "
        "is the rest of data.path's rows (0.8); remove it\n"
    )
    # Fractions that fit the files say nothing; they need not add up to 1 with test's.
    files.edit_config("{train: 0.6, val: 0.2, test: 0.2}", "{train: 0.8, val: 0.2}")
    check = cli("check", files.config)
    assert (check.code, check.err) == (0, "")


def test_classification_stratifies_data_path_and_checks_the_file_labels(
    cli: Cli, files: Project
) -> None:
    files.edit_config("target: y", "target: color")
    files.edit_config("features: [a, b, color]", "features: [a, b, y]")
    files.edit_config("categorical: [color]", "categorical: []")
    files.edit_config("units: 1}", "units: 3}")
    files.edit_config("loss: mse", "loss: cross_entropy")
    assert cli("check", files.config).code == 0
    test = files.root / "test.csv"
    test.write_text(test.read_text().replace(",red,", ",purple,", 1))
    result = cli("check", files.config)
    assert (result.code, result.out) == (2, "")
    line = next(n for n, text in enumerate(test.read_text().splitlines(), 1) if "purple" in text)
    assert result.err == (
        f"Error: {files.config}:5: data.test_path: {test}: column 'color', line {line}: label "
        "'purple' is not a class of data.path (1 rows); expected one of: blue, green, red\n"
    )


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (
            "a,color,y\n1,red,2\n",
            "column 'b': column missing from the header; expected one of: a, color, y",
        ),
        (
            "a,b,color,y\n1,x,red,2\n",
            "column 'b', line 2: ",
        ),
    ],
)
def test_a_test_file_with_wrong_columns_or_cells_is_one_line_at_its_key(
    cli: Cli, files: Project, content: str, problem: str
) -> None:
    test = files.root / "test.csv"
    test.write_text(content)
    result = cli("train", files.config, "--runs-dir", files.runs)
    assert (result.code, result.out) == (2, "")
    assert len(result.err.splitlines()) == 1
    assert result.err.startswith(f"Error: {files.config}:5: data.test_path: {test}: ")
    assert problem in result.err
    assert not files.runs.exists()


def test_a_missing_test_file_says_where_a_relative_path_is_read_from(
    cli: Cli, files: Project
) -> None:
    files.edit_config("test_path: test.csv", "test_path: tests.csv")
    result = cli("check", files.config)
    assert (result.code, result.out) == (2, "")
    assert result.err == (
        f"Error: {files.config}:5: data.test_path: {files.root / 'tests.csv'}: data file not "
        f"found; data.test_path 'tests.csv' is relative to {files.root}/\n"
    )


def test_streams_and_synthetic_sources_refuse_split_files(cli: Cli, files: Project) -> None:
    result = cli("check", files.config, "--set", "data.stream=true")
    assert (result.code, result.out) == (2, "")
    assert result.err == (
        f"Error: {files.config}:5: data.test_path: is not read with data.stream: true (a "
        "streamed file cuts its own parts); remove data.test_path, or set data.stream: false to "
        "read the files whole\n"
    )
    result = cli(
        "check", files.config, "--set", "data.val_path=val.csv", "--set", "data.source={name: xor}"
    )
    assert result.code == 2
    assert "data.val_path: a synthetic source draws its own validation and test rows" in result.err
    assert "data.test_path: a synthetic source draws" in result.err


def test_a_parquet_test_file_and_a_home_path(
    cli: Cli, files: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(files.root))
    pd.read_csv(files.root / "test.csv").to_parquet(files.root / "test.parquet")
    files.edit_config("test_path: test.csv", "test_path: ~/test.parquet")
    loaded = load_config(files.config)
    assert loaded.file_path("test_path") == files.root / "test.parquet"
    run = files.train(cli)
    with (run / "predictions.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [row["row"] for row in rows] == [str(n) for n in range(1, 21)]  # Parquet: row numbers
    stored = json.loads((run / "metrics.json").read_text())["test"]
    assert evaluate_run(run).scores == stored


def test_resume_refuses_a_changed_test_file_and_export_checks_on_it(
    cli: Cli, files: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    stop_at_poll(monkeypatch, 3)
    assert cli("train", files.config, "--runs-dir", files.runs, "-q").code == 130
    monkeypatch.undo()
    (run,) = files.run_dirs()
    test = files.root / "test.csv"
    original = test.read_text()
    test.write_text(tiny_csv(20, seed=4))
    resumed = cli("train", "--resume", run)
    assert (resumed.code, resumed.out) == (2, "")
    assert resumed.err == (
        f"Error: {test}: the test file (data.test_path) changed since the run was trained; "
        "restore the original file, or train a new run\n"
    )
    test.write_text(original)
    assert cli("train", "--resume", run, "-q").code == 0
    exported = cli("export", run, "--format", "torchscript")
    assert exported.code == 0, exported.err
    assert "matches mlpkit predict on the run's 20 test rows" in exported.out
