"""Fit, evaluate and predict on in-memory tensors. Returns history; never prints.

Batches come from the tensors by index: each epoch draws one permutation, gathers the rows once
in that order, then takes contiguous slices (views, no copy). That is the whole "batch sampler",
with no per-row __getitem__ or collate, and nothing leaves the device until the epoch ends.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from mlpkit.errors import DivergedError, Problem


@dataclass(frozen=True)
class Tensors:
    """Inputs [rows, features] and targets as the task trains on them, on the device."""

    x: torch.Tensor
    y: torch.Tensor


Batch = tuple[torch.Tensor, torch.Tensor]
EpochRecord = dict[str, float]
# The task's scores of outputs against targets (see tasks.py), in the target's own terms.
Scorer = Callable[[torch.Tensor, torch.Tensor], dict[str, float]]
OnEpoch = Callable[[EpochRecord], None]
EVAL_BATCH = 8192  # rows per forward pass when predicting; large enough to be one pass for mpg


@dataclass(frozen=True)
class Stream:
    """Training batches (inputs, targets) on the device from a source other than tensors:
    `epoch_batches(epoch)` yields the batches of that epoch (1-based)."""

    epoch_batches: Callable[[int], Iterator[Batch]]


def fit(
    model: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    train: Tensors | Stream,
    val: Tensors | None,
    *,
    epochs: int,
    batch_size: int,
    shuffle: bool,
    seed: int,
    score: Scorer | None = None,
    on_epoch: OnEpoch | None = None,
) -> list[EpochRecord]:
    """Train for `epochs` and return one record per epoch (plain floats).

    `train` is in-memory rows (each epoch one pass in a seeded random order) or a stream.

    Raises:
        DivergedError: the training loss became NaN or infinite.
    """
    generator = torch.Generator().manual_seed(seed)
    history: list[EpochRecord] = []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        if isinstance(train, Stream):
            batches = train.epoch_batches(epoch)
        else:
            batches = _slices(model, train, batch_size, shuffle, generator)
        train_loss = _train_epoch(model, loss_fn, optimizer, batches)
        if not math.isfinite(train_loss):
            raise DivergedError(
                Problem(
                    f"the training loss became {train_loss} in epoch {epoch}",
                    where="training",
                    hint="lower training.optimizer.lr or scale the target",
                )
            )
        record: EpochRecord = {"epoch": epoch, "train_loss": train_loss}
        if val is not None:
            record |= evaluate(model, loss_fn, val, score, prefix="val_")
        record["seconds"] = time.perf_counter() - started
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
    return history


def _slices(
    model: nn.Module, data: Tensors, batch_size: int, shuffle: bool, generator: torch.Generator
) -> Iterator[Batch]:
    """One epoch of batches: the rows gathered once in a random order, then sliced (views)."""
    n_rows = data.x.shape[0]
    if shuffle:
        order = torch.randperm(n_rows, generator=generator).to(data.x.device)
        x, y = data.x[order], data.y[order]
    else:
        x, y = data.x, data.y
    # Batch norm cannot take batch statistics of a single row: skip a last batch of one row
    # (with shuffling, a different row each epoch).
    if _has_batch_norm(model) and n_rows % batch_size == 1:
        n_rows -= 1
    for start in range(0, n_rows, batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]  # [b, f], [b, ...]


def _train_epoch(
    model: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[Batch],
) -> float:
    """One optimizer step per batch; the mean training loss per row."""
    model.train()
    losses, sizes = [], []  # losses stay on the device: no extra torch op or sync per step
    for xb, yb in batches:
        loss = loss_fn(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        sizes.append(xb.shape[0])
    if not sizes:
        raise RuntimeError("an epoch yielded no training batches")
    weights = torch.tensor(sizes, dtype=losses[0].dtype, device=losses[0].device)
    return float(torch.stack(losses) @ weights) / sum(sizes)  # the one host sync of the epoch


def _has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Model outputs for all rows, [rows, outputs], in eval mode."""
    model.eval()
    return torch.cat([model(x[i : i + EVAL_BATCH]) for i in range(0, x.shape[0], EVAL_BATCH)])


def evaluate(
    model: nn.Module,
    loss_fn: nn.Module,
    data: Tensors,
    score: Scorer | None,
    prefix: str = "",
) -> EpochRecord:
    """The loss on `data` and, if given, the task's scores of the outputs."""
    outputs = predict(model, data.x)
    record = {f"{prefix}loss": float(loss_fn(outputs, data.y))}
    scores = score(data.y, outputs) if score is not None else {}
    return record | {f"{prefix}{name}": value for name, value in scores.items()}
