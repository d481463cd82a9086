"""End-to-end: the commands as a user runs them, on the tiny project and the shipped configs."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer
import yaml
from conftest import REPO, Cli, Project

from mlpkit.cli import app
from mlpkit.config.load import load_config
from mlpkit.flows import check as check_flow
from mlpkit.flows import fit as fit_flow
from mlpkit.flows import train as train_flow
from mlpkit.flows.evaluate import evaluate_run
from mlpkit.flows.predict import predict_run

RUN_FILES = {
    "config.yaml",
    "run.json",
    "summary.txt",
    "preprocessing.json",
    "history.csv",
    "metrics.json",
    "predictions.csv",
    "model.safetensors",
    "plots",  # drawn from the files above (tests/test_plots.py)
    "checkpoints",  # the last two, kept so the run could be trained on
    ".lock",  # kept: deleting a lock file races with a process about to take it
}
REGRESSION_METRICS = {"mae", "mse", "rmse", "r2", "median_ae", "max_error"}


@pytest.mark.plots
def test_train_writes_a_complete_run(cli: Cli, project: Project) -> None:
    result = cli("train", project.config, "--runs-dir", project.runs)
    assert result.code == 0, result.err
    run = Path(result.last_line)
    assert run.parent == project.runs / "tiny"
    assert {p.name for p in run.iterdir()} == RUN_FILES  # no temporary files left behind
    assert [p.name for p in (run / "checkpoints").iterdir()] == [  # epochs 2 and 3 (steps 4, 8, 12)
        "ckpt-000000000008-000003",
        "ckpt-000000000012-000004",
    ]
    lines = result.out.splitlines()
    assert lines[1].split() == ["epoch", "train_loss", "val_loss", "val_mae", "val_r2", "time"]
    assert [line.split()[0] for line in lines[2:5]] == ["1/3", "2/3", "3/3"]
    assert lines[2].endswith("* best")  # the first epoch is always the best so far
    assert "linear_regression (test)" in result.out

    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["finished"]
    assert info["data"]["rows"] == 50 and len(info["data"]["sha256"]) == 64
    assert set(info["versions"]) == {"mlpkit", "torch", "python"}

    metrics = json.loads((run / "metrics.json").read_text())
    for part in ("train", "val", "test"):
        assert set(metrics[part]) == REGRESSION_METRICS
    assert set(metrics["baselines"]) == {"mean", "linear_regression"}
    assert set(metrics["baselines"]["mean"]) == REGRESSION_METRICS
    assert 1 <= metrics["best_epoch"] <= 3

    with open(run / "history.csv") as f:
        history = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    assert {"train_loss", "val_loss", "val_mae", "val_r2", "seconds"} <= set(history[0])

    with open(run / "predictions.csv") as f:
        predictions = list(csv.DictReader(f))
    assert len(predictions) == 10 and set(predictions[0]) == {"line", "y", "prediction"}

    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["data"]["path"] == str(project.data)
    assert resolved["training"]["optimizer"]["betas"] == [0.9, 0.999]  # defaults written out
    original = load_config(project.config).config
    expected = original.model_copy(
        update={"data": original.data.model_copy(update={"path": str(project.data)})}
    )
    assert load_config(run / "config.yaml").config == expected  # only data.path differs
    assert "Total parameters: 57" in (run / "summary.txt").read_text()


def test_quiet_prints_only_the_run_directory(cli: Cli, project: Project) -> None:
    result = cli("train", project.config, "--runs-dir", project.runs, "--quiet")
    assert result.code == 0
    assert result.out.strip().splitlines() == [str(project.run_dirs()[0])]


def test_same_seed_same_weights_different_directories(cli: Cli, project: Project) -> None:
    first, second = project.train(cli), project.train(cli)
    assert first != second
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    assert (first / "metrics.json").read_text() == (second / "metrics.json").read_text()
    other = project.train(cli, "--set", "seed=1")
    assert (other / "model.safetensors").read_bytes() != (first / "model.safetensors").read_bytes()


def test_eval_reproduces_metrics_json(cli: Cli, project: Project) -> None:
    run = project.train(cli)
    stored = json.loads((run / "metrics.json").read_text())["test"]
    assert evaluate_run(run).scores == stored  # exactly, not approximately
    result = cli("eval", run)
    assert result.code == 0
    rows = [line.split() for line in result.out.splitlines() if line.startswith("│")]
    assert [row[-2] for row in rows] == ["yes"] * len(REGRESSION_METRICS)


def test_eval_on_another_file_scores_every_row(cli: Cli, project: Project) -> None:
    run = project.train(cli)
    other = project.root / "other.csv"
    other.write_text(project.data.read_text())
    result = evaluate_run(run, other)
    assert result.rows == 50 and result.source == str(other)
    assert set(result.scores) == REGRESSION_METRICS


def test_summary_of_config_and_of_run_agree(cli: Cli, project: Project) -> None:
    run = project.train(cli)
    from_config, from_run = cli("summary", project.config), cli("summary", run)
    assert from_config.code == from_run.code == 0
    assert from_config.out == from_run.out
    assert "Total parameters: 57" in from_config.out  # (5 inputs * 8 + 8) + (8 + 1)


def test_check_runs_every_check_without_training(cli: Cli, project: Project) -> None:
    result = cli("check", project.config)
    assert result.code == 0
    assert (
        result.out.strip()
        == f"ok: {project.config}: 50 rows, split 30/10/10, 5 inputs, 57 parameters"
    )
    assert not project.runs.exists()


BAD_INPUTS = {
    "misspelt key": (
        ("  features:", "  featurs:"),
        None,
        ":6: data.featurs: unknown key; did you mean 'features'?",
    ),
    "unknown activation": (
        ("activation: relu", "activation: rleu"),
        None,
        ":11: model.layers.0.activation: unknown activation 'rleu'; did you mean 'relu'?",
    ),
    "missing column": (
        None,
        ("a,b,color,y", "a,b,colour,y"),
        "data.csv: column 'color': column missing from the header; did you mean 'colour'?",
    ),
    "non-numeric cell": (
        None,
        ("\n", "\n1.0,oops,red,2.0\n"),
        "data.csv: column 'b', line 2: non-numeric value 'oops'; expected a number",
    ),
    "output cannot reach target": (
        ("units: 1}", "units: 1, activation: sigmoid}"),
        None,
        "model.layers.1.activation: 'sigmoid' outputs lie in [0, 1]",
    ),
    "batch larger than train split": (
        ("batch_size: 8", "batch_size: 64"),
        None,
        "training.batch_size: 64 is larger than the 30 training rows",
    ),
}


@pytest.mark.parametrize("command", ["train", "check"])
@pytest.mark.parametrize("case", BAD_INPUTS, ids=str)
def test_bad_input_one_line_exit_2_nothing_written(
    cli: Cli, project: Project, command: str, case: str
) -> None:
    config_edit, data_edit, expected = BAD_INPUTS[case]
    if config_edit:
        project.edit_config(*config_edit)
    if data_edit:
        project.data.write_text(project.data.read_text().replace(*data_edit, 1))
    args: list[str | Path] = ["--runs-dir", project.runs] if command == "train" else []
    result = cli(command, project.config, *args)
    assert result.code == 2
    assert result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert expected in lines[0]
    assert not project.runs.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_fails_before_reading_data(cli: Cli, project: Project) -> None:
    project.data.unlink()  # proves the data is never read
    result = cli("train", project.config, "--runs-dir", project.runs, "--device", "cuda")
    assert (result.code, result.err) == (
        2,
        "Error: --device: CUDA is not available on this machine; use --device cpu\n",
    )
    result = cli("check", project.config, "--set", "training.device=cuda")
    assert result.err == (
        "Error: --set: training.device: CUDA is not available on this machine; use cpu or auto\n"
    )


def test_eval_refuses_what_is_not_a_complete_run(cli: Cli, project: Project) -> None:
    assert cli("eval", project.root).err == (
        f"Error: {project.root}: not a run directory (no run.json); "
        "pass a folder that mlpkit train printed\n"
    )
    run = project.train(cli)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(info | {"status": "running"}))
    result = cli("eval", run)
    assert result.code == 2 and "the run is running, not complete" in result.err
    (run / "run.json").write_text("{not json")
    assert "malformed JSON" in cli("eval", run).err
    (run / "run.json").write_text(json.dumps(info))
    (run / "model.safetensors").write_bytes(b"\x00" * 16)
    result = cli("eval", run)
    assert result.code == 2 and "model.safetensors: unusable weights" in result.err


def test_runs_dir_that_is_a_file_is_a_usage_error(cli: Cli, project: Project) -> None:
    blocker = project.root / "blocker"
    blocker.write_text("")
    result = cli("train", project.config, "--runs-dir", blocker / "runs")
    assert result.code == 2
    assert result.err == (
        f"Error: {blocker / 'runs' / 'tiny'}: cannot create it: Not a directory; "
        "every folder on the path must exist as a folder, or not exist at all for --runs-dir\n"
    )


def test_without_validation_rows_best_epoch_follows_train_loss(cli: Cli, project: Project) -> None:
    run = project.train(cli, "--set", "data.split={train: 0.8, val: 0, test: 0.2}")
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"train", "test", "baselines", "best_epoch"}
    with open(run / "history.csv") as f:
        assert set(next(csv.DictReader(f))) == {"epoch", "train_loss", "lr", "seconds"}


def test_damaged_runs_are_refused_in_one_line(cli: Cli, project: Project) -> None:
    run = project.train(cli)
    metrics, preprocessing = run / "metrics.json", run / "preprocessing.json"
    good_metrics, good_preprocessing = metrics.read_text(), preprocessing.read_text()
    for damage in ("null", '{"test": 5}', '{"test": {"mae": "x"}}'):
        metrics.write_text(damage)
        result = cli("eval", run)
        assert result.code == 2 and result.err.startswith(
            f"Error: {metrics}: not a valid metrics.json"
        )
    metrics.write_text(good_metrics)
    renamed = json.loads(good_preprocessing)
    renamed["features"][0]["name"] = "zzz"
    preprocessing.write_text(json.dumps(renamed))
    for command in ("eval", "summary"):
        result = cli(command, run)
        assert result.code == 2
        assert "preprocessing.json does not match config.yaml" in result.err
    retargeted = json.loads(good_preprocessing)
    retargeted["target"]["name"] = "a"
    preprocessing.write_text(json.dumps(retargeted))
    assert "does not match" in cli("eval", run).err


def test_paths_with_brackets_are_text_not_markup(cli: Cli, project: Project) -> None:
    runs_dir = project.root / "x[bold]"
    run = project.train(cli, runs=runs_dir)
    assert run.parent.parent == runs_dir
    assert cli("eval", run).out.startswith(f"{run}: 10 rows of the test split")


def test_summary_of_a_run_refuses_set(cli: Cli, project: Project) -> None:
    run = project.train(cli)
    result = cli("summary", run, "--set", "training.epochs=1")
    assert (result.code, result.err) == (
        2,
        f"Error: --set: applies to a config file, not a run directory; drop --set to summarize {run}\n",
    )


def test_debug_works_after_the_command(
    cli: Cli, project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(check_flow, "check", broken)
    result = cli("check", project.config, "--debug")
    assert result.code == 1
    assert "Traceback" in result.err and "RuntimeError: boom" in result.err
    Path(result.err.rsplit(" ", 1)[-1].strip()).unlink()


def test_predict_matches_columns_by_name_and_needs_no_target(cli: Cli, project: Project) -> None:
    run = project.train(cli)
    new = project.root / "new.csv"
    new.write_text("color,id,b,a\nred,7,2.0,1.0\npurple,8,2.0,1.0\n")  # reordered, extra id
    result = cli("predict", run, "--data", new)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0] == "line,prediction" and [row.split(",")[0] for row in lines[1:]] == ["2", "3"]
    reference = predict_run(run, new)
    assert [float(row.split(",")[1]) for row in lines[1:]] == list(reference.columns["prediction"])
    # an unseen category ("purple") encodes as all zeros: a different prediction from red's
    assert reference.columns["prediction"][0] != reference.columns["prediction"][1]


def test_predict_refuses_missing_columns_and_overwrites_only_with_force(
    cli: Cli, project: Project
) -> None:
    run = project.train(cli)
    new, out = project.root / "new.csv", project.root / "preds.csv"
    new.write_text("a,c\n1,2\n")
    result = cli("predict", run, "--data", new)
    assert (result.code, result.err) == (
        2,
        f"Error: {new}: 2 columns missing from the header: 'b', 'color'\n",
    )
    new.write_text("a,b,color\n1,2,red\n")
    out.write_text("keep me")
    result = cli("predict", run, "--data", new, "--out", out)
    assert (result.code, result.err) == (
        2,
        f"Error: {out}: already exists; pass --force to overwrite\n",
    )
    assert out.read_text() == "keep me"
    assert cli("predict", run, "--data", new, "--out", out, "--force").code == 0
    assert out.read_text().startswith("line,prediction\n2,")
    missing_folder = project.root / "nope" / "preds.csv"
    result = cli("predict", run, "--data", new, "--out", missing_folder)
    assert result.code == 2 and "cannot create it: No such file or directory" in result.err
    assert cli("predict", project.root, "--data", new).code == 2  # not a run


def test_divergence_exits_3_and_marks_the_run(cli: Cli, project: Project) -> None:
    result = cli(
        "train",
        project.config,
        "--runs-dir",
        project.runs,
        "--set",
        "training.optimizer={name: sgd, lr: 1e4}",
        "--set",
        "training.epochs=20",
    )
    assert result.code == 3
    assert "training loss became" in result.err
    (run,) = project.run_dirs()
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "diverged" and "training loss became" in info["error"]
    assert "metrics.json" not in {p.name for p in run.iterdir()}


def test_ctrl_c_marks_the_run_interrupted_exit_130(
    cli: Cli, project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_flow, "fit", interrupted)
    result = cli("train", project.config, "--runs-dir", project.runs, "-q")
    (run,) = project.run_dirs()
    assert result.code == 130
    assert result.err == (
        f"Error: {run}: training stopped by SIGINT, at once; the last checkpoint was kept, "
        f"and the run marked interrupted; resume with: mlpkit train --resume {run}\n"
    )
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    assert cli("eval", run).code == 2  # never treated as complete


def test_internal_error_is_one_line_and_a_report(
    cli: Cli, project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(train_flow, "train", broken)
    result = cli("train", project.config)
    assert result.code == 1
    (line,) = result.err.splitlines()
    assert line.startswith(
        "Error: internal error (RuntimeError); this is a bug; the full report is in "
    )
    report = Path(line.rsplit(" ", 1)[-1])
    assert "RuntimeError: boom" in report.read_text()
    report.unlink()


def test_usage_mistakes_get_one_line_and_a_suggestion(cli: Cli) -> None:
    result = cli("trian", "x.yaml")
    assert result.code == 2
    assert result.err.splitlines() == [
        "Error: mlpkit: No such command 'trian'. Did you mean 'train'?; see mlpkit --help"
    ]
    assert (
        cli("train").err
        == "Error: mlpkit train: needs a CONFIG file, or --resume RUN; see mlpkit train --help\n"
    )
    result = cli("train", "x.yaml", "--quite")
    assert result.code == 2 and "No such option: --quite" in result.err and "--quiet" in result.err


def test_every_command_has_help_with_an_example(cli: Cli) -> None:
    top = cli("--help")
    assert top.code == 0
    commands = typer.main.get_group(app).commands
    assert len(commands) == 11
    for command in commands:
        assert command in top.out
        assert "Example: mlpkit " + command in cli(command, "--help").out


def test_console_script_errors_have_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("name: x\nnope: 1\n")
    done = subprocess.run(
        [sys.executable, "-m", "mlpkit", "check", str(tmp_path / "bad.yaml")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"Error: {tmp_path / 'bad.yaml'}:2: nope: unknown key; "
        "expected one of: data, model, name, seed, sweep, tracking, training",
        *(
            f"Error: {tmp_path / 'bad.yaml'}: {section}: missing required key; "
            f"add a '{section}:' section, as in configs/mpg.yaml"
            for section in ("data", "model", "training")
        ),
    ]


def test_mpg_reaches_the_write_up(cli: Cli, tmp_path: Path) -> None:
    result = cli("train", REPO / "configs" / "mpg.yaml", "--runs-dir", tmp_path, "--quiet")
    assert result.code == 0, result.err
    run = Path(result.last_line)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["r2"] >= 0.85 and metrics["test"]["mae"] <= 2.4
    assert metrics["test"]["r2"] > metrics["baselines"]["linear_regression"]["r2"]
    assert metrics["baselines"]["mean"]["r2"] < 0.05

    # predict on the run's test rows, target column dropped, reproduces predictions.csv
    with open(run / "predictions.csv") as f:
        stored = list(csv.DictReader(f))
    with open(REPO / "data" / "mpg.csv") as f:
        table = list(csv.reader(f))
    new = tmp_path / "new.csv"
    with open(new, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(table[0][1:])  # every column but mpg
        writer.writerows(table[int(row["line"]) - 1][1:] for row in stored)
    result = cli("predict", run, "--data", new)
    assert result.code == 0, result.err
    predicted = list(csv.DictReader(result.out.splitlines()))
    assert [p["prediction"] for p in predicted] == [row["prediction"] for row in stored]


def test_mpg_tiny_learns_with_a_scaled_target(cli: Cli, tmp_path: Path) -> None:
    result = cli("train", REPO / "configs" / "mpg-tiny.yaml", "--runs-dir", tmp_path, "--quiet")
    assert result.code == 0, result.err
    metrics = json.loads((Path(result.last_line) / "metrics.json").read_text())
    assert metrics["test"]["r2"] > 0.59  # the write-up's figure for this model


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_run_matches_the_cpu_run_closely(cli: Cli, project: Project) -> None:
    cpu = project.train(cli, "--device", "cpu")
    cuda = project.train(cli, "--device", "cuda")
    assert json.loads((cuda / "run.json").read_text())["device"].startswith("cuda")
    cpu_metrics = json.loads((cpu / "metrics.json").read_text())["test"]
    cuda_metrics = json.loads((cuda / "metrics.json").read_text())["test"]
    for name, value in cpu_metrics.items():
        assert cuda_metrics[name] == pytest.approx(value, rel=1e-3, abs=1e-4), name
    # A CUDA-trained run evaluates on the CPU too (weights are saved from the CPU side).
    assert set(evaluate_run(cuda, device_name="cpu").scores) == REGRESSION_METRICS
