"""Issue 14, bounded and honest: what a config costs is known before anything is allocated,
every non-finite number is divergence or a refusal, and no command writes a NaN with exit 0.

The issue's examples run through tests/bounded.py (a child process under a memory cap: one
error line, under 2 s and 600 MB); the rest run in process.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from bounded import assert_contract, run_bounded
from conftest import REPO, Cli, Project, tiny_csv
from safetensors.torch import load_file, save_file

from mlpkit import reading
from mlpkit.config.load import load_config
from mlpkit.errors import ConfigError
from mlpkit.train import budget
from mlpkit.train.prepare import prepare

# --- memory: estimated from the config, before anything is allocated ------------------------


def test_an_absurd_layer_is_exit_2_with_the_estimate_in_train(project: Project) -> None:
    # The example: today "tried to allocate 2.8 TB", an internal error.
    result = run_bounded(
        "train", project.config, "--runs-dir", project.runs, "--set",
        "model.layers.0.units=100000000000", cwd=project.root,
    )  # fmt: skip
    assert_contract(
        result, 2, "Error: --set: model.layers.0.units: training needs about ", " GB of memory",
        "this layer (dense 5 -> 100,000,000,000)", "600,000,000,000 parameters",
    )  # fmt: skip
    assert not project.runs.exists()


def test_check_refuses_the_same_layer_naming_it_in_the_file(cli: Cli, project: Project) -> None:
    project.edit_config("units: 8,", "units: 100000000000,")
    result = cli("check", project.config)
    assert result.code == 2 and result.out == ""
    (line,) = result.err.splitlines()
    assert line.startswith(f"Error: {project.config}:11: model.layers.0.units: training needs")
    assert "GB is available" in line and line.endswith("; use fewer units")


def test_a_huge_batch_of_a_wide_layer_blames_the_batch_size(cli: Cli, project: Project) -> None:
    project.edit_config("units: 8,", "units: 2000000000,")
    project.edit_config("batch_size: 8", "batch_size: 30")
    result = cli("check", project.config)
    assert result.code == 2
    assert "a training batch of 30 rows, with their gradients" in result.err
    assert result.err.rstrip().endswith("; lower training.batch_size or use fewer units")


def test_the_estimate_is_the_documented_formula(project: Project) -> None:
    project.edit_config("    - {type: dense, units: 1}", "    - {type: dropout, rate: 0.5}\n"
                        "    - {type: dense, units: 1}")  # fmt: skip
    prepared = prepare(load_config(project.config))
    estimate = budget.training_estimate(prepared)
    # 5 inputs (a, b, 3 colours) -> dense 8 relu -> dropout -> dense 1; Adam: 4 copies.
    dense0, dropout, dense1 = estimate.shares
    assert (dense0.parameters, dense0.per_row) == (5 * 8 + 8, 16)
    assert (dropout.parameters, dropout.per_row) == (0, 16)
    assert (dense1.parameters, dense1.per_row) == (9, 1)
    assert estimate.copies == ["weights", "gradients", "adam moment 1", "adam moment 2"]
    rows = 30  # evaluation takes the largest split at once (30 > 2 x batch 8)
    assert estimate.rows == rows
    data = 4 * (50 + 30) * (5 + 1)  # every row, and the epoch's shuffled training rows
    layers = 4 * ((48 + 9) * 4 + rows * (16 + 16 + 1))
    assert estimate.total == layers + data


def test_unknown_available_memory_refuses_only_absurd_sizes(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(budget, "available_memory", lambda: 0)
    cpu = torch.device("cpu")
    budget.check(prepare(load_config(project.config, ["model.layers.0.units=1000000000"])), cpu)
    big = prepare(load_config(project.config, ["model.layers.0.units=100000000000"]))
    with pytest.raises(ConfigError, match="the available memory is unknown and mlpkit starts at"):
        budget.check(big, cpu)


def test_a_named_input_branch_is_named(cli: Cli) -> None:
    result = cli(
        "check", REPO / "configs/xor.yaml", "--set", "model.inputs.x1.layers=[{type: dense, "
        "units: 1000000000000}]",
    )  # fmt: skip
    assert result.code == 2
    assert "Error: --set: model.inputs.x1.layers.0.units: training needs about" in result.err


def test_an_address_space_cap_counts_as_the_memory_available(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reading, "_meminfo_available", lambda: 64 * budget.GB)
    monkeypatch.setattr(reading, "_cgroup_headroom", lambda: None)
    monkeypatch.setattr(reading, "_address_space_headroom", lambda: 3 * budget.GB)
    assert budget.available_bytes(torch.device("cpu")) == 3 * budget.GB


def test_a_run_whose_config_asks_for_an_absurd_layer_is_refused(cli: Cli, project: Project) -> None:
    run = project.train(cli)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("units: 8", "units: 100000000000", 1))
    result = cli("eval", run)
    assert result.code == 2
    assert result.err.startswith(f"Error: {config}:")
    assert "model.layers.0.units: the run's network needs about 2,607.7 GB of memory" in result.err


# --- steps: a run that cannot end in a human time -------------------------------------------


def test_ten_billion_epochs_are_refused_with_the_step_count(project: Project) -> None:
    project.edit_config("epochs: 3", "epochs: 10000000000")
    result = run_bounded("check", project.config, cwd=project.root)
    assert_contract(
        result, 2, f"Error: {project.config}:", "training.epochs: 10,000,000,000 epochs of 4 "
        "steps (batch size 8) make 40,000,000,000 optimizer steps, over the 1,000,000,000",
        "that is 23.1 days",
    )  # fmt: skip


def test_a_synthetic_source_counts_its_iterations(cli: Cli, tmp_path: Path) -> None:
    result = cli(
        "train", REPO / "configs/xor.yaml", "--runs-dir", tmp_path, "--set",
        "training.epochs=1000001",
    )  # fmt: skip
    assert result.code == 2 and not list(tmp_path.iterdir())
    assert "1,000,001 epochs of 1,000 steps (training.iterations_per_epoch)" in result.err
    assert budget.MAX_STEPS == 10**9  # 1,000,000 x 1,000 is still allowed


# --- divergence: any non-finite loss, on both engines ---------------------------------------


def scaled_mpg(folder: Path, factor: float) -> Path:
    """configs/mpg.yaml for 2 epochs on mpg.csv with the target times `factor` (no scaling)."""
    with open(REPO / "data/mpg.csv") as source, open(folder / "mpg.csv", "w") as out:
        rows = csv.DictReader(source)
        writer = csv.DictWriter(out, fieldnames=rows.fieldnames or [], lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(row | {"mpg": repr(float(row["mpg"]) * factor)})
    text = (REPO / "configs/mpg.yaml").read_text()
    config = folder / "mpg.yaml"
    config.write_text(text.replace("../data/mpg.csv", "mpg.csv").replace("epochs: 40", "epochs: 2"))
    return config


def test_a_validation_loss_that_overflows_is_divergence(tmp_path: Path) -> None:
    # Each squared error fits float32 (the batches are single rows), their sum over the 39
    # validation rows does not: today every epoch records val_loss inf and the run completes.
    config = scaled_mpg(tmp_path, 3e17)
    result = run_bounded("train", config, "--runs-dir", tmp_path / "runs", cwd=tmp_path)
    assert_contract(
        result, 3, "Error: training: the validation loss of epoch 1 became inf: it overflowed "
        "float32; the run stopped before saving that epoch; lower training.optimizer.lr or scale "
        "the target (data.scale_target: true)",
    )  # fmt: skip
    (run,) = (tmp_path / "runs/mpg").iterdir()
    assert json.loads((run / "run.json").read_text())["status"] == "diverged"
    assert not (run / "checkpoints").exists()


def test_an_optimizer_moment_that_overflows_is_divergence(cli: Cli, tmp_path: Path) -> None:
    # The example: the per-row losses fit float32 and their float32 sum does not
    # (summed in float64, epoch 1's mean is finite and recorded); in epoch 2 a gradient's
    # square overflows Adam's second moment, which freezes that weight: divergence, not a
    # complete run with train_loss inf.
    config = scaled_mpg(tmp_path, 1e17)
    result = cli("train", config, "--runs-dir", tmp_path / "runs", "-q")
    assert result.code == 3
    assert result.err.splitlines() == [
        "Error: training: the optimizer's 'exp_avg_sq' of 4.weight became non-finite in epoch 2; "
        "the run stopped before saving that epoch; lower training.optimizer.lr or scale the "
        "target (data.scale_target: true)"
    ]
    (run,) = (tmp_path / "runs/mpg").iterdir()
    assert json.loads((run / "run.json").read_text())["status"] == "diverged"
    (checkpoint,) = (run / "checkpoints").iterdir()
    assert checkpoint.name.endswith("-000002")  # epoch 1's, before the epoch that overflowed


# --- weights and outputs that are not finite: refused ---------------------------------------


def poison(run: Path, name: str = "0.weight", value: float = math.nan) -> None:
    """Put `value` into one tensor of the run's model.safetensors (keys and shapes kept)."""
    tensors = load_file(run / "model.safetensors")
    tensors[name] = tensors[name].clone()
    tensors[name][0, 0] = value
    save_file(tensors, run / "model.safetensors")


@pytest.fixture
def nan_run(cli: Cli, project: Project) -> Path:
    run = project.train(cli)
    poison(run)
    return run


def test_eval_refuses_nan_weights_naming_the_tensor(nan_run: Path) -> None:
    result = run_bounded("eval", nan_run, cwd=nan_run.parent)
    assert_contract(
        result, 2, f"Error: {nan_run / 'model.safetensors'}: tensor '0.weight' holds 1 "
        "non-finite values (NaN or infinite); the weights are damaged; train the run again",
    )  # fmt: skip


def test_predict_and_export_refuse_nan_weights(cli: Cli, nan_run: Path, tmp_path: Path) -> None:
    new = tmp_path / "new.csv"
    new.write_text("a,b,color\n1.0,2.0,red\n")
    out = tmp_path / "out.csv"
    for args in (
        ("predict", nan_run, "--data", new, "--out", out),
        ("export", nan_run, "--format", "torchscript"),
    ):
        result = cli(*args)
        assert result.code == 2, result.err
        assert result.err.splitlines() == [
            f"Error: {nan_run / 'model.safetensors'}: tensor '0.weight' holds 1 non-finite values "
            "(NaN or infinite); the weights are damaged; train the run again"
        ]
    assert not out.exists() and not (nan_run / "model.torchscript.pt").exists()


def test_a_row_whose_output_overflows_is_named_and_nothing_written(
    cli: Cli, project: Project, tmp_path: Path
) -> None:
    run = project.train(cli)
    tensors = {name: t * 1000 for name, t in load_file(run / "model.safetensors").items()}
    save_file(tensors, run / "model.safetensors")  # finite, only steeper
    new, out = tmp_path / "new.csv", tmp_path / "out.csv"
    new.write_text("a,b,color\n1.0,2.0,red\n1e35,2.0,red\n2.0,1e35,blue\n0.5,1.0,red\n")
    result = cli("predict", run, "--data", new, "--out", out)
    assert result.code == 2 and not out.exists()
    assert result.err.splitlines() == [
        f"Error: {new}: line 3: the network's output for this row is not finite (inf), and 1 "
        "more rows; its values lie far outside the training data's; check them"
    ]
    new.write_text("a,b,color,y\n1.0,2.0,red,1\n0.5,1e35,red,2\n")
    result = cli("eval", run, "--data", new)
    assert result.code == 2 and f"Error: {new}: line 3: the network's output" in result.err


# --- a constant target ----------------------------------------------------------------------


def test_a_constant_target_is_warned_about_in_check_and_train(cli: Cli, project: Project) -> None:
    header, *lines = tiny_csv().splitlines()
    project.data.write_text("\n".join([header, *(line.rsplit(",", 1)[0] + ",5" for line in lines)]))
    warning = (
        f"Warning: {project.data}: column 'y': the target has a single value (5) in all 30 "
        "training rows: the network can only learn that value, and R2 is undefined (reported "
        "as 1 if predicted exactly, else 0); check data.target"
    )
    checked = cli("check", project.config)
    assert checked.code == 0 and checked.err.splitlines() == [warning]
    trained = cli("train", project.config, "--runs-dir", project.runs, "-q")
    assert trained.code == 0 and trained.err.splitlines() == [warning]
    metrics = json.loads((Path(trained.last_line) / "metrics.json").read_text())
    assert metrics["test"]["r2"] in (0.0, 1.0)


def test_a_varied_target_gives_no_warning(cli: Cli, project: Project) -> None:
    assert cli("check", project.config).err == ""
