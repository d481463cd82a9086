"""The experiment config: strict, typed pydantic models and `load_config`, which builds one.

Each field below is the single source of its default, its range and its validation. Unknown keys
are refused at every level; names of activations, losses, optimizers and metrics are checked
against the registries in components.py; `1e-3` is a float (see yamlfile.py).
"""

from __future__ import annotations

import difflib
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from mlpkit import components
from mlpkit.errors import ConfigError, Problem, did_you_mean
from mlpkit.yamlfile import Path_, YamlDoc, parse_yaml


class _Strict(BaseModel):
    # strict: `batch_size: "32"` or `true` is an error, not a silent cast; inf/nan are refused.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


def _check_name(kind: str, value: str, registry: dict[str, Any]) -> str:
    if value not in registry:
        raise PydanticCustomError(
            "unknown_name",
            "unknown {kind} '{value}'",
            {"kind": kind, "value": value, "hint": did_you_mean(value, registry)},
        )
    return value


# --- data -----------------------------------------------------------------------------------


class SplitConfig(_Strict):
    """Fractions of the shuffled rows; the split is a function of the seed alone."""

    train: float = Field(0.8, gt=0, lt=1)
    val: float = Field(0.1, ge=0, lt=1)
    test: float = Field(0.1, gt=0, lt=1)


class DataConfig(_Strict):
    path: str = Field(examples=["../data/mpg.csv"], min_length=1)
    target: str = Field(examples=["mpg"], min_length=1)
    features: list[str] = Field(examples=[["cylinders", "weight"]], min_length=1)
    categorical: list[str] = Field(default_factory=list)
    standardize: bool = True
    scale_target: bool = False
    split: SplitConfig = SplitConfig()
    encoding: str = "utf-8"


# --- model ----------------------------------------------------------------------------------


class DenseLayer(_Strict):
    type: Literal["dense"]
    units: int = Field(gt=0, examples=[32])
    activation: str = "linear"
    bias: bool = True

    @field_validator("activation")
    @classmethod
    def _known_activation(cls, value: str) -> str:
        return _check_name("activation", value, components.ACTIVATIONS)


class DropoutLayer(_Strict):
    type: Literal["dropout"]
    rate: float = Field(ge=0, lt=1, examples=[0.1])


class BatchNormLayer(_Strict):
    type: Literal["batch_norm"]
    momentum: float = Field(0.1, gt=0, le=1)
    eps: float = Field(1e-5, gt=0)


Layer = Annotated[DenseLayer | DropoutLayer | BatchNormLayer, Field(discriminator="type")]


class ModelConfig(_Strict):
    layers: list[Layer] = Field(min_length=1, examples=[[{"type": "dense", "units": 1}]])


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
    betas: list[float] = Field([0.9, 0.999], min_length=2, max_length=2)
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


Loss = Annotated[MSELoss | MAELoss | HuberLoss, Field(discriminator="name")]

Device = Literal["auto", "cpu", "cuda"]


class TrainingConfig(_Strict):
    epochs: int = Field(gt=0, examples=[40])
    batch_size: int = Field(32, gt=0)
    shuffle: bool = True
    optimizer: Optimizer = AdamConfig(name="adam")
    loss: Loss = MSELoss(name="mse")
    metrics: list[str] = Field(default_factory=lambda: ["mae", "r2"])
    device: Device = "auto"

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, names: list[str]) -> list[str]:
        for name in names:
            _check_name("metric", name, components.REGRESSION_METRICS)
        return names


class Config(_Strict):
    """One experiment: everything needed to rebuild its data, model and training."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", examples=["mpg"])
    seed: int = 0
    data: DataConfig
    model: ModelConfig
    training: TrainingConfig


# --- loading --------------------------------------------------------------------------------


@dataclass
class ConfigSource:
    """Where a config came from, so any later check can point into the file or at --set."""

    source: Path
    doc: YamlDoc
    overridden: set[Path_]

    def problem(self, path: Path_, problem: str, hint: str | None = None) -> Problem:
        """A Problem located at a config key: `--set` if overridden, else the file and line."""
        where = ".".join(str(p) for p in path) or None
        if any(path[:end] in self.overridden for end in range(1, len(path) + 1)):
            return Problem(problem, file="--set", where=where, hint=hint)
        line = self.doc.line_of(path)
        return Problem(problem, file=str(self.source), line=line, where=where, hint=hint)


@dataclass
class LoadedConfig(ConfigSource):
    """A validated config plus where it came from."""

    config: Config

    @property
    def data_path(self) -> Path:
        """data.path, resolved from the config file's folder."""
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
        errors = _without_misspelt_missing(exc.errors(), raw)
        problems = [_translate(e, raw, origin) for e in errors]
        raise ConfigError(sorted(problems, key=lambda p: p.line or 10**9)) from None
    loaded = LoadedConfig(path, doc, overridden, config)
    problems = cross_field_problems(loaded)
    if problems:
        raise ConfigError(problems)
    return loaded


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
    """Apply `dotted.key=value` to the raw mapping; the value is read as YAML, like the file."""
    key, sep, value_text = text.partition("=")
    if not sep or not key:
        raise ConfigError(
            Problem(f"'{text}' is not key=value", file="--set", hint="e.g. --set training.epochs=5")
        )
    value = parse_yaml(value_text, f"--set {key}").data
    path: list[str | int] = [int(p) if p.isdigit() else p for p in key.split(".")]
    node: Any = raw
    for depth, part in enumerate(path[:-1]):
        child = _child(node, part)
        if child is None:
            node[part] = child = {}
        if not isinstance(child, dict | list):
            prefix = ".".join(map(str, path[: depth + 1]))
            raise ConfigError(
                Problem(f"'{prefix}' holds a value, not a section", file="--set", where=key)
            )
        node = child
    last = path[-1]
    if isinstance(node, list) and (not isinstance(last, int) or last >= len(node)):
        raise ConfigError(Problem(f"no list item {last}", file="--set", where=key))
    node[last] = value
    return tuple(path)


def _child(node: Any, part: str | int) -> Any:
    if isinstance(node, list):
        return node[part] if isinstance(part, int) and part < len(node) else None
    return node.get(part)


def _expand_shorthands(raw: dict[str, Any]) -> None:
    """`optimizer: adam` and `loss: mse` mean `{name: adam}` and `{name: mse}`."""
    training = raw.get("training")
    if isinstance(training, dict):
        for key in ("optimizer", "loss"):
            if isinstance(training.get(key), str):
                training[key] = {"name": training[key]}


# --- turning pydantic's errors into located one-liners --------------------------------------

_EXPECTED = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "text",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}
_KINDS = {"optimizer": "optimizer", "loss": "loss", "layers": "layer type"}


def _translate(error: Any, raw: dict[str, Any], loaded: ConfigSource) -> Problem:
    loc = _user_path(error["loc"], raw)
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "extra_forbidden":
        fields = _fields_at(loc[:-1], raw)
        return loaded.problem(loc, "unknown key", did_you_mean(str(loc[-1]), fields))
    if kind == "missing":
        return loaded.problem(loc, "missing required key", _example(loc, raw))
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tag_key = ctx.get("discriminator", "").strip("'")
        what = _KINDS.get(next((str(p) for p in reversed(loc) if isinstance(p, str)), ""), "name")
        tags = [t.strip(" '") for t in ctx.get("expected_tags", "").split(",")]
        if kind == "union_tag_not_found":
            return loaded.problem(
                loc, f"missing '{tag_key}'", "expected one of: " + ", ".join(tags)
            )
        tag = str(ctx.get("tag"))
        return loaded.problem((*loc, tag_key), f"unknown {what} '{tag}'", did_you_mean(tag, tags))
    if kind in _EXPECTED:
        return loaded.problem(loc, f"expected {_EXPECTED[kind]}, got {_show(value)}")
    message = error["msg"].removeprefix("Value error, ")
    message = message[0].lower() + message[1:]
    if kind != "unknown_name":
        message = f"{message.replace('input should', 'must')}, got {_show(value)}"
    return loaded.problem(loc, message, ctx.get("hint"))


def _without_misspelt_missing(errors: list[Any], raw: dict[str, Any]) -> list[Any]:
    """A misspelt required key is one mistake: report the unknown key, not also the missing one."""
    misspelt: set[Path_] = set()
    for error in errors:
        if error["type"] == "extra_forbidden":
            loc = _user_path(error["loc"], raw)
            close = difflib.get_close_matches(str(loc[-1]), _fields_at(loc[:-1], raw), n=1)
            misspelt.update((*loc[:-1], name) for name in close)
    return [
        e for e in errors if not (e["type"] == "missing" and _user_path(e["loc"], raw) in misspelt)
    ]


def _user_path(loc: tuple[Any, ...], raw: Any) -> Path_:
    """Drop the union tags pydantic inserts (`layers.0.dense.units` -> `layers.0.units`)."""
    path: list[str | int] = []
    node = raw
    for part in loc:
        if (
            isinstance(node, dict)
            and part not in node
            and part in (node.get("type"), node.get("name"))
        ):
            continue
        path.append(part)
        node = _child(node, part) if isinstance(node, dict | list) else None
    return tuple(path)


def _model_at(path: Path_, raw: Any) -> type[BaseModel] | None:
    """The config model class that validates the mapping at `path`."""

    def resolve(annotation: Any, node: Any) -> type[BaseModel] | None:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            return resolve(typing.get_args(annotation)[0], node)
        if origin in (typing.Union, types.UnionType):
            for member in typing.get_args(annotation):
                model = resolve(member, node)
                if model and isinstance(node, dict) and _tag_of(model) in node.values():
                    return model
            return None
        return (
            annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel)
            else None
        )

    annotation: Any = Config
    node = raw
    for part in path:
        if typing.get_origin(annotation) is list and isinstance(part, int):
            annotation = typing.get_args(annotation)[0]
        else:
            model = resolve(annotation, node)
            if model is None or part not in model.model_fields:
                return None
            annotation = model.model_fields[str(part)].annotation
        node = _child(node, part) if isinstance(node, dict | list) else None
    return resolve(annotation, node)


def _tag_of(model: type[BaseModel]) -> Any:
    for key in ("type", "name"):
        if key in model.model_fields:
            (tag,) = typing.get_args(model.model_fields[key].annotation)
            return tag
    return None


def _fields_at(path: Path_, raw: Any) -> list[str]:
    model = _model_at(path, raw)
    return list(model.model_fields) if model else []


def _example(path: Path_, raw: Any) -> str | None:
    model = _model_at(path[:-1], raw)
    if model is None or path[-1] not in model.model_fields:
        return None
    field_info = model.model_fields[str(path[-1])]
    if isinstance(field_info.annotation, type) and issubclass(field_info.annotation, BaseModel):
        return f"add a '{path[-1]}:' section, as in configs/mpg.yaml"
    examples = field_info.examples
    if not examples:
        return None
    shown = yaml.safe_dump({path[-1]: examples[0]}, default_flow_style=True, sort_keys=False)
    return "e.g. " + shown.strip().removeprefix("{").removesuffix("}")


def _show(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


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
    problems += _head_problems(loaded)
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


def _head_problems(loaded: LoadedConfig) -> list[Problem]:
    layers = loaded.config.model.layers
    last = len(layers) - 1
    dense = [i for i, layer in enumerate(layers) if isinstance(layer, DenseLayer)]
    if not dense:
        return [
            loaded.problem(
                ("model", "layers"), "has no dense layer", "end with e.g. {type: dense, units: 1}"
            )
        ]
    head = layers[dense[-1]]
    assert isinstance(head, DenseLayer)
    problems = []
    if dense[-1] != last:
        problems.append(
            loaded.problem(
                ("model", "layers", last),
                f"the model ends with {layers[last].type}, not dense",
                "end with the dense output layer",
            )
        )
    if head.units != 1:
        problems.append(
            loaded.problem(
                ("model", "layers", dense[-1], "units"),
                f"the output layer has {head.units} units; a regression on one target needs 1",
                "set units: 1",
            )
        )
    elif head.activation == "softmax":
        problems.append(
            loaded.problem(
                ("model", "layers", dense[-1], "activation"),
                "softmax over one unit always outputs 1",
                "use linear for regression",
            )
        )
    return problems
