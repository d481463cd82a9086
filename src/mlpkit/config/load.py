"""Load a config: read the YAML, apply --set overrides, validate against schema.py, check the
rules that span several fields, and fill in the task's defaults. `load_config` builds one.

`1e-3` is a float (see yamlfile.py); every problem is located at its file and line, or --set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from mlpkit.config import registries
from mlpkit.config.locate import ConfigSource, child, located_problems
from mlpkit.config.schema import (
    DEFAULT_LOSSES,
    DEFAULT_METRICS,
    LOSS_TASKS,
    BatchNormLayer,
    Config,
    DenseLayer,
    InputConfig,
    Layer,
    Loss,
    OneCycleSchedule,
    PlateauSchedule,
    SGDConfig,
    TaskKind,
    TrainingConfig,
)
from mlpkit.config.yamlfile import Path_, parse_yaml
from mlpkit.errors import ConfigError, Problem, did_you_mean

# --- loading --------------------------------------------------------------------------------


@dataclass
class LoadedConfig(ConfigSource):
    """A validated config plus where it came from."""

    config: Config

    @property
    def data_path(self) -> Path:
        """data.path, resolved from the config file's folder (only for a file source)."""
        assert self.config.data.path is not None
        return (self.source.parent / self.config.data.path).resolve()


def load_config(path: Path, overrides: tuple[str, ...] | list[str] = ()) -> LoadedConfig:
    """Read, override and validate a config file, reporting every problem found at once.

    Raises:
        ConfigError: the file is unreadable, not YAML, or not a valid config.
    """
    doc = parse_yaml(_read_text(path), str(path))
    if not isinstance(doc.data, dict):
        kind = "empty" if doc.data is None else f"a {type(doc.data).__name__}, not a mapping"
        raise ConfigError(
            Problem(
                f"the file is {kind}",
                file=str(path),
                hint="a config is a mapping with name, data, model, training",
            )
        )
    raw = doc.data
    overridden = {_apply_override(raw, text) for text in overrides}
    _expand_shorthands(raw)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        origin = ConfigSource(path, doc, overridden)
        raise ConfigError(located_problems(exc.errors(), raw, origin, Config)) from None
    loaded = LoadedConfig(path, doc, overridden, config)
    problems = cross_field_problems(loaded)
    if problems:
        raise ConfigError(problems)
    loaded.config = _with_task_defaults(config)
    return loaded


def task_of(config: Config) -> TaskKind:
    """data.task, or the task the loss implies when it is auto."""
    if config.data.task != "auto":
        return config.data.task
    return LOSS_TASKS[config.training.loss.name] if config.training.loss else "regression"


def differences(new: Any, old: Any, prefix: str = "") -> list[str]:
    """The dotted paths where two resolved configs (plain data) differ, in `new`'s key order.

    Mappings are compared key by key, and so are lists of mappings of one length (the layers:
    `model.layers.0.units`); any other list is one value (`data.features`), which reads better
    whole than item by item. Used by resume (refuse a changed config) and by compare.
    """
    if isinstance(new, dict) and isinstance(old, dict):
        keys = list(new) + [k for k in old if k not in new]
        found: list[str] = []
        for key in keys:
            found += differences(new.get(key), old.get(key), f"{prefix}{key}.")
        return found
    if (
        isinstance(new, list)
        and isinstance(old, list)
        and len(new) == len(old)
        and all(isinstance(item, dict) for item in [*new, *old])
    ):
        return [
            path
            for index, (a, b) in enumerate(zip(new, old, strict=True))
            for path in differences(a, b, f"{prefix}{index}.")
        ]
    return [] if new == old else [prefix.rstrip(".")]


def _with_task_defaults(config: Config) -> Config:
    """The config with data.task, training.loss and training.metrics filled in for the task."""
    task = task_of(config)
    training = config.training
    loss = training.loss or TypeAdapter(Loss).validate_python({"name": DEFAULT_LOSSES[task]})
    metrics = training.metrics if training.metrics is not None else DEFAULT_METRICS[task]
    return config.model_copy(
        update={
            "data": config.data.model_copy(update={"task": task}),
            "training": training.model_copy(update={"loss": loss, "metrics": metrics}),
        }
    )


def _read_text(path: Path) -> str:
    if not path.exists():
        raise ConfigError(Problem("config file not found", file=str(path)))
    if path.is_dir():
        raise ConfigError(Problem("is a directory, not a config file", file=str(path)))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            Problem(f"cannot read the file: {exc.strerror}", file=str(path))
        ) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            Problem(
                "the file is not UTF-8 text", file=str(path), line=line, hint="save it as UTF-8"
            )
        ) from None


def _apply_override(raw: dict[str, Any], text: str) -> Path_:
    """Apply `dotted.key=value` to the raw mapping; the value is read as YAML, like the file.

    Returns the path that now comes from the command line: the first section the override had
    to create, or the key itself, so any problem under it is blamed on --set, not the file.
    """
    key, sep, value_text = text.partition("=")
    if not sep or not key:
        raise ConfigError(
            Problem(f"'{text}' is not key=value", file="--set", hint="e.g. --set training.epochs=5")
        )
    value = parse_yaml(value_text, f"--set {key}").data
    path: list[str | int] = [int(p) if p.isdigit() else p for p in key.split(".")]
    node: Any = raw
    created: Path_ | None = None
    for depth, part in enumerate(path[:-1]):
        below = child(node, part)
        if below is None and isinstance(node, list):
            prefix = ".".join(map(str, path[:depth]))
            raise ConfigError(
                Problem(
                    f"'{prefix}' has {len(node)} items, no item {part}", file="--set", where=key
                )
            )
        if below is None:
            node[part] = below = {}
            created = created or tuple(path[: depth + 1])
        if not isinstance(below, dict | list):
            prefix = ".".join(map(str, path[: depth + 1]))
            raise ConfigError(
                Problem(f"'{prefix}' holds a value, not a section", file="--set", where=key)
            )
        node = below
    last = path[-1]
    if isinstance(node, list) and (not isinstance(last, int) or last >= len(node)):
        prefix = ".".join(map(str, path[:-1]))
        raise ConfigError(
            Problem(f"'{prefix}' has {len(node)} items, no item {last}", file="--set", where=key)
        )
    node[last] = value
    return created or tuple(path)


def _expand_shorthands(raw: dict[str, Any]) -> None:
    """`optimizer: adam` and `loss: mse` mean `{name: adam}` and `{name: mse}`."""
    training = raw.get("training")
    if isinstance(training, dict):
        for key in ("optimizer", "loss"):
            if isinstance(training.get(key), str):
                training[key] = {"name": training[key]}
        weights = training.get("class_weights")
        if isinstance(weights, dict):  # YAML reads a label 1 as a number; labels are text
            training["class_weights"] = {str(k): v for k, v in weights.items()}
    _features_from_inputs(raw)


def _features_from_inputs(raw: dict[str, Any]) -> None:
    """With model.inputs and no data.features, the features are the inputs' columns in order."""
    model, data = raw.get("model"), raw.get("data")
    inputs = model.get("inputs") if isinstance(model, dict) else None
    if not isinstance(inputs, dict) or not isinstance(data, dict):
        return
    _columns_from_shapes(inputs, data.get("source"))
    if "features" in data:
        return
    columns = [  # an input with a shape and no source has no columns: its own error follows
        spec.get("columns", [] if "shape" in spec else None)
        for spec in inputs.values()
        if isinstance(spec, dict)
    ]
    if columns and all(isinstance(c, list) for c in columns):
        data["features"] = [name for names in columns if isinstance(names, list) for name in names]


def _columns_from_shapes(inputs: dict[str, Any], source: Any) -> None:
    """`{shape: N}` inputs of a synthetic source take its next N columns (x1, x2, ...) in the
    declared order, as Axon's inputs take shapes; a file's inputs name their columns."""
    if not isinstance(source, dict) or not isinstance(source.get("name"), str):
        return
    width = source.get("features", 8) if source["name"] != "xor" else 2
    made = [f"x{i}" for i in range(1, width + 1)] if isinstance(width, int) else []
    for spec in inputs.values():
        if isinstance(spec, dict) and "columns" not in spec and isinstance(spec.get("shape"), int):
            spec["columns"], made = made[: spec["shape"]], made[spec["shape"] :]


# --- rules that span several fields ---------------------------------------------------------


def cross_field_problems(loaded: LoadedConfig) -> list[Problem]:
    """Rules pydantic's per-field checks cannot see; each problem points at the key to change."""
    cfg = loaded.config
    problems: list[Problem] = []
    split = cfg.data.split
    total = split.train + split.val + split.test
    if abs(total - 1.0) > 1e-9:
        problems.append(
            loaded.problem(
                ("data", "split"),
                f"fractions add up to {total:g}",
                "make train + val + test equal 1",
            )
        )
    if cfg.data.target in cfg.data.features:
        problems.append(
            loaded.problem(
                ("data", "features"),
                f"lists the target '{cfg.data.target}' (label leakage)",
                "remove it from data.features",
            )
        )
    for name in sorted({f for f in cfg.data.features if cfg.data.features.count(f) > 1}):
        problems.append(loaded.problem(("data", "features"), f"lists '{name}' twice"))
    for name in cfg.data.categorical:
        if name not in cfg.data.features:
            problems.append(
                loaded.problem(
                    ("data", "categorical"),
                    f"'{name}' is not in data.features",
                    "list each categorical column in data.features too",
                )
            )
    problems += _source_problems(loaded)
    problems += _task_problems(loaded)
    problems += _input_problems(loaded)
    problems += _head_problems(loaded)
    problems += _early_stopping_problems(loaded)
    problems += _scheduler_problems(loaded)
    branches = [spec.layers for spec in (cfg.model.inputs or {}).values()]
    every_layer = [layer for layers in (cfg.model.layers, *branches) for layer in layers]
    if cfg.training.batch_size == 1 and any(isinstance(x, BatchNormLayer) for x in every_layer):
        problems.append(
            loaded.problem(
                ("training", "batch_size"),
                "batch_norm needs batches of at least 2 rows",
                "raise batch_size or remove the batch_norm layer",
            )
        )
    optimizer = cfg.training.optimizer
    if (
        isinstance(optimizer, SGDConfig)
        and optimizer.nesterov
        and (optimizer.momentum <= 0 or optimizer.dampening != 0)
    ):
        problems.append(
            loaded.problem(
                ("training", "optimizer", "nesterov"),
                "nesterov needs momentum > 0 and dampening 0",
                "set training.optimizer.momentum, e.g. 0.9",
            )
        )
    return problems


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
                    f"'{name}' is not a {task} metric",
                    "expected one of: " + ", ".join(offered),
                )
            )
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


def _early_stopping_problems(loaded: LoadedConfig) -> list[Problem]:
    """Early stopping watches a metric computed on validation rows each epoch."""
    cfg = loaded.config
    stopping = cfg.training.early_stopping
    if stopping is None:
        return []
    where = ("training", "early_stopping")
    if cfg.data.split.val == 0:
        hint = "give data.split.val a fraction, e.g. 0.1"
        return [loaded.problem(where, "needs validation rows but data.split.val is 0", hint)]
    task = task_of(cfg)
    watched = ["loss", *(cfg.training.metrics or registries.METRICS_BY_TASK[task])]
    choices = [f"val_{name}" for name in watched]
    if stopping.monitor not in choices:
        message = f"monitor '{stopping.monitor}' is not computed each epoch"
        return [
            loaded.problem((*where, "monitor"), message, did_you_mean(stopping.monitor, choices))
        ]
    return []


def _scheduler_problems(loaded: LoadedConfig) -> list[Problem]:
    """Warmup ends before training does; reduce_on_plateau watches a value of every epoch."""
    cfg = loaded.config
    schedule = cfg.training.scheduler
    if schedule is None:
        return []
    where = ("training", "scheduler")
    problems = []
    warmup = getattr(schedule, "warmup_epochs", 0)
    if warmup >= cfg.training.epochs:
        problems.append(
            loaded.problem(
                (*where, "warmup_epochs"),
                f"is {warmup} but training.epochs is {cfg.training.epochs}",
                "warm up for fewer epochs than training runs",
            )
        )
    if isinstance(schedule, OneCycleSchedule):
        # torch's OneCycleLR per epoch: the rise ends at epoch pct_start x epochs - 1, so with
        # fewer epochs than this the cycle degenerates (no rise, or a fall of zero epochs).
        rise = schedule.pct_start * cfg.training.epochs
        if rise < 2 or cfg.training.epochs - rise < 1:
            problems.append(
                loaded.problem(
                    where,
                    f"one_cycle over {cfg.training.epochs} epochs with pct_start "
                    f"{schedule.pct_start:g} rises for {rise:g} epochs and falls for "
                    f"{cfg.training.epochs - rise:g}",
                    "it needs at least 2 epochs up and 1 down: train more epochs or change "
                    "pct_start",
                )
            )
    if isinstance(schedule, PlateauSchedule):
        watched = ["loss", *(cfg.training.metrics or registries.METRICS_BY_TASK[task_of(cfg)])]
        choices = ["train_loss"]
        if cfg.data.split.val > 0:
            choices += [f"val_{name}" for name in watched]
        if schedule.monitor not in choices:
            message = f"monitor '{schedule.monitor}' is not computed each epoch"
            if schedule.monitor.startswith("val_") and cfg.data.split.val == 0:
                message += " (data.split.val is 0)"
            problems.append(
                loaded.problem(
                    (*where, "monitor"), message, did_you_mean(schedule.monitor, choices)
                )
            )
    return problems


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


_INPUT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Names the summary gives its own rows (op_N), and Mermaid's keyword: an input cannot take them.
_RESERVED = re.compile(
    r"input|end|(?:dense|dropout|batch_norm|concatenate|"
    + "|".join(registries.ACTIVATIONS)
    + r")_\d+"
)


def _shape_problem(loaded: LoadedConfig, name: str, spec: InputConfig) -> Problem | None:
    """An input names columns, or (a synthetic source's) a shape its columns then match."""
    key = ("model", "inputs", name)
    source = loaded.config.data.source
    if spec.shape is None:
        if spec.columns:
            return None
        return loaded.problem(key, "has no columns", "e.g. columns: [x1], or shape: 1 for a source")
    if source is None:
        return loaded.problem(
            (*key, "shape"),
            "a shape applies to a synthetic data.source's columns",
            "for a file, list the input's columns",
        )
    if len(spec.columns) != spec.shape:
        return loaded.problem(
            (*key, "shape"),
            f"{spec.shape} columns, but the input has {len(spec.columns)}",
            f"shapes take the {source.name} source's columns x1, x2, ... in order",
        )
    return None


def _input_problems(loaded: LoadedConfig) -> list[Problem]:
    """Named inputs split data.features: each feature feeds exactly one input."""
    inputs = loaded.config.model.inputs
    if inputs is None:
        return []
    problems = []
    features = loaded.config.data.features
    owner: dict[str, str] = {}
    for name, spec in inputs.items():
        if not _INPUT_NAME.fullmatch(name) or _RESERVED.fullmatch(name):
            problems.append(
                loaded.problem(
                    ("model", "inputs", name),
                    f"'{name}' cannot name an input",
                    "use letters, digits and '_', not a layer name such as dense_0; e.g. x1",
                )
            )
        shape_problem = _shape_problem(loaded, name, spec)
        if shape_problem is not None:
            problems.append(shape_problem)
        for column in spec.columns:
            if column in owner:
                problems.append(
                    loaded.problem(
                        ("model", "inputs", name, "columns"),
                        f"'{column}' already feeds input '{owner[column]}'",
                    )
                )
            elif column not in features:
                problems.append(
                    loaded.problem(
                        ("model", "inputs", name, "columns"),
                        f"'{column}' is not in data.features",
                        "list it there too, or leave data.features out",
                    )
                )
            owner.setdefault(column, name)
    unused = [f for f in features if f not in owner]
    if unused:
        problems.append(
            loaded.problem(
                ("data", "features"),
                f"{', '.join(unused)} feed no input in model.inputs",
                "add them to an input's columns or drop them",
            )
        )
    return problems


def output_layer(layers: list[Layer]) -> tuple[int, DenseLayer] | None:
    """The last dense layer and its position: the one that produces the model's output."""
    for index in range(len(layers) - 1, -1, -1):
        layer = layers[index]
        if isinstance(layer, DenseLayer):
            return index, layer
    return None


def _head_problems(loaded: LoadedConfig) -> list[Problem]:
    layers = loaded.config.model.layers
    last = len(layers) - 1
    found = output_layer(layers)
    if found is None:
        return [
            loaded.problem(
                ("model", "layers"), "has no dense layer", "end with e.g. {type: dense, units: 1}"
            )
        ]
    index, head = found
    problems = []
    if index != last:
        problems.append(
            loaded.problem(
                ("model", "layers", last),
                f"the model ends with {layers[last].type}, not dense",
                "end with the dense output layer",
            )
        )
    task = task_of(loaded.config)
    if task == "multiclass":
        if head.activation not in ("softmax", "linear"):
            problems.append(
                loaded.problem(
                    ("model", "layers", index, "activation"),
                    f"a multiclass output needs softmax (or linear logits), not {head.activation}",
                    "set activation: softmax",
                )
            )
        return problems
    if task == "binary" and head.activation not in ("sigmoid", "linear"):
        problems.append(
            loaded.problem(
                ("model", "layers", index, "activation"),
                f"a binary output needs sigmoid (or linear logits), not {head.activation}",
                "set activation: sigmoid",
            )
        )
    if head.units != 1:
        one = "a regression on one target" if task == "regression" else "a binary task"
        problems.append(
            loaded.problem(
                ("model", "layers", index, "units"),
                f"the output layer has {head.units} units; {one} needs 1",
                "set units: 1",
            )
        )
    elif head.activation == "softmax":
        problems.append(
            loaded.problem(
                ("model", "layers", index, "activation"),
                "softmax over one unit always outputs 1",
                "use linear for regression",
            )
        )
    return problems
