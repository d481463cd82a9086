"""The direct step (written-out gradients, fused update) against autograd + optimizer.step().

Every covered activation, loss and optimizer is trained both ways from the same weights on the
same batches; weights, optimizer state and the per-epoch losses must be bit-identical on CPU.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from conftest import Cli, Project
from torch import nn

from mlpkit.config.schema import BatchNormLayer, DenseLayer, DropoutLayer, Layer
from mlpkit.errors import DivergedError
from mlpkit.train.direct import DirectStep, Unsupported, unsupported
from mlpkit.train.loop import Hooks, Position, StopRequested, Tensors, fit
from mlpkit.train.model import InputSpec, build_model


def dense(units: int, activation: str = "linear", bias: bool = True) -> DenseLayer:
    return DenseLayer(type="dense", units=units, activation=activation, bias=bias)


def rows(n: int = 30, features: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, features, generator=torch.Generator().manual_seed(seed))


def adam(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)


Trained = tuple[nn.Module, torch.optim.Optimizer, Position]


def train_both_ways(
    make_model: Callable[[], nn.Module],
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    loss_fn: nn.Module,
    data: Tensors,
    epochs: int = 3,
    batch_size: int = 4,
) -> list[Trained]:
    """(model, optimizer, progress) trained with autograd, then the same with the direct step."""
    results = []
    for use_direct in (False, True):
        model = make_model()
        optimizer = make_optimizer(model)
        step = DirectStep(model, loss_fn, optimizer) if use_direct else None
        progress = fit(
            model, loss_fn, optimizer, data, None,
            epochs=epochs, batch_size=batch_size, shuffle=True, seed=0, step=step,
        )  # fmt: skip
        results.append((model, optimizer, progress))
    return results


def assert_identical(autograd: Trained, direct: Trained) -> None:
    (model_a, optimizer_a, progress_a), (model_d, optimizer_d, progress_d) = autograd, direct
    for (name, a), b in zip(
        model_a.state_dict().items(), model_d.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    state_a, state_d = optimizer_a.state_dict()["state"], optimizer_d.state_dict()["state"]
    assert state_a.keys() == state_d.keys()  # none for SGD without momentum
    for index, entries in state_a.items():
        assert entries.keys() == state_d[index].keys()
        for key, value in entries.items():
            other = state_d[index][key]
            assert value.dtype == other.dtype and torch.equal(value, other), (index, key)
    assert [r["train_loss"] for r in progress_a.history] == [
        r["train_loss"] for r in progress_d.history
    ]


@pytest.mark.parametrize(
    "activation", ["relu", "tanh", "sigmoid", "gelu", "silu", "elu", "leaky_relu", "linear"]
)
def test_each_activation_trains_bit_identically(activation: str) -> None:
    layers: list[Layer] = [dense(6, activation), dense(5, activation), dense(1)]
    x = rows()
    data = Tensors(x, x.sum(1, keepdim=True))
    autograd, direct = train_both_ways(
        lambda: build_model(layers, 3, seed=0), adam, nn.MSELoss(), data
    )
    assert_identical(autograd, direct)


@pytest.mark.parametrize("batch_size", [1, 7])  # one row a batch (mpg's), a ragged last batch
def test_batch_sizes_train_bit_identically(batch_size: int) -> None:
    layers: list[Layer] = [dense(32, "relu"), dense(8, "relu"), dense(1)]
    autograd, direct = train_both_ways(
        lambda: build_model(layers, 3, seed=0), adam, nn.MSELoss(), regression(), 2, batch_size
    )
    assert_identical(autograd, direct)


def regression() -> Tensors:
    x = rows()
    return Tensors(x, x[:, :1] * 2 - x[:, 1:2])


def binary() -> Tensors:
    x = rows()
    return Tensors(x, (x.sum(1, keepdim=True) > 0).float())


def multiclass() -> Tensors:
    x = rows()
    return Tensors(x, x.argmax(1))


@pytest.mark.parametrize(
    ("loss_fn", "data", "outputs"),
    [
        (nn.MSELoss(), regression(), 1),
        (nn.L1Loss(), regression(), 1),
        (nn.HuberLoss(delta=0.5), regression(), 1),
        (nn.BCEWithLogitsLoss(), binary(), 1),
        (nn.BCEWithLogitsLoss(pos_weight=torch.tensor([2.5])), binary(), 1),
        (nn.CrossEntropyLoss(), multiclass(), 3),
        (nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5])), multiclass(), 3),
    ],
    ids=["mse", "mae", "huber", "bce", "bce-pos-weight", "cross-entropy", "ce-weighted"],
)
def test_each_loss_trains_bit_identically(loss_fn: nn.Module, data: Tensors, outputs: int) -> None:
    layers: list[Layer] = [dense(8, "relu"), dense(outputs)]
    autograd, direct = train_both_ways(lambda: build_model(layers, 3, seed=1), adam, loss_fn, data)
    assert_identical(autograd, direct)


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, fused=True, amsgrad=True),
        lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, fused=True, weight_decay=0.1),
        lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, fused=True, betas=(0.8, 0.9)),
        lambda m: torch.optim.SGD(m.parameters(), lr=0.05, fused=True),
        lambda m: torch.optim.SGD(
            m.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3, fused=True
        ),
        lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.5, dampening=0.1, fused=True),
    ],
    ids=["adam-amsgrad", "adam-l2", "adamw", "sgd", "sgd-nesterov", "sgd-dampening"],
)
def test_each_optimizer_trains_bit_identically(
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
) -> None:
    layers: list[Layer] = [dense(8, "tanh"), dense(4, "relu", bias=False), dense(1)]
    autograd, direct = train_both_ways(
        lambda: build_model(layers, 3, seed=2), make_optimizer, nn.MSELoss(), regression()
    )
    assert_identical(autograd, direct)


def test_named_inputs_without_layers_gather_their_columns() -> None:
    # The XOR model: inputs in a different order from the columns, concatenated, then the trunk.
    inputs = [InputSpec("second", [2], []), InputSpec("first", [0, 1], [])]
    layers: list[Layer] = [dense(8, "tanh"), dense(1)]
    autograd, direct = train_both_ways(
        lambda: build_model(layers, 3, seed=0, inputs=inputs),
        lambda m: torch.optim.SGD(m.parameters(), lr=0.1, fused=True),
        nn.BCEWithLogitsLoss(),
        binary(),
    )
    assert_identical(autograd, direct)


def test_what_it_does_not_cover_is_named() -> None:
    plain = build_model([dense(4, "relu"), dense(1)], 3, seed=0)
    assert unsupported(plain, nn.MSELoss(), adam(plain)) is None
    dropout = build_model(
        [dense(4, "relu"), DropoutLayer(type="dropout", rate=0.1), dense(1)], 3, 0
    )
    assert unsupported(dropout, nn.MSELoss(), adam(dropout)) == "a Dropout layer at that place"
    assert unsupported(plain, nn.SmoothL1Loss(), adam(plain)) == "the loss SmoothL1Loss"
    assert unsupported(plain, nn.MSELoss(reduction="sum"), adam(plain)) == (
        "the loss MSELoss without reduction 'mean'"
    )
    rmsprop = torch.optim.RMSprop(plain.parameters())
    assert unsupported(plain, nn.MSELoss(), rmsprop) == "the optimizer RMSprop"
    unfused = torch.optim.Adam(plain.parameters())
    assert unsupported(plain, nn.MSELoss(), unfused) == "Adam without fused=True"
    softmax_inside = build_model([dense(4, "softmax"), dense(1)], 3, seed=0)
    assert unsupported(softmax_inside, nn.MSELoss(), adam(softmax_inside)) == (
        "a Softmax layer at that place"
    )
    with_branch = build_model(
        [dense(1)], 2, seed=0, inputs=[InputSpec("a", [0, 1], [dense(2, "relu")])]
    )
    assert unsupported(with_branch, nn.MSELoss(), adam(with_branch)) == (
        "named inputs with layers of their own"
    )


def test_a_non_finite_loss_is_found_without_a_per_step_sync_and_never_applied() -> None:
    x = rows(40)
    x[22] = 1e30  # row 23 overflows: unshuffled batches of 4 make it batch 6
    data = Tensors(x, x.sum(1, keepdim=True))
    finals = []
    for use_direct in (False, True):
        model = build_model([dense(4, "relu"), dense(1)], 3, seed=0)
        optimizer = adam(model)
        step = DirectStep(model, nn.MSELoss(), optimizer) if use_direct else None
        with pytest.raises(
            DivergedError, match="loss became inf in epoch 1, batch 6; that batch was not applied"
        ):
            fit(
                model, nn.MSELoss(), optimizer, data, None,
                epochs=2, batch_size=4, shuffle=False, seed=0, step=step,
            )  # fmt: skip
        finals.append((model, optimizer))
    (model_a, _), (model_d, optimizer_d) = finals
    for a, b in zip(model_a.parameters(), model_d.parameters(), strict=True):
        assert torch.equal(a, b)
    assert int(optimizer_d.state_dict()["state"][0]["step"]) == 5  # batches 6-10 did not count
    assert all(torch.isfinite(p).all() for p in model_d.parameters())


CPU_AND_CUDA = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
        ],
    ),
]


@pytest.mark.parametrize("device", CPU_AND_CUDA)
def test_a_non_finite_gradient_of_a_finite_loss_is_divergence_on_both_engines(
    device: str,
) -> None:
    # Row 6 makes the loss 1e38 (finite in float32) and the weight's gradient 2e19 x 1e20:
    # inf. Neither engine may apply it, and both name the batch.
    x = rows(8).to(device)
    x[5, 0] = 1e20
    finals = []
    for use_direct in (False, True):
        model = build_model([dense(1)], 3, seed=0, device=device)
        with torch.no_grad():
            y = model(x).clone()
        y[5] -= 1e19  # the output misses row 6 by 1e19
        optimizer = adam(model)
        step = DirectStep(model, nn.MSELoss(), optimizer) if use_direct else None
        with pytest.raises(DivergedError) as raised:
            fit(
                model, nn.MSELoss(), optimizer, Tensors(x, y), None,
                epochs=1, batch_size=1, shuffle=False, seed=0, step=step,
            )  # fmt: skip
        # The loss is about 1e38: the output also moved in the 5 steps before row 6.
        found = re.fullmatch(
            r"Error: training: a gradient became non-finite \(the loss was (\S+)\) in epoch 1, "
            r"batch 6; that batch was not applied; lower training.optimizer.lr or scale the "
            r"target \(data.scale_target: true\)",
            str(raised.value),
        )
        assert found, str(raised.value)
        assert 5e37 < float(found.group(1)) < 2e38
        finals.append((model, optimizer))
    (model_a, _), (model_d, optimizer_d) = finals
    for a, b in zip(model_a.parameters(), model_d.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0 if device == "cpu" else 1e-5, atol=0)
        assert torch.isfinite(b).all()
    assert int(optimizer_d.state_dict()["state"][0]["step"]) == 5  # batches 6-8 did not count


def test_no_checkpoint_is_saved_past_a_divergence() -> None:
    x = rows(40)
    x[9] = 1e30  # batch 3 of 10
    model = build_model([dense(4, "relu"), dense(1)], 3, seed=0)
    optimizer = adam(model)
    saved: list[int] = []
    hooks = Hooks(save=lambda progress: saved.append(progress.steps), save_every_steps=2)
    with pytest.raises(DivergedError, match="batch 3"):
        fit(
            model, nn.MSELoss(), optimizer, Tensors(x, x[:, :1]), None,
            epochs=1, batch_size=4, shuffle=False, seed=0, hooks=hooks,
            step=DirectStep(model, nn.MSELoss(), optimizer),
        )  # fmt: skip
    assert saved == [2]  # the save due after step 4 found the flag up and stopped instead


StateDict = dict[str, Any]  # a model's or an optimizer's
Saved = tuple[Position, StateDict, StateDict]


def test_stopped_mid_epoch_and_resumed_it_matches_the_uninterrupted_run() -> None:
    layers: list[Layer] = [dense(8, "relu"), dense(1)]
    data = regression()

    def run(
        stop_after: int | None,
        progress: Position | None = None,
        state: tuple[StateDict, StateDict] | None = None,
    ) -> tuple[nn.Module | None, Saved | None]:
        """(the trained model, None), or (None, the last save) once asked to stop."""
        model = build_model(layers, 3, seed=0)
        optimizer = adam(model)
        if state is not None:
            model.load_state_dict(state[0])
            optimizer.load_state_dict(state[1])
        saved: dict[str, Saved] = {}

        def save(position: Position) -> None:
            saved["at"] = copy.deepcopy((position, model.state_dict(), optimizer.state_dict()))

        steps = iter(range(10**6))
        hooks = Hooks(
            save=save, stop_requested=lambda: stop_after is not None and next(steps) >= stop_after
        )
        try:
            fit(
                model, nn.MSELoss(), optimizer, data, None, epochs=3, batch_size=4, shuffle=True,
                seed=0, hooks=hooks, position=progress,
                step=DirectStep(model, nn.MSELoss(), optimizer),
            )  # fmt: skip
        except StopRequested:
            return None, saved["at"]
        return model, None

    _, stopped = run(stop_after=11)  # 8 steps, the epoch end, 3 steps
    assert stopped is not None
    position, weights, optimizer_state = stopped
    assert (position.epoch, position.batches_done) == (2, 3)
    resumed, _ = run(None, position, (weights, optimizer_state))
    uninterrupted, _ = run(None)
    assert resumed is not None and uninterrupted is not None
    for a, b in zip(resumed.parameters(), uninterrupted.parameters(), strict=True):
        assert torch.equal(a, b)


def test_train_records_the_engine_and_threads(cli: Cli, project: Project) -> None:
    runs = [project.train(cli, runs=project.root / "plain")]
    project.edit_config("  layers:\n", "  layers:\n    - {type: dropout, rate: 0.1}\n")
    runs.append(project.train(cli, runs=project.root / "dropout"))
    plain, with_dropout = (json.loads((run / "run.json").read_text())["training"] for run in runs)
    assert plain["engine"] == "direct" and plain["threads"] == 1 and plain["steps"] == 3 * 4
    assert plain["seconds"] > 0 and plain["why_not_direct"] is None
    assert with_dropout["engine"] == "autograd"
    assert with_dropout["why_not_direct"] == "a Dropout layer at that place"


def test_engine_direct_on_a_model_it_does_not_cover_is_a_config_error(
    cli: Cli, project: Project
) -> None:
    project.edit_config("  layers:\n", "  layers:\n    - {type: dropout, rate: 0.1}\n")
    project.edit_config("  loss: mse\n", "  loss: mse\n  engine: direct\n")
    result = cli("train", project.config, "--runs-dir", project.runs)
    assert result.code == 2 and not project.run_dirs()
    assert result.err.count("\n") == 1
    assert "config.yaml:" in result.err and "training.engine" in result.err
    assert "the direct step does not cover a Dropout layer" in result.err


def test_both_engines_give_the_same_run(cli: Cli, project: Project) -> None:
    direct_run = project.train(cli, runs=project.root / "direct")
    project.edit_config("  loss: mse\n", "  loss: mse\n  engine: autograd\n")
    autograd_run = project.train(cli, runs=project.root / "autograd")
    for name in ("model.safetensors", "metrics.json", "predictions.csv"):
        assert (direct_run / name).read_bytes() == (autograd_run / name).read_bytes(), name
    history = [(run / "history.csv").read_text().splitlines() for run in (direct_run, autograd_run)]
    assert [row.rsplit(",", 1)[0] for row in history[0]] == [  # all but the seconds column
        row.rsplit(",", 1)[0] for row in history[1]
    ]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_direct_step_matches_autograd_without_host_syncs() -> None:
    layers: list[Layer] = [dense(32, "relu"), dense(8, "relu"), dense(1)]
    x = rows(64).cuda()
    data = Tensors(x, x[:, :1] * 2 - x[:, 1:2])
    autograd, direct = train_both_ways(
        lambda: build_model(layers, 3, seed=0, device="cuda"), adam, nn.MSELoss(), data, 2, 1
    )
    for a, b in zip(autograd[0].parameters(), direct[0].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    model, optimizer, _ = direct
    step = DirectStep(model, nn.MSELoss(), optimizer)
    batches = list(zip(torch.split(data.x, 1), torch.split(data.y, 1), strict=True))
    step(*batches[0])  # the first step makes its scalar constants on the device
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync inside a step raises
    try:
        for xb, yb in batches[1:]:
            step(xb, yb)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert not step.diverged()


def test_a_one_unit_layer_fed_one_row_trains_bit_identically() -> None:
    # A [1, 1] activation counts as column-major to autograd, which then takes the input
    # gradient as (W^T g^T)^T: summed in another order than g W for a wide next layer.
    layers: list[Layer] = [dense(1, "tanh"), dense(257, "tanh"), dense(1)]
    autograd, direct = train_both_ways(
        lambda: build_model(layers, 3, seed=0), adam, nn.MSELoss(), regression(), 2, 1
    )
    assert_identical(autograd, direct)


def test_batch_norm_after_named_inputs_is_not_covered_and_does_not_crash() -> None:
    inputs = [InputSpec("a", [0], []), InputSpec("b", [1, 2], [])]
    layers: list[Layer] = [dense(4, "relu"), BatchNormLayer(type="batch_norm"), dense(1)]
    model = build_model(layers, 3, seed=0, inputs=inputs)
    assert unsupported(model, nn.MSELoss(), adam(model)) == "a BatchNorm1d layer at that place"


def test_the_optimizer_state_is_settled_however_fit_stops() -> None:
    model = build_model([dense(4, "relu"), dense(1)], 3, seed=0)
    optimizer = adam(model)
    calls = iter(range(100))
    hooks = Hooks(stop_requested=lambda: next(calls) == 5)  # no save hook
    with pytest.raises(StopRequested):
        fit(
            model, nn.MSELoss(), optimizer, regression(), None,
            epochs=2, batch_size=4, shuffle=True, seed=0, hooks=hooks,
            step=DirectStep(model, nn.MSELoss(), optimizer),
        )  # fmt: skip
    assert {int(state["step"]) for state in optimizer.state.values()} == {6}


def test_a_restored_optimizer_the_direct_step_refuses_trains_through_autograd(
    cli: Cli, project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(
        self: DirectStep,
        model: nn.Module,
        loss_fn: nn.Module,
        optimizer: torch.optim.Optimizer,
        over: object = None,
    ) -> None:
        raise Unsupported("Adam without fused=True")

    monkeypatch.setattr(DirectStep, "__init__", refuse)
    run = project.train(cli)
    training = json.loads((run / "run.json").read_text())["training"]
    assert training["engine"] == "autograd"
    assert training["why_not_direct"] == "Adam without fused=True"
    assert training["steps"] == 12
