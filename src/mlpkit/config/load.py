"""Load a config: read the YAML, apply --set overrides, expand the shorthands, validate against
schema.py, check the rules that span several fields (rules.py), and fill in the task's
defaults. `load_config` builds one.

`1e-3` is a float (see yamlfile.py); every problem is located at its file and line, or --set.
The file is read bounded (reading.py: a regular file of at most CONFIG_LIMIT bytes), and a
leading `~` in a path of the config (data.path, data.val_path, data.test_path,
tracking.mlflow.uri) means the home folder, as it would in a shell.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from mlpkit.config.locate import ConfigSource, child, located_problems
from mlpkit.config.rules import cross_field_problems
from mlpkit.config.schema import DEFAULT_LOSSES, DEFAULT_METRICS, Config, Loss, task_of
from mlpkit.config.yamlfile import Path_, parse_yaml
from mlpkit.errors import ConfigError, Problem
from mlpkit.reading import CONFIG_LIMIT, NotAFile, read_bounded, sniff

# The keys of data that name a file, read relative to the config's folder, `~` expanded.
DATA_FILE_KEYS = ("path", "val_path", "test_path")


@dataclass
class LoadedConfig(ConfigSource):
    """A validated config plus where it came from."""

    config: Config

    @property
    def data_path(self) -> Path:
        """data.path, resolved from the config file's folder (only for a file source)."""
        assert self.config.data.path is not None
        return (self.source.parent / self.config.data.path).resolve()

    def file_path(self, key: str) -> Path | None:
        """data.<key> (path, val_path, test_path), resolved as data_path is; None when unset."""
        written: str | None = getattr(self.config.data, key)
        return None if written is None else (self.source.parent / written).resolve()


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
    loaded.config = _with_home(_with_task_defaults(config))
    return loaded


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
    """The config file's text.

    Raises:
        ConfigError: the file is missing, a folder or another non-file (a FIFO, a device),
            larger than CONFIG_LIMIT, unreadable, binary, or not UTF-8.
    """
    try:
        data = read_bounded(path, CONFIG_LIMIT, "a config file")
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(Problem("config file not found", file=str(path))) from None
    except NotAFile as exc:
        directory = exc.kind == "a directory"
        problem = "is a directory, not a config file" if directory else exc.problem
        raise ConfigError(Problem(problem, file=str(path))) from None
    except OSError as exc:
        raise ConfigError(
            Problem(f"cannot read the file: {exc.strerror}", file=str(path))
        ) from None
    looks = sniff(data)
    if looks is not None:
        what, hint = looks
        hint = hint if what not in ("binary data", "a Parquet file") else "a config is YAML text"
        raise ConfigError(Problem(f"looks like {what}, not YAML text", file=str(path), hint=hint))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            Problem(
                "the file is not UTF-8 text", file=str(path), line=line, hint="save it as UTF-8"
            )
        ) from None


def _with_home(config: Config) -> Config:
    """The config with a leading `~` (or `~user`) in data's file paths and in a local
    tracking.mlflow.uri replaced by that home folder: a shell expands it only in an unquoted
    word, never inside a file, and a literal `~` folder is never what was meant."""
    data, mlflow = config.data, config.tracking.mlflow
    paths = {key: getattr(data, key) for key in DATA_FILE_KEYS}
    expanded = {key: p if p is None else os.path.expanduser(p) for key, p in paths.items()}
    uri = mlflow.uri if mlflow.uri is None else home_uri(mlflow.uri)
    if (expanded, uri) == (paths, mlflow.uri):
        return config
    tracking = config.tracking.model_copy(update={"mlflow": mlflow.model_copy(update={"uri": uri})})
    return config.model_copy(
        update={"data": data.model_copy(update=expanded), "tracking": tracking}
    )


def home_uri(uri: str) -> str:
    """A tracking URI with `~` expanded where it begins a local path: `~/mlruns`,
    `file:~/mlruns`, `sqlite:///~/mlflow.db` (then `sqlite:////home/me/mlflow.db`, the
    absolute form); any other URI as it is."""
    for scheme in ("sqlite:///", "file:", ""):
        rest = uri.removeprefix(scheme)
        if uri.startswith(scheme) and rest.startswith("~"):
            return scheme + os.path.expanduser(rest)
    return uri


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
    path: list[str | int] = [int(p) if p.isascii() and p.isdigit() else p for p in key.split(".")]
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
