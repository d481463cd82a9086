"""The experiment config's schema: strict, typed pydantic models, one per section.

Each field is the single source of its default, its range and its validation. Unknown keys are
refused at every level; names of activations, losses, optimizers and metrics are checked
against the registries in registries.py. Loading and overrides live in load.py, the rules that
span several fields in rules.py.

One module on purpose, though near 400 lines: it is the config's reference, read section by
section in the order of a config file; split up, a key's default would be harder to find.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from mlpkit.config import registries
from mlpkit.errors import clip, did_you_mean

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class _Strict(BaseModel):
    # strict: `batch_size: "32"` or `true` is an error, not a silent cast; inf/nan are refused.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


def _check_name(kind: str, value: str, registry: dict[str, Any]) -> str:
    if value not in registry:
        raise PydanticCustomError(
            "unknown_name",
            "unknown {kind} '{value}'",
            {"kind": kind, "value": clip(value), "hint": did_you_mean(value, registry)},
        )
    return value


# --- data -----------------------------------------------------------------------------------


class SplitConfig(_Strict):
    """Fractions of the shuffled rows; the split is a function of the seed alone."""

    train: float = Field(0.8, gt=0, lt=1)
    val: float = Field(0.1, ge=0, lt=1)
    test: float = Field(0.1, gt=0, lt=1)
    # k-fold cross-validation (`mlpkit train --folds K`): after the test rows, the rest is cut
    # into `folds` parts (train and val are then not used); data/folds.py
    folds: int | None = Field(None, ge=2)
    fold: int | None = Field(None, ge=1)  # the part this run validates on; each fold run's own


class XorSource(_Strict):
    """x1, x2 drawn from {0, 1}; y = x1 xor x2 (the Axon write-up's stream)."""

    name: Literal["xor"]


class RegressionSource(_Strict):
    """x1..xN standard normal; y a fixed linear function of them plus Gaussian noise."""

    name: Literal["regression"]
    features: int = Field(8, ge=1, le=1000)
    noise: float = Field(0.1, ge=0)


class ClassificationSource(_Strict):
    """Gaussian clusters around fixed class centres; y the class index."""

    name: Literal["classification"]
    features: int = Field(8, ge=1, le=1000)
    classes: int = Field(2, ge=2, le=1000)


Source = Annotated[XorSource | RegressionSource | ClassificationSource, Field(discriminator="name")]


Strategy = Literal["error", "mean", "median", "most_frequent", "constant"]
STRATEGIES: tuple[str, ...] = ("error", "mean", "median", "most_frequent", "constant")
# Cells that mean "no value": in a numeric column always; in a categorical column or a class
# target only once data.missing is set (before that, "NA" may well be a category).
MISSING_MARKERS = ["", "na", "n/a", "nan", "null", "none"]


def _spelled_out(value: Any) -> Any:
    """`median` -> {strategy: median}; `{constant: V}` -> {strategy: constant, value: V}."""
    if isinstance(value, str):
        return {"strategy": value}
    if isinstance(value, dict) and set(value) == {"constant"}:
        return {"strategy": "constant", "value": value["constant"]}
    return value


class ColumnMissing(_Strict):
    """One column's way with missing cells; what it leaves out comes from data.missing."""

    strategy: Strategy | None = None
    value: float | str | None = None  # constant: the value filled in
    indicator: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return _spelled_out(value)


class MissingConfig(_Strict):
    """Imputation of missing feature cells, with statistics from the training rows only."""

    # error (no imputing), mean, median (numeric columns), most_frequent, constant (`value`)
    strategy: Strategy = "error"
    value: float | str | None = None
    indicator: bool = False  # add an is-missing input (0/1) after each imputed column
    target: Literal["drop", "error"] = "drop"  # rows with a missing target
    # lowercase text meaning missing (after stripping); numeric columns also take NaN cells
    markers: list[str] = Field(default_factory=lambda: list(MISSING_MARKERS))
    columns: dict[str, ColumnMissing] = Field(default_factory=dict)  # per-column overrides

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return _spelled_out(value)

    def strategy_for(self, column: str) -> str:
        own = self.columns.get(column)
        return own.strategy if own is not None and own.strategy is not None else self.strategy

    def value_for(self, column: str) -> float | str | None:
        own = self.columns.get(column)
        return own.value if own is not None and own.strategy is not None else self.value

    def indicator_for(self, column: str) -> bool:
        own = self.columns.get(column)
        return own.indicator if own is not None and own.indicator is not None else self.indicator


# The numeric parts a date column becomes (data/dates.py computes them); a column listed alone
# takes DEFAULT_DATE_PARTS.
DatePart = Literal[
    "year", "month", "day", "day_of_week", "day_of_year", "hour", "minute", "ordinal"
]
DATE_PARTS: tuple[str, ...] = get_args(DatePart)
DEFAULT_DATE_PARTS: tuple[DatePart, ...] = ("year", "month", "day_of_week", "ordinal")


def _dates_spelled_out(value: Any) -> Any:
    """`dates: [sold]` -> {sold: DEFAULT_DATE_PARTS}; `{sold: null}` alike."""
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return {column: list(DEFAULT_DATE_PARTS) for column in value}
    if isinstance(value, dict):
        return {k: list(DEFAULT_DATE_PARTS) if v is None else v for k, v in value.items()}
    return value


class DataConfig(_Strict):
    # a CSV or Parquet file, relative to this config; or a synthetic `source` instead
    path: str | None = Field(None, examples=["../data/mpg.csv"], min_length=1)
    # validation / test rows from their own files (same columns), not cut from `path`: the
    # training file is then cut into train and the other part only (data/splitfiles.py)
    val_path: str | None = Field(None, examples=["../data/mpg-val.csv"], min_length=1)
    test_path: str | None = Field(None, examples=["../data/mpg-test.csv"], min_length=1)
    source: Source | None = None
    # read the file block by block, never whole (files larger than memory); see data/filestream.py
    stream: bool = False
    chunk_rows: int = Field(65536, ge=1)  # stream: CSV lines per block (Parquet: row groups)
    workers: int = Field(1, ge=0, le=64)  # stream: DataLoader processes reading blocks
    # synthetic source or stream: validation and test rows kept in memory (each)
    eval_rows: int = Field(10000, ge=1)
    target: str = Field(examples=["mpg"], min_length=1)
    features: list[str] = Field(examples=[["cylinders", "weight"]], min_length=1)
    categorical: list[str] = Field(default_factory=list)
    standardize: bool = True
    scale_target: bool = False
    split: SplitConfig = SplitConfig()
    encoding: str = "utf-8"
    # missing cells: a strategy for all features (`missing: median`) or a section; unset, a
    # missing cell is an error that shows the lines to add
    missing: MissingConfig | None = None
    # ISO date or date-time features -> the numeric parts the model takes, e.g.
    # {sold: [year, month, day_of_week]}; a list of columns takes DEFAULT_DATE_PARTS
    dates: dict[str, Annotated[list[DatePart], Field(min_length=1)]] = Field(default_factory=dict)
    # auto: from the loss (bce -> binary, cross_entropy -> multiclass, else regression)
    task: Literal["auto", "regression", "binary", "multiclass"] = "auto"

    @field_validator("dates", mode="before")
    @classmethod
    def _dates_shorthand(cls, value: Any) -> Any:
        return _dates_spelled_out(value)


# --- model ----------------------------------------------------------------------------------


class DenseLayer(_Strict):
    type: Literal["dense"]
    units: int = Field(gt=0, examples=[32])
    activation: str = "linear"
    bias: bool = True

    @field_validator("activation")
    @classmethod
    def _known_activation(cls, value: str) -> str:
        return _check_name("activation", value, registries.ACTIVATIONS)


class DropoutLayer(_Strict):
    type: Literal["dropout"]
    rate: float = Field(ge=0, lt=1, examples=[0.1])


class BatchNormLayer(_Strict):
    type: Literal["batch_norm"]
    momentum: float = Field(0.1, gt=0, le=1)
    eps: float = Field(1e-5, gt=0)


Layer = Annotated[DenseLayer | DropoutLayer | BatchNormLayer, Field(discriminator="type")]


class InputConfig(_Strict):
    """A named input: table columns, and optionally its own layers before the concatenation."""

    columns: list[str] = Field(default_factory=list, examples=[["x1"]])
    # a synthetic source's input: its next `shape` columns (filled into `columns` on loading)
    shape: int | None = Field(None, ge=1, le=1000)
    layers: list[Layer] = Field(default_factory=list)


# An ensemble's members each keep their weights, and train (later: at once, stacked) with
# their own optimizer state; train/budget.py charges all of them. 64 bounds the file and the
# summary, and is past where averaging more members stops paying (docs/RESULTS.md).
MAX_ENSEMBLE = 64


class ModelConfig(_Strict):
    # Named inputs, concatenated in this order before `layers`; without it, one input of all
    # data.features. With it, data.features may be left out: it is the inputs' columns in order.
    inputs: dict[str, InputConfig] | None = None
    layers: list[Layer] = Field(min_length=1, examples=[[{"type": "dense", "units": 1}]])
    # K networks of this architecture, each from its own seed, trained on the same split;
    # predictions average theirs (probabilities for classification). 1: one network.
    ensemble: int = Field(1, ge=1, le=MAX_ENSEMBLE)


# --- training -------------------------------------------------------------------------------


class _OptimizerBase(_Strict):
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)


class SGDConfig(_OptimizerBase):
    name: Literal["sgd"]
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.0, ge=0)
    dampening: float = Field(0.0, ge=0)
    nesterov: bool = False


class AdamConfig(_OptimizerBase):
    name: Literal["adam"]
    betas: list[Annotated[float, Field(ge=0, lt=1)]] = Field(
        [0.9, 0.999], min_length=2, max_length=2
    )
    eps: float = Field(1e-8, gt=0)
    amsgrad: bool = False


class AdamWConfig(AdamConfig):
    name: Literal["adamw"]  # type: ignore[assignment]
    weight_decay: float = Field(0.01, ge=0)


class RMSpropConfig(_OptimizerBase):
    name: Literal["rmsprop"]
    lr: float = Field(0.01, gt=0)
    alpha: float = Field(0.99, gt=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    momentum: float = Field(0.0, ge=0)
    centered: bool = False


class AdagradConfig(_OptimizerBase):
    name: Literal["adagrad"]
    lr: float = Field(0.01, gt=0)
    lr_decay: float = Field(0.0, ge=0)
    eps: float = Field(1e-10, gt=0)
    initial_accumulator_value: float = Field(0.0, ge=0)


Optimizer = Annotated[
    SGDConfig | AdamConfig | AdamWConfig | RMSpropConfig | AdagradConfig,
    Field(discriminator="name"),
]


class MSELoss(_Strict):
    name: Literal["mse"]


class MAELoss(_Strict):
    name: Literal["mae"]


class HuberLoss(_Strict):
    name: Literal["huber"]
    delta: float = Field(1.0, gt=0)


class BCELoss(_Strict):
    """Binary cross-entropy, computed from logits."""

    name: Literal["bce"]


class CrossEntropyLoss(_Strict):
    """Multiclass cross-entropy, computed from logits."""

    name: Literal["cross_entropy"]


Loss = Annotated[
    MSELoss | MAELoss | HuberLoss | BCELoss | CrossEntropyLoss, Field(discriminator="name")
]
TaskKind = Literal["regression", "binary", "multiclass"]
LOSS_TASKS: dict[str, TaskKind] = {
    "mse": "regression",
    "mae": "regression",
    "huber": "regression",
    "bce": "binary",
    "cross_entropy": "multiclass",
}
DEFAULT_LOSSES: dict[TaskKind, str] = {
    "regression": "mse",
    "binary": "bce",
    "multiclass": "cross_entropy",
}
DEFAULT_METRICS: dict[TaskKind, list[str]] = {
    "regression": ["mae", "r2"],
    "binary": ["accuracy", "roc_auc"],
    "multiclass": ["accuracy", "f1_macro"],
}

Device = Literal["auto", "cpu", "cuda"]


class EarlyStoppingConfig(_Strict):
    """Stop when a validation metric has not improved for `patience` epochs."""

    monitor: str = Field("val_loss", examples=["val_loss", "val_r2"])  # val_loss or val_<metric>
    patience: int = Field(5, gt=0, examples=[5])
    min_delta: float = Field(0.0, ge=0)  # a change smaller than this is no improvement
    mode: Literal["auto", "min", "max"] = "auto"  # auto: min for losses and errors, else max
    restore_best: bool = True  # end with the best epoch's weights, not the last epoch's


# --- learning-rate schedules ----------------------------------------------------------------
# Each steps once at the end of an epoch (train/schedules.py), so history.csv's `lr` is the rate of
# the whole epoch and a resumed run carries on the same schedule.


class _Warmup(_Strict):
    # Linear warmup: the first `warmup_epochs` epochs rise in equal steps from
    # lr * warmup_start_factor towards the optimizer's lr, at which the schedule begins in the
    # epoch after them. 0: no warmup.
    warmup_epochs: int = Field(0, ge=0)
    warmup_start_factor: float = Field(0.1, gt=0, le=1)


class StepSchedule(_Warmup):
    """lr times `gamma` every `step_epochs` epochs."""

    name: Literal["step"]
    step_epochs: int = Field(10, gt=0, examples=[10])
    gamma: float = Field(0.1, gt=0, lt=1)


class ExponentialSchedule(_Warmup):
    """lr times `gamma` every epoch."""

    name: Literal["exponential"]
    gamma: float = Field(0.95, gt=0, lt=1)


class CosineSchedule(_Warmup):
    """lr falls along half a cosine from the optimizer's lr to `min_lr` in the last epoch."""

    name: Literal["cosine"]
    min_lr: float = Field(0.0, ge=0)


class OneCycleSchedule(_Strict):
    """Smith's one cycle: up from max_lr / div_factor to max_lr over the first `pct_start` of
    the epochs, then down to max_lr / (div_factor * final_div_factor). It warms up by itself,
    so it takes no warmup_epochs. The learning rate cycles, the momentum does not."""

    name: Literal["one_cycle"]
    max_lr: float | None = Field(None, gt=0)  # the peak; the optimizer's lr when not given
    pct_start: float = Field(0.3, gt=0, lt=1)
    div_factor: float = Field(25.0, gt=0)
    final_div_factor: float = Field(1e4, gt=0)
    anneal: Literal["cos", "linear"] = "cos"


class PlateauSchedule(_Warmup):
    """lr times `factor` when `monitor` has not improved for `patience` epochs."""

    name: Literal["reduce_on_plateau"]
    monitor: str = Field("val_loss", examples=["val_loss", "train_loss"])  # or val_<metric>
    mode: Literal["auto", "min", "max"] = "auto"  # auto: min for losses and errors, else max
    factor: float = Field(0.1, gt=0, lt=1)
    patience: int = Field(5, ge=0)
    threshold: float = Field(1e-4, ge=0)  # a relative change smaller than this is no improvement
    cooldown: int = Field(0, ge=0)  # epochs to wait after a reduction before watching again
    min_lr: float = Field(0.0, ge=0)


Scheduler = Annotated[
    StepSchedule | ExponentialSchedule | CosineSchedule | OneCycleSchedule | PlateauSchedule,
    Field(discriminator="name"),
]


class TrainingConfig(_Strict):
    epochs: int = Field(gt=0, examples=[40])
    iterations_per_epoch: int | None = Field(None, gt=0)  # synthetic streams: batches per epoch
    batch_size: int = Field(32, gt=0)
    # Under torchrun: `process` trains batch_size rows in each of the N processes a step (the
    # effective batch is N x batch_size); `global` makes batch_size the effective batch, each
    # process taking batch_size / N (which must divide). One process: the same either way.
    batch_scope: Literal["process", "global"] = "process"
    shuffle: bool = True
    optimizer: Optimizer = AdamConfig(name="adam")
    # the learning rate per epoch; none keeps the optimizer's lr throughout
    scheduler: Scheduler | None = None
    loss: Loss | None = None  # the task's own by default: mse, bce or cross_entropy
    metrics: list[str] | None = None  # per epoch on the validation rows; the task's defaults
    # classification only: weigh classes by inverse frequency, or {label: weight}
    class_weights: Literal["balanced"] | dict[str, Annotated[float, Field(gt=0)]] | None = None
    threshold: float = Field(0.5, gt=0, lt=1)  # binary: P(positive) from which a row is positive
    top_k: int = Field(2, ge=1)  # multiclass: k of top_k_accuracy
    device: Device = "auto"
    early_stopping: EarlyStoppingConfig | None = None
    # A checkpoint is written after every epoch; also after every N optimizer steps if set.
    checkpoint_every_steps: int | None = Field(None, gt=0)
    # How a step computes gradients: `direct` writes out the gradients of a plain dense stack
    # (no autograd, one fused optimizer call; same results, several times faster on small
    # models), `autograd` is PyTorch's usual path, `auto` picks direct where it applies.
    engine: Literal["auto", "direct", "autograd"] = "auto"
    # CPU threads for training: auto picks 1 for models too small to gain from more (see
    # docs/ARCHITECTURE.md), else all cores.
    threads: Literal["auto"] | Annotated[int, Field(ge=1, le=1024)] = "auto"

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, names: list[str] | None) -> list[str] | None:
        for name in names or []:
            _check_name("metric", name, registries.ALL_METRICS)
        return names


# --- tracking -------------------------------------------------------------------------------
# Copies of each epoch's record for dashboards (report/tracking.py); history.csv is written
# either way.


class MlflowConfig(_Strict):
    """Log the run to MLflow: the config as params, each epoch, test metrics, the run's files."""

    enabled: bool = False  # needs the mlflow package: pip install 'mlpkit[mlflow]'
    # Any MLflow tracking URI (sqlite:///mlflow.db, http://host:5000, ...); a relative path is
    # read from this file's folder. Default: $MLFLOW_TRACKING_URI, else a SQLite file beside
    # the runs: sqlite:///<runs-dir>/mlflow.db (for every run there; `mlflow ui` opens it).
    uri: str | None = Field(None, min_length=1, examples=["sqlite:///mlflow.db"])
    experiment: str | None = Field(None, min_length=1)  # the experiment's name; default: `name`


class TrackingConfig(_Strict):
    """Experiment trackers, all off by default. A resume may change these settings."""

    # TensorBoard event files in RUN/tensorboard/; needs pip install 'mlpkit[tensorboard]'
    tensorboard: bool = False
    mlflow: MlflowConfig = MlflowConfig()


class LogUniform(_Strict):
    """A float drawn uniformly in log space between two positive bounds."""

    log_uniform: Annotated[list[float], Field(min_length=2, max_length=2)]


class Uniform(_Strict):
    """A float drawn uniformly between two bounds."""

    uniform: Annotated[list[float], Field(min_length=2, max_length=2)]


class IntRange(_Strict):
    """An integer between two bounds, both included; `log: true` draws in log space."""

    int: Annotated[list[int], Field(min_length=2, max_length=2)]
    log: bool = False


class Choice(_Strict):
    """One of the listed values (any YAML: numbers, names, whole layer lists)."""

    choice: Annotated[list[Any], Field(min_length=1, max_length=1000)]


Distribution = LogUniform | Uniform | IntRange | Choice


class SweepConfig(_Strict):
    """`mlpkit sweep`: the search over `space` (dotted config paths -> distributions)."""

    metric: str = "val_loss"  # an epoch column of the validation rows (val_loss, val_r2...)
    direction: Literal["minimize", "maximize"] | None = None  # None: the metric's own
    trials: int | None = Field(None, ge=1, le=100_000)
    timeout: float | None = Field(None, gt=0)  # seconds
    sampler: Literal["tpe", "random", "grid", "cmaes"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    seed: int | None = Field(None, ge=0, le=2**32 - 1)  # None: the config's seed
    stack: bool = True  # batches of trials as one stack where the space allows it
    space: Annotated[dict[str, Distribution], Field(min_length=1, max_length=100)]


class Config(_Strict):
    """One experiment: everything needed to rebuild its data, model and training."""

    name: str = Field(examples=["mpg"], max_length=100)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    data: DataConfig
    model: ModelConfig
    training: TrainingConfig
    tracking: TrackingConfig = TrackingConfig()
    sweep: SweepConfig | None = None  # read by `mlpkit sweep` only

    @field_validator("name")
    @classmethod
    def _folder_name(cls, value: str) -> str:
        # The name becomes a folder under runs/, so it cannot hold '/' or start with '.'.
        if not _NAME.fullmatch(value):
            raise PydanticCustomError(
                "bad_name",
                "'{value}' cannot name a run folder",
                {
                    "value": clip(value),
                    "hint": "use letters, digits, '.', '_' and '-', e.g. mpg-small",
                },
            )
        return value


def task_of(config: Config) -> TaskKind:
    """data.task, or the task the loss implies when it is auto."""
    if config.data.task != "auto":
        return config.data.task
    return LOSS_TASKS[config.training.loss.name] if config.training.loss else "regression"
