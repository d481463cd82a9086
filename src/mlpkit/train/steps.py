"""The one kind of training step the loop sees, and its autograd form.

A step takes a batch, updates the weights and returns the batch's loss. Two kinds exist:
`AutogradStep` here (any model: forward, backward, optimizer.step) and direct.DirectStep
(dense stacks: gradients written out, one fused optimizer kernel). The loop calls both the
same way and never asks which it has.

A non-finite loss never reaches the weights. A step may notice it at once (autograd checks
each loss, a host sync it pays anyway) and raise NonFiniteLoss; or it may raise a flag on the
device and skip that update and every one after it (direct: no sync per step), which
`diverged` reads when the loop settles the epoch or saves a checkpoint.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class Step(Protocol):
    """One optimizer update per call; `settle` before the optimizer's state is read."""

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Train on one batch (x [rows, features], y as the loss takes it); return its loss."""
        ...

    def settle(self) -> None:
        """Bring the optimizer's own state up to date (for a checkpoint, or the caller)."""
        ...

    def diverged(self) -> bool:
        """Whether a step since training began had a non-finite loss that was not applied."""
        ...


class NonFiniteLoss(Exception):
    """The batch's loss was NaN or infinite; nothing was applied."""

    def __init__(self, value: float) -> None:
        super().__init__(value)
        self.value = value


class AutogradStep:
    """loss -> backward -> optimizer.step, for any model, loss and optimizer."""

    def __init__(
        self, model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer
    ) -> None:
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One step; raises NonFiniteLoss before the optimizer sees a non-finite loss."""
        loss = self.loss_fn(self.model(x), y)  # Any: nn.Module calls are untyped
        if not torch.isfinite(loss):  # a host sync, so the bad batch never reaches the optimizer
            raise NonFiniteLoss(loss.item())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss  # type: ignore[no-any-return]

    def settle(self) -> None:
        """Nothing to do: optimizer.step keeps its state up to date."""

    def diverged(self) -> bool:
        """Never: a non-finite loss raised NonFiniteLoss at its own step."""
        return False
