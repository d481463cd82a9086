"""Train an ensemble's members: model.ensemble K networks of the configured architecture.

Member k is the config's network from its own seed (model.member_seed: member 0 has the
config's seed, so it is the network a run without an ensemble trains), with its own shuffle
order and dropout draws, on the same split and preprocessing.

Where the stacked engine covers the members (train/stacked.py: dense layers, the direct
engine's activations, MSE/BCE/cross-entropy, Adam; no schedule, no stream) they train as one
computation (train/group.py), each as it would alone within float rounding. Otherwise they
train one after another, each through the machinery a single run uses (build.build_trainer,
make_step, loop.fit), and `Trained.why_not_stacked` says why.

Not yet: checkpoints. A member trains without them (an ensemble run cannot be resumed; a stop
signal still stops it at a step boundary, marked interrupted).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from mlpkit.train import group, threads
from mlpkit.train.build import Engine, Trainer, build_trainer, make_step
from mlpkit.train.loop import BatchStream, EpochRecord, Hooks, Position, Tensors, fit
from mlpkit.train.model import member_seed
from mlpkit.train.prepare import Prepared

# member (0-based), then its epoch's record: members trained in turn
OnMemberEpoch = Callable[[int, EpochRecord], None]
# an epoch of members trained together: (member, its record) for each still training
OnEpochTogether = Callable[[list[tuple[int, EpochRecord]]], None]


def stacks(prepared: Prepared, trainer: Trainer) -> bool:
    """Whether the ensemble's members will train stacked (member 0's trainer answers for
    all: the members differ only in their seed)."""
    return group.why_not([trainer], prepared.streams) is None


@dataclass(frozen=True)
class Member:
    """A trained member: its network, where its training ended (its history, steps, best
    epoch), the engine it trained on and its seed."""

    model: nn.Module
    position: Position
    engine: Engine
    seed: int


@dataclass(frozen=True)
class Trained:
    """The members, in order, and why they did not train stacked (None: they did)."""

    members: list[Member]
    why_not_stacked: str | None


def train_members(
    prepared: Prepared,
    device: torch.device,
    train: Tensors | BatchStream,
    val: Tensors | None,
    on_epoch: OnMemberEpoch | None = None,
    stop_requested: Callable[[], bool] | None = None,
    on_together: OnEpochTogether | None = None,
) -> Trained:
    """Train the config's model.ensemble members, stacked where they can be, and return them.

    Members trained in turn tell `on_epoch` each epoch's record with their index; members
    trained together tell `on_together` each epoch's records at once. `stop_requested` is
    polled between steps, as a single run's loop polls it. A streamed source yields the same
    batches to every member (its order is a function of the config's seed and the epoch).

    Raises:
        ConfigError: a member's trainer is refused (as the first one's would have been).
        DivergedError: a member's loss or weights became non-finite.
        StopRequested: `stop_requested` said so; no checkpoint is saved.
    """
    count = prepared.config.model.ensemble
    trainers = [build_trainer(prepared, device, k) for k in range(count)]
    why_not = group.why_not(trainers, isinstance(train, BatchStream))
    if why_not is None and isinstance(train, Tensors):
        stacked = _train_stacked(prepared, trainers, train, val, on_together, stop_requested)
        return Trained(stacked, None)
    members = [
        _train_member(prepared, trainer, device, train, val, k, on_epoch, stop_requested)
        for k, trainer in enumerate(trainers)
    ]
    return Trained(members, why_not)


def _train_stacked(
    prepared: Prepared,
    trainers: list[Trainer],
    train: Tensors,
    val: Tensors | None,
    on_together: OnEpochTogether | None,
    stop_requested: Callable[[], bool] | None,
) -> list[Member]:
    """Every member at once on the stacked engine (train/group.py).

    Raises:
        DivergedError: a member's loss or weights became non-finite (the ensemble with it).
    """
    config = prepared.config
    members = [
        group.Member(
            trainer.model,
            trainer.optimizer,
            trainer.loss_fn,
            train,
            val,
            member_seed(config.seed, k),
            score=lambda y, outputs: prepared.task.score(y, outputs, config.training.metrics),
            stopping=trainer.stopping,
        )
        for k, trainer in enumerate(trainers)
    ]
    index = {id(member): k for k, member in enumerate(members)}

    def tell(epoch: int, records: list[tuple[group.Member, EpochRecord]]) -> None:
        if on_together is not None:
            on_together([(index[id(member)], record) for member, record in records])

    engine = Engine("stacked", trainers[0].engine.threads)
    with threads.limited(engine.threads):
        group.fit_group(
            members,
            epochs=config.training.epochs,
            batch_size=config.training.batch_size,
            shuffle=config.training.shuffle,
            on_epoch=tell,
            stop_requested=stop_requested,
        )
    for member in members:
        if member.failure is not None:
            raise member.failure
    return [Member(m.model, m.position, engine, m.seed) for m in members]


def _train_member(
    prepared: Prepared,
    built: Trainer,
    device: torch.device,
    train: Tensors | BatchStream,
    val: Tensors | None,
    member: int,
    on_epoch: OnMemberEpoch | None,
    stop_requested: Callable[[], bool] | None,
) -> Member:
    """One member, trained as a single run with its seed trains (flows/fit.py)."""
    config = prepared.config
    seed = member_seed(config.seed, member)
    # `built` as build_trainer made it (the stacking check only read it): a fresh optimizer
    step, trainer = make_step(built)
    tell = None if on_epoch is None else (lambda record: on_epoch(member, record))
    hooks = Hooks(on_epoch=tell, stop_requested=stop_requested)
    # Dropout draws from torch's global generator: seeded per member, restored after.
    with (
        torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
        threads.limited(trainer.engine.threads),
    ):
        torch.manual_seed(seed)
        position = fit(
            trainer.model,
            trainer.loss_fn,
            trainer.optimizer,
            train,
            val,
            epochs=config.training.epochs,
            batch_size=config.training.batch_size,
            shuffle=config.training.shuffle,
            seed=seed,
            score=lambda y, outputs: prepared.task.score(y, outputs, config.training.metrics),
            early_stopping=trainer.stopping,
            hooks=hooks,
            step=step,
            schedule=trainer.schedule,
        )
    return Member(trainer.model, position, trainer.engine, seed)
