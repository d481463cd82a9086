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

from mlpkit.errors import DivergedError, Interrupted, MlpkitError, Problem, one_line
from mlpkit.flows.common import csv_rows, refuse_non_finite_outputs, training_info
from mlpkit.report import tracking
from mlpkit.report.summary import Summary
from mlpkit.rundir import checkpoints, runs
from mlpkit.train import interrupts, threads
from mlpkit.train.build import Trainer
from mlpkit.train.loop import (
    EarlyStopping,
    EpochRecord,
    Hooks,
    OnEpoch,
    Position,
    StopRequested,
    Tensors,
    fit,
    predict,
)
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
            on_epoch = job.trackers.wrap(listener.epoch if listener is not None else None)
            result = _fit_and_write(job, on_epoch, stop)
    except BaseException as exc:
        if not isinstance(exc, StopRequested | KeyboardInterrupt):
            _mark(job, "diverged" if isinstance(exc, DivergedError) else "failed", exc)
            raise
        saved = isinstance(exc, StopRequested)
        stopped = _interrupted(job.run_dir, stop.received or signal.SIGINT, saved)
        _mark(job, "interrupted", stopped)
        raise stopped from None
    update = {"status": "complete", "finished": runs.now(), "training": result.training}
    runs.write_info(job.run_dir, job.info.model_copy(update=update))
    job.trackers.finish("complete", result.metrics["test"])
    return result


def _fit_and_write(job: Job, on_epoch: OnEpoch | None, stop: interrupts.StopSignals) -> TrainResult:
    prepared, trainer, device, cfg = job.prepared, job.trainer, job.device, job.prepared.config
    data = {part: prepared.tensors(getattr(prepared.split, part), device) for part in SPLITS}
    position = job.checkpoint.position if job.checkpoint is not None else None
    first_epoch = position.epoch if position is not None else 1
    train = training_stream(prepared, device, first_epoch) if prepared.streams else data["train"]

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
            batch_size=cfg.training.batch_size,
            shuffle=cfg.training.shuffle,
            seed=cfg.seed,
            score=lambda y, outputs: prepared.task.score(y, outputs, cfg.training.metrics),
            early_stopping=trainer.stopping,
            hooks=hooks,
            position=position,
            step=job.step,
            schedule=trainer.schedule,
        )
    return _write_results(job, data, position)


def _write_results(job: Job, data: dict[str, Tensors], position: Position) -> TrainResult:
    model, prepared, run_dir = job.trainer.model, job.prepared, job.run_dir
    metrics = final_metrics(model, prepared, data, position, job.trainer.stopping)
    runs.write_csv(run_dir / runs.HISTORY, position.history)
    runs.write_json(run_dir / runs.METRICS, metrics)
    runs.write_csv(run_dir / runs.PREDICTIONS, _predictions(model, prepared, data["test"]))
    runs.write_weights(run_dir / runs.WEIGHTS, model)
    training = training_info(job.trainer.engine, position)
    return TrainResult(run_dir, position.history, metrics, training)


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


def _interrupted(run_dir: Path, number: int, saved: bool) -> Interrupted:
    how = "a checkpoint was saved" if saved else "at once; the last checkpoint was kept"
    return Interrupted(
        Problem(
            f"training stopped by {signal.Signals(number).name}, {how}, "
            "and the run marked interrupted",
            file=str(run_dir),
            hint=f"resume with: mlpkit train --resume {run_dir}",
        ),
        signal_number=number,
    )


def _mark(job: Job, status: runs.Status, exc: BaseException) -> None:
    """Record how the run ended; on a full disk even that may fail, and the first error is
    the one to report (the run then shows as interrupted: no process holds its lock)."""
    update = {"status": status, "finished": runs.now(), "error": one_line(exc)}
    with contextlib.suppress(MlpkitError):
        runs.write_info(job.run_dir, job.info.model_copy(update=update))
    job.trackers.finish(status)  # never raises: a tracker that fails only warns
