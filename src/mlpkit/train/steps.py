"""The one kind of training step the loop sees, and its autograd form.

A step takes a batch, updates the weights and returns the batch's loss. Two kinds exist:
`AutogradStep` here (any model: forward, backward, optimizer.step) and direct.DirectStep
(dense stacks: gradients written out, one fused optimizer kernel). The loop calls both the
same way and never asks which it has.

A non-finite loss never reaches the weights, nor does a non-finite gradient of a finite loss
(one too large for float32). A step may notice it at once (autograd checks the loss and the
gradients together, one host sync it pays anyway) and raise NonFiniteLoss; or it may raise a
flag on the device and skip that update and every one after it (direct: no sync per step),
which `diverged` reads when the loop settles the epoch or saves a checkpoint, and `skipped`
says how many steps ago it rose.
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
        """Whether a step since training began had a non-finite loss or gradient that was not
        applied."""
        ...

    def skipped(self) -> int:
        """How many of the latest steps were skipped since the first non-finite one (0 when
        none was): the first is that many steps back, counting the latest as one."""
        ...


class NonFiniteLoss(Exception):
    """The batch's loss was NaN or infinite, or (`gradients`) the loss was finite but one of
    its gradients was not; nothing was applied."""

    def __init__(self, value: float, gradients: bool = False) -> None:
        super().__init__(value)
        self.value = value
        self.gradients = gradients


class AutogradStep:
    """loss -> backward -> optimizer.step, for any model, loss and optimizer."""

    def __init__(
        self, model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer
    ) -> None:
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        device = self.parameters[0].device
        self.found_inf = torch.zeros((), device=device)
        self.one = torch.ones((), device=device)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One step; raises NonFiniteLoss before the optimizer sees a non-finite loss or
        gradient."""
        loss = self.loss_fn(self.model(x), y)  # Any: nn.Module calls are untyped
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # The loss and every gradient in one check (multiplying by one changes no bit), then
        # one host sync, so the bad batch never reaches the optimizer.
        grads = [p.grad for p in self.parameters if p.grad is not None]
        checked = [loss.detach(), *grads]
        torch._amp_foreach_non_finite_check_and_unscale_(checked, self.found_inf, self.one)
        if self.found_inf.item():
            raise NonFiniteLoss(loss.item(), gradients=bool(torch.isfinite(loss)))
        self.optimizer.step()
        return loss  # type: ignore[no-any-return]

    def settle(self) -> None:
        """Nothing to do: optimizer.step keeps its state up to date."""

    def diverged(self) -> bool:
        """Never: a non-finite loss or gradient raised NonFiniteLoss at its own step."""
        return False

    def skipped(self) -> int:
        """None: a step that was not finite raised instead."""
        return 0
