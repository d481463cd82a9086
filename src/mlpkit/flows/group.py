"""Train several configs of one network shape together (`--seeds`, `--folds`): one stacked
computation (train/group.py), each member written as its own ordinary, complete run.

Top to bottom: device -> per member prepare and build, exactly as `train` does -> can they
stack? (the direct engine covers each, no schedule, no stream, train/stacked.py takes the
shapes, loss and optimizer; if not, `stacking_refusal` says why and the caller trains them
one after another, each run.json saying why) -> per member its run directory, under its lock
from the first file to the last, config.yaml, summary.txt, preprocessing.json, run.json
running (engine stacked) -> stop signals armed -> train.group.fit_group, each member's
checkpoints in its own run directory in the usual format (so `mlpkit train --resume RUN`
carries any member on alone) -> per member the files fit_run writes, run.json complete last.
A member that diverged is marked diverged and the others complete; then the first divergence
is raised (exit 3). A stop signal marks every running member interrupted with a checkpoint.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mlpkit.config.load import LoadedConfig
from mlpkit.errors import DivergedError, MlpkitError, Pruned, warn
from mlpkit.flows.common import resolved_config, training_info
from mlpkit.flows.fit import (
    SPLITS,
    Job,
    Listener,
    Start,
    TrainResult,
    final_metrics,
    interrupted,
    mark,
    mean_record,
)
from mlpkit.flows.fit import write_results as write_member_results
from mlpkit.flows.train import run_info
from mlpkit.report import tracking
from mlpkit.report.summary import render_text, summarize_network
from mlpkit.rundir import checkpoints, crossval, lock, runs
from mlpkit.train import group, interrupts, threads
from mlpkit.train.build import Trainer, build_trainer
from mlpkit.train.loop import StopRequested
from mlpkit.train.prepare import Prepared, prepare
from mlpkit.train.steps import AutogradStep

# a member's place in the group, then its epoch's record
OnMemberEpoch = Callable[[int, dict[str, float]], None]

# A member's checkpoint is written after an epoch once this many seconds have passed since
# the group's last save (and always at the end and on a stop signal): every epoch, for K
# members, would cost K checkpoints an epoch, as much as the training itself on mpg.
SAVE_EVERY_SECONDS = 2.0


@dataclass(frozen=True)
class Built:
    """One member, prepared and built as `train` would, before any run directory exists."""

    loaded: LoadedConfig
    prepared: Prepared
    trainer: Trainer
    config: dict[str, object]


@dataclass(frozen=True)
class GroupOutcome:
    """Each member's complete run, in order (None: it diverged or was pruned), why each that
    did not complete stopped, and the first divergence."""

    results: list[TrainResult | None]
    failures: list[MlpkitError | None]
    failure: DivergedError | None


def build_members(loadeds: list[LoadedConfig], device: torch.device) -> list[Built]:
    """Every member prepared and built (each check train makes, before any run exists).

    Raises:
        MlpkitError: as flows.train.train, for whichever member fails.
    """
    built = []
    for loaded in loadeds:
        prepared = prepare(loaded)
        trainer = build_trainer(prepared, device)
        built.append(Built(loaded, prepared, trainer, resolved_config(loaded)))
    return built


def stacking_refusal(built: list[Built]) -> str | None:
    """Why these members cannot train as one stack (None: they can)."""
    first = built[0].prepared.config.training
    for member in built:
        prepared = member.prepared
        if prepared.config.model.ensemble > 1:
            return "members that are ensembles (model.ensemble)"
        training = prepared.config.training
        if (training.epochs, training.batch_size, training.shuffle) != (
            first.epochs,
            first.batch_size,
            first.shuffle,
        ):
            return "members with different epochs, batch size or shuffle"
    streams = any(member.prepared.streams for member in built)
    return group.why_not([member.trainer for member in built], streams)


def _member(built: Built, device: torch.device) -> group.Member:
    prepared, trainer, cfg = built.prepared, built.trainer, built.prepared.config
    train = prepared.tensors(prepared.split.train, device)
    val = prepared.tensors(prepared.split.val, device) if len(prepared.split.val) else None
    return group.Member(
        trainer.model,
        trainer.optimizer,
        trainer.loss_fn,
        train,
        val,
        cfg.seed,
        score=lambda y, outputs: prepared.task.score(y, outputs, cfg.training.metrics),
        stopping=trainer.stopping,
    )


def train_group(
    built: list[Built],
    runs_dir: Path,
    device: torch.device,
    listener: Listener | None = None,
    places: list[Path] | None = None,
    on_member_epoch: OnMemberEpoch | None = None,
) -> GroupOutcome:
    """Train stackable members (stacking_refusal said None) as one computation, each into its
    own run directory (under `runs_dir`, or at `places`: a cross-validation's fold-i, a
    sweep's trial). `on_member_epoch` hears each member's epoch record with its place; raising
    Pruned from it stops that member there (its run marked pruned), the others go on.

    Raises:
        Interrupted: a stop signal; every running member marked interrupted, checkpointed.
        MlpkitError: a failure writing the runs (each marked failed).
    """
    for member in built:
        warn(member.prepared.warnings)
    first = built[0]
    if listener is not None:
        summary = summarize_network(first.prepared.config, first.prepared.preprocessor)
        listener.started(Start(first.prepared, device, summary, None))
    with contextlib.ExitStack() as held:
        where = places if places is not None else [None] * len(built)
        jobs = [
            _open_run(member, runs_dir, device, len(built), held, place)
            for member, place in zip(built, where, strict=True)
        ]
        return _fit(built, jobs, device, listener, on_member_epoch)


def _open_run(
    member: Built,
    runs_dir: Path,
    device: torch.device,
    count: int,
    held: contextlib.ExitStack,
    place: Path | None,
) -> Job:
    """The member's run directory with its first files and run.json running, its lock held."""
    prepared, trainer = member.prepared, member.trainer
    if place is None:
        run_dir = runs.create_run_dir(runs_dir, prepared.config.name)
    else:
        run_dir = crossval.create_fold_dir(place)
    try:
        held.enter_context(lock.hold(run_dir))
        runs.write_yaml(run_dir / runs.CONFIG, member.config)
        summary = summarize_network(prepared.config, prepared.preprocessor)
        runs.write_bytes(run_dir / runs.SUMMARY, render_text(summary).encode())
        preprocessing = prepared.preprocessor.model_dump(mode="json")
        runs.write_json(run_dir / runs.PREPROCESSING, preprocessing)
        info = run_info(prepared, device, trainer.engine, members=count)
        runs.write_info(run_dir, info)
    except MlpkitError:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    trackers = tracking.open_tracking(member.loaded, member.config, runs_dir)
    step = AutogradStep(trainer.model, trainer.loss_fn, trainer.optimizer)  # not used to train
    return Job(run_dir, prepared, trainer, step, device, member.config, info, trackers)


def _fit(
    built: list[Built],
    jobs: list[Job],
    device: torch.device,
    listener: Listener | None,
    on_member_epoch: OnMemberEpoch | None,
) -> GroupOutcome:
    members = [_member(member, device) for member in built]
    cfg = built[0].prepared.config.training
    stop = interrupts.StopSignals()
    for job in jobs:
        job.trackers.start(job.run_dir, [])
    on_epochs = [job.trackers.wrap(None) for job in jobs]
    by_member = {id(member): i for i, member in enumerate(members)}
    finished: set[int] = set()  # members whose run.json says how they ended

    def save(which: list[group.Member]) -> None:
        for member in which:
            job = jobs[by_member[id(member)]]
            checkpoints.save(
                job.run_dir, member.model, member.optimizer, member.position, job.config, device
            )

    def on_epoch(epoch: int, records: list[tuple[group.Member, dict[str, float]]]) -> None:
        for member, record in records:
            tell = on_epochs[by_member[id(member)]]
            if tell is not None:
                tell(record)
            if on_member_epoch is not None:
                try:
                    on_member_epoch(by_member[id(member)], record)
                except Pruned as exc:
                    member.failure = exc  # frozen from here, its run marked pruned
        if listener is not None and records:
            listener.epoch(mean_record([record for _, record in records]))

    try:
        with stop, threads.limited(built[0].trainer.engine.threads):
            group.fit_group(
                members,
                epochs=cfg.epochs,
                batch_size=cfg.batch_size,
                shuffle=cfg.shuffle,
                save=save,
                save_every=SAVE_EVERY_SECONDS,
                on_epoch=on_epoch,
                stop_requested=stop.requested,
            )
            results: list[TrainResult | None] = []
            for i, (job, member) in enumerate(zip(jobs, members, strict=True)):
                if member.failure is not None:
                    pruned = isinstance(member.failure, Pruned)
                    mark(job, "pruned" if pruned else "diverged", member.failure)
                    results.append(None)
                else:
                    results.append(_complete(job, member, len(members)))
                finished.add(i)
    except BaseException as exc:
        unfinished = [job for i, job in enumerate(jobs) if i not in finished]
        if not isinstance(exc, StopRequested | KeyboardInterrupt):
            for job in unfinished:
                mark(job, "failed", exc)
            raise
        number = stop.received or signal.SIGINT
        stopped = [interrupted(job.run_dir, number, True) for job in unfinished]
        for job, problem in zip(unfinished, stopped, strict=True):
            mark(job, "interrupted", problem)
        raise stopped[0] from None
    failures = [member.failure for member in members]
    diverged = [f for f in failures if isinstance(f, DivergedError)]
    return GroupOutcome(results, failures, diverged[0] if diverged else None)


def _complete(job: Job, member: group.Member, count: int) -> TrainResult:
    """The member's files, as fit_run writes them, then run.json complete."""
    prepared, device = job.prepared, job.device
    data = {part: prepared.tensors(getattr(prepared.split, part), device) for part in SPLITS}
    position, model = member.position, member.model
    metrics = final_metrics(model, prepared, data, position, member.stopping)
    training = training_info(job.trainer.engine, position, members=count)
    result = write_member_results(job, data, model, position.history, metrics, training)
    update = {"status": "complete", "finished": runs.now(), "training": training}
    runs.write_info(job.run_dir, job.info.model_copy(update=update))
    job.trackers.finish("complete", metrics["test"])
    return result
