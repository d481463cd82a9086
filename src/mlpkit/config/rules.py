"""The rules that span several fields of a validated config, which pydantic's per-field checks
cannot see: the split adds up to 1, the target is no feature, the loss and metrics suit the
task, early stopping and schedules watch a value that each epoch computes; the model's inputs
and output head are checked in model_rules.py.

`cross_field_problems` checks them all and returns every problem at once, each located at the
key to change; load.py raises them together.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from mlpkit.config import registries
from mlpkit.config.date_rules import date_problems
from mlpkit.config.fold_rules import fold_problems
from mlpkit.config.locate import ALIKE
from mlpkit.config.missing_rules import missing_problems
from mlpkit.config.model_rules import head_problems, input_problems
from mlpkit.config.schema import (
    LOSS_TASKS,
    BatchNormLayer,
    OneCycleSchedule,
    PlateauSchedule,
    SGDConfig,
    TrainingConfig,
    task_of,
)
from mlpkit.config.split_rules import file_parts, has_val_rows, split_file_problems
from mlpkit.errors import Problem, clip, did_you_mean, listed

if TYPE_CHECKING:  # load.py imports this module, so the class is only named here, not imported
    from mlpkit.config.load import LoadedConfig


def cross_field_problems(loaded: LoadedConfig) -> list[Problem]:
    """Rules pydantic's per-field checks cannot see; each problem points at the key to change."""
    return [
        *_split_problems(loaded),
        *split_file_problems(loaded),
        *fold_problems(loaded),
        *_feature_problems(loaded),
        *missing_problems(loaded),
        *date_problems(loaded),
        *_source_problems(loaded),
        *_task_problems(loaded),
        *input_problems(loaded),
        *head_problems(loaded),
        *_early_stopping_problems(loaded),
        *_scheduler_problems(loaded),
        *_batch_norm_problems(loaded),
        *_optimizer_problems(loaded),
    ]


def _split_problems(loaded: LoadedConfig) -> list[Problem]:
    """The split's fractions share out every row (with split files, see split_rules.py)."""
    split = loaded.config.data.split
    if file_parts(loaded.config.data) or split.folds is not None:  # folds: only test is used
        return []
    total = split.train + split.val + split.test
    if abs(total - 1.0) > 1e-9:
        return [
            loaded.problem(
                ("data", "split"),
                f"fractions add up to {total:g}",
                "make train + val + test equal 1",
            )
        ]
    return []


def _feature_problems(loaded: LoadedConfig) -> list[Problem]:
    """The features exclude the target, name each column once, and hold the categorical ones.

    Linear in the lists (a Counter, a set lookup per name): a feature list may be user-sized;
    more than ALIKE names wrong in one way are one problem listing the first few.
    """
    data = loaded.config.data
    problems: list[Problem] = []
    counts = Counter(data.features)
    if data.target in counts:
        problems.append(
            loaded.problem(
                ("data", "features"),
                f"lists the target '{clip(data.target)}' (label leakage)",
                "remove it from data.features",
            )
        )
    repeated = [
        f"'{clip(name)}' " + ("twice" if count == 2 else f"{count:,} times")
        for name, count in counts.items()  # in the order of the list
        if count > 1
    ]
    if len(repeated) > ALIKE:
        message = f"lists {len(repeated):,} names more than once: {listed(repeated, 10)}"
        problems.append(loaded.problem(("data", "features"), message, "name each column once"))
    else:
        problems += [loaded.problem(("data", "features"), f"lists {name}") for name in repeated]
    return problems + _categorical_problems(loaded, counts)


def _categorical_problems(loaded: LoadedConfig, features: Counter[str]) -> list[Problem]:
    """Each categorical column is a feature too."""
    absent = [f"'{clip(name)}'" for name in loaded.config.data.categorical if name not in features]
    hint = "list each categorical column in data.features too"
    if len(absent) > ALIKE:
        message = f"{len(absent):,} names are not in data.features: {listed(absent, 10)}"
        return [loaded.problem(("data", "categorical"), message, hint)]
    return [
        loaded.problem(("data", "categorical"), f"{name} is not in data.features", hint)
        for name in absent
    ]


def _source_problems(loaded: LoadedConfig) -> list[Problem]:
    """Data comes from a file or a synthetic source, and only a stream needs an epoch length."""
    data, training = loaded.config.data, loaded.config.training
    if (data.path is None) == (data.source is None):
        what = "both" if data.path else "neither"
        return [
            loaded.problem(
                ("data",),
                f"has {what} of path and source",
                "give a CSV or Parquet path, or a synthetic source such as {name: xor}",
            )
        ]
    if data.stream and data.source is not None:
        return [
            loaded.problem(
                ("data", "stream"),
                "only applies to a data.path file",
                "a synthetic source always streams",
            )
        ]
    # Compared with the defaults, not with the keys given: a run's config.yaml lists them all.
    stream_only = [
        key
        for key in ("chunk_rows", "workers", "eval_rows")
        if getattr(data, key) != type(data).model_fields[key].default
        and not (key == "eval_rows" and data.source is not None)
    ]
    if stream_only and not data.stream:
        return [
            loaded.problem(
                ("data", stream_only[0]),
                "only applies to a streamed file"
                + (" or a synthetic source" if stream_only[0] == "eval_rows" else ""),
                "set data.stream: true, or remove it",
            )
        ]
    if data.source is not None and training.iterations_per_epoch is None:
        return [
            loaded.problem(
                ("training", "iterations_per_epoch"),
                "missing: a synthetic stream has no end",
                "e.g. iterations_per_epoch: 1000",
            )
        ]
    if data.source is None and training.iterations_per_epoch is not None:
        return [
            loaded.problem(
                ("training", "iterations_per_epoch"),
                "only applies to a synthetic data.source",
                "an epoch over a file is one pass over its rows",
            )
        ]
    return []


def _task_problems(loaded: LoadedConfig) -> list[Problem]:
    """The loss, metrics and options must suit the task."""
    cfg = loaded.config
    task = task_of(cfg)
    problems = []
    loss = cfg.training.loss
    if loss is not None and LOSS_TASKS[loss.name] != task:
        fits = [name for name, kind in LOSS_TASKS.items() if kind == task]
        problems.append(
            loaded.problem(
                ("training", "loss", "name"),
                f"'{loss.name}' is a {LOSS_TASKS[loss.name]} loss but data.task is {task}",
                "use " + " or ".join(fits),
            )
        )
    offered = registries.METRICS_BY_TASK[task]
    for name in cfg.training.metrics or []:
        if name not in offered:
            problems.append(
                loaded.problem(
                    ("training", "metrics"),
                    f"'{clip(name)}' is not a {task} metric",
                    "expected one of: " + ", ".join(offered),
                )
            )
    return problems + _task_option_problems(loaded)


def _task_option_problems(loaded: LoadedConfig) -> list[Problem]:
    """Options that only one kind of task reads are refused for the others."""
    cfg = loaded.config
    task = task_of(cfg)
    problems = []
    if task != "regression" and cfg.data.scale_target:
        problems.append(
            loaded.problem(
                ("data", "scale_target"),
                f"a {task} target has classes, not a scale",
                "remove data.scale_target",
            )
        )
    if task == "regression" and cfg.training.class_weights is not None:
        problems.append(
            loaded.problem(
                ("training", "class_weights"),
                "class weights need a classification task",
                "set data.task: binary or multiclass",
            )
        )
    # Compared with the defaults, not with the keys given: a run's config.yaml lists them all.
    for key, needs in (("threshold", "binary"), ("top_k", "multiclass")):
        if task != needs and getattr(cfg.training, key) != TrainingConfig.model_fields[key].default:
            problems.append(
                loaded.problem(
                    ("training", key),
                    f"only applies to a {needs} task, and data.task is {task}",
                    f"remove training.{key}",
                )
            )
    return problems


def watched(loaded: LoadedConfig) -> list[str]:
    """What each epoch computes on the validation rows: the loss and the metrics."""
    cfg = loaded.config
    return ["loss", *(cfg.training.metrics or registries.METRICS_BY_TASK[task_of(cfg)])]


def _early_stopping_problems(loaded: LoadedConfig) -> list[Problem]:
    """Early stopping watches a metric computed on validation rows each epoch."""
    stopping = loaded.config.training.early_stopping
    if stopping is None:
        return []
    where = ("training", "early_stopping")
    if not has_val_rows(loaded.config.data):
        hint = "give data.split.val a fraction, e.g. 0.1"
        return [loaded.problem(where, "needs validation rows but data.split.val is 0", hint)]
    choices = [f"val_{name}" for name in watched(loaded)]
    if stopping.monitor not in choices:
        message = f"monitor '{clip(stopping.monitor)}' is not computed each epoch"
        return [
            loaded.problem((*where, "monitor"), message, did_you_mean(stopping.monitor, choices))
        ]
    return []


def _scheduler_problems(loaded: LoadedConfig) -> list[Problem]:
    """Warmup ends before training does; one_cycle has room to rise and fall; reduce_on_plateau
    watches a value of every epoch."""
    cfg = loaded.config
    schedule = cfg.training.scheduler
    if schedule is None:
        return []
    problems = []
    warmup = getattr(schedule, "warmup_epochs", 0)
    if warmup >= cfg.training.epochs:
        problems.append(
            loaded.problem(
                ("training", "scheduler", "warmup_epochs"),
                f"is {warmup} but training.epochs is {cfg.training.epochs}",
                "warm up for fewer epochs than training runs",
            )
        )
    if isinstance(schedule, OneCycleSchedule):
        problems += _one_cycle_problems(loaded, schedule)
    if isinstance(schedule, PlateauSchedule):
        problems += _plateau_problems(loaded, schedule)
    return problems


def _one_cycle_problems(loaded: LoadedConfig, schedule: OneCycleSchedule) -> list[Problem]:
    """one_cycle needs at least 2 epochs of rise and 1 of fall."""
    epochs = loaded.config.training.epochs
    # torch's OneCycleLR per epoch: the rise ends at epoch pct_start x epochs - 1, so with
    # fewer epochs than this the cycle degenerates (no rise, or a fall of zero epochs).
    rise = schedule.pct_start * epochs
    if rise >= 2 and epochs - rise >= 1:
        return []
    return [
        loaded.problem(
            ("training", "scheduler"),
            f"one_cycle over {epochs} epochs with pct_start "
            f"{schedule.pct_start:g} rises for {rise:g} epochs and falls for "
            f"{epochs - rise:g}",
            "it needs at least 2 epochs up and 1 down: train more epochs or change pct_start",
        )
    ]


def _plateau_problems(loaded: LoadedConfig, schedule: PlateauSchedule) -> list[Problem]:
    """reduce_on_plateau's monitor is the training loss or a value of the validation rows."""
    has_val = has_val_rows(loaded.config.data)
    choices = ["train_loss", *([f"val_{name}" for name in watched(loaded)] if has_val else [])]
    if schedule.monitor in choices:
        return []
    message = f"monitor '{clip(schedule.monitor)}' is not computed each epoch"
    if schedule.monitor.startswith("val_") and not has_val:
        message += " (data.split.val is 0)"
    return [
        loaded.problem(
            ("training", "scheduler", "monitor"),
            message,
            did_you_mean(schedule.monitor, choices),
        )
    ]


def _batch_norm_problems(loaded: LoadedConfig) -> list[Problem]:
    """Batch norm needs two rows in a batch, in the main stack or any input's branch."""
    cfg = loaded.config
    branches = [spec.layers for spec in (cfg.model.inputs or {}).values()]
    every_layer = [layer for layers in (cfg.model.layers, *branches) for layer in layers]
    if cfg.training.batch_size == 1 and any(isinstance(x, BatchNormLayer) for x in every_layer):
        return [
            loaded.problem(
                ("training", "batch_size"),
                "batch_norm needs batches of at least 2 rows",
                "raise batch_size or remove the batch_norm layer",
            )
        ]
    return []


def _optimizer_problems(loaded: LoadedConfig) -> list[Problem]:
    """Options torch's optimizers refuse in combination, refused here without torch."""
    optimizer = loaded.config.training.optimizer
    if (
        isinstance(optimizer, SGDConfig)
        and optimizer.nesterov
        and (optimizer.momentum <= 0 or optimizer.dampening != 0)
    ):
        return [
            loaded.problem(
                ("training", "optimizer", "nesterov"),
                "nesterov needs momentum > 0 and dampening 0",
                "set training.optimizer.momentum, e.g. 0.9",
            )
        ]
    return []
