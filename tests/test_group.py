"""--seeds trains its members stacked (flows/group.py, train/group.py): each member an ordinary
run equal to the same seed trained alone; divergence, early stopping and stops per member."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import Cli, Project, stop_at_poll
from safetensors.torch import load_file
from torch import nn

from mlpkit.config.schema import DenseLayer, Layer
from mlpkit.flows.evaluate import evaluate_run
from mlpkit.train import group
from mlpkit.train.loop import EarlyStopping, Tensors, fit
from mlpkit.train.model import build_model


def info(run: Path) -> dict[str, Any]:
    found: dict[str, Any] = json.loads((run / "run.json").read_text())
    return found


def summary_runs(cli_out: str) -> list[Path]:
    summary = json.loads(Path(cli_out.splitlines()[-1]).read_text())
    return [Path(run) for run in summary["runs"]]


def test_seeds_train_stacked_each_member_as_it_trains_alone(cli: Cli, project: Project) -> None:
    result = cli("train", project.config, "--runs-dir", project.runs, "--seeds", "3")
    assert result.code == 0, result.err
    runs = summary_runs(result.out)
    alone_runs = project.runs / "alone"
    for seed, run in enumerate(runs):
        training = info(run)["training"]
        assert training["engine"] == "stacked" and training["members"] == 3
        assert info(run)["status"] == "complete"
        alone = project.train(cli, "--set", f"seed={seed}", runs=alone_runs)
        assert info(alone)["training"]["engine"] == "direct"
        stacked, single = (
            load_file(run / "model.safetensors"),
            load_file(alone / "model.safetensors"),
        )
        for name, weight in single.items():
            torch.testing.assert_close(stacked[name], weight, rtol=1e-5, atol=1e-6)
        history = (run / "history.csv").read_text().splitlines()
        assert history[0] == (alone / "history.csv").read_text().splitlines()[0]
        assert len(history) == 4  # the header and 3 epochs
        # a member evaluates exactly to its own metrics.json
        metrics = json.loads((run / "metrics.json").read_text())["test"]
        assert evaluate_run(run).scores == metrics


def test_seeds_stacked_again_give_the_same_bits(cli: Cli, project: Project) -> None:
    first = cli("train", project.config, "--runs-dir", project.runs / "a", "--seeds", "2")
    second = cli("train", project.config, "--runs-dir", project.runs / "b", "--seeds", "2")
    for a, b in zip(summary_runs(first.out), summary_runs(second.out), strict=True):
        assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def test_what_cannot_stack_trains_alone_and_run_json_says_why(cli: Cli, project: Project) -> None:
    project.edit_config(
        "    - {type: dense, units: 1}",
        "    - {type: dropout, rate: 0.1}\n    - {type: dense, units: 1}",
    )
    result = cli("train", project.config, "--runs-dir", project.runs, "--seeds", "2")
    assert result.code == 0, result.err
    for run in summary_runs(result.out):
        training = info(run)["training"]
        assert training["engine"] == "autograd"
        assert "Dropout" in training["why_not_stacked"]


def test_a_stop_leaves_every_member_interrupted_and_each_resumes(
    cli: Cli, project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    stop_at_poll(monkeypatch, poll=7)  # a step in the second epoch
    result = cli("train", project.config, "--runs-dir", project.runs, "--seeds", "2")
    assert result.code == 130, result.out
    stopped = sorted(project.run_dirs(), key=lambda run: info(run)["seed"])
    assert len(stopped) == 2
    for run in stopped:
        assert info(run)["status"] == "interrupted"
        assert list((run / "checkpoints").glob("ckpt-*"))
    monkeypatch.undo()
    uninterrupted = cli("train", project.config, "--runs-dir", project.runs / "u", "--seeds", "2")
    for run, whole in zip(stopped, summary_runs(uninterrupted.out), strict=True):
        resumed = cli("train", "--resume", run, "--quiet")
        assert resumed.code == 0, resumed.err
        assert info(run)["status"] == "complete"
        got, want = load_file(run / "model.safetensors"), load_file(whole / "model.safetensors")
        for name, weight in want.items():
            torch.testing.assert_close(got[name], weight, rtol=1e-5, atol=1e-6)


LAYERS: list[Layer] = [
    DenseLayer(type="dense", units=6, activation="tanh"),
    DenseLayer(type="dense", units=1),
]


def member(seed: int, x: torch.Tensor, y: torch.Tensor, **extra: Any) -> group.Member:
    model = build_model(LAYERS, 3, seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05, fused=True)
    val = Tensors(x[:8], y[:8])
    return group.Member(model, optimizer, nn.MSELoss(), Tensors(x, y), val, seed, **extra)


def rows(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=generator)
    return x, x[:, :1] - 2 * x[:, 1:2] + 0.1 * torch.randn(n, 1, generator=generator)


def test_a_diverged_member_stops_and_the_others_go_on() -> None:
    x, y = rows(0, 20)
    bad_y = y.clone()
    bad_y[13] = float("inf")  # member 1's rows hold an infinite target
    members = [member(0, x, y), member(1, x, bad_y), member(2, x, y)]
    group.fit_group(members, epochs=3, batch_size=4, shuffle=True)
    assert members[1].failure is not None
    assert "that batch was not applied" in str(members[1].failure)
    assert [len(m.position.history) for m in members] == [3, 0, 3]
    assert members[0].failure is None and members[2].failure is None


def test_each_member_stops_early_on_its_own_as_it_would_alone() -> None:
    stopping = EarlyStopping("val_loss", lower_is_better=True, patience=2)
    data = [rows(seed, 30 + 3 * seed) for seed in range(3)]  # folds of different sizes
    members = [member(seed, x, y, stopping=stopping) for seed, (x, y) in enumerate(data)]
    group.fit_group(members, epochs=40, batch_size=4, shuffle=True)
    for seed, (x, y) in enumerate(data):
        alone = member(seed, x, y, stopping=stopping)
        position = fit(
            alone.model, alone.loss_fn, alone.optimizer, alone.train, alone.val,
            epochs=40, batch_size=4, shuffle=True, seed=seed, early_stopping=stopping,
        )  # fmt: skip
        got = members[seed].position
        assert got.stopped_early == position.stopped_early
        assert got.best_epoch == position.best_epoch and got.steps == position.steps
        assert len(got.history) == len(position.history)
        for mine, theirs in zip(got.history, position.history, strict=True):
            assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-4)
        for (name, weight), theirs in zip(
            members[seed].model.state_dict().items(), alone.model.state_dict().values(), strict=True
        ):
            torch.testing.assert_close(weight, theirs, rtol=1e-4, atol=1e-5, msg=name)


def test_folds_train_stacked_and_an_interrupted_group_resumes(
    cli: Cli, project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = cli("train", project.config, "--runs-dir", project.root / "ref", "--folds", "4", "-q")
    assert whole.code == 0, whole.err
    reference = Path(whole.last_line)
    for fold in range(1, 5):
        training = info(reference / f"fold-{fold}")["training"]
        assert training["engine"] == "stacked" and training["members"] == 4
    stop_at_poll(monkeypatch, 6)  # in the second epoch of every fold at once
    stopped = cli("train", project.config, "--runs-dir", project.runs, "--folds", "4", "-q")
    assert stopped.code == 130
    (cv,) = (project.runs / "tiny").iterdir()
    assert "training stopped by SIGINT in fold 1, 2, 3, 4 of 4" in stopped.err
    monkeypatch.undo()
    resumed = cli("train", "--resume", cv)
    assert resumed.code == 0, resumed.err
    got = json.loads((cv / "crossval.json").read_text())
    want = json.loads((reference / "crossval.json").read_text())
    for name, spread in want["test"].items():
        assert got["test"][name]["values"] == pytest.approx(spread["values"], rel=1e-5, abs=1e-6)


def test_classification_seeds_stack_with_class_weights(cli: Cli, project: Project) -> None:
    project.edit_config("  target: y", "  target: color")
    project.edit_config("  features: [a, b, color]", "  features: [a, b, y]")
    project.edit_config("  categorical: [color]", "  categorical: []")
    project.edit_config("    - {type: dense, units: 1}", "    - {type: dense, units: 3}")
    project.edit_config("  loss: mse", "  loss: cross_entropy\n  class_weights: balanced")
    project.edit_config("{name: adam, lr: 1e-2}", "{name: sgd, lr: 0.1, momentum: 0.9}")
    result = cli("train", project.config, "--runs-dir", project.runs, "--seeds", "2")
    assert result.code == 0, result.err
    for seed, run in enumerate(summary_runs(result.out)):
        assert info(run)["training"]["engine"] == "stacked"
        alone = project.train(cli, "--set", f"seed={seed}", runs=project.runs / "alone")
        stacked, single = (
            load_file(run / "model.safetensors"),
            load_file(alone / "model.safetensors"),
        )
        for name, weight in single.items():
            torch.testing.assert_close(stacked[name], weight, rtol=1e-5, atol=1e-6)
        metrics = json.loads((run / "metrics.json").read_text())["test"]
        assert evaluate_run(run).scores == metrics
