"""model.ensemble: K members trained as one run, their predictions averaged.

End to end on the tiny project (regression, and the same rows as multiclass and binary
tasks): the run's files, the ensemble's output against its members' (probabilities averaged
for classification), eval, predict, the exports, the summary, member 0 against a run without
the ensemble, and the config's errors. The Ensemble module alone: its combination against
numpy's, with logits large enough to overflow a naive form.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import Cli, Project, stop_at_poll, tiny_csv
from safetensors.torch import load_file

from mlpkit.config.load import load_config
from mlpkit.config.schema import DenseLayer
from mlpkit.data.preprocessing import ClassLabels, NumericFeature, Preprocessor
from mlpkit.flows import export
from mlpkit.flows.common import rebuild
from mlpkit.flows.evaluate import evaluate_run
from mlpkit.report import onnx_graph, torchscript
from mlpkit.rundir import runs
from mlpkit.train import budget
from mlpkit.train.loop import predict
from mlpkit.train.model import Ensemble, build_model, member_seed
from mlpkit.train.prepare import prepare
from mlpkit.train.tasks import Binary, Multiclass, Task


def _classification(project: Project, binary: bool) -> None:
    """The tiny rows as a classification: `big` (yes/no, y above 0) or `color` (3 classes)."""
    frame = pd.read_csv(io.StringIO(tiny_csv()))
    frame["big"] = np.where(frame["y"] > 0, "yes", "no")
    project.data.write_text(frame.to_csv(index=False))
    target, units, loss = ("big", 1, "bce") if binary else ("color", 3, "cross_entropy")
    features = "[a, b, y]" if not binary else "[a, b, color]"
    text = project.config.read_text()
    text = text.replace("target: y", f"target: {target}")
    text = text.replace("features: [a, b, color]", f"features: {features}")
    if not binary:
        text = text.replace("  categorical: [color]\n", "")
    text = text.replace("{type: dense, units: 1}", f"{{type: dense, units: {units}}}")
    project.write_config(text.replace("loss: mse", f"loss: {loss}"))


def _members_and_task(run: Path) -> tuple[Ensemble, Task, torch.Tensor]:
    """The run's rebuilt Ensemble, its task, and its test rows' inputs."""
    _, task, model = rebuild(runs.open_run(run), "cpu")
    assert isinstance(model, Ensemble)
    frame = pd.read_csv(Path(runs.open_run(run).info.data.path))
    lines = pd.read_csv(run / "predictions.csv")["line"].to_numpy()
    rows = frame.iloc[lines - 2]  # line 1 is the header
    x = torch.from_numpy(runs.open_run(run).preprocessor.transform(rows))
    return model, task, x


def test_a_regression_ensemble_averages_its_members(cli: Cli, project: Project) -> None:
    run = project.train(cli, "--ensemble", "3")
    metrics = json.loads((run / "metrics.json").read_text())
    members = metrics["members"]
    assert members[0]["seed"] == 0
    assert len({m["seed"] for m in members}) == 3
    for part in ("train", "val", "test"):
        for name, value in metrics["members_mean"][part].items():
            assert value == pytest.approx(np.mean([m[part][name] for m in members]), rel=1e-12)
    model, task, x = _members_and_task(run)
    assert len(model.members) == 3
    each = np.stack([task.columns(predict(m, x))["prediction"] for m in model.members])
    written = pd.read_csv(run / "predictions.csv")["prediction"].to_numpy()
    assert np.allclose(written, each.mean(axis=0), rtol=1e-6, atol=1e-6)
    # MSE of the mean is at most the members' mean MSE (Jensen): R2 at least their mean
    assert metrics["test"]["r2"] >= metrics["members_mean"]["test"]["r2"]
    assert evaluate_run(run).scores == metrics["test"]  # exactly, not approximately
    keys = load_file(run / "model.safetensors").keys()
    assert {key.split(".")[1] for key in keys} == {"0", "1", "2"}
    assert all(key.startswith("members.") for key in keys)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "multiclass"])
def test_a_classification_ensemble_averages_probabilities(
    cli: Cli, project: Project, binary: bool
) -> None:
    _classification(project, binary)
    run = project.train(cli, "--ensemble", "3")
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["members"]) == 3 and "confusion_matrix" in metrics
    model, task, x = _members_and_task(run)
    assert isinstance(task, Binary | Multiclass)
    mean = np.mean([task.probabilities(predict(m, x)) for m in model.members], axis=0)
    assert np.allclose(task.probabilities(predict(model, x)), mean, rtol=0, atol=1e-6)
    result = cli("predict", run, "--data", project.data)
    assert result.code == 0, result.err
    predicted = pd.read_csv(io.StringIO(result.out))
    probabilities = [c for c in predicted.columns if c.startswith("p_")]
    frame = pd.read_csv(project.data)
    all_x = torch.from_numpy(runs.open_run(run).preprocessor.transform(frame))
    every = np.mean([task.probabilities(predict(m, all_x)) for m in model.members], axis=0)
    got = predicted[probabilities].to_numpy()
    assert np.allclose(got[:, 0] if binary else got, every, rtol=0, atol=1e-6)
    assert evaluate_run(run).scores == metrics["test"]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("binary", [True, False, None], ids=["binary", "multiclass", "regression"])
def test_both_exports_of_an_ensemble_match_predict(
    cli: Cli, project: Project, binary: bool | None
) -> None:
    if binary is not None:
        _classification(project, binary)
    run = project.train(cli, "--ensemble", "2")
    for fmt in ("onnx", "torchscript"):
        result = cli("export", run, "--format", fmt)
        assert result.code == 0, result.err
    recorded = runs.open_run(run).info.exports
    assert len(recorded) == 2 and all(r.max_abs_diff <= export.TOLERANCE for r in recorded)


def test_member_0_is_the_network_a_run_without_the_ensemble_trains(
    cli: Cli, project: Project
) -> None:
    single = project.train(cli)
    explicit = project.train(cli, "--set", "model.ensemble=1")
    ensemble = project.train(cli, "--ensemble", "2")
    # ensemble 1 is today's run: the same weights, byte for byte, and the same history
    assert (single / "model.safetensors").read_bytes() == (
        explicit / "model.safetensors"
    ).read_bytes()
    # the members train stacked: member 0 is the single run's network within float rounding
    training = json.loads((ensemble / "run.json").read_text())["training"]
    assert training["engine"] == "stacked" and training["members"] == 2
    alone = load_file(single / "model.safetensors")
    members = load_file(ensemble / "model.safetensors")
    for name, tensor in alone.items():
        torch.testing.assert_close(members[f"members.0.{name}"], tensor, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(members[f"members.1.{name}"], tensor)
    # history.csv is member 0's, which is the single run's (time aside)
    history = [pd.read_csv(r / "history.csv").drop(columns="seconds") for r in (single, ensemble)]
    pd.testing.assert_frame_equal(history[0], history[1], rtol=1e-5)
    single_metrics = json.loads((single / "metrics.json").read_text())
    first = json.loads((ensemble / "metrics.json").read_text())["members"][0]
    assert first["test"] == pytest.approx(single_metrics["test"], rel=1e-4) and first["seed"] == 0
    assert "members" not in single_metrics
    config = (ensemble / "config.yaml").read_text()
    assert "ensemble: 2" in config and "ensemble: 1" in (single / "config.yaml").read_text()


def test_summary_shows_k_times_the_member_table(cli: Cli, project: Project) -> None:
    result = cli("summary", project.config, "--set", "model.ensemble=4")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].strip() == "4 x this network (model.ensemble: 4)"
    assert lines[-2:] == ["Total parameters: 4 x 57 = 228", "Parameter memory: 912 bytes"]
    checked = cli("check", project.config, "--set", "model.ensemble=4")
    assert checked.out.strip().endswith("5 inputs, 228 parameters")


def test_the_budget_counts_every_member(project: Project) -> None:
    one = budget.training_estimate(prepare(load_config(project.config)))
    eight = budget.training_estimate(prepare(load_config(project.config, ["model.ensemble=8"])))
    assert sum(eight.shares.values()) == 8 * sum(one.shares.values())
    assert eight.data == one.data  # one split, one copy of the rows


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0", "must be greater than or equal to 1, got 0"),
        ("65", "must be less than or equal to 64, got 65"),
        ('"3"', 'expected an integer, got "3"'),
        ("true", "expected an integer, got true"),
        ("2.5", "expected an integer, got 2.5"),
    ],
)
def test_a_bad_ensemble_is_one_line_at_its_line(
    cli: Cli, project: Project, value: str, problem: str
) -> None:
    project.edit_config("  layers:", f"  ensemble: {value}\n  layers:")
    result = cli("train", project.config, "--runs-dir", project.runs)
    assert result.code == 2
    assert result.err == f"Error: {project.config}:10: model.ensemble: {problem}\n"
    assert not project.runs.exists()


def test_an_interrupted_ensemble_says_it_cannot_be_resumed(
    cli: Cli, project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    stop_at_poll(monkeypatch, 8)  # in member 0's second epoch (4 batches, 5 polls an epoch)
    result = cli("train", project.config, "--runs-dir", project.runs, "--ensemble", "2")
    assert result.code == 130
    assert "an ensemble run keeps no checkpoints yet, so it cannot be resumed" in result.err
    (run,) = project.run_dirs()
    assert runs.open_run(run, require_complete=False).info.status == "interrupted"
    assert not (run / "checkpoints").exists()
    resumed = cli("train", "--resume", run)
    assert resumed.code == 2
    assert "the run is an ensemble of 2 (model.ensemble)" in resumed.err


def _extreme(members: int, outputs: int) -> list[torch.nn.Module]:
    """Members whose logits reach hundreds: exp() of them overflows float32."""
    built = []
    for k in range(members):
        model = build_model([DenseLayer(type="dense", units=outputs)], 2, seed=k)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(200.0)
        built.append(model.eval())
    return built


@pytest.mark.parametrize("outputs", [1, 3], ids=["sigmoid", "softmax"])
def test_the_combination_is_the_mean_probability_even_for_huge_logits(outputs: int) -> None:
    members = _extreme(4, outputs)
    combine = "sigmoid" if outputs == 1 else "softmax"
    ensemble = Ensemble(members, combine).eval()
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    logits = np.stack([m(x).detach().double().numpy() for m in members])  # [K, rows, outputs]
    assert np.abs(logits).max() > 100  # past float32's exp range
    if outputs == 1:
        want = (1 / (1 + np.exp(-logits))).mean(axis=0)[:, 0]
        got = torch.sigmoid(ensemble(x).double()).detach().numpy()[:, 0]
    else:
        shifted = np.exp(logits - logits.max(axis=2, keepdims=True))
        want = (shifted / shifted.sum(axis=2, keepdims=True)).mean(axis=0)
        got = torch.softmax(ensemble(x).double(), dim=1).detach().numpy()
    assert np.isfinite(ensemble(x).detach().numpy()).all()
    assert np.abs(got - want).max() < 1e-6


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("outputs", [1, 3], ids=["binary", "multiclass"])
def test_the_exports_combine_huge_logits_as_predict_does(outputs: int) -> None:
    classes = ["no", "yes"] if outputs == 1 else ["p", "q", "r"]
    labels = ClassLabels(name="t", classes=classes)
    preprocessor = Preprocessor(
        features=[NumericFeature(name=n, mean=0.0, std=1.0) for n in ("a", "b")], target=labels
    )
    task: Task = Binary(labels, 0.5, None) if outputs == 1 else Multiclass(labels, None, 1)
    model = Ensemble(_extreme(3, outputs), "sigmoid" if outputs == 1 else "softmax").eval()
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=64), "b": rng.normal(size=64)})
    want = export.reference(preprocessor, model, task, frame)
    onnx_got = onnx_graph.run_onnx(
        onnx_graph.onnx_bytes(preprocessor, model, task), preprocessor, frame
    )
    script_got = torchscript.run_torchscript(
        torchscript.torchscript_bytes(preprocessor, model, task), preprocessor, frame
    )
    assert np.abs(onnx_got - want).max() <= export.TOLERANCE
    assert np.abs(script_got - want).max() <= export.TOLERANCE


def test_member_seeds_are_fixed_distinct_and_member_0_is_the_config_s() -> None:
    assert member_seed(7, 0) == 7
    seeds = [member_seed(7, k) for k in range(64)]
    assert len(set(seeds)) == 64 and all(0 <= s < 2**32 for s in seeds)
    assert seeds == [member_seed(7, k) for k in range(64)]
    assert member_seed(8, 1) not in seeds  # not the next run's (--seeds) members


def test_an_ensemble_trains_stacked_or_says_why_not(cli: Cli, project: Project) -> None:
    together = cli("train", project.config, "--runs-dir", project.runs, "--ensemble", "3")
    assert together.code == 0, together.err
    assert "in an ensemble of 3 (stacked, trained together)" in together.out.splitlines()[0]
    assert "member 1/3" not in together.out  # one line an epoch: the members' mean
    project.edit_config(
        "    - {type: dense, units: 1}",
        "    - {type: dropout, rate: 0.1}\n    - {type: dense, units: 1}",
    )
    in_turn = cli("train", project.config, "--runs-dir", project.runs / "b", "--ensemble", "3")
    assert in_turn.code == 0, in_turn.err
    assert "(trained one after another)" in in_turn.out.splitlines()[0]
    assert "member 3/3" in in_turn.out
    run = Path(in_turn.last_line)
    training = json.loads((run / "run.json").read_text())["training"]
    assert training["engine"] == "autograd" and "Dropout" in training["why_not_stacked"]
