"""Fit, evaluate and predict on in-memory tensors or streams. Returns history; never prints.

Batches come from the tensors by index: each epoch draws one permutation, gathers the rows once
in that order, then takes contiguous slices (views, no copy). That is the whole "batch sampler",
with no per-row __getitem__ or collate, and nothing leaves the device until the epoch ends.

Training keeps its place in a Position: the epoch, the batches of it already trained, the
history, the shuffle generator's state at the epoch's start, the partial epoch's losses and
early stopping's state. A checkpoint saves a Position, and `fit` given one carries on from it:
an epoch's batches are a pure function of the seed and the epoch, so the batches already
trained are skipped and the rest are the very batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import TYPE_CHECKING, NamedTuple, Protocol

import torch
from torch import nn

from mlpkit.errors import DivergedError, Problem
from mlpkit.train.budget import EVAL_BATCH  # rows per forward pass when predicting
from mlpkit.train.model import non_finite
from mlpkit.train.steps import AutogradStep, NonFiniteLoss, Step

if TYPE_CHECKING:
    from mlpkit.train.distributed import Group


@dataclass(frozen=True)
class Tensors:
    """Inputs [rows, features] and targets as the task trains on them, on the device."""

    x: torch.Tensor
    y: torch.Tensor


class Batch(NamedTuple):
    """One training batch on the device: inputs [rows, features] and targets."""

    x: torch.Tensor
    y: torch.Tensor


EpochRecord = dict[str, float]
# The task's scores of outputs against targets (see tasks.py), in the target's own terms.
Scorer = Callable[[torch.Tensor, torch.Tensor], dict[str, float]]
OnEpoch = Callable[[EpochRecord], None]


@dataclass(frozen=True)
class BatchStream:
    """Training batches (inputs, targets) on the device from a source other than tensors:
    `epoch_batches(epoch)` yields the batches of that epoch (1-based), the same ones each call."""

    epoch_batches: Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]


@dataclass(frozen=True)
class EarlyStopping:
    """Stop when `monitor` (a key of the epoch records) has not improved for `patience` epochs."""

    monitor: str
    lower_is_better: bool
    patience: int
    min_delta: float = 0.0
    restore_best: bool = True

    def improves(self, value: float, best: float | None) -> bool:
        """Whether `value` beats `best` by more than min_delta in the monitored direction."""
        if best is None:
            return value == value  # a NaN never becomes the best
        if self.lower_is_better:
            return value < best - self.min_delta
        return value > best + self.min_delta


@dataclass
class Position:
    """Where training stands; with the model's and optimizer's state, all a checkpoint holds."""

    epoch: int = 1  # the epoch in progress, or the next to begin
    batches_done: int = 0  # batches of `epoch` already trained
    steps: int = 0  # optimizer steps in all epochs
    history: list[EpochRecord] = field(default_factory=list)
    order_state: torch.Tensor | None = None  # the shuffle generator at the start of `epoch`
    losses: list[torch.Tensor] = field(default_factory=list)  # each batch of `epoch`, on device
    sizes: list[int] = field(default_factory=list)  # rows of each of those batches
    best_value: float | None = None  # early stopping: the best monitored value so far
    best_epoch: int = 0
    stale_epochs: int = 0  # epochs since the best one
    best_weights: dict[str, torch.Tensor] | None = None  # kept when restore_best is on
    stopped_early: bool = False

    def epoch_loss(self) -> float:
        """The mean training loss per row of the epoch so far, summed in float64: the batch
        losses are float32, and their size-weighted sum may overflow float32 while each of
        them, and their mean, is finite."""
        if not self.sizes:
            raise RuntimeError("an epoch yielded no training batches")
        losses = torch.stack(self.losses).double()  # [batches]
        weights = torch.tensor(self.sizes, dtype=torch.float64, device=losses.device)
        return float(losses @ weights) / sum(self.sizes)  # one sync an epoch


@dataclass(frozen=True)
class Hooks:
    """What the caller does between steps: report epochs, save checkpoints, stop when asked."""

    on_epoch: OnEpoch | None = None
    save: Callable[[Position], None] | None = None
    save_every_steps: int | None = None
    stop_requested: Callable[[], bool] | None = None


class EpochSchedule(Protocol):
    """The learning-rate schedule (schedules.py): stepped once at the end of each epoch."""

    def step(self, record: EpochRecord) -> None: ...


class StopRequested(Exception):
    """Training stopped at a step boundary because the caller asked; a checkpoint was saved."""


def fit(
    model: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    train: Tensors | BatchStream,
    val: Tensors | None,
    *,
    epochs: int,
    batch_size: int,
    shuffle: bool,
    seed: int,
    score: Scorer | None = None,
    early_stopping: EarlyStopping | None = None,
    hooks: Hooks | None = None,
    position: Position | None = None,
    step: Step | None = None,
    schedule: EpochSchedule | None = None,
    shard: Group | None = None,
) -> Position:
    """Train up to `epochs` (from `position` if given) and return where training ended.

    Under torchrun (`shard`, distributed.py) this process trains on its share of each global
    batch of batch_size x world rows (in-memory rows: every rank draws the same order and takes
    its slice of it; a stream gives each rank its own), the step sums the gradients over the
    group, and every rank keeps the same Position: the global batches' losses and rows, rank
    0's validation figures, and a stop when any rank was asked to. `val` is rank 0's alone.

    `train` is in-memory rows (each epoch one pass in a seeded random order) or a stream.
    With early stopping that restores the best, the model ends with the best epoch's weights.
    Each batch trains through `step` (steps.py; autograd with `optimizer` when not given).
    Each epoch's record holds the learning rate it trained at; `schedule` then sets the next.

    Raises:
        DivergedError: a batch's loss was NaN or infinite; it was not applied.
        StopRequested: hooks.stop_requested said so; hooks.save has saved the position.
    """
    hooks = hooks or Hooks()
    if shard is not None:  # stop when any rank was asked to, all after the same step
        shard.asked = hooks.stop_requested or (lambda: False)
        hooks = replace(hooks, stop_requested=lambda: shard.stopping)
    step = step or AutogradStep(model, loss_fn, optimizer)
    position = position or Position()
    generator = torch.Generator().manual_seed(seed)
    if position.order_state is not None:
        generator.set_state(position.order_state)
    device = next(model.parameters()).device
    position.losses = [loss.to(device) for loss in position.losses]  # a checkpoint's are on CPU
    while position.epoch <= epochs and not position.stopped_early:
        started = time.perf_counter()
        position.order_state = generator.get_state()
        if isinstance(train, BatchStream):
            batches = train.epoch_batches(position.epoch)
        else:
            batches = _slices(model, train, batch_size, shuffle, generator, shard)
        remaining = islice(batches, position.batches_done, None)
        model.train()
        try:
            _train_epoch(step, remaining, position, hooks, shard)
        except NonFiniteLoss as bad:  # seen at its own step: the batch after those done
            what = what_diverged(bad.value, bad.gradients)
            raise diverged(what, position.epoch, position.batches_done + 1) from None
        finally:  # whatever stops the epoch, the optimizer's state is left up to date
            step.settle()
        _settle(position, step)
        record: EpochRecord = {"epoch": position.epoch, "train_loss": position.epoch_loss()}
        if val is not None:
            record |= evaluate(model, loss_fn, val, score, prefix="val_")
        if shard is not None:
            record = shard.shared(record)
        check_epoch(record, position.epoch, model, optimizer)
        record["lr"] = float(optimizer.param_groups[0]["lr"])  # the rate of the whole epoch
        record["seconds"] = time.perf_counter() - started
        end_epoch(position, record, model, early_stopping)
        if schedule is not None:  # before the save: the checkpoint holds the next epoch's rate
            schedule.step(record)
        position.order_state = generator.get_state()  # where the next epoch's shuffle begins
        if hooks.save is not None:
            hooks.save(position)
        if hooks.on_epoch is not None:
            hooks.on_epoch(record)
        if _asked_to_stop(hooks):
            raise StopRequested()
    if early_stopping is not None and position.best_weights is not None:
        model.load_state_dict(position.best_weights)
    return position


def end_epoch(
    position: Position, record: EpochRecord, model: nn.Module, stopping: EarlyStopping | None
) -> None:
    """Record the epoch, move to the next, and update early stopping's state."""
    position.history.append(record)
    if stopping is not None:
        value = record[stopping.monitor]
        if stopping.improves(value, position.best_value):
            position.best_value, position.best_epoch, position.stale_epochs = (
                value,
                position.epoch,
                0,
            )
            if stopping.restore_best:
                position.best_weights = {
                    k: v.detach().clone() for k, v in model.state_dict().items()
                }
        else:
            position.stale_epochs += 1
            position.stopped_early = position.stale_epochs >= stopping.patience
    position.epoch += 1
    position.batches_done = 0
    position.losses, position.sizes = [], []


def _slices(
    model: nn.Module,
    data: Tensors,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator,
    shard: Group | None = None,
) -> Iterator[Batch]:
    """One epoch of batches: the rows gathered once in a random order, then sliced (views).
    A rank of a group takes its share of each global batch: the same order on every rank."""
    n_rows = data.x.shape[0]
    if shuffle:
        order = torch.randperm(n_rows, generator=generator).to(data.x.device)
        x, y = data.x[order], data.y[order]
    else:
        x, y = data.x, data.y
    # Batch norm cannot take batch statistics of a single row: skip a last batch of one row
    # (with shuffling, a different row each epoch).
    whole = batch_size if shard is None else batch_size * shard.world
    if _model_has_batch_norm(model) and n_rows % whole == 1:
        n_rows -= 1
    if _model_has_batch_norm(model) and shard is not None:
        n_rows -= n_rows % whole  # a short last global batch could leave a rank one row
    if shard is not None:  # the rank's rows of each global batch (none, in a short last one)
        for start in range(0, n_rows, whole):
            end = min(start + whole, n_rows)
            share = min(start + shard.rank * batch_size, end)
            yield Batch(
                x[share : min(share + batch_size, end)], y[share : min(share + batch_size, end)]
            )
        return
    # split: every batch's view in one call, cheaper than slicing each (matters at batch 1)
    views = zip(
        torch.split(x[:n_rows], batch_size), torch.split(y[:n_rows], batch_size), strict=True
    )
    yield from map(Batch._make, views)


def _train_epoch(
    step: Step,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    position: Position,
    hooks: Hooks,
    shard: Group | None = None,
) -> None:
    """One optimizer step per batch, each loss kept (on the device) in `position` with its
    rows (a group's: the global batch's, which its step summed)."""
    every = hooks.save_every_steps
    for xb, yb in batches:
        loss = step(xb, yb)
        position.losses.append(loss.detach())
        position.sizes.append(xb.shape[0] if shard is None else shard.rows)
        position.batches_done += 1
        position.steps += 1
        stop = _asked_to_stop(hooks)  # read once: a signal between two reads would skip the save
        due = every is not None and position.steps % every == 0
        if stop or (due and hooks.save is not None):
            _settle(position, step)  # never save, or stop, past a divergence unreported
            if hooks.save is not None:
                hooks.save(position)
        if stop:
            raise StopRequested()


def _settle(position: Position, step: Step) -> None:
    """Bring the optimizer's state up to date for a checkpoint or the caller, and raise if a
    step of this epoch had a non-finite loss or gradient: a step that flags it on the device
    (direct) skipped it and every step after it, so the weights are from before it."""
    step.settle()
    if not step.diverged():
        return
    # The flag rose at a step of this epoch since the last settle (checkpoints are only
    # written while it is down), `skipped` steps back counting the latest as one.
    batch = position.batches_done - step.skipped()  # 0-based, in this epoch
    value = position.losses[batch].item()
    gradients = bool(torch.isfinite(position.losses[batch]))
    raise diverged(what_diverged(value, gradients), position.epoch, batch + 1)


def what_diverged(value: float, gradients: bool) -> str:
    if gradients:
        return f"a gradient became non-finite (the loss was {value:.4g})"
    return f"the training loss became {value}"


HINT = "lower training.optimizer.lr or scale the target (data.scale_target: true)"


def diverged(what: str, epoch: int, batch: int) -> DivergedError:
    return DivergedError(
        Problem(
            f"{what} in epoch {epoch}, batch {batch}; that batch was not applied",
            where="training",
            hint=HINT,
        )
    )


def check_epoch(
    record: EpochRecord, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    """Raise DivergedError if the epoch's losses or the state it leaves are not finite, before
    the epoch is recorded or saved: each batch's loss and gradients were finite (the step
    checks them), yet the mean of finite float32 losses over the validation rows may
    overflow, and an update or an optimizer moment (a gradient squared) may too."""
    for key, what in (("train_loss", "training"), ("val_loss", "validation")):
        value = record.get(key)
        if value is not None and not math.isfinite(value):
            overflowed = ": it overflowed float32" if value == math.inf else ""
            raise _epoch_diverged(f"the {what} loss of epoch {epoch} became {value}{overflowed}")
    named = {id(p): name for name, p in model.named_parameters()}
    tensors = {name: p.detach() for name, p in model.named_parameters()}
    for parameter, state in optimizer.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                tensors[f"the optimizer's '{key}' of {named.get(id(parameter), '?')}"] = value
    bad = non_finite(tensors)
    if bad is not None:
        raise _epoch_diverged(f"{bad[0]} became non-finite in epoch {epoch}")


def _epoch_diverged(what: str) -> DivergedError:
    return DivergedError(
        Problem(f"{what}; the run stopped before saving that epoch", where="training", hint=HINT)
    )


def _asked_to_stop(hooks: Hooks) -> bool:
    return hooks.stop_requested is not None and hooks.stop_requested()


def _model_has_batch_norm(model: nn.Module) -> bool:
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
