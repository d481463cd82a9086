"""The stacked engine's core: K members trained as one computation move as each alone would."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlpkit.config.schema import DenseLayer, Layer
from mlpkit.train.model import build_model
from mlpkit.train.stacked import StackedAdam, StackedDense, Unstackable

MPG_LAYERS: list[Layer] = [
    DenseLayer(type="dense", units=32, activation="relu"),
    DenseLayer(type="dense", units=8, activation="relu"),
    DenseLayer(type="dense", units=1),
]


def members(k: int, layers: list[Layer] = MPG_LAYERS) -> list[nn.Module]:
    return [build_model(layers, 7, seed=seed) for seed in range(k)]


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
    stack = StackedDense(members(k, layers))
    stacked = StackedAdam(stack, lr=1e-2)
    for step in range(steps):
        stacked.step(x[step], y[step])
    for member in range(k):
        alone = members(k, layers)[member]
        optimizer = torch.optim.Adam(alone.parameters(), lr=1e-2, fused=True)
        for step in range(steps):
            optimizer.zero_grad()
            nn.functional.mse_loss(alone(x[step, member]), y[step, member]).backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        got = stack.member(member, members(1, layers)[0])
        for a, b in zip(alone.parameters(), got.parameters(), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_the_forward_pass_is_each_members_own() -> None:
    nets = members(3)
    stack = StackedDense(nets)
    x = torch.randn(3, 5, 7)
    out = stack.forward(x)
    for k, net in enumerate(nets):
        torch.testing.assert_close(out[k], net(x[k]))


def test_written_out_gradients_equal_autograd() -> None:
    nets = members(2)
    stack = StackedDense(nets)
    x, y = torch.randn(2, 6, 7), torch.randn(2, 6, 1)
    loss, grads = stack.mse_gradients(x, y)
    for k, net in enumerate(nets):
        member_loss = nn.functional.mse_loss(net(x[k]), y[k])
        member_loss.backward()  # type: ignore[no-untyped-call]
        torch.testing.assert_close(loss[k], member_loss.detach())
        for grad, parameter in zip(grads, net.parameters(), strict=True):
            assert parameter.grad is not None
            torch.testing.assert_close(grad[k], parameter.grad)


def test_what_it_cannot_stack_it_names() -> None:
    with pytest.raises(Unstackable, match="a Dropout layer"):
        StackedDense([nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Dropout(0.1))])
    with pytest.raises(Unstackable, match="members of different shapes"):
        StackedDense([nn.Sequential(nn.Linear(3, 4)), nn.Sequential(nn.Linear(3, 5))])
