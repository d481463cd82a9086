"""Learning-rate schedules: the rate of every epoch against its formula, history.csv's lr,
resume in the middle of a schedule, both engines, and the config's mistakes."""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import Cli, Project, stop_at_poll
from pydantic import TypeAdapter

from mlpkit.config.schema import Scheduler
from mlpkit.train.schedules import Schedule

EPOCHS = 6
LR = 0.01


def rates(
    settings: dict[str, object], epochs: int = EPOCHS, monitored: list[float] | None = None
) -> list[float]:
    """The learning rate each epoch trains at, stepping the schedule as fit does."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    schedule = Schedule(TypeAdapter(Scheduler).validate_python(settings), optimizer, epochs)
    seen = []
    for epoch in range(epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        value = monitored[epoch] if monitored else 0.0
        schedule.step({"epoch": epoch + 1, "train_loss": value, "val_loss": value})
    return seen


def test_step_and_exponential_follow_their_formulas() -> None:
    step = rates({"name": "step", "step_epochs": 2, "gamma": 0.5})
    assert step == pytest.approx([LR * 0.5 ** (e // 2) for e in range(EPOCHS)])
    exponential = rates({"name": "exponential", "gamma": 0.9})
    assert exponential == pytest.approx([LR * 0.9**e for e in range(EPOCHS)])


def test_cosine_after_linear_warmup() -> None:
    seen = rates({"name": "cosine", "warmup_epochs": 2, "warmup_start_factor": 0.2, "min_lr": 1e-4})
    assert seen[:3] == pytest.approx([LR * 0.2, LR * 0.6, LR])  # up in a straight line
    span = EPOCHS - 2 - 1  # the cosine runs over the epochs after warmup, min_lr in the last
    expected = [
        1e-4 + (LR - 1e-4) * (1 + math.cos(math.pi * k / span)) / 2 for k in range(span + 1)
    ]
    assert seen[-1] == pytest.approx(1e-4)
    assert seen[2:] == pytest.approx(expected)


def test_one_cycle_rises_to_its_peak_then_falls_below_the_start() -> None:
    seen = rates({"name": "one_cycle", "max_lr": 0.1, "pct_start": 0.4}, epochs=10)
    assert seen[0] == pytest.approx(0.1 / 25)
    peak = seen.index(max(seen))
    assert max(seen) == pytest.approx(0.1) and 2 <= peak <= 4
    assert all(a < b for a, b in itertools.pairwise(seen[: peak + 1]))
    assert all(a > b for a, b in itertools.pairwise(seen[peak:]))
    assert seen[-1] < seen[0]
    # without max_lr, the optimizer's lr is the peak
    assert max(rates({"name": "one_cycle"}, epochs=10)) == pytest.approx(LR)


def test_reduce_on_plateau_cuts_after_patience_and_waits_for_warmup() -> None:
    flat = [1.0] * EPOCHS  # never improves after the first epoch
    seen = rates({"name": "reduce_on_plateau", "patience": 1, "factor": 0.5}, monitored=flat)
    # epoch 1 sets the best; 2 is bad epoch 1 (patience 1 tolerates it); 3 is the second: cut
    assert seen == pytest.approx([LR, LR, LR, LR * 0.5, LR * 0.5, LR * 0.25])
    warm = rates({"name": "reduce_on_plateau", "patience": 0, "warmup_epochs": 2}, monitored=flat)
    assert warm[:3] == pytest.approx([LR * 0.1, LR * 0.55, LR])
    # watched from the first epoch after warmup, which sets the best: the next one is cut
    assert warm[3:5] == pytest.approx([LR, LR * 0.1])
    improving = [1.0 / (e + 1) for e in range(EPOCHS)]
    assert rates({"name": "reduce_on_plateau", "patience": 0}, monitored=improving) == [LR] * 6


def history(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv") as rows:
        return list(csv.DictReader(rows))


def scheduled(project: Project, settings: str, epochs: int = EPOCHS) -> Project:
    project.edit_config("epochs: 3", f"epochs: {epochs}")
    project.edit_config("loss: mse", f"loss: mse\n  scheduler: {settings}")
    return project


def test_history_records_each_epochs_rate(cli: Cli, project: Project) -> None:
    constant = project.train(cli, runs=project.runs / "constant")
    assert [float(row["lr"]) for row in history(constant)] == [0.01] * 3
    scheduled(project, "{name: step, step_epochs: 2, gamma: 0.5}")
    result = cli("train", project.config, "--runs-dir", project.runs)
    assert result.code == 0, result.err
    lrs = [float(row["lr"]) for row in history(Path(result.last_line))]
    assert lrs == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025])
    header = next(line for line in result.out.splitlines() if "train_loss" in line)
    assert header.split()[-2:] == ["lr", "time"]  # shown live when a schedule changes it


def weights_of(run: Path) -> str:
    return hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "settings",
    [
        "{name: cosine, warmup_epochs: 2}",
        "{name: reduce_on_plateau, mode: max, patience: 1, factor: 0.5}",
    ],
    ids=["cosine-warmup", "plateau"],
)
def test_resumed_mid_schedule_equals_uninterrupted(
    cli: Cli, project: Project, monkeypatch: pytest.MonkeyPatch, settings: str
) -> None:
    """The schedule's state travels in the checkpoint: stopped in epoch 3 (the first after the
    warmup, or with one bad epoch of the plateau's patience counted), resumed, the run equals
    one never stopped."""
    scheduled(project, settings)
    reference = project.train(cli, runs=project.root / "ref")
    stop_at_poll(monkeypatch, 12)  # a SIGINT in epoch 3, batch 2
    assert cli("train", project.config, "--runs-dir", project.runs, "-q").code == 130
    monkeypatch.undo()
    (run,) = project.run_dirs()
    assert cli("train", "--resume", run, "-q").code == 0
    assert [row["lr"] for row in history(run)] == [row["lr"] for row in history(reference)]
    assert weights_of(run) == weights_of(reference)


def test_both_engines_train_the_same_schedule(cli: Cli, project: Project) -> None:
    """The direct step reads the group's lr at every step, as optimizer.step() does."""
    scheduled(project, "{name: one_cycle, max_lr: 0.05, pct_start: 0.5}")
    runs = [
        project.train(cli, "--set", f"training.engine={engine}", runs=project.runs / engine)
        for engine in ("direct", "autograd")
    ]
    assert weights_of(runs[0]) == weights_of(runs[1])
    assert history(runs[0])[-1]["lr"] == history(runs[1])[-1]["lr"]


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            "{name: cosine, warmup_epochs: 6}",
            "training.scheduler.warmup_epochs: is 6 but training.epochs is 6; warm up for fewer epochs than training runs",
        ),
        (
            "{name: reduce_on_plateau, monitor: val_accuracy}",
            "training.scheduler.monitor: monitor 'val_accuracy' is not computed each epoch; expected one of: train_loss, val_loss, val_mae, val_max_error, val_median_ae, val_mse, val_r2, val_rmse",
        ),
        (
            "{name: one_cycle, pct_start: 0.3}",
            "training.scheduler: one_cycle over 6 epochs with pct_start 0.3 rises for 1.8 epochs and falls for 4.2; it needs at least 2 epochs up and 1 down: train more epochs or change pct_start",
        ),
        ("{name: cosine_annealing}", "training.scheduler.name"),
        ("{name: one_cycle, warmup_epochs: 2}", "training.scheduler.warmup_epochs"),
    ],
    ids=[
        "warmup-too-long",
        "monitor-not-computed",
        "one-cycle-too-short",
        "unknown-name",
        "one-cycle-warmup",
    ],
)
def test_schedule_mistakes_are_one_line_config_errors(
    cli: Cli, project: Project, settings: str, expected: str
) -> None:
    scheduled(project, settings)
    result = cli("check", project.config)
    assert result.code == 2
    assert len(result.err.strip().splitlines()) == 1
    assert expected in result.err
    assert not project.runs.exists()


def test_plateau_without_validation_rows_must_watch_train_loss(cli: Cli, project: Project) -> None:
    project.edit_config(
        "split: {train: 0.6, val: 0.2, test: 0.2}", "split: {train: 0.8, val: 0, test: 0.2}"
    )
    scheduled(project, "{name: reduce_on_plateau}")
    result = cli("check", project.config)
    assert result.code == 2
    assert (
        "monitor 'val_loss' is not computed each epoch (data.split.val is 0); did you mean 'train_loss'? expected one of: train_loss\n"
        in result.err
    )
    project.edit_config(
        "{name: reduce_on_plateau}", "{name: reduce_on_plateau, monitor: train_loss}"
    )
    assert cli("check", project.config).code == 0


def test_a_checkpoint_from_before_lr_and_schedules_resumes(
    cli: Cli, project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run stopped by an older mlpkit (no `scheduler` in its config, no `lr` in its history
    rows) resumes; the old epochs' lr cells are empty and the new ones are filled."""
    project.edit_config("epochs: 3", "epochs: 4")
    stop_at_poll(monkeypatch, 12)  # a SIGINT in epoch 3, batch 2
    assert cli("train", project.config, "--runs-dir", project.runs, "-q").code == 130
    monkeypatch.undo()
    (run,) = project.run_dirs()
    for folder in (run / "checkpoints").glob("ckpt-*"):  # rewrite each as the older format
        manifest = json.loads((folder / "manifest.json").read_text())
        del manifest["config"]["training"]["scheduler"]
        state = torch.load(folder / "state.pt", weights_only=True)
        state["scheduler"] = None
        for record in state["progress"]["history"]:
            del record["lr"]
        buffer = io.BytesIO()
        torch.save(state, buffer)
        (folder / "state.pt").write_bytes(buffer.getvalue())
        data = buffer.getvalue()
        manifest["files"]["state.pt"] = {
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
        }
        (folder / "manifest.json").write_text(json.dumps(manifest))
    resumed = cli("train", "--resume", run, "-q")
    assert resumed.code == 0, resumed.err
    rows = history(run)
    assert [row["epoch"] for row in rows] == ["1", "2", "3", "4"]
    assert [row["lr"] for row in rows] == ["", "", "0.01", "0.01"]
