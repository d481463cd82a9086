"""Checkpoints, resume, stop requests, divergence, early stopping and the run listing, in process.

The promise under test: an interrupted run resumed with `mlpkit train --resume` ends with the
very bytes of model.safetensors an uninterrupted run writes, with one history row per epoch.
(tests/test_signals.py does the same with real signals and kill -9 in subprocesses.)
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import pickle
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import Cli, Project, stop_at_poll
from safetensors.torch import load_file, save_file

from mlpkit.config.schema import DenseLayer, Layer
from mlpkit.errors import DivergedError
from mlpkit.rundir import checkpoints, lock
from mlpkit.train import tasks
from mlpkit.train.loop import Hooks, Tensors, fit
from mlpkit.train.model import build_model

EPOCHS = 4  # the tiny config's 30 training rows in batches of 8: 4 steps an epoch, 16 in all


@pytest.fixture
def long_project(project: Project) -> Project:
    project.edit_config("epochs: 3", f"epochs: {EPOCHS}")
    return project


def weights_of(run: Path) -> str:
    return hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()


def epochs_in_history(run: Path) -> list[int]:
    with open(run / "history.csv") as rows:
        return [int(row["epoch"]) for row in csv.DictReader(rows)]


def status_of(run: Path) -> str:
    return str(json.loads((run / "run.json").read_text())["status"])


def reference_run(cli: Cli, project: Project) -> Path:
    """The uninterrupted run every resumed one must equal, in its own runs folder."""
    return project.train(cli, runs=project.root / "reference")


@pytest.mark.parametrize(
    ("poll", "number", "code"),
    [(3, signal.SIGINT, 130), (5, signal.SIGTERM, 143), (11, signal.SIGINT, 130)],
    ids=["mid-epoch-1-sigint", "epoch-end-sigterm", "mid-epoch-3-sigint"],
)
def test_stopped_then_resumed_equals_uninterrupted(
    cli: Cli,
    long_project: Project,
    monkeypatch: pytest.MonkeyPatch,
    poll: int,
    number: int,
    code: int,
) -> None:
    reference = reference_run(cli, long_project)
    stop_at_poll(monkeypatch, poll, number)
    stopped = cli("train", long_project.config, "--runs-dir", long_project.runs, "-q")
    (run,) = long_project.run_dirs()
    assert stopped.code == code
    name = signal.Signals(number).name
    assert stopped.err == (
        f"Error: {run}: training stopped by {name}, a checkpoint was saved, and the run marked "
        f"interrupted; resume with: mlpkit train --resume {run}\n"
    )
    assert status_of(run) == "interrupted"
    assert not (run / "model.safetensors").exists()  # nothing that looks finished
    monkeypatch.undo()
    resumed = cli("train", "--resume", run)
    assert resumed.code == 0, resumed.err
    assert "resuming at epoch" in resumed.out
    assert Path(resumed.last_line) == run
    assert weights_of(run) == weights_of(reference)
    assert epochs_in_history(run) == list(range(1, EPOCHS + 1))
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and len(info["resumed"]) == 1
    ours, theirs = (json.loads((r / "metrics.json").read_text()) for r in (run, reference))
    assert ours == theirs


def test_resume_with_periodic_checkpoints_and_dropout(
    cli: Cli, long_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dropout draws from torch's global generator: its state travels in the checkpoint."""
    long_project.edit_config(
        "- {type: dense, units: 1}", "- {type: dropout, rate: 0.3}\n    - {type: dense, units: 1}"
    )
    long_project.edit_config("loss: mse", "loss: mse\n  checkpoint_every_steps: 3")
    reference = reference_run(cli, long_project)
    stop_at_poll(monkeypatch, 9, signal.SIGTERM)
    assert cli("train", long_project.config, "--runs-dir", long_project.runs, "-q").code == 143
    monkeypatch.undo()
    (run,) = long_project.run_dirs()
    assert cli("train", long_project.config, "--resume", run, "-q").code == 0
    assert weights_of(run) == weights_of(reference)


def test_checkpoints_are_whole_two_kept_and_verified(cli: Cli, long_project: Project) -> None:
    run = long_project.train(cli)
    folders = sorted((run / "checkpoints").iterdir())
    assert [f.name for f in folders] == ["ckpt-000000000012-000004", "ckpt-000000000016-000005"]
    manifest = json.loads((folders[-1] / "manifest.json").read_text())
    assert manifest["format"] == "mlpkit.checkpoint/1" and manifest["epoch"] == EPOCHS + 1
    for name, expected in manifest["files"].items():
        data = (folders[-1] / name).read_bytes()
        assert expected == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    checkpoint = checkpoints.read(folders[-1])
    assert [r["epoch"] for r in checkpoint.position.history] == list(range(1, EPOCHS + 1))


def interrupted_run(
    cli: Cli, project: Project, monkeypatch: pytest.MonkeyPatch, poll: int = 9
) -> Path:
    stop_at_poll(monkeypatch, poll, signal.SIGINT)
    assert cli("train", project.config, "--runs-dir", project.runs, "-q").code == 130
    monkeypatch.undo()
    (run,) = project.run_dirs()
    return run


def test_damaged_newest_checkpoint_falls_back_to_the_previous(
    cli: Cli, long_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = reference_run(cli, long_project)
    run = interrupted_run(cli, long_project, monkeypatch)
    newest = sorted((run / "checkpoints").glob("ckpt-*"))[-1]
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    resumed = cli("train", "--resume", run, "-q")
    assert resumed.code == 0, resumed.err
    assert resumed.err == (
        f"Warning: skipped {weights}: damaged: its size or sha256 differs from manifest.json\n"
    )
    assert weights_of(run) == weights_of(reference)


def test_no_usable_checkpoint_is_one_line_per_checkpoint(
    cli: Cli, long_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = interrupted_run(cli, long_project, monkeypatch)
    for folder in (run / "checkpoints").glob("ckpt-*"):
        (folder / "manifest.json").write_text("{")
    result = cli("train", "--resume", run)
    assert result.code == 2
    lines = result.err.splitlines()
    assert len(lines) == 2 and all("manifest.json: unreadable" in line for line in lines)
    assert status_of(run) == "interrupted"  # refused: nothing changed


class Canary:
    """A pickle that creates a file when unpickled: what a hostile state.pt would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[[Path], None], tuple[Path]]:
        return (Path.touch, (self.path,))


@pytest.mark.parametrize("force_unsafe", [False, True], ids=["default", "force-no-weights-only"])
def test_pickle_payload_in_state_never_runs(
    cli: Cli, long_project: Project, monkeypatch: pytest.MonkeyPatch, force_unsafe: bool
) -> None:
    run = interrupted_run(cli, long_project, monkeypatch)
    canary = long_project.root / "canary"
    newest = sorted((run / "checkpoints").glob("ckpt-*"))[-1]
    state = newest / "state.pt"
    torch.save({"optimizer": Canary(canary)}, state)  # a torch file with a code-running pickle
    manifest = json.loads((newest / "manifest.json").read_text())
    data = state.read_bytes()  # the attacker also fixes the hash in the manifest
    manifest["files"]["state.pt"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (newest / "manifest.json").write_text(json.dumps(manifest))
    for folder in (run / "checkpoints").glob("ckpt-*"):
        if folder != newest:
            (folder / "state.pt").write_bytes(pickle.dumps(Canary(canary)))  # a plain pickle
    if force_unsafe:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    result = cli("train", "--resume", run)
    assert not canary.exists()
    assert result.code == 2
    assert f"{state}: refused to load: Weights only load failed" in result.err
    assert "Traceback" not in result.err


def test_resume_refuses_a_changed_config_naming_fields(
    cli: Cli, long_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = interrupted_run(cli, long_project, monkeypatch)
    long_project.edit_config("lr: 1e-2", "lr: 2e-2")
    changed = cli("train", long_project.config, "--resume", run)
    assert changed.code == 2
    assert changed.err == (
        f"Error: {long_project.config}: differs from the config the run was trained with in "
        "training.optimizer.lr; resume with the run's own config, or train a new run\n"
    )
    overridden = cli("train", "--resume", run, "--set", "training.epochs=9", "--set", "seed=3")
    assert "trained with in seed, training.epochs;" in overridden.err
    edited = run / "config.yaml"
    edited.write_text(edited.read_text().replace("batch_size: 8", "batch_size: 4"))
    assert "in training.batch_size;" in cli("train", "--resume", run).err
    assert status_of(run) == "interrupted"


def test_resume_refuses_a_changed_data_file(
    cli: Cli, long_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = interrupted_run(cli, long_project, monkeypatch)
    long_project.data.write_text(long_project.data.read_text() + "0.1,0.2,red,0.3\n")
    result = cli("train", "--resume", run)
    assert result.code == 2
    assert result.err.startswith(f"Error: {long_project.data}: the data file changed since")


def test_resume_refuses_complete_and_diverged_runs(cli: Cli, long_project: Project) -> None:
    run = long_project.train(cli)
    assert cli("train", "--resume", run).err == (
        f"Error: {run}: the run is complete; nothing to resume\n"
    )
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(info | {"status": "diverged"}))
    assert "cannot be resumed: lower training.optimizer.lr" in cli("train", "--resume", run).err


def test_a_locked_run_is_refused_naming_the_holder(
    cli: Cli, long_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = interrupted_run(cli, long_project, monkeypatch)
    with lock.hold(run):
        result = cli("train", "--resume", run)
        listed = cli("runs", long_project.runs)
    assert result.code == 2
    assert f"is locked by process {os.getpid()} on " in result.err
    assert "wait for that process to finish" in result.err
    assert "running" not in listed.out and "interrupted" in listed.out  # run.json says so
    assert cli("train", "--resume", run, "-q").code == 0  # released


def test_leftover_partial_files_are_ignored_and_cleaned(
    cli: Cli, long_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = reference_run(cli, long_project)
    run = interrupted_run(cli, long_project, monkeypatch)
    partial = run / "checkpoints" / ".partial-deadbeef"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    (run / ".metrics.json.1234abcd.tmp").write_text("{")
    assert cli("train", "--resume", run, "-q").code == 0
    assert not partial.exists() and not list(run.glob(".*.tmp"))
    assert weights_of(run) == weights_of(reference)


def test_incomplete_runs_are_refused_by_eval_and_predict_with_the_resume_command(
    cli: Cli, long_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = interrupted_run(cli, long_project, monkeypatch)
    expected = (
        f"Error: {run}: the run is interrupted, not complete; "
        f"resume it: mlpkit train --resume {run}\n"
    )
    assert cli("eval", run).err == expected
    assert cli("predict", run, "--data", long_project.data).err == expected


# --- divergence -----------------------------------------------------------------------------


class NanAtBatch(torch.nn.Module):
    """MSE, except that batch `at` (1-based, counted over the whole run) gives NaN."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = torch.nn.functional.mse_loss(outputs, targets)
        return loss * float("nan") if self.calls == self.at else loss


def test_a_nan_loss_stops_in_its_batch_before_the_update() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=g)
    rows = Tensors(x, x.sum(dim=1, keepdim=True))
    layers: list[Layer] = [
        DenseLayer(type="dense", units=4, activation="relu"),
        DenseLayer(type="dense", units=1),
    ]
    model = build_model(layers, 3, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss = NanAtBatch(13)  # 10 batches an epoch: the 13th is epoch 2's third
    saved: list[int] = []
    hooks = Hooks(save=lambda progress: saved.append(progress.steps))
    with pytest.raises(DivergedError, match="in epoch 2, batch 3; that batch was not applied"):
        fit(
            model,
            loss,
            optimizer,
            rows,
            None,
            epochs=3,
            batch_size=4,
            shuffle=True,
            seed=0,
            hooks=hooks,
        )
    assert loss.calls == 13 and saved == [10]  # the checkpoint of epoch 1 is the last one
    # A NaN loss that reached Adam would make every weight NaN; none is.
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert int(optimizer.state_dict()["state"][0]["step"]) == 12


def test_divergence_exits_3_keeps_the_last_good_checkpoint(
    cli: Cli, long_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_loss = tasks.Regression.loss

    def nan_in_batch_7(self: tasks.Regression, device: torch.device) -> torch.nn.Module | None:
        return NanAtBatch(7).to(device) if real_loss(self, device) is not None else None

    monkeypatch.setattr(tasks.Regression, "loss", nan_in_batch_7)
    result = cli("train", long_project.config, "--runs-dir", long_project.runs, "-q")
    (run,) = long_project.run_dirs()
    assert result.code == 3
    # Calls 1-4 train epoch 1 and call 5 scores its validation rows: call 7 is epoch 2's 2nd batch.
    assert "the training loss became nan in epoch 2, batch 2; that batch was not applied" in (
        result.err
    )
    info = json.loads((run / "run.json").read_text())  # strict JSON, status diverged
    assert info["status"] == "diverged" and "batch 2" in info["error"]
    (kept,) = (run / "checkpoints").glob("ckpt-*")  # after epoch 1: the last good one
    assert checkpoints.read(kept).position.epoch == 2
    for name in ("config.yaml", "summary.txt", "preprocessing.json"):
        assert (run / name).stat().st_size > 0
    assert not (run / "metrics.json").exists()


# --- early stopping -------------------------------------------------------------------------


def test_early_stopping_stops_restores_the_best_and_records_it(cli: Cli, project: Project) -> None:
    project.edit_config("epochs: 3", "epochs: 200")
    project.edit_config(
        "loss: mse",
        "loss: mse\n  early_stopping: {monitor: val_r2, patience: 3, min_delta: 0.001}",
    )
    run = project.train(cli)
    metrics = json.loads((run / "metrics.json").read_text())
    with open(run / "history.csv") as rows:
        history = list(csv.DictReader(rows))
    stopping = metrics["early_stopping"]
    assert stopping["stopped_epoch"] == len(history) < 200  # it stopped early
    r2 = [float(row["val_r2"]) for row in history]
    best = stopping["best_epoch"]
    assert metrics["best_epoch"] == best
    # No later epoch beat the best by more than min_delta, and patience 3 ran out after it.
    assert max(r2[best:]) <= r2[best - 1] + 0.001
    assert len(history) == best + 3
    assert stopping["restored_best"] is True
    # The final weights are the best epoch's: their validation R2 is the one recorded then.
    assert metrics["val"]["r2"] == pytest.approx(r2[best - 1], abs=1e-6)


def test_early_stopping_needs_a_metric_computed_each_epoch(cli: Cli, project: Project) -> None:
    project.edit_config("loss: mse", "loss: mse\n  early_stopping: {monitor: val_r3}")
    result = cli("check", project.config)
    assert result.code == 2
    assert "training.early_stopping.monitor: monitor 'val_r3' is not computed each epoch; " in (
        result.err
    )
    assert "did you mean 'val_r2'?" in result.err
    project.edit_config("val: 0.2, test: 0.2", "val: 0.0, test: 0.4")
    project.edit_config("monitor: val_r3", "monitor: val_loss")
    assert "needs validation rows but data.split.val is 0" in cli("check", project.config).err


# --- mlpkit runs ----------------------------------------------------------------------------


def test_runs_lists_statuses_and_survives_junk(
    cli: Cli, long_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    interrupted = interrupted_run(cli, long_project, monkeypatch)
    complete = long_project.train(cli)
    dead = long_project.runs / "tiny" / "dead"  # run.json says running; nobody holds the lock
    dead.mkdir()
    info = json.loads((complete / "run.json").read_text())
    (dead / "run.json").write_text(json.dumps(info | {"status": "running"}))
    junk = long_project.runs / "junk" / "a"
    junk.mkdir(parents=True)
    (junk / "run.json").write_bytes(b"\xff\x00")
    (long_project.runs / "stray.txt").write_text("not a run")
    result = cli("runs", long_project.runs)
    assert result.code == 0, result.err
    lines = {line.split()[0]: line for line in result.out.splitlines()[1:]}
    assert "complete" in lines[str(complete.relative_to(long_project.runs))]
    assert "r2 " in lines[str(complete.relative_to(long_project.runs))]
    assert "interrupted  1/4" in lines[str(interrupted.relative_to(long_project.runs))]
    assert "interrupted" in lines["tiny/dead"] and "process died" in lines["tiny/dead"]
    assert "unreadable" in lines["junk/a"]
    assert cli("runs", long_project.root / "missing").code == 2


def _rehash(folder: Path, name: str) -> None:
    """Make manifest.json agree with a file an attacker replaced."""
    manifest = json.loads((folder / "manifest.json").read_text())
    data = (folder / name).read_bytes()
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _files_not_a_mapping(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps(manifest | {"files": []}))


def _files_outside(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["../../run.json"] = {"sha256": "0", "bytes": 1}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _progress_of_wrong_types(folder: Path) -> None:
    state = torch.load(folder / "state.pt", weights_only=True)
    state["progress"]["epoch"] = "3"
    torch.save(state, folder / "state.pt")
    _rehash(folder, "state.pt")


def _losses_not_a_tensor(folder: Path) -> None:
    state = torch.load(folder / "state.pt", weights_only=True)
    state["progress"]["losses"] = [1.0]
    torch.save(state, folder / "state.pt")
    _rehash(folder, "state.pt")


def _deeply_nested_manifest(folder: Path) -> None:
    (folder / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)


@pytest.mark.parametrize(
    "damage",
    [
        _files_not_a_mapping,
        _files_outside,
        _progress_of_wrong_types,
        _losses_not_a_tensor,
        _deeply_nested_manifest,
    ],
)
def test_hostile_newest_checkpoint_is_skipped_in_one_line(
    cli: Cli,
    long_project: Project,
    monkeypatch: pytest.MonkeyPatch,
    damage: Callable[[Path], None],
) -> None:
    reference = reference_run(cli, long_project)
    run = interrupted_run(cli, long_project, monkeypatch)
    damage(sorted((run / "checkpoints").glob("ckpt-*"))[-1])
    resumed = cli("train", "--resume", run, "-q")
    assert resumed.code == 0, resumed.err
    (warning,) = resumed.err.splitlines()
    assert warning.startswith("Warning: skipped ")
    assert weights_of(run) == weights_of(reference)


def nan_checkpoint(folder: Path, part: str) -> None:
    """Put a NaN into the checkpoint's weights or Adam moments and fix the manifest's hash, as
    altered (or mis-written) state would look: whole files, the right keys and shapes."""
    if part == "model.safetensors":
        tensors = load_file(folder / part)
        tensors["0.weight"][0, 0] = math.nan
        save_file(tensors, folder / part)
    else:
        state = torch.load(folder / part, weights_only=True)
        state["optimizer"]["state"][0]["exp_avg_sq"][0, 0] = math.inf
        torch.save(state, folder / part)
    manifest = json.loads((folder / "manifest.json").read_text())
    data = (folder / part).read_bytes()
    manifest["files"][part] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_a_checkpoint_with_non_finite_weights_is_passed_over(
    cli: Cli, long_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = reference_run(cli, long_project)
    run = interrupted_run(cli, long_project, monkeypatch)
    newest = sorted((run / "checkpoints").glob("ckpt-*"))[-1]
    nan_checkpoint(newest, "model.safetensors")
    resumed = cli("train", "--resume", run, "-q")
    assert resumed.code == 0, resumed.err
    assert resumed.err == (
        f"Warning: skipped {newest}: damaged: model.safetensors tensor '0.weight' holds 1 "
        "non-finite values (NaN or infinite)\n"
    )
    assert weights_of(run) == weights_of(reference)


def test_no_finite_checkpoint_left_is_exit_2_naming_the_tensors(
    cli: Cli, long_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = interrupted_run(cli, long_project, monkeypatch)
    folders = sorted((run / "checkpoints").glob("ckpt-*"))
    nan_checkpoint(folders[0], "model.safetensors")
    nan_checkpoint(folders[1], "state.pt")
    result = cli("train", "--resume", run)
    assert result.code == 2
    assert result.err.splitlines() == [
        f"Error: {folders[1]}: damaged: state.pt: optimizer state 'exp_avg_sq' of parameter 0 "
        "holds 1 non-finite values (NaN or infinite)",
        f"Error: {folders[0]}: damaged: model.safetensors tensor '0.weight' holds 1 non-finite "
        "values (NaN or infinite)",
    ]
    assert status_of(run) == "interrupted"  # refused: nothing changed
