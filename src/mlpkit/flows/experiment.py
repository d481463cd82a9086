"""The flows behind the commands (check, summary, train, eval, predict), from the modules.

`train` reads top to bottom: load_config -> resolve device -> read and split the table -> fit
preprocessing on train -> build model -> summarize -> create the run -> fit -> evaluate ->
baselines -> write the run, `complete` last. Everything that can be checked is checked before
the run directory exists, so rejected input leaves runs/ as it was.
"""

from __future__ import annotations

import contextlib
import csv
import io
import platform
import shutil
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import mlpkit
from mlpkit.config import registries
from mlpkit.config.load import LoadedConfig, differences, load_config
from mlpkit.config.schema import Config
from mlpkit.data import filestream
from mlpkit.data.blocks import load_table
from mlpkit.data.table import Split, Table
from mlpkit.errors import (
    ConfigError,
    DataError,
    DeviceError,
    DivergedError,
    Interrupted,
    MlpkitError,
    Problem,
    RunDirError,
)
from mlpkit.report import tracking
from mlpkit.report.summary import Summary, render_text
from mlpkit.rundir import checkpoints, lock, runs
from mlpkit.train import direct, interrupts, threads
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
from mlpkit.train.prepare import (
    Prepared,
    make_tensors,
    model_summary,
    network,
    prepare,
    split_table,
    synthetic_table,
    training_stream,
)
from mlpkit.train.schedules import Schedule
from mlpkit.train.tasks import Regression, Task, make_task

SPLITS = ("train", "val", "test")
# (what will train, on which device, its layer table, and where a resumed run carries on)
OnStart = Callable[[Prepared, torch.device, Summary, Position | None], None]


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    history: list[EpochRecord]
    metrics: dict[str, Any]
    training: runs.TrainingInfo


def resolve_device(loaded: LoadedConfig, override: str | None = None) -> torch.device:
    """The torch device for training.device (or --device): auto picks CUDA when there is one.

    Raises:
        DeviceError: CUDA was asked for and is not available.
    """
    wanted = override if override is not None else loaded.config.training.device
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if wanted == "cuda" and not torch.cuda.is_available():
        problem = (
            Problem(
                "CUDA is not available on this machine", where="--device", hint="use --device cpu"
            )
            if override
            else loaded.problem(
                ("training", "device"), "CUDA is not available on this machine", "use cpu or auto"
            )
        )
        raise DeviceError(problem)
    if wanted not in ("cpu", "cuda"):
        raise DeviceError(
            Problem(
                f"unknown device '{wanted}'", where="--device", hint="expected auto, cpu or cuda"
            )
        )
    return torch.device(wanted)


def check(config_path: Path, overrides: list[str]) -> Prepared:
    """Run every check that `train` runs before training, and nothing else."""
    loaded = load_config(config_path, overrides)
    resolve_device(loaded)
    tracking.check(loaded)
    prepared = prepare(loaded)
    build_trainer(prepared, torch.device("cpu"))
    return prepared


def summary_of_config(config_path: Path, overrides: list[str]) -> Summary:
    """The summary needs the data only for the input width (one-hot columns depend on it)."""
    return prepare(load_config(config_path, overrides)).summary()


def summary_of_run(run_dir: Path) -> Summary:
    run = runs.open_run(run_dir, require_complete=False)
    return model_summary(load_run_config(run).config, run.preprocessor)


def load_run_config(run: runs.Run) -> LoadedConfig:
    """The run's config.yaml, checked against the preprocessing.json written beside it.

    Raises:
        ConfigError: config.yaml is not a valid config.
        RunDirError: the two files describe different features or targets.
    """
    loaded = load_config(run.config_path)
    data, state = loaded.config.data, run.preprocessor
    expected = [
        (name, "categorical" if name in data.categorical else "numeric") for name in data.features
    ]
    found = [(feature.name, feature.kind) for feature in state.features]
    if found != expected or state.target.name != data.target:
        raise RunDirError(
            Problem(
                "preprocessing.json does not match config.yaml (features, kinds or target differ)",
                file=str(run.path),
                hint="the run was edited after training; train it again",
            )
        )
    return loaded


# Optimizers with a fused kernel (one call updates every parameter): faster than the for-each
# default (measured: docs/PERFORMANCE.md), and what the direct step calls.
FUSED = ("sgd", "adam", "adamw")


def make_optimizer(model: nn.Module, loaded: LoadedConfig) -> torch.optim.Optimizer:
    settings = loaded.config.training.optimizer
    options = settings.model_dump(exclude={"name"})
    if "betas" in options:
        options["betas"] = tuple(options["betas"])
    if settings.name in FUSED:
        options["fused"] = True
    optimizer_class = registries.OPTIMIZERS[settings.name]
    return optimizer_class(model.parameters(), **options)


@dataclass(frozen=True)
class Engine:
    """How steps run: `direct` (direct.py) or `autograd`; why not direct; CPU threads."""

    name: str
    threads: int
    why_not_direct: str | None = None

    def describe(self, progress: Position | None = None) -> runs.TrainingInfo:
        done = {}
        if progress is not None:
            seconds = sum(record["seconds"] for record in progress.history)
            done = {"steps": progress.steps, "seconds": seconds}
        return runs.TrainingInfo.model_validate(
            {"engine": self.name, "threads": self.threads, "why_not_direct": self.why_not_direct}
            | done
        )


@dataclass(frozen=True)
class Trainer:
    """What training updates: the network, its optimizer and learning-rate schedule, and the
    loss it minimizes."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    engine: Engine
    schedule: Schedule | None = None


def build_trainer(prepared: Prepared, device: torch.device) -> Trainer:
    """Build model, optimizer and loss, so whatever torch refuses is known before a run exists.

    Raises:
        ConfigError: torch refuses an optimizer option the config checks let through, or
            training.engine is direct for a model, loss or optimizer it does not cover.
    """
    model = network(prepared.config, prepared.preprocessor, prepared.task, device)
    try:
        optimizer = make_optimizer(model, prepared.loaded)
    except ValueError as exc:
        problem = prepared.loaded.problem(("training", "optimizer"), f"torch refuses it: {exc}")
        raise ConfigError(problem) from None
    loss_fn = prepared.task.loss(device)
    engine = choose_engine(prepared, model, loss_fn, optimizer)
    settings = prepared.config.training.scheduler
    schedule = None
    if settings is not None:
        schedule = Schedule(settings, optimizer, prepared.config.training.epochs)
    return Trainer(model, optimizer, loss_fn, engine, schedule)


def choose_engine(
    prepared: Prepared, model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer
) -> Engine:
    """training.engine resolved: auto takes the direct step wherever it covers the model."""
    training = prepared.config.training
    parameters = sum(p.numel() for p in model.parameters())
    count = threads.choose(training.threads, parameters, training.batch_size)
    if training.engine == "autograd":
        return Engine("autograd", count)
    why_not = direct.unsupported(model, loss_fn, optimizer)
    if why_not is None:
        return Engine("direct", count)
    if training.engine == "direct":
        problem = prepared.loaded.problem(
            ("training", "engine"),
            f"the direct step does not cover {why_not}",
            hint="use engine: auto (direct where it applies) or autograd",
        )
        raise ConfigError(problem)
    return Engine("autograd", count, why_not)


def train(
    config_path: Path,
    overrides: list[str],
    runs_dir: Path,
    device_name: str | None = None,
    on_start: OnStart | None = None,
    on_epoch: OnEpoch | None = None,
) -> TrainResult:
    """Check everything, then train into a new run directory and write every file of it.

    Raises:
        MlpkitError: any problem with the config, data or device (before the run exists), or
            divergence, interruption and environment failures during training (the run is
            marked as such, with a checkpoint to resume from).
    """
    loaded = load_config(config_path, overrides)
    device = resolve_device(loaded, device_name)
    prepared = prepare(loaded)
    trainer = build_trainer(prepared, device)
    trackers = tracking.open_tracking(loaded, resolved_config(loaded), runs_dir)
    summary = prepared.summary()
    if on_start is not None:
        on_start(prepared, device, summary, None)
    run_dir = runs.create_run_dir(runs_dir, prepared.config.name)
    session = None
    try:
        with lock.hold(run_dir):  # one hold from the first file to the last
            runs.write_yaml(run_dir / "config.yaml", resolved_config(loaded))
            runs.write_bytes(run_dir / "summary.txt", render_text(summary).encode())
            preprocessing = prepared.preprocessor.model_dump(mode="json")
            runs.write_json(run_dir / "preprocessing.json", preprocessing)
            info = _run_info(prepared, device, trainer.engine)
            session = _Session(run_dir, prepared, trainer, device, info, trackers=trackers)
            return session.run(on_epoch)
    except MlpkitError:
        if session is None:  # not a run yet: leave nothing behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def resume(
    run_dir: Path,
    config_path: Path | None,
    overrides: list[str],
    device_name: str | None = None,
    on_start: OnStart | None = None,
    on_epoch: OnEpoch | None = None,
) -> TrainResult:
    """Continue an interrupted run in place from its newest intact checkpoint.

    The config (the run's own, or `config_path` with `overrides`, which must resolve to the
    same) and the data file must be those the run was trained on.

    Raises:
        RunDirError: not a resumable run, locked by another process, or no usable checkpoint.
        ConfigError: the config differs from the run's (the fields are named).
        DataError: the data file changed since the run began.
    """
    runs.open_run(run_dir, require_complete=False)  # a run at all, before taking its lock
    with lock.hold(run_dir):
        run = runs.open_run(run_dir, require_complete=False)  # as it is now that we hold it
        if run.info.status in ("complete", "diverged"):
            hint = "nothing to resume" if run.info.status == "complete" else None
            hint = hint or runs.next_step(run_dir, run.info.status)
            problem = Problem(f"the run is {run.info.status}", file=str(run_dir), hint=hint)
            raise RunDirError(problem)
        checkpoint, skipped = checkpoints.latest(run_dir)
        loaded = _same_config(run, checkpoint, config_path, overrides)
        device = resolve_device(loaded, device_name)
        prepared = prepare(loaded)
        _same_data(run, prepared)
        trainer = build_trainer(prepared, device)
        checkpoints.load_into(checkpoint, trainer.model, trainer.optimizer, trainer.schedule)
        runs_dir = run_dir.resolve().parent.parent  # runs/<name>/<run>: the default MLflow store
        config = resolved_config(loaded)
        trackers = tracking.open_tracking(loaded, config, runs_dir, resumed=run_dir)
        if on_start is not None:
            on_start(prepared, device, prepared.summary(), checkpoint.progress)
        for problem in skipped:  # a damaged newer checkpoint: say so, resume from the one before
            sys.stderr.write(f"Warning: skipped {problem.render().removeprefix('Error: ')}\n")
        checkpoints.clean_partials(run_dir)
        resumed = [*run.info.resumed, _now()]
        update: dict[str, Any] = {"status": "running", "finished": None, "error": None}
        update |= {"resumed": resumed, "device": str(device)}
        update["training"] = trainer.engine.describe()
        info = run.info.model_copy(update=update)
        session = _Session(run_dir, prepared, trainer, device, info, checkpoint, trackers)
        return session.run(on_epoch)


def _same_config(
    run: runs.Run,
    checkpoint: checkpoints.Checkpoint,
    config_path: Path | None,
    overrides: list[str],
) -> LoadedConfig:
    """The config to resume with: the run's own, or the one given (with --set) if it resolves
    to the same; either way refused when it differs from the checkpoint's, fields named."""
    own = load_config(run.config_path, [] if config_path else overrides)
    _refuse_changes(own, checkpoint, run.config_path)
    if config_path is None:
        return own
    given = load_config(config_path, overrides)
    _refuse_changes(given, checkpoint, config_path)
    return given


# Settings a resume may change: the engine gives the same results, and runs checkpointed before
# `threads` existed have no value for it. Every key under `tracking` is free too: it only says
# where the epochs are also reported (a resume may turn a tracker on, or move off a dead store).
_FREE_ON_RESUME = {"training.engine"}
_FREE_SECTIONS = {"tracking"}
_ADDED_LATER = {"training.threads"}


def _refuse_changes(loaded: LoadedConfig, checkpoint: checkpoints.Checkpoint, path: Path) -> None:
    old = checkpoint.config
    if "scheduler" not in old.get("training", {}):  # checkpointed before schedules existed
        old = old | {"training": old["training"] | {"scheduler": None}}
    absent = {key for key in _ADDED_LATER if key.split(".")[-1] not in old.get("training", {})}
    changed = [
        key
        for key in differences(resolved_config(loaded), old)
        if key not in _FREE_ON_RESUME
        and key.split(".")[0] not in _FREE_SECTIONS
        and key not in absent
    ]
    if changed:
        more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
        raise ConfigError(
            Problem(
                "differs from the config the run was trained with in "
                + ", ".join(changed[:8])
                + more,
                file=str(path),
                hint="resume with the run's own config, or train a new run",
            )
        )


def _same_data(run: runs.Run, prepared: Prepared) -> None:
    if prepared.table.sha256 != run.info.data.sha256:
        raise DataError(
            Problem(
                "the data file changed since the run began; resuming on other data would not "
                "continue the same training",
                file=str(prepared.table.path),
                hint="restore the original file, or train a new run on this one",
            )
        )
    if prepared.preprocessor != run.preprocessor:
        raise RunDirError(
            Problem(
                "preprocessing.json does not match the preprocessing fitted on the data",
                file=str(run.path / "preprocessing.json"),
                hint="the run was edited after it began; train a new run",
            )
        )


@dataclass
class _Session:
    """One process training one run directory: fit with checkpoints and signals, then write."""

    run_dir: Path
    prepared: Prepared
    trainer: Trainer
    device: torch.device
    info: runs.RunInfo
    checkpoint: checkpoints.Checkpoint | None = None
    trackers: tracking.Tracking = field(default_factory=tracking.Tracking)

    def run(self, on_epoch: OnEpoch | None) -> TrainResult:
        runs.write_info(self.run_dir, self.info)
        stop = interrupts.StopSignals()
        try:
            with stop:
                done = self.checkpoint.progress.history if self.checkpoint is not None else []
                self.trackers.start(self.run_dir, done)
                result = self._fit_and_write(self.trackers.wrap(on_epoch), stop)
        except BaseException as exc:
            if not isinstance(exc, StopRequested | KeyboardInterrupt):
                self._mark(_status_for(exc), exc)
                raise
            stopped = self._interrupted(
                stop.received or signal.SIGINT, saved=isinstance(exc, StopRequested)
            )
            self._mark("interrupted", stopped)
            raise stopped from None
        runs.write_info(
            self.run_dir,
            self.info.model_copy(
                update={"status": "complete", "finished": _now(), "training": result.training}
            ),
        )
        self.trackers.finish("complete", result.metrics["test"])
        return result

    def _interrupted(self, number: int, saved: bool) -> Interrupted:
        how = "a checkpoint was saved" if saved else "at once; the last checkpoint was kept"
        return Interrupted(
            Problem(
                f"training stopped by {signal.Signals(number).name}, {how}, "
                "and the run marked interrupted",
                file=str(self.run_dir),
                hint=f"resume with: mlpkit train --resume {self.run_dir}",
            ),
            signal_number=number,
        )

    def _mark(self, status: runs.Status, exc: BaseException) -> None:
        """Record how the run ended; on a full disk even that may fail, and the first error is
        the one to report (the run then shows as interrupted: no process holds its lock)."""
        update = {"status": status, "finished": _now(), "error": _one_line(exc)}
        with contextlib.suppress(MlpkitError):
            runs.write_info(self.run_dir, self.info.model_copy(update=update))
        self.trackers.finish(status)  # never raises: a tracker that fails only warns

    def _fit_and_write(self, on_epoch: OnEpoch | None, stop: interrupts.StopSignals) -> TrainResult:
        prepared, trainer, device = self.prepared, self.trainer, self.device
        cfg = prepared.config
        data = {part: prepared.tensors(getattr(prepared.split, part), device) for part in SPLITS}
        progress = self.checkpoint.progress if self.checkpoint is not None else None
        first_epoch = progress.epoch if progress is not None else 1
        train = (
            training_stream(prepared, device, first_epoch) if prepared.streams else data["train"]
        )
        config = resolved_config(prepared.loaded)

        def save(position: Position) -> None:
            schedule = trainer.schedule.state_dict() if trainer.schedule is not None else None
            checkpoints.save(
                self.run_dir, trainer.model, trainer.optimizer, position, config, device, schedule
            )

        hooks = Hooks(on_epoch, save, cfg.training.checkpoint_every_steps, stop.requested)
        engine = trainer.engine
        # Dropout draws from torch's global generator; fork_rng seeds it here and restores it after.
        with (
            torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
            threads.limited(engine.threads),
        ):
            torch.manual_seed(cfg.seed)
            if self.checkpoint is not None:
                checkpoints.restore_rng(self.checkpoint.rng, device)
            # after the checkpoint's optimizer state is loaded: the step works on it in place
            step = self._direct_step()
            progress = fit(
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
                early_stopping=early_stopping(prepared.config),
                hooks=hooks,
                progress=progress,
                direct=step,
                schedule=trainer.schedule,
            )
        return self._write(data, progress)

    def _direct_step(self) -> direct.DirectStep | None:
        """The direct step, if the engine is direct and the optimizer as restored allows it (a
        checkpoint of an older mlpkit restores a non-fused optimizer: autograd trains it)."""
        trainer = self.trainer
        if trainer.engine.name != "direct":
            return None
        try:
            return direct.DirectStep(trainer.model, trainer.loss_fn, trainer.optimizer)
        except direct.Unsupported as why:
            engine = Engine("autograd", trainer.engine.threads, str(why))
            self.trainer = replace(trainer, engine=engine)
            self.info = self.info.model_copy(update={"training": engine.describe()})
            runs.write_info(self.run_dir, self.info)
            return None

    def _write(self, data: dict[str, Tensors], progress: Position) -> TrainResult:
        model, prepared, run_dir = self.trainer.model, self.prepared, self.run_dir
        metrics = final_metrics(model, prepared, data, progress)
        runs.write_csv(run_dir / "history.csv", progress.history)
        runs.write_json(run_dir / "metrics.json", metrics)
        runs.write_csv(run_dir / "predictions.csv", _predictions(model, prepared, data["test"]))
        runs.write_weights(run_dir / "model.safetensors", model)
        _draw_plots(run_dir)
        training = self.trainer.engine.describe(progress)
        return TrainResult(run_dir, progress.history, metrics, training)


def _draw_plots(run_dir: Path) -> None:
    """plots/*.png from the files just written. The plots are a view of the run, not part of
    its result: a failure to draw them (a bug) is a warning, and `mlpkit plot` draws them
    again; a failure to write them (disk full) is the run's, as for any of its files."""
    from mlpkit.report import plots  # matplotlib: imported only when a run finishes

    try:
        plots.draw_run(run_dir)
    except MlpkitError:
        raise
    except Exception as exc:
        sys.stderr.write(
            f"Warning: plots not drawn ({_one_line(exc)}); try again: mlpkit plot {run_dir}\n"
        )


def early_stopping(config: Config) -> EarlyStopping | None:
    """The loop's early stopping from the config; mode auto reads the metric's direction."""
    settings = config.training.early_stopping
    if settings is None:
        return None
    metric = settings.monitor.removeprefix("val_")
    lower = settings.mode == "min" or (
        settings.mode == "auto" and metric in registries.LOWER_IS_BETTER
    )
    return EarlyStopping(
        settings.monitor, lower, settings.patience, settings.min_delta, settings.restore_best
    )


def final_metrics(
    model: nn.Module, prepared: Prepared, data: dict[str, Tensors], progress: Position
) -> dict[str, Any]:
    """Every metric of the task per split, the baselines' test metrics beside them, and for
    classification the confusion matrices (rows: true class, columns: predicted)."""
    task = prepared.task
    metrics: dict[str, Any] = {}
    confusion: dict[str, Any] = {}
    for part in SPLITS:
        if data[part].x.shape[0]:
            outputs = predict(model, data[part].x)
            metrics[part] = task.score(data[part].y, outputs, None)
            if not isinstance(task, Regression):
                confusion[part] = task.confusion(data[part].y, outputs)
    metrics["baselines"] = _baselines(prepared, data)
    metrics["best_epoch"] = best_epoch(progress.history)
    stopping = early_stopping(prepared.config)
    if stopping is not None and progress.best_value is not None:
        metrics["best_epoch"] = progress.best_epoch
        metrics["early_stopping"] = {
            "monitor": stopping.monitor,
            "best_value": progress.best_value,
            "best_epoch": progress.best_epoch,
            "stopped_epoch": progress.history[-1]["epoch"] if progress.stopped_early else None,
            "restored_best": progress.best_weights is not None,
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
    """The test rows: their line, the true target, and the task's prediction columns."""
    target = prepared.config.data.target
    columns = {
        prepared.table.unit: prepared.table.lines[prepared.split.test],
        target: prepared.task.truth(test.y),
        **prepared.task.columns(predict(model, test.x)),
    }
    return _rows(columns)


def _rows(columns: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Columns of equal length as CSV rows of plain Python values."""
    names = list(columns)
    return [
        dict(zip(names, values, strict=True))
        for values in zip(*(columns[n].tolist() for n in names), strict=True)
    ]


def resolved_config(loaded: LoadedConfig) -> dict[str, Any]:
    """The config with every default filled in and data.path absolute, as written to a run."""
    resolved = loaded.config.model_dump(mode="json")
    if loaded.config.data.path is not None:
        resolved["data"]["path"] = str(loaded.data_path)
    uri = loaded.config.tracking.mlflow.uri
    if uri is not None:  # a relative store path, like data.path, is read from the config's folder
        resolved["tracking"]["mlflow"]["uri"] = tracking.absolute_uri(uri, loaded.source.parent)
    return resolved


def _run_info(prepared: Prepared, device: torch.device, engine: Engine) -> runs.RunInfo:
    return runs.RunInfo(
        name=prepared.config.name,
        status="running",
        seed=prepared.config.seed,
        device=str(device),
        data=runs.DataInfo(
            path=str(prepared.table.path), sha256=prepared.table.sha256, rows=prepared.data_rows
        ),
        versions={
            "mlpkit": mlpkit.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        started=_now(),
        training=engine.describe(),
    )


def _status_for(exc: BaseException) -> runs.Status:
    if isinstance(exc, DivergedError):
        return "diverged"
    return "failed"


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, MlpkitError):
        return exc.problems[0].render()
    return traceback.format_exception_only(exc)[-1].strip() or type(exc).__name__


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


# --- eval -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalResult:
    run: runs.Run
    scores: dict[str, float]
    rows: int
    source: str  # "test split" or the data file evaluated


def evaluate_run(
    run_dir: Path, data_path: Path | None = None, device_name: str | None = None
) -> EvalResult:
    """Rebuild model and preprocessing from the run alone and score it.

    Without `data_path`, on the run's own test split (the data file must be unchanged); with it,
    on every row of that file.

    Raises:
        RunDirError: the run is not usable; DataError: the data does not fit the run.
    """
    run = runs.open_run(run_dir)
    # The training device by default, so the run's own test split scores exactly as it did.
    trained_on_cuda = run.info.device.startswith("cuda") and torch.cuda.is_available()
    loaded, task, model = _rebuild(run, device_name or ("cuda" if trained_on_cuda else "cpu"))
    if data_path is None:
        table, split = trained_rows(run, loaded, "pass --data to score a new file")
        rows = split.test
    else:
        table = load_table(data_path, loaded.config.data)
        _check_known_labels(task, table.frame[loaded.config.data.target].to_numpy(), table)
        rows = np.arange(table.n_rows)
    device = next(model.parameters()).device
    tensors = make_tensors(table.frame.iloc[rows], run.preprocessor, task, device)
    scores = task.score(tensors.y, predict(model, tensors.x), None)
    return EvalResult(run, scores, len(rows), "test split" if data_path is None else str(data_path))


def trained_rows(run: runs.Run, loaded: LoadedConfig, hint: str) -> tuple[Table, Split]:
    """The rows the run was split from, found again, with their split: a synthetic source's
    drawn again from the seed, a streamed file's samples by a new scan, a file read again.

    Raises:
        DataError: the data file changed since the run was trained (`hint`: what to do).
    """
    if loaded.config.data.source is not None:
        table, split, _ = synthetic_table(loaded)
        return table, split
    if loaded.config.data.stream:  # the scan finds the same samples again
        found = filestream.scan(loaded)
        table, split = found.table, found.split
    else:
        table = load_table(loaded.data_path, loaded.config.data, loaded)
        split = split_table(loaded, table)[0]
    if table.sha256 != run.info.data.sha256:
        raise DataError(
            Problem(
                "the data file changed since the run was trained",
                file=str(loaded.data_path),
                hint=hint,
            )
        )
    return table, split


def _rebuild(run: runs.Run, device_name: str) -> tuple[LoadedConfig, Task, nn.Module]:
    """A run's config, task and trained network, from its directory alone."""
    loaded = load_run_config(run)
    device = resolve_device(loaded, device_name)
    task = make_task(loaded.config, run.preprocessor.target, None)
    model = network(loaded.config, run.preprocessor, task, device)
    run.load_weights(model)
    return loaded, task, model


def _check_known_labels(task: Task, target: np.ndarray, table: Table) -> None:
    if isinstance(task, Regression):
        return
    unknown = task.labels.encode(target) < 0
    if unknown.any():
        first = int(np.flatnonzero(unknown)[0])
        raise DataError(
            Problem(
                f"label '{target[first]}' was not a class in training ({unknown.sum()} rows)",
                file=str(table.path),
                where=f"column '{task.labels.name}', {table.unit} {table.lines[first]}",
                hint="expected one of: " + ", ".join(task.labels.classes),
            )
        )


# --- predict --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Predictions:
    """One row per row of the input file: its line and the task's prediction columns."""

    columns: dict[str, np.ndarray]

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(self.columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(_rows(self.columns))
        return buffer.getvalue()


def predict_run(run_dir: Path, data_path: Path, device_name: str | None = None) -> Predictions:
    """Predict every row of `data_path` with a complete run's model and preprocessing.

    Columns are matched by name; the target column is not needed and other columns are
    ignored. A category never seen in training encodes as all zeros (preprocessing.py).

    Raises:
        RunDirError: the run is not usable; DataError: the file lacks columns or has bad cells.
    """
    run = runs.open_run(run_dir)
    loaded, task, model = _rebuild(run, device_name or "cpu")
    table = load_table(data_path, loaded.config.data, with_target=False)
    device = next(model.parameters()).device
    x = torch.from_numpy(run.preprocessor.transform(table.frame)).to(device)  # [rows, inputs]
    return Predictions({table.unit: table.lines, **task.columns(predict(model, x))})
