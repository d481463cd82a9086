"""Train an ensemble's members: model.ensemble K networks of the configured architecture.

Member k is the config's network from its own seed (model.member_seed: member 0 has the
config's seed, so it is the network a run without an ensemble trains), with its own shuffle
order and dropout draws, on the same split and preprocessing. Here the members train one after
another, each through the machinery a single run uses (build.build_trainer, make_step,
loop.fit: the direct engine where it covers the network, else autograd), so member k's weights
are exactly those a single run with its seed would end with.

`train_members` is the one seam: the stacked engine (stacked.py) will train all K at once
behind the same signature, and the flows do not change.

Not yet: checkpoints. A member trains without them (an ensemble run cannot be resumed; a stop
signal still stops it at a step boundary, marked interrupted).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from mlpkit.train import threads
from mlpkit.train.build import Engine, build_trainer, make_step
from mlpkit.train.loop import BatchStream, EpochRecord, Hooks, Position, Tensors, fit
from mlpkit.train.model import member_seed
from mlpkit.train.prepare import Prepared

# member (0-based), then its epoch's record
OnMemberEpoch = Callable[[int, EpochRecord], None]


@dataclass(frozen=True)
class Member:
    """A trained member: its network, where its training ended (its history, steps, best
    epoch), the engine it trained on and its seed."""

    model: nn.Module
    position: Position
    engine: Engine
    seed: int


def train_members(
    prepared: Prepared,
    device: torch.device,
    train: Tensors | BatchStream,
    val: Tensors | None,
    on_epoch: OnMemberEpoch | None = None,
    stop_requested: Callable[[], bool] | None = None,
) -> list[Member]:
    """Train the config's model.ensemble members, in order, and return them.

    Each epoch's record goes to `on_epoch` with its member's index; `stop_requested` is
    polled between steps, as a single run's loop polls it. A streamed source yields the same
    batches to every member (its order is a function of the config's seed and the epoch).

    Raises:
        ConfigError: a member's trainer is refused (as the first one's would have been).
        DivergedError: a member's loss or weights became non-finite.
        StopRequested: `stop_requested` said so; no checkpoint is saved.
    """
    return [
        _train_member(prepared, device, train, val, k, on_epoch, stop_requested)
        for k in range(prepared.config.model.ensemble)
    ]


def _train_member(
    prepared: Prepared,
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
    step, trainer = make_step(build_trainer(prepared, device, member))
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
