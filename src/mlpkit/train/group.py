"""Fit K members of one shape together on the stacked engine (stacked.py): `--seeds`, folds.

Each member keeps what train.loop.fit would give it alone: its own rows (split or fold), its
shuffle order (a generator seeded with its seed, one permutation an epoch, as loop.fit draws
it), its Position (history, early stopping's state, the generator's state), its optimizer's
state in the usual torch form at every save. Epoch ends go through loop.end_epoch and
loop.check_epoch on the member's own network, so records and early stopping read exactly as
a run of its own. A member whose loss or gradients become non-finite is frozen at the weights
from before that batch and marked diverged; one that stops early is frozen; the others go on.

A step is one stacked forward/backward and one fused Adam call; the loss and gradients are
checked for finiteness with one host read a step (one op and a sync: on a GPU a stall the
direct engine avoids, here the price of per-member divergence).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from mlpkit.errors import DivergedError, MlpkitError
from mlpkit.train.budget import EVAL_BATCH
from mlpkit.train.build import Trainer
from mlpkit.train.loop import (
    EarlyStopping,
    EpochRecord,
    Position,
    Scorer,
    StopRequested,
    Tensors,
    check_epoch,
    diverged,
    end_epoch,
    what_diverged,
)
from mlpkit.train.stacked import OptimizerSettings, StackedNetwork, StackedOptimizer, Unstackable


@dataclass
class Member:
    """One member as its own run would train it; `position` and `failure` are its outcome."""

    model: nn.Module
    optimizer: torch.optim.Optimizer  # its own, its state filled from the stack at each save
    loss_fn: nn.Module
    train: Tensors
    val: Tensors | None
    seed: int
    score: Scorer | None = None
    stopping: EarlyStopping | None = None
    position: Position = field(default_factory=Position)
    failure: MlpkitError | None = None  # diverged, or stopped by the caller (a pruner)

    @property
    def running(self) -> bool:
        return self.failure is None and not self.position.stopped_early


# the members to save (each with its network and optimizer up to date), after every epoch
# when `save_every` seconds have passed since the last save, at the end, and on a stop
SaveMembers = Callable[[list[Member]], None]
OnGroupEpoch = Callable[[int, list[tuple[Member, EpochRecord]]], None]


def optimizer_settings(optimizer: torch.optim.Optimizer) -> OptimizerSettings:
    """The stacked settings of a member's torch optimizer.

    Raises:
        Unstackable: not Adam, AdamW or SGD with one parameter group and plain options.
    """
    kind = type(optimizer)
    if kind not in (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD):
        raise Unstackable(f"the optimizer {kind.__name__}")
    if len(optimizer.param_groups) != 1:
        raise Unstackable("several parameter groups")
    group = optimizer.param_groups[0]
    if group.get("amsgrad") or group["maximize"] or isinstance(group["lr"], torch.Tensor):
        raise Unstackable(f"{kind.__name__} with amsgrad, maximize or a tensor learning rate")
    lr, decay = float(group["lr"]), float(group["weight_decay"])
    if kind is torch.optim.SGD:
        return OptimizerSettings(
            lr,
            "sgd",
            weight_decay=decay,
            momentum=float(group["momentum"]),
            dampening=float(group["dampening"]),
            nesterov=bool(group["nesterov"]),
        )
    beta1, beta2 = group["betas"]
    decoupled = bool(group.get("decoupled_weight_decay")) or kind is torch.optim.AdamW
    return OptimizerSettings(
        lr, "adamw" if decoupled else "adam", beta1, beta2, group["eps"], weight_decay=decay
    )


def why_not(trainers: list[Trainer], streams: bool) -> str | None:
    """What keeps these trainers' networks from training stacked (None: nothing), short of
    what `stack` finds in their shapes, loss and optimizer."""
    if streams:
        return "streamed or synthetic training data"
    for trainer in trainers:
        if trainer.engine.name != "direct":
            why = trainer.engine.why_not_direct or "training.engine: autograd"
            return f"the direct engine does not cover it ({why})"
        if trainer.schedule is not None:
            return "a learning-rate schedule (training.scheduler)"
    try:
        empty = Tensors(torch.empty(0), torch.empty(0))
        stack([Member(t.model, t.optimizer, t.loss_fn, empty, None, 0) for t in trainers])
    except Unstackable as why:
        return str(why)
    return None


def stack(members: list[Member]) -> tuple[StackedNetwork, StackedOptimizer]:
    """The members' stacked network and optimizer.

    Raises:
        Unstackable: what keeps them from one stack (shapes, layers, loss, optimizer).
    """
    if any(member.optimizer.state for member in members):
        raise Unstackable("optimizer state to carry on from (a resumed run)")
    network = StackedNetwork([member.model for member in members], members[0].loss_fn)
    settings = [optimizer_settings(member.optimizer) for member in members]
    return network, StackedOptimizer(network, settings)


def fit_group(
    members: list[Member],
    *,
    epochs: int,
    batch_size: int,
    shuffle: bool,
    save: SaveMembers | None = None,
    save_every: float = 0.0,
    on_epoch: OnGroupEpoch | None = None,
    stop_requested: Callable[[], bool] | None = None,
) -> None:
    """Train every member for up to `epochs`; each member's outcome in its `position` (and
    `failure` if it diverged; on_epoch may set a member's failure to stop it there, as a
    sweep's pruner does). Members with early stopping that restores the best end with the
    best epoch's weights.

    Raises:
        Unstackable: the members cannot be stacked (before any step).
        StopRequested: stop_requested said so; `save` has saved every running member.
    """
    network, optimizer = stack(members)
    generators = [torch.Generator().manual_seed(member.seed) for member in members]
    val_x = _stacked_rows([member.val for member in members])
    last_save = time.perf_counter()
    for epoch in range(1, epochs + 1):
        running = [k for k, member in enumerate(members) if member.running]
        if not running:
            break
        started = time.perf_counter()
        for k in running:
            members[k].position.order_state = generators[k].get_state()
        xs, ys, counts = _epoch_rows(members, generators, shuffle)
        even = len(set(counts)) == 1  # every member a batch of the same size at every step
        losses: list[torch.Tensor] = []  # [K] per step
        sizes: list[list[int]] = []  # each step's rows per member
        taken = [0] * len(members)  # this epoch's steps per member, beyond `common`
        common = 0  # steps every member took
        batches = zip(torch.split(xs, batch_size, 1), torch.split(ys, batch_size, 1), strict=True)
        for s, (xb, yb) in enumerate(batches):  # every batch's view in one call an epoch
            if even:
                rows, active, row_tensor = [xb.shape[1]] * len(members), running, None
            else:
                rows = [max(0, min(batch_size, count - s * batch_size)) for count in counts]
                active = [k for k in running if rows[k] > 0]
                row_tensor = torch.tensor(rows, device=xb.device)
            loss = network.loss_and_gradients(xb, yb, row_tensor)
            if not bool(network.grad.sum().isfinite()):  # the one host read of the step
                done = [common + count for count in taken]
                active = _freeze_diverged(members, network, loss, active, epoch, done)
                running = [k for k in running if members[k].running]
            everyone = len(active) == len(members)
            optimizer.step(None if everyone else active)
            losses.append(loss)
            sizes.append(rows)
            if everyone:
                common += 1
            else:
                for k in active:
                    taken[k] += 1
            if stop_requested is not None and stop_requested():
                _sync(members, network, optimizer, running)
                for k in running:
                    _keep_partial(members[k].position, losses, sizes, k, common + taken[k])
                if save is not None:
                    save([members[k] for k in running])
                raise StopRequested()
        for k in running:
            members[k].position.steps += common + taken[k]
        ended = _Epoch(epoch, losses, sizes, started)
        records = _end_epochs(members, running, ended, network, optimizer, val_x, generators)
        if on_epoch is not None:
            on_epoch(epoch, records)
        finishing = epoch == epochs or not any(member.running for member in members)
        stopping = stop_requested is not None and stop_requested()  # as loop.fit, an epoch end
        due = finishing or time.perf_counter() - last_save >= save_every
        if save is not None and (due or stopping):
            places = {id(member): k for k, member in enumerate(members)}
            recorded = [places[id(member)] for member, _ in records]
            _sync(members, network, optimizer, recorded)
            save([members[k] for k in recorded])
            last_save = time.perf_counter()
        if stopping:
            raise StopRequested()
    done = [k for k, member in enumerate(members) if member.failure is None]
    _sync(members, network, optimizer, done)
    for k in done:
        member = members[k]
        best = member.position.best_weights
        if member.stopping is not None and best is not None:
            member.model.load_state_dict(best)


def _epoch_rows(
    members: list[Member], generators: list[torch.Generator], shuffle: bool
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Every member's rows in its epoch order, stacked [K, rows, ...] (padded to the most
    rows with the member's own first rows, never seen: its batches stop at its count)."""
    counts = [member.train.x.shape[0] for member in members]
    most = max(counts)
    xs, ys = [], []
    for member, generator, count in zip(members, generators, counts, strict=True):
        x, y = member.train.x, member.train.y
        if shuffle:  # drawn for every member, running or not: as loop.fit, an epoch a draw
            order = torch.randperm(count, generator=generator).to(x.device)
            x, y = x[order], y[order]
        if count < most:
            x = torch.cat([x, x[: most - count]])
            y = torch.cat([y, y[: most - count]])
        xs.append(x)
        ys.append(y)
    return torch.stack(xs), torch.stack(ys), counts


def _freeze_diverged(
    members: list[Member],
    network: StackedNetwork,
    loss: torch.Tensor,
    active: list[int],
    epoch: int,
    taken: list[int],
) -> list[int]:
    """Mark the active members whose loss or gradients are not finite as diverged (their
    weights stay from before this batch); the rest of `active` steps on."""
    finite_loss = torch.isfinite(loss)
    finite_grad = torch.isfinite(network.grad).all(dim=1)
    still = []
    for k in active:
        if bool(finite_loss[k]) and bool(finite_grad[k]):
            still.append(k)
            continue
        member = members[k]
        what = what_diverged(float(loss[k]), bool(finite_loss[k]))
        member.failure = diverged(what, epoch, taken[k] + 1)
        member.position.steps += taken[k]
        network.grad[k].zero_()
    return still


def _sync(
    members: list[Member], network: StackedNetwork, optimizer: StackedOptimizer, which: list[int]
) -> None:
    """Copy the stack's weights and Adam state into the listed members' own network and
    optimizer, as their own training would have left them."""
    with torch.no_grad():
        for k in which:
            member = members[k]
            member.model.load_state_dict(network.member_state(k))
            params = dict(member.model.named_parameters())
            member.optimizer.state.clear()
            member.optimizer.state.update(optimizer.member_state(k, params))


def _keep_partial(
    position: Position, losses: list[torch.Tensor], sizes: list[list[int]], k: int, taken: int
) -> None:
    """A member's place in the epoch so far, for a mid-epoch checkpoint."""
    position.steps += taken
    position.batches_done = taken
    position.losses = [loss[k] for loss, rows in zip(losses, sizes, strict=True) if rows[k]]
    position.sizes = [rows[k] for rows in sizes if rows[k]]


@dataclass(frozen=True)
class _Epoch:
    """An epoch's steps, ended: its number, each step's losses [K] and rows per member."""

    number: int
    losses: list[torch.Tensor]
    sizes: list[list[int]]
    started: float  # perf_counter at its start


def _stacked_rows(parts: list[Tensors | None]) -> torch.Tensor | None:
    """The members' validation inputs as one [K, rows, in] tensor (padded with zeros to the
    most rows; a member without validation rows gets zeros), or None if no member has any."""
    found = [part.x for part in parts if part is not None]
    if not found:
        return None
    most = max(x.shape[0] for x in found)
    stacked = found[0].new_zeros((len(parts), most, found[0].shape[1]))
    for k, part in enumerate(parts):
        if part is not None:
            stacked[k, : part.x.shape[0]] = part.x
    return stacked


@torch.no_grad()
def _validation_outputs(network: StackedNetwork, x: torch.Tensor) -> torch.Tensor:
    """Every member's outputs on its validation rows [K, rows, out], in slices of rows that
    keep the activations within what loop.predict holds for one network."""
    step = max(1, EVAL_BATCH // x.shape[0])
    return torch.cat([network.forward(x[:, i : i + step]) for i in range(0, x.shape[1], step)], 1)


def _end_epochs(
    members: list[Member],
    running: list[int],
    ended: _Epoch,
    network: StackedNetwork,
    optimizer: StackedOptimizer,
    val_x: torch.Tensor | None,
    generators: list[torch.Generator],
) -> list[tuple[Member, EpochRecord]]:
    """Each member that trained this epoch: its record (loop.fit's: the training loss, the
    validation loss and scores from the stacked forward pass), checked, then recorded."""
    per_step = torch.stack(ended.losses).double()  # [steps, K]
    weights = torch.tensor(ended.sizes, dtype=torch.float64, device=per_step.device)
    means = ((per_step * weights).sum(dim=0) / weights.sum(dim=0).clamp(min=1)).tolist()
    outputs = None if val_x is None else _validation_outputs(network, val_x)
    finite = (
        network.flat.isfinite().all(1)
        & optimizer.exp_avg.isfinite().all(1)
        & optimizer.exp_avg_sq.isfinite().all(1)
    ).tolist()  # each member's weights and optimizer state, read once
    records = []
    for k in running:
        member = members[k]
        record: EpochRecord = {"epoch": ended.number, "train_loss": means[k]}
        if member.val is not None and outputs is not None:
            mine = outputs[k, : member.val.x.shape[0]]
            record["val_loss"] = float(member.loss_fn(mine, member.val.y))
            scores = member.score(member.val.y, mine) if member.score is not None else {}
            record |= {f"val_{name}": value for name, value in scores.items()}
        if not finite[k] or not all(math.isfinite(value) for value in record.values()):
            _sync(members, network, optimizer, [k])  # for check_epoch's message
            try:
                check_epoch(record, ended.number, member.model, member.optimizer)
            except DivergedError as exc:
                member.failure = exc
                continue
        records.append((k, record))
    seconds = time.perf_counter() - ended.started  # as loop.fit: steps and validation
    done = []
    for k, record in records:
        member = members[k]
        record["lr"] = float(member.optimizer.param_groups[0]["lr"])
        record["seconds"] = seconds
        if member.stopping is not None:  # end_epoch keeps its best weights from the network
            member.model.load_state_dict(network.member_state(k))
        end_epoch(member.position, record, member.model, member.stopping)
        member.position.order_state = generators[k].get_state()
        done.append((member, record))
    return done
