"""The stacked engine's core: K members trained as one computation move as each alone would."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from mlpkit.config.schema import DenseLayer, Layer
from mlpkit.train.model import build_model
from mlpkit.train.stacked import OptimizerSettings, StackedNetwork, StackedOptimizer, Unstackable

MPG_LAYERS: list[Layer] = [
    DenseLayer(type="dense", units=32, activation="relu"),
    DenseLayer(type="dense", units=8, activation="relu"),
    DenseLayer(type="dense", units=1),
]


def members(k: int, layers: list[Layer] = MPG_LAYERS) -> list[nn.Module]:
    return [build_model(layers, 7, seed=seed) for seed in range(k)]


def assert_autograd_agrees(
    stack: StackedNetwork,
    nets: list[nn.Module],
    loss_fn: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """The stack's losses [K] on `batch`; each net's loss and gradients from autograd, on its
    own batch (its first rows[k] rows), equal the stack's (its gradient buffer)."""
    x, y = batch
    loss = stack.loss_and_gradients(x, y, rows)
    for k, net in enumerate(nets):
        n = x.shape[1] if rows is None else int(rows[k])
        member_loss = loss_fn(net(x[k, :n]), y[k, :n])
        member_loss.backward()
        torch.testing.assert_close(loss[k], member_loss.detach())
        grads = stack.row(stack.grad, k)
        for name, parameter in net.named_parameters():
            assert parameter.grad is not None
            torch.testing.assert_close(grads[name], parameter.grad)
    return loss


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_a_stacked_member_after_100_steps_matches_it_trained_alone(activation: str) -> None:
    layers: list[Layer] = [
        DenseLayer(type="dense", units=16, activation=activation),
        DenseLayer(type="dense", units=1),
    ]
    k, batch, steps = 4, 8, 100
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(steps, k, batch, 7, generator=generator)  # each member its own batches
    y = x[..., :1] * 2 - x[..., 1:2] + 0.1 * torch.randn(steps, k, batch, 1, generator=generator)
    stack = StackedNetwork(members(k, layers), nn.MSELoss())
    stacked = StackedOptimizer(stack, [OptimizerSettings(lr=1e-2)] * k)
    for step in range(steps):
        stack.loss_and_gradients(x[step], y[step])
        stacked.step()
    for member in range(k):
        alone = members(k, layers)[member]
        optimizer = torch.optim.Adam(alone.parameters(), lr=1e-2, fused=True)
        for step in range(steps):
            optimizer.zero_grad()
            nn.functional.mse_loss(alone(x[step, member]), y[step, member]).backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        got = stack.member_state(member)
        for name, parameter in alone.named_parameters():
            torch.testing.assert_close(got[name], parameter.detach(), rtol=1e-5, atol=1e-6)


def test_the_forward_pass_is_each_members_own() -> None:
    nets = members(3)
    stack = StackedNetwork(nets, nn.MSELoss())
    x = torch.randn(3, 5, 7)
    out = stack.forward(x)
    for k, net in enumerate(nets):
        torch.testing.assert_close(out[k], net(x[k]))


def test_written_out_gradients_equal_autograd() -> None:
    nets = members(2)
    stack = StackedNetwork(nets, nn.MSELoss())
    x, y = torch.randn(2, 6, 7), torch.randn(2, 6, 1)
    assert_autograd_agrees(stack, nets, nn.MSELoss(), (x, y))


def test_what_it_cannot_stack_it_names() -> None:
    with pytest.raises(Unstackable, match="a Dropout layer"):
        StackedNetwork([nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Dropout(0.1))], nn.MSELoss())
    with pytest.raises(Unstackable, match="members of different shapes"):
        StackedNetwork(
            [nn.Sequential(nn.Linear(3, 4)), nn.Sequential(nn.Linear(3, 5))], nn.MSELoss()
        )
    with pytest.raises(Unstackable, match="the loss SmoothL1Loss"):
        StackedNetwork([nn.Sequential(nn.Linear(3, 4))], nn.SmoothL1Loss())


@pytest.mark.parametrize(
    ("loss_fn", "target"),
    [
        (nn.BCEWithLogitsLoss(), lambda g: (torch.rand(2, 6, 1, generator=g) > 0.5).float()),
        (nn.CrossEntropyLoss(), lambda g: torch.randint(0, 3, (2, 6), generator=g)),
    ],
)
def test_classification_losses_and_gradients_equal_autograd(
    loss_fn: nn.Module, target: Any
) -> None:
    outputs = 1 if isinstance(loss_fn, nn.BCEWithLogitsLoss) else 3
    layers: list[Layer] = [
        DenseLayer(type="dense", units=5, activation="tanh"),
        DenseLayer(type="dense", units=outputs),
    ]
    nets = [build_model(layers, 4, seed=seed) for seed in range(2)]
    stack = StackedNetwork(nets, loss_fn)
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 6, 4, generator=generator), target(generator)
    assert_autograd_agrees(stack, nets, loss_fn, (x, y))


def test_members_with_their_own_rate_and_steps_move_as_alone() -> None:
    """Per-member settings and sitting steps out: member 1 has its own rate and decay and sits
    out every third step; each still ends where its own torch Adam takes it."""
    k, steps = 3, 30
    settings = [
        OptimizerSettings(lr=1e-2),
        OptimizerSettings(lr=3e-3, weight_decay=0.1),
        OptimizerSettings(1e-2),
    ]
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(steps, k, 4, 7, generator=generator)
    y = torch.randn(steps, k, 4, 1, generator=generator)
    stack = StackedNetwork(members(k), nn.MSELoss())
    optimizer = StackedOptimizer(stack, settings)
    for step in range(steps):
        stack.loss_and_gradients(x[step], y[step])
        optimizer.step(None if step % 3 else [0, 2])
    for member in range(k):
        alone = members(k)[member]
        setting = settings[member]
        adam = torch.optim.Adam(
            alone.parameters(), lr=setting.lr, weight_decay=setting.weight_decay
        )
        for step in range(steps):
            if member == 1 and step % 3 == 0:
                continue
            adam.zero_grad()
            nn.functional.mse_loss(alone(x[step, member]), y[step, member]).backward()  # type: ignore[no-untyped-call]
            adam.step()
        got = stack.member_state(member)
        for name, parameter in alone.named_parameters():
            torch.testing.assert_close(got[name], parameter.detach(), rtol=1e-5, atol=1e-6)
        state = optimizer.member_state(member, dict(alone.named_parameters()))
        for parameter in alone.parameters():
            assert float(state[parameter]["step"]) == float(adam.state[parameter]["step"])


@pytest.mark.parametrize("loss_fn", [nn.MSELoss(), nn.BCEWithLogitsLoss(), nn.CrossEntropyLoss()])
def test_batches_of_different_sizes_are_each_members_own(loss_fn: nn.Module) -> None:
    """Folds of different sizes: member 0 has 5 rows of the 6-row batch, member 1 all 6, and
    member 2 none (its loss and gradients are zero: it sits the step out)."""
    outputs = 3 if isinstance(loss_fn, nn.CrossEntropyLoss) else 1
    layers: list[Layer] = [
        DenseLayer(type="dense", units=5, activation="relu"),
        DenseLayer(type="dense", units=outputs),
    ]
    nets = [build_model(layers, 4, seed=seed) for seed in range(3)]
    stack = StackedNetwork(nets, loss_fn)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(3, 6, 4, generator=generator)
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        y: torch.Tensor = torch.randint(0, 3, (3, 6), generator=generator)
    else:
        y = (torch.rand(3, 6, 1, generator=generator) > 0.5).float()
    rows = torch.tensor([5, 6, 0])
    loss = assert_autograd_agrees(stack, nets[:2], loss_fn, (x, y), rows)
    assert float(loss[2]) == 0.0 and not stack.grad[2].any()


@pytest.mark.parametrize("activation", ["silu", "gelu", "elu", "leaky_relu"])
def test_the_direct_engines_other_activations_stack(activation: str) -> None:
    layers: list[Layer] = [
        DenseLayer(type="dense", units=6, activation=activation),
        DenseLayer(type="dense", units=1),
    ]
    nets = [build_model(layers, 7, seed=seed) for seed in range(2)]
    stack = StackedNetwork(nets, nn.MSELoss())
    x, y = torch.randn(2, 5, 7), torch.randn(2, 5, 1)
    assert_autograd_agrees(stack, nets, nn.MSELoss(), (x, y))


LOSS_CASES = [
    (nn.L1Loss(), 1),
    (nn.HuberLoss(delta=0.7), 1),
    (nn.BCEWithLogitsLoss(pos_weight=torch.tensor([2.5])), 1),
    (nn.CrossEntropyLoss(weight=torch.tensor([0.5, 2.0, 1.0])), 3),
]


@pytest.mark.parametrize(("loss_fn", "outputs"), LOSS_CASES)
@pytest.mark.parametrize("masked", [False, True])
def test_the_direct_engines_other_losses_stack(
    loss_fn: nn.Module, outputs: int, masked: bool
) -> None:
    layers: list[Layer] = [
        DenseLayer(type="dense", units=5, activation="relu"),
        DenseLayer(type="dense", units=outputs),
    ]
    nets = [build_model(layers, 4, seed=seed) for seed in range(2)]
    stack = StackedNetwork(nets, loss_fn)
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2, 6, 4, generator=generator)
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        y: torch.Tensor = torch.randint(0, 3, (2, 6), generator=generator)
    elif isinstance(loss_fn, nn.BCEWithLogitsLoss):
        y = (torch.rand(2, 6, 1, generator=generator) > 0.5).float()
    else:
        y = torch.randn(2, 6, 1, generator=generator)
    rows = torch.tensor([4, 6]) if masked else None
    assert_autograd_agrees(stack, nets, loss_fn, (x, y), rows)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_members_move_as_alone(nesterov: bool) -> None:
    k, steps = 2, 20
    settings = [
        OptimizerSettings(lr=0.05, kind="sgd", momentum=0.9, nesterov=nesterov),
        OptimizerSettings(lr=0.02, kind="sgd", weight_decay=0.01),
    ]
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(steps, k, 4, 7, generator=generator)
    y = torch.randn(steps, k, 4, 1, generator=generator)
    stack = StackedNetwork(members(k), nn.MSELoss())
    optimizer = StackedOptimizer(stack, settings)
    for step in range(steps):
        stack.loss_and_gradients(x[step], y[step])
        optimizer.step()
    for member in range(k):
        alone = members(k)[member]
        setting = settings[member]
        sgd = torch.optim.SGD(
            alone.parameters(),
            lr=setting.lr,
            momentum=setting.momentum,
            nesterov=setting.nesterov,
            weight_decay=setting.weight_decay,
        )
        for step in range(steps):
            sgd.zero_grad()
            nn.functional.mse_loss(alone(x[step, member]), y[step, member]).backward()  # type: ignore[no-untyped-call]
            sgd.step()
        got = stack.member_state(member)
        for name, parameter in alone.named_parameters():
            torch.testing.assert_close(got[name], parameter.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_stacked_engine_on_cuda_matches_the_members_trained_alone_on_the_cpu() -> None:
    k, steps, device = 4, 50, torch.device("cuda")
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(steps, k, 8, 7, generator=generator)
    y = torch.randn(steps, k, 8, 1, generator=generator)
    nets = [net.to(device) for net in members(k)]
    stack = StackedNetwork(nets, nn.MSELoss())
    optimizer = StackedOptimizer(stack, [OptimizerSettings(lr=1e-2)] * k)
    for step in range(steps):
        stack.loss_and_gradients(x[step].to(device), y[step].to(device))
        assert bool(stack.grad.sum().isfinite())
        optimizer.step()
    for member in range(k):
        alone = members(k)[member]
        adam = torch.optim.Adam(alone.parameters(), lr=1e-2)
        for step in range(steps):
            adam.zero_grad()
            nn.functional.mse_loss(alone(x[step, member]), y[step, member]).backward()  # type: ignore[no-untyped-call]
            adam.step()
        got = stack.member_state(member)
        for name, parameter in alone.named_parameters():
            torch.testing.assert_close(got[name].cpu(), parameter.detach(), rtol=1e-4, atol=1e-5)
