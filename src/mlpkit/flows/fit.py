"""Fit a prepared run in its directory, then write its results: what `train` and `resume`
share.

`fit_run` reads top to bottom: run.json says running -> stop signals armed, trackers started
-> the splits as tensors -> loop.fit (a checkpoint after each epoch; a stop signal stops at a
step boundary) -> metrics beside the baselines -> history, metrics, predictions, weights
-> run.json says complete, written last. However else it ends, run.json says how (failed,
diverged, interrupted) before the error goes up. The plots are drawn afterwards from those
files, by the command (flows/plotting.py), so they never hold a run up.
"""

from __future__ import annotations

import contextlib
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from mlpkit.errors import (
    DivergedError,
    GroupLost,
    Interrupted,
    MlpkitError,
    Problem,
    Pruned,
    one_line,
)
from mlpkit.flows.common import csv_rows, refuse_non_finite_outputs, training_info
from mlpkit.flows.distributed import distributed_info, rows_trained
from mlpkit.report import tracking
from mlpkit.report.summary import Summary
from mlpkit.rundir import checkpoints, runs
from mlpkit.train import interrupts, threads
from mlpkit.train.build import COMBINE, Trainer
from mlpkit.train.distributed import Group, process_batch
from mlpkit.train.ensemble import Member, train_members
from mlpkit.train.loop import (
    BatchStream,
    EarlyStopping,
    EpochRecord,
    Hooks,
    Position,
    StopRequested,
    Tensors,
    fit,
    predict,
)
from mlpkit.train.model import Ensemble
from mlpkit.train.prepare import Prepared, training_stream
from mlpkit.train.steps import Step
from mlpkit.train.tasks import Regression

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Start:
    """What is about to train, told to the listener before the first step."""

    prepared: Prepared
    device: torch.device
    summary: Summary
    position: Position | None  # where a resumed run carries on; None for a new run
    together: bool = False  # an ensemble whose members train stacked: one line an epoch
    spread: runs.DistributedInfo | None = None  # under torchrun: the group and its batches


class Listener(Protocol):
    """What the caller (the CLI) hears while a run trains: its start, then each epoch."""

    def started(self, start: Start) -> None:
        """Training is about to begin (or carry on)."""

    def epoch(self, record: EpochRecord) -> None:
        """An epoch ended: its record, as history.csv will hold it."""


@dataclass(frozen=True)
class Job:
    """One run directory to fit, everything built and checked; nothing here changes."""

    run_dir: Path
    prepared: Prepared
    trainer: Trainer
    step: Step
    device: torch.device
    config: dict[str, Any]  # the resolved config, as config.yaml and every checkpoint hold it
    info: runs.RunInfo  # run.json as training begins
    trackers: tracking.Tracking
    checkpoint: checkpoints.Checkpoint | None = None  # where a resumed run carries on
    group: Group | None = None  # under torchrun: this is rank 0, the group's one writer


@dataclass(frozen=True)
class TrainResult:
    """A complete run: its directory, the epoch records, metrics.json, run.json's training."""

    run_dir: Path
    history: list[EpochRecord]
    metrics: dict[str, Any]
    training: runs.TrainingInfo


def fit_run(job: Job, listener: Listener | None) -> TrainResult:
    """Train the job's run to its end and write every file of it, `complete` last.

    Raises:
        MlpkitError: divergence (the run marked diverged), a stop signal (Interrupted, the run
            marked interrupted with a checkpoint saved), or a failure (marked failed).
    """
    runs.write_info(job.run_dir, job.info)
    stop = interrupts.StopSignals()
    try:
        with stop:
            done = job.checkpoint.position.history if job.checkpoint is not None else []
            job.trackers.start(job.run_dir, done)
            result = _fit_and_write(job, listener, stop)
    except BaseException as exc:
        if isinstance(exc, GroupLost):  # a peer died: stopped, as by a signal, to resume
            # torchrun's agent sends the ranks left SIGTERM once it sees one die: hold it
            # off while the run is marked and the line printed (this process ends next)
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
            lost = group_lost(job, exc)
            mark(job, "interrupted", lost)
            raise lost from None
        if not isinstance(exc, StopRequested | KeyboardInterrupt):
            status: runs.Status = "failed"
            if isinstance(exc, DivergedError | Pruned):
                status = "diverged" if isinstance(exc, DivergedError) else "pruned"
            mark(job, status, exc)
            raise
        resumable = job.prepared.config.model.ensemble == 1  # ensembles keep no checkpoints yet
        saved = isinstance(exc, StopRequested) and resumable
        processes = job.group.world if job.group is not None else 1
        number = stop.received or signal.SIGINT
        stopped = interrupted(job.run_dir, number, saved, resumable, processes)
        mark(job, "interrupted", stopped)
        raise stopped from None
    update = {"status": "complete", "finished": runs.now(), "training": result.training}
    runs.write_info(job.run_dir, job.info.model_copy(update=update))
    job.trackers.finish("complete", result.metrics["test"])
    return result


def _fit_and_write(
    job: Job, listener: Listener | None, stop: interrupts.StopSignals
) -> TrainResult:
    prepared, trainer, device, cfg = job.prepared, job.trainer, job.device, job.prepared.config
    data = {part: prepared.tensors(getattr(prepared.split, part), device) for part in SPLITS}
    position = job.checkpoint.position if job.checkpoint is not None else None
    first_epoch = position.epoch if position is not None else 1
    group = job.group
    if prepared.streams:
        train: Tensors | BatchStream = training_stream(prepared, device, first_epoch, group)
    else:
        train = data["train"]  # a group's ranks each take their share of every batch
    if cfg.model.ensemble > 1:
        return _fit_ensemble(job, data, train, listener, stop)
    on_epoch = job.trackers.wrap(listener.epoch if listener is not None else None)

    def save(at: Position) -> None:
        schedule = trainer.schedule.state_dict() if trainer.schedule is not None else None
        checkpoints.save(
            job.run_dir, trainer.model, trainer.optimizer, at, job.config, device, schedule
        )

    hooks = Hooks(on_epoch, save, cfg.training.checkpoint_every_steps, stop.requested)
    # Dropout draws from torch's global generator; fork_rng seeds it here and restores it after.
    with (
        torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
        threads.limited(trainer.engine.threads),
    ):
        torch.manual_seed(cfg.seed)
        if job.checkpoint is not None:
            checkpoints.restore_rng(job.checkpoint.rng, device)
        position = fit(
            trainer.model,
            trainer.loss_fn,
            trainer.optimizer,
            train,
            data["val"] if len(prepared.split.val) else None,
            epochs=cfg.training.epochs,
            batch_size=process_batch(prepared.loaded, group.world if group else 1),
            shuffle=cfg.training.shuffle,
            seed=cfg.seed,
            score=lambda y, outputs: prepared.task.score(y, outputs, cfg.training.metrics),
            early_stopping=trainer.stopping,
            hooks=hooks,
            position=position,
            step=job.step,
            schedule=trainer.schedule,
            shard=group,
        )
    # the other ranks are done once they have said what they trained; the rest is rank 0's
    spread = None
    if group is not None:
        spread = distributed_info(group, prepared, device, rows_trained(group))
    model = trainer.model
    metrics = final_metrics(model, prepared, data, position, trainer.stopping)
    why_not_stacked = job.info.training.why_not_stacked if job.info.training else None
    training = training_info(
        trainer.engine, position, why_not_stacked=why_not_stacked, distributed=spread
    )
    return write_results(job, data, model, position.history, metrics, training)


def _fit_ensemble(
    job: Job,
    data: dict[str, Tensors],
    train: Tensors | BatchStream,
    listener: Listener | None,
    stop: interrupts.StopSignals,
) -> TrainResult:
    """Train model.ensemble's members (train/ensemble.py), then write the ensemble's results:
    its metrics where a single run has them, each member's under `members`, their mean under
    `members_mean`. history.csv, best_epoch and the trackers have member 0's epochs (the
    network a run without the ensemble trains); the listener hears every member's, each
    record with its `member` (1-based)."""
    prepared = job.prepared

    def on_epoch(member: int, record: EpochRecord) -> None:
        if listener is not None:
            listener.epoch(record | {"member": member + 1})
        if member == 0:
            job.trackers.epoch(record)

    def on_together(records: list[tuple[int, EpochRecord]]) -> None:
        for member, record in records:
            if member == 0:
                job.trackers.epoch(record)
        if listener is not None:
            listener.epoch(mean_record([record for _, record in records]))

    val = data["val"] if len(prepared.split.val) else None
    trained = train_members(prepared, job.device, train, val, on_epoch, stop.requested, on_together)
    members = trained.members
    model = Ensemble([member.model for member in members], COMBINE[prepared.task.name])
    first = members[0].position
    metrics = final_metrics(model, prepared, data, first, job.trainer.stopping)
    metrics["members"] = [_member_metrics(member, prepared, data) for member in members]
    metrics["members_mean"] = _mean_scores(metrics["members"])
    stacked = members[0].engine.name == "stacked"  # then the members' epochs are one time
    timed = members[:1] if stacked else members
    training = training_info(
        members[0].engine,
        first,
        members=len(members) if stacked else None,
        why_not_stacked=trained.why_not_stacked,
    ).model_copy(
        update={
            "steps": sum(member.position.steps for member in members),
            "seconds": sum(r["seconds"] for m in timed for r in m.position.history),
        }
    )
    return write_results(job, data, model, first.history, metrics, training)


def mean_record(records: list[EpochRecord]) -> EpochRecord:
    """Members trained together: the mean of each figure of their epoch, one progress line."""
    keys = [key for key in records[0] if all(key in record for record in records)]
    return {key: sum(record[key] for record in records) / len(records) for key in keys}


def _member_metrics(member: Member, prepared: Prepared, data: dict[str, Tensors]) -> dict[str, Any]:
    """A member's seed, best epoch and the task's metrics per split, as a run has them."""
    found: dict[str, Any] = {"seed": member.seed, "best_epoch": best_epoch(member.position.history)}
    if member.position.best_value is not None:  # early stopping's best
        found["best_epoch"] = member.position.best_epoch
    for part in SPLITS:
        if data[part].x.shape[0]:
            outputs = predict(member.model, data[part].x)
            found[part] = prepared.task.score(data[part].y, outputs, None)
    return found


def _mean_scores(members: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each split's metrics averaged over the members (a metric some lack is left out)."""
    mean: dict[str, dict[str, float]] = {}
    for part in SPLITS:
        scores = [member[part] for member in members if part in member]
        if scores:
            names = [n for n in scores[0] if all(n in s for s in scores)]
            mean[part] = {n: float(np.mean([s[n] for s in scores])) for n in names}
    return mean


def write_results(
    job: Job,
    data: dict[str, Tensors],
    model: nn.Module,
    history: list[EpochRecord],
    metrics: dict[str, Any],
    training: runs.TrainingInfo,
) -> TrainResult:
    prepared, run_dir = job.prepared, job.run_dir
    runs.write_csv(run_dir / runs.HISTORY, history)
    runs.write_json(run_dir / runs.METRICS, metrics)
    runs.write_csv(run_dir / runs.PREDICTIONS, _predictions(model, prepared, data["test"]))
    runs.write_weights(run_dir / runs.WEIGHTS, model)
    return TrainResult(run_dir, history, metrics, training)


def final_metrics(
    model: nn.Module,
    prepared: Prepared,
    data: dict[str, Tensors],
    position: Position,
    stopping: EarlyStopping | None,
) -> dict[str, Any]:
    """Every metric of the task per split, the baselines' test metrics beside them, and for
    classification the confusion matrices (rows: true class, columns: predicted).

    Raises:
        DataError: the trained network's output for a row is not finite (a row far outside
            the training rows' range): no metric or prediction of it is written.
    """
    task, table = prepared.task, prepared.table
    metrics: dict[str, Any] = {}
    confusion: dict[str, Any] = {}
    for part in SPLITS:
        if data[part].x.shape[0]:
            outputs = predict(model, data[part].x)
            lines = table.lines[getattr(prepared.split, part)]
            source = prepared.source_of(part)  # data.path, or the part's own file
            refuse_non_finite_outputs(outputs, lines, source.unit, source.path)
            metrics[part] = task.score(data[part].y, outputs, None)
            if not isinstance(task, Regression):
                confusion[part] = task.confusion(data[part].y, outputs)
    metrics["baselines"] = _baselines(prepared, data)
    metrics["best_epoch"] = best_epoch(position.history)
    if stopping is not None and position.best_value is not None:
        metrics["best_epoch"] = position.best_epoch
        metrics["early_stopping"] = {
            "monitor": stopping.monitor,
            "best_value": position.best_value,
            "best_epoch": position.best_epoch,
            "stopped_epoch": position.history[-1]["epoch"] if position.stopped_early else None,
            "restored_best": position.best_weights is not None,
        }
    if confusion and not isinstance(task, Regression):
        metrics["confusion_matrix"] = {"labels": task.labels.classes, **confusion}
    return metrics


def _baselines(prepared: Prepared, data: dict[str, Tensors]) -> dict[str, dict[str, float]]:
    """The task's baselines on the very inputs the network saw."""
    train, test = data["train"], data["test"]
    return prepared.task.baselines(
        train.x.cpu().numpy(), train.y.cpu(), test.x.cpu().numpy(), test.y.cpu()
    )


def best_epoch(history: list[EpochRecord]) -> int:
    """The epoch with the lowest validation loss (training loss when there is no validation)."""
    key = "val_loss" if "val_loss" in history[0] else "train_loss"
    return int(min(history, key=lambda record: record[key])["epoch"])


def _predictions(model: nn.Module, prepared: Prepared, test: Tensors) -> list[dict[str, Any]]:
    """The test rows: their line (in the test rows' own file), the true target, and the task's
    prediction columns (regression: the model's output in target units)."""
    target = prepared.config.data.target
    columns = {
        prepared.source_of("test").unit: prepared.table.lines[prepared.split.test],
        target: _truth(prepared, test),
        **prepared.task.columns(predict(model, test.x)),
    }
    return csv_rows(columns)


def _truth(prepared: Prepared, test: Tensors) -> np.ndarray:
    """The test rows' targets as the file has them: a regression target's values as read
    (float64), not the training tensor's float32 after data.scale_target's round trip (191,
    not 190.9999999622646); a class its label."""
    if isinstance(prepared.task, Regression):
        values = prepared.table.frame[prepared.config.data.target].iloc[prepared.split.test]
        return np.asarray(values, dtype=np.float64)
    return prepared.task.truth(test.y)


def interrupted(
    run_dir: Path, number: int, saved: bool, resumable: bool = True, processes: int = 1
) -> Interrupted:
    """How a stopped run says so; a run of a torchrun group resumes under as many processes."""
    if not resumable:
        return Interrupted(
            Problem(
                f"training stopped by {signal.Signals(number).name} and the run marked "
                "interrupted; an ensemble run keeps no checkpoints yet, so it cannot be resumed",
                file=str(run_dir),
                hint="train it again",
            ),
            signal_number=number,
        )
    how = "a checkpoint was saved" if saved else "at once; the last checkpoint was kept"
    spread = f" --nproc {processes}" if processes > 1 else ""
    return Interrupted(
        Problem(
            f"training stopped by {signal.Signals(number).name}, {how}, "
            "and the run marked interrupted",
            file=str(run_dir),
            hint=f"resume with: mlpkit train --resume {run_dir}{spread}",
        ),
        signal_number=number,
    )


def group_lost(job: Job, exc: GroupLost) -> GroupLost:
    """A lost peer, said of this run: where it stopped and how to carry on."""
    world = job.group.world if job.group is not None else 1
    return GroupLost(
        Problem(
            f"{exc.problems[0].problem}; the run marked interrupted, its last checkpoint kept",
            file=str(job.run_dir),
            hint=f"resume with: mlpkit train --resume {job.run_dir} --nproc {world} "
            "(or under torchrun with as many processes)",
        )
    )


def mark(job: Job, status: runs.Status, exc: BaseException) -> None:
    """Record how the run ended; on a full disk even that may fail, and the first error is
    the one to report (the run then shows as interrupted: no process holds its lock)."""
    update = {"status": status, "finished": runs.now(), "error": one_line(exc)}
    with contextlib.suppress(MlpkitError):
        runs.write_info(job.run_dir, job.info.model_copy(update=update))
    job.trackers.finish(status)  # never raises: a tracker that fails only warns
