"""The flows behind the commands (check, summary, train, eval), composed from the modules.

`train` reads top to bottom: load_config -> resolve device -> read and split the table -> fit
preprocessing on train -> build model -> summarize -> create the run -> fit -> evaluate ->
baselines -> write the run, `complete` last. Everything that can be checked is checked before
the run directory exists, so rejected input leaves runs/ as it was.
"""

from __future__ import annotations

import platform
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import mlpkit
from mlpkit import components, runs
from mlpkit.baselines import regression_baselines
from mlpkit.config import Config, LoadedConfig, load_config, output_layer
from mlpkit.data import Split, Table, check_split, read_table, split_rows
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
from mlpkit.loop import EpochRecord, OnEpoch, Tensors, evaluate, fit, predict
from mlpkit.model import build_model
from mlpkit.preprocessing import Preprocessor, fit_preprocessor
from mlpkit.summary import Summary, render_text, summarize

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Prepared:
    """A checked config with its table, split and fitted preprocessing: ready to train."""

    loaded: LoadedConfig
    table: Table
    split: Split
    preprocessor: Preprocessor

    @property
    def config(self) -> Config:
        return self.loaded.config

    def tensors(self, rows: np.ndarray, device: torch.device) -> Tensors:
        return make_tensors(self.table.frame.iloc[rows], self.preprocessor, device)

    def summary(self) -> Summary:
        return summarize(self.config.model.layers, len(self.preprocessor.input_names))


def make_tensors(frame: Any, preprocessor: Preprocessor, device: torch.device) -> Tensors:
    """Model inputs and scaled targets of `frame`'s rows, on `device`."""
    target = frame[preprocessor.target.name].to_numpy(dtype=np.float64)
    x = torch.from_numpy(preprocessor.transform(frame))  # [rows, inputs]
    y = torch.from_numpy(preprocessor.scale_target(target))[:, None]  # [rows, 1]
    return Tensors(x.to(device), y.to(device))


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    history: list[EpochRecord]
    metrics: dict[str, Any]


def resolve_device(loaded: LoadedConfig, override: str | None = None) -> torch.device:
    """The torch device for training.device (or --device): auto picks CUDA when there is one.

    Raises:
        DeviceError: CUDA was asked for and is not available.
    """
    wanted = override or loaded.config.training.device
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


def prepare(loaded: LoadedConfig) -> Prepared:
    """Read, check and split the data and fit preprocessing: every check short of training.

    Raises:
        DataError: the table, the split or the output layer does not fit the config.
    """
    cfg = loaded.config
    table = read_table(loaded.data_path, cfg.data, loaded)
    split = split_rows(table.n_rows, cfg.data, cfg.seed)
    problems = check_split(split, loaded)
    if problems:
        raise DataError(problems)
    preprocessor = fit_preprocessor(table.frame.iloc[split.train], cfg.data)
    prepared = Prepared(loaded, table, split, preprocessor)
    problems = _head_reaches_target(prepared)
    if problems:
        raise DataError(problems)
    return prepared


def _head_reaches_target(prepared: Prepared) -> list[Problem]:
    """An output activation with a bounded range must be able to produce the training targets."""
    found = output_layer(prepared.config.model.layers)
    assert found is not None  # load_config refuses a model without a dense layer
    index, head = found
    if head.activation not in components.ACTIVATION_RANGES:
        return []
    low, high = components.ACTIVATION_RANGES[head.activation]
    target = prepared.config.data.target
    values = prepared.table.frame[target].to_numpy()[prepared.split.train]
    scaled = prepared.preprocessor.scale_target(values)
    if low <= scaled.min() and scaled.max() <= high:
        return []
    kind = "scaled target" if prepared.config.data.scale_target else "target"
    return [
        prepared.loaded.problem(
            ("model", "layers", index, "activation"),
            f"'{head.activation}' outputs lie in [{low:g}, {high:g}] but the {kind} '{target}' "
            f"ranges over [{scaled.min():.4g}, {scaled.max():.4g}]",
            "use activation: linear on the output",
        )
    ]


def check(config_path: Path, overrides: list[str]) -> Prepared:
    """Run every check that `train` runs before training, and nothing else."""
    loaded = load_config(config_path, overrides)
    resolve_device(loaded)
    prepared = prepare(loaded)
    build_trainer(prepared, torch.device("cpu"))
    return prepared


def summary_of_config(config_path: Path, overrides: list[str]) -> Summary:
    """The summary needs the data only for the input width (one-hot columns depend on it)."""
    return prepare(load_config(config_path, overrides)).summary()


def summary_of_run(run_dir: Path) -> Summary:
    run = runs.open_run(run_dir, require_complete=False)
    loaded = load_run_config(run)
    return summarize(loaded.config.model.layers, len(run.preprocessor.input_names))


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


def make_optimizer(model: nn.Module, loaded: LoadedConfig) -> torch.optim.Optimizer:
    options = loaded.config.training.optimizer.model_dump(exclude={"name"})
    if "betas" in options:
        options["betas"] = tuple(options["betas"])
    optimizer_class = components.OPTIMIZERS[loaded.config.training.optimizer.name]
    return optimizer_class(model.parameters(), **options)


def make_loss(loaded: LoadedConfig) -> nn.Module:
    options = loaded.config.training.loss.model_dump(exclude={"name"})
    return components.LOSSES[loaded.config.training.loss.name](**options)


@dataclass(frozen=True)
class Trainer:
    """What training updates: the network, its optimizer, and the loss it minimizes."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module


def build_trainer(prepared: Prepared, device: torch.device) -> Trainer:
    """Build model, optimizer and loss, so whatever torch refuses is known before a run exists.

    Raises:
        ConfigError: torch refuses an optimizer option the config checks let through.
    """
    cfg = prepared.config
    model = build_model(cfg.model.layers, len(prepared.preprocessor.input_names), cfg.seed, device)
    try:
        optimizer = make_optimizer(model, prepared.loaded)
    except ValueError as exc:
        problem = prepared.loaded.problem(("training", "optimizer"), f"torch refuses it: {exc}")
        raise ConfigError(problem) from None
    return Trainer(model, optimizer, make_loss(prepared.loaded))


def train(
    config_path: Path,
    overrides: list[str],
    runs_dir: Path,
    device_name: str | None = None,
    on_start: Callable[[Prepared, torch.device, Summary], None] | None = None,
    on_epoch: OnEpoch | None = None,
) -> TrainResult:
    """Check everything, then train into a new run directory and write every file of it.

    Raises:
        MlpkitError: any problem with the config, data or device (before the run exists), or
            divergence and environment failures during training (the run is marked as such).
    """
    loaded = load_config(config_path, overrides)
    device = resolve_device(loaded, device_name)
    prepared = prepare(loaded)
    trainer = build_trainer(prepared, device)
    cfg = prepared.config
    summary = prepared.summary()
    if on_start is not None:
        on_start(prepared, device, summary)

    run_dir = runs.create_run_dir(runs_dir, cfg.name)
    info = _run_info(prepared, device)
    runs.write_yaml(run_dir / "config.yaml", resolved_config(loaded))
    runs.write_bytes(run_dir / "summary.txt", render_text(summary).encode())
    runs.write_json(run_dir / "preprocessing.json", prepared.preprocessor.model_dump(mode="json"))
    runs.write_info(run_dir, info)
    try:
        result = _fit_and_write(prepared, trainer, device, run_dir, on_epoch)
    except BaseException as exc:
        status = _status_for(exc)
        runs.write_info(
            run_dir,
            info.model_copy(update={"status": status, "finished": _now(), "error": _one_line(exc)}),
        )
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted(
                Problem(
                    "training interrupted", file=str(run_dir), hint="the run is marked interrupted"
                )
            ) from None
        raise
    runs.write_info(run_dir, info.model_copy(update={"status": "complete", "finished": _now()}))
    return result


def _fit_and_write(
    prepared: Prepared,
    trainer: Trainer,
    device: torch.device,
    run_dir: Path,
    on_epoch: OnEpoch | None,
) -> TrainResult:
    cfg = prepared.config
    data = {part: prepared.tensors(getattr(prepared.split, part), device) for part in SPLITS}
    model = trainer.model
    # Dropout draws from torch's global generator; fork_rng seeds it here and restores it after.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        history = fit(
            model,
            trainer.loss_fn,
            trainer.optimizer,
            data["train"],
            data["val"] if len(prepared.split.val) else None,
            epochs=cfg.training.epochs,
            batch_size=cfg.training.batch_size,
            shuffle=cfg.training.shuffle,
            seed=cfg.seed,
            metrics=cfg.training.metrics,
            scale=prepared.preprocessor.target,
            on_epoch=on_epoch,
        )
    metrics = final_metrics(model, prepared, data, history)
    runs.write_csv(run_dir / "history.csv", history)
    runs.write_json(run_dir / "metrics.json", metrics)
    runs.write_csv(run_dir / "predictions.csv", _predictions(model, prepared, data["test"]))
    runs.write_weights(run_dir / "model.safetensors", model)
    return TrainResult(run_dir, history, metrics)


def final_metrics(
    model: nn.Module, prepared: Prepared, data: dict[str, Tensors], history: list[EpochRecord]
) -> dict[str, Any]:
    """Every regression metric per split in target units, the baselines' test metrics beside."""
    scale = prepared.preprocessor.target
    metrics: dict[str, Any] = {}
    for part in SPLITS:
        if data[part].x.shape[0]:
            scores = evaluate(
                model, nn.MSELoss(), data[part], list(components.REGRESSION_METRICS), scale
            )
            metrics[part] = {k: v for k, v in scores.items() if k != "loss"}
    metrics["baselines"] = _baselines(prepared)
    metrics["best_epoch"] = best_epoch(history)
    return metrics


def _baselines(prepared: Prepared) -> dict[str, dict[str, float]]:
    frame, target = prepared.table.frame, prepared.config.data.target
    train, test = prepared.split.train, prepared.split.test
    return regression_baselines(
        prepared.preprocessor.transform(frame.iloc[train]),
        frame[target].to_numpy()[train],
        prepared.preprocessor.transform(frame.iloc[test]),
        frame[target].to_numpy()[test],
    )


def best_epoch(history: list[EpochRecord]) -> int:
    """The epoch with the lowest validation loss (training loss when there is no validation)."""
    key = "val_loss" if "val_loss" in history[0] else "train_loss"
    return int(min(history, key=lambda record: record[key])["epoch"])


def _predictions(model: nn.Module, prepared: Prepared, test: Tensors) -> list[dict[str, Any]]:
    rows = prepared.split.test
    target = prepared.config.data.target
    predicted = prepared.preprocessor.unscale_target(predict(model, test.x)[:, 0].cpu().numpy())
    truth = prepared.table.frame[target].to_numpy()[rows]
    lines = prepared.table.lines[rows]
    return [
        {"line": int(line), target: float(t), "prediction": float(p)}
        for line, t, p in zip(lines, truth, predicted, strict=True)
    ]


def resolved_config(loaded: LoadedConfig) -> dict[str, Any]:
    """The config with every default filled in and data.path absolute, as written to a run."""
    resolved = loaded.config.model_dump(mode="json")
    resolved["data"]["path"] = str(loaded.data_path)
    return resolved


def _run_info(prepared: Prepared, device: torch.device) -> runs.RunInfo:
    return runs.RunInfo(
        name=prepared.config.name,
        status="running",
        seed=prepared.config.seed,
        device=str(device),
        data=runs.DataInfo(
            path=str(prepared.table.path), sha256=prepared.table.sha256, rows=prepared.table.n_rows
        ),
        versions={
            "mlpkit": mlpkit.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        started=_now(),
    )


def _status_for(exc: BaseException) -> runs.Status:
    if isinstance(exc, DivergedError):
        return "diverged"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
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
    loaded = load_run_config(run)
    # The training device by default, so the run's own test split scores exactly as it did.
    trained_on_cuda = run.info.device.startswith("cuda") and torch.cuda.is_available()
    device = resolve_device(loaded, device_name or ("cuda" if trained_on_cuda else "cpu"))
    model = build_model(
        loaded.config.model.layers, len(run.preprocessor.input_names), loaded.config.seed, device
    )
    run.load_weights(model)
    source_path = data_path or loaded.data_path
    table = read_table(source_path, loaded.config.data, None if data_path else loaded)
    if data_path is None:
        if table.sha256 != run.info.data.sha256:
            raise DataError(
                Problem(
                    "the data file changed since the run was trained",
                    file=str(source_path),
                    hint="pass --data to score a new file",
                )
            )
        rows = split_rows(table.n_rows, loaded.config.data, loaded.config.seed).test
    else:
        rows = np.arange(table.n_rows)
    tensors = make_tensors(table.frame.iloc[rows], run.preprocessor, device)
    scale = run.preprocessor.target
    scores = evaluate(model, nn.MSELoss(), tensors, list(components.REGRESSION_METRICS), scale)
    scores.pop("loss")
    return EvalResult(run, scores, len(rows), "test split" if data_path is None else str(data_path))


# --- predict --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Predictions:
    """One prediction per row of the input file, in target units."""

    target: str
    lines: np.ndarray  # each row's line in the input file
    values: np.ndarray

    def to_csv(self) -> str:
        rows = [
            f"{int(line)},{float(value)!r}"
            for line, value in zip(self.lines, self.values, strict=True)
        ]
        return "\n".join(["line,prediction", *rows]) + "\n"


def predict_run(run_dir: Path, data_path: Path, device_name: str | None = None) -> Predictions:
    """Predict every row of `data_path` with a complete run's model and preprocessing.

    Columns are matched by name; the target column is not needed and other columns are
    ignored. A category never seen in training encodes as all zeros (preprocessing.py).

    Raises:
        RunDirError: the run is not usable; DataError: the file lacks columns or has bad cells.
    """
    run = runs.open_run(run_dir)
    loaded = load_run_config(run)
    device = resolve_device(loaded, device_name or "cpu")
    model = build_model(
        loaded.config.model.layers, len(run.preprocessor.input_names), loaded.config.seed, device
    )
    run.load_weights(model)
    table = read_table(data_path, loaded.config.data, with_target=False)
    x = torch.from_numpy(run.preprocessor.transform(table.frame)).to(device)  # [rows, inputs]
    outputs = predict(model, x)[:, 0].cpu().numpy()
    return Predictions(
        loaded.config.data.target, table.lines, run.preprocessor.unscale_target(outputs)
    )
