"""The `sweep:` section checked before any trial runs (`mlpkit check` and `mlpkit sweep`).

A search is only as good as its space: every path must name a config key (did-you-mean from
its neighbours), every distribution must be well formed (low < high, log bounds positive),
and every value a distribution can produce must give a valid config. The last is checked by
loading the config with each value in turn: a choice's every option, a range's two ends (the
values in between are of the same type and, for the numeric keys mlpkit bounds, inside the
same bounds). Combinations are not enumerated: a trial whose combination is refused is
recorded as failed with the reason, and the sweep goes on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlpkit.config.load import LoadedConfig, load_config
from mlpkit.config.rules import watched
from mlpkit.config.schema import Choice, Distribution, IntRange, LogUniform, Uniform
from mlpkit.config.split_rules import has_val_rows
from mlpkit.errors import ConfigError, Problem, clip, did_you_mean


def override(path: str, value: Any) -> str:
    """`--set` text putting `value` at `path` (JSON is YAML's flow style: lists, mappings)."""
    return f"{path}={json.dumps(value)}"


def candidates(distribution: Distribution) -> list[Any]:
    """The values that stand for all a distribution can produce: options, or both ends."""
    if isinstance(distribution, Choice):
        return list(distribution.choice)
    if isinstance(distribution, IntRange):
        return list(distribution.int)
    if isinstance(distribution, LogUniform):
        return list(distribution.log_uniform)
    return list(distribution.uniform)


def sweep_problems(loaded: LoadedConfig, overrides: list[str]) -> list[Problem]:
    """Every problem of the sweep section; none when the config has no sweep (the caller
    says that one)."""
    sweep = loaded.config.sweep
    if sweep is None:
        return []
    problems = _metric_problems(loaded)
    resolved = loaded.config.model_dump(mode="json")
    for path, distribution in sweep.space.items():
        where = ("sweep", "space", path)
        if path == "sweep" or path.startswith("sweep."):
            problems.append(loaded.problem(where, "a sweep cannot search its own settings"))
            continue
        found = _path_problem(resolved, path)
        if found is not None:
            message, hint = found
            problems.append(loaded.problem(where, message, hint))
            continue
        shape = _shape_problem(distribution)
        if shape is not None:
            problems.append(loaded.problem(where, shape))
            continue
        refused = _refused_value(loaded.source, overrides, path, distribution)
        if refused is not None:
            problems.append(loaded.problem(where, refused))
    return problems


def _metric_problems(loaded: LoadedConfig) -> list[Problem]:
    sweep = loaded.config.sweep
    assert sweep is not None
    choices = ["train_loss"]
    if has_val_rows(loaded.config.data):
        choices += [f"val_{name}" for name in watched(loaded)]
    if sweep.metric in choices:
        return []
    message = f"'{clip(sweep.metric)}' is not computed each epoch"
    return [loaded.problem(("sweep", "metric"), message, did_you_mean(sweep.metric, choices))]


def _path_problem(resolved: dict[str, Any], path: str) -> tuple[str, str | None] | None:
    """(message, hint) if `path` names no key of the resolved config."""
    node: Any = resolved
    walked: list[str] = []
    for part in path.split("."):
        if isinstance(node, dict):
            if part not in node:
                where = ".".join(walked) or "the config"
                message = f"{where} has no key '{clip(part)}'"
                return message, did_you_mean(part, [str(key) for key in node])
            node = node[part]
        elif isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                where = ".".join(walked)
                return f"{where} has {len(node)} items, no item {clip(part)}", None
            node = node[int(part)]
        else:
            where = ".".join(walked)
            return f"{where} holds a value, not a section", None
        walked.append(part)
    return None


def _shape_problem(distribution: Distribution) -> str | None:
    if isinstance(distribution, LogUniform):
        low, high = distribution.log_uniform
        if low <= 0:
            return f"log_uniform needs a positive lower bound, got {low}"
        return None if low < high else f"log_uniform needs low < high, got [{low}, {high}]"
    if isinstance(distribution, Uniform):
        low, high = distribution.uniform
        return None if low < high else f"uniform needs low < high, got [{low}, {high}]"
    if isinstance(distribution, IntRange):
        low, high = distribution.int
        if distribution.log and low < 1:
            return f"int with log: true needs a lower bound of at least 1, got {low}"
        return None if low <= high else f"int needs low <= high, got [{low}, {high}]"
    return None


def _refused_value(
    config_path: Path, overrides: list[str], path: str, distribution: Distribution
) -> str | None:
    """The first value the distribution can produce that makes the config invalid, and why."""
    for value in candidates(distribution):
        try:
            load_config(config_path, [*overrides, override(path, value)])
        except ConfigError as exc:
            first = exc.problems[0]
            why = f"{first.where}: {first.problem}" if first.where else first.problem
            return f"the value {clip(json.dumps(value))} makes the config invalid ({why})"
    return None
