"""`mlpkit train` under torchrun: rank 0 leads, the other ranks follow and write nothing.

Rank 0 runs the usual flows (train.py, resume.py) with the group: it decides what trains (the
config it loaded and, resuming, the checkpoint it chose) and announces that `Plan` before
preparing the data; a problem found before then is announced instead, so every rank exits with
rank 0's code and only rank 0 prints it. Each other rank (`follow`) receives the plan,
prepares the same data, builds the same network (and loads the same checkpoint), and trains
its share of every step through loop.fit; its stop signals and checkpoint boundaries are the
same as rank 0's, so a stop or a divergence ends every rank after the same step.

The collectives, in the order every rank makes them: the plan; every rank's data sha256
(`check_data`); DistributedDataParallel's broadcast of the weights (autograd engine only); one
all-reduce each step and a broadcast of rank 0's record each epoch (loop.py); the rows each
rank trained, gathered when training ends (`rows_trained`).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from mlpkit.config.load import LoadedConfig
from mlpkit.errors import ConfigError, DataError, Interrupted, MlpkitError, Problem
from mlpkit.flows.common import resolve_device
from mlpkit.rundir import checkpoints, runs
from mlpkit.train import budget, interrupts, threads
from mlpkit.train.build import build_trainer, make_step
from mlpkit.train.distributed import Group, process_batch
from mlpkit.train.loop import BatchStream, Hooks, StopRequested, Tensors, fit
from mlpkit.train.prepare import Prepared, prepare, refuse_fewer_blocks, training_stream


@dataclass(frozen=True)
class Plan:
    """What rank 0 decided to train, sent to every other rank; or the exit code of what
    stopped it first."""

    loaded: LoadedConfig | None
    checkpoint: checkpoints.Checkpoint | None = None
    failed: int | None = None


class LeaderFailed(MlpkitError):
    """Rank 0 stopped before training (it printed why); this rank exits with its code."""

    def __init__(self, exit_code: int) -> None:
        super().__init__(Problem("rank 0 stopped before training", where="torchrun"))
        self.exit_code = exit_code


def announce(group: Group, plan: Plan) -> None:
    """Rank 0: send the plan to every rank."""
    group.broadcast(plan)
    group.announced = True


@contextlib.contextmanager
def leading(group: Group | None) -> Iterator[None]:
    """Rank 0's work: whatever stops it before the plan was sent is announced instead, so the
    other ranks exit with its code rather than wait for a plan."""
    try:
        yield
    except BaseException as exc:
        if group is not None and not group.announced:
            code = exc.exit_code if isinstance(exc, MlpkitError) else 1
            with contextlib.suppress(MlpkitError):
                announce(group, Plan(None, failed=code))
        raise


def check_data(group: Group, prepared: Prepared, device: torch.device) -> None:
    """Every rank read the same data file (each reads its own copy: on other machines, the
    same path must hold the same bytes), a streamed file has a block for each, and each
    machine has the memory for its processes (each holds the table and the network). Every
    rank decides on what all of them found, so they refuse together, with rank 0's line.

    Raises:
        DataError: a rank's file differs from rank 0's.
        ConfigError: a streamed file of fewer blocks than processes, or a machine without
            the memory for its processes.
    """
    refuse_fewer_blocks(prepared, group.world)  # before any run exists
    needed = budget.training_estimate(prepared).total * group.local_world
    found = Found(prepared.table.sha256, needed, budget.available_bytes(device))
    everyone: list[Found] = group.gather(found)
    first = everyone[0].sha256
    differing = [rank for rank, seen in enumerate(everyone) if seen.sha256 != first]
    if differing:
        raise DataError(
            Problem(
                f"rank {differing[0]} read a different file than rank 0 (sha256 "
                f"{everyone[differing[0]].sha256[:12]}... against {first[:12]}...)",
                file=str(prepared.table.path),
                hint="every machine needs the same data file at the same path",
            )
        )
    short = [(rank, seen) for rank, seen in enumerate(everyone) if 0 < seen.available < seen.needed]
    if short:
        rank, seen = short[0]
        raise ConfigError(
            Problem(
                f"the {group.local_world} processes on rank {rank}'s machine need about "
                f"{seen.needed / budget.GB:,.1f} GB of memory together (each holds the table "
                f"and the network) and {seen.available / budget.GB:,.1f} GB is available",
                where="torchrun",
                hint="train on fewer processes a machine, or stream the file (data.stream: true)",
            )
        )


@dataclass(frozen=True)
class Found:
    """What one rank found before training, told to every rank."""

    sha256: str
    needed: int  # bytes its machine's processes need together
    available: int  # bytes its machine has available (0: unknown)


def distributed_info(
    group: Group, prepared: Prepared, device: torch.device, rows: list[int] | None = None
) -> runs.DistributedInfo:
    """run.json's `training.distributed`."""
    batch = process_batch(prepared.loaded, group.world)
    return runs.DistributedInfo(
        processes=group.world,
        backend="nccl" if device.type == "cuda" else "gloo",
        batch_per_process=batch,
        effective_batch=batch * group.world,
        launch=group.launch,
        rows_per_process=rows,
    )


def rows_trained(group: Group) -> list[int]:
    """The rows each rank trained since this launch began, gathered when training ends."""
    return [int(rows) for rows in group.gather(group.trained)]


def follow(group: Group, device_name: str | None) -> None:
    """A rank other than 0: train the plan's run on this rank's share, writing nothing.

    Raises:
        LeaderFailed: rank 0 stopped before training.
        MlpkitError: what rank 0 meets too (the same data and config), a lost peer
            (GroupLost), or a stop (Interrupted).
    """
    plan: Plan = group.broadcast(None)
    if plan.loaded is None:
        raise LeaderFailed(plan.failed or 1)
    loaded, checkpoint = plan.loaded, plan.checkpoint
    cfg = loaded.config
    device = group.device(resolve_device(loaded, device_name))
    prepared = prepare(loaded)
    check_data(group, prepared, device)
    trainer = build_trainer(prepared, device)
    if checkpoint is not None:
        checkpoints.load_into(checkpoint, trainer.model, trainer.optimizer, trainer.schedule)
    step, trainer = make_step(trainer, group)
    position = checkpoint.position if checkpoint is not None else None
    first_epoch = position.epoch if position is not None else 1
    train: Tensors | BatchStream
    if prepared.streams:
        train = training_stream(prepared, device, first_epoch, group)
    else:
        train = prepared.tensors(prepared.split.train, device)
    stop = interrupts.StopSignals()
    # no save, but the same boundaries as rank 0's saves: a divergence is found at the same step
    hooks = Hooks(None, lambda _: None, cfg.training.checkpoint_every_steps, stop.requested)
    try:
        with (
            stop,
            torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
            threads.limited(trainer.engine.threads),
        ):
            torch.manual_seed(cfg.seed + group.rank)  # dropout's masks: each rank its own
            fit(
                trainer.model,
                trainer.loss_fn,
                trainer.optimizer,
                train,
                None,  # rank 0 validates, on the whole split, and shares the record
                epochs=cfg.training.epochs,
                batch_size=process_batch(loaded, group.world),
                shuffle=cfg.training.shuffle,
                seed=cfg.seed,
                early_stopping=trainer.stopping,
                hooks=hooks,
                position=position,
                step=step,
                schedule=trainer.schedule,
                shard=group,
            )
    except StopRequested:
        number = stop.received or signal.SIGINT
        raise Interrupted(
            Problem("stopped with the group", where=f"rank {group.rank}"), number
        ) from None
    rows_trained(group)
