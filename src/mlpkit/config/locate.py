"""Locate config problems: the file and line (or `--set`) of a key, and pydantic's validation
errors turned into one-line Problems with a did-you-mean or an example value.

Kept apart from schema.py so the models there read as a plain schema; the root model is passed
in, so this module knows pydantic and YAML lines but no particular config.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel

from mlpkit.config.yamlfile import Path_, YamlDoc
from mlpkit.errors import Problem, clip, did_you_mean


@dataclass
class ConfigSource:
    """Where a config came from, so any later check can point into the file or at --set."""

    source: Path
    doc: YamlDoc
    overridden: set[Path_]

    def problem(self, path: Path_, problem: str, hint: str | None = None) -> Problem:
        """A Problem located at a config key: `--set` if overridden, else the file and line."""
        where = _dotted(path) or None
        if any(path[:end] in self.overridden for end in range(1, len(path) + 1)):
            return Problem(problem, file="--set", where=where, hint=hint)
        line = self.doc.line_of(path)
        return Problem(problem, file=str(self.source), line=line, where=where, hint=hint)

    def written(self, path: Path_) -> str | None:
        """How the file wrote the scalar at `path` when YAML read it as no text (`FALSE`,
        `0x10`); None for text, for anything else, and for a value from --set."""
        if any(path[:end] in self.overridden for end in range(1, len(path) + 1)):
            return None
        return self.doc.texts.get(path)


ALIKE = 3  # problems of one kind under one key shown one by one; more are summarised in one


def located_problems(
    errors: list[Any], raw: dict[str, Any], origin: ConfigSource, root: type[BaseModel]
) -> list[Problem]:
    """pydantic's errors for `raw` as Problems, sorted by line; a misspelt key is reported once.

    More than ALIKE errors of one kind under one key (60,000 items of a list that are not
    text, a mapping of unknown keys) are one Problem: the first, and where the others are.
    """
    schema = _Schema(raw, root)
    groups: dict[tuple[str, tuple[Any, ...]], list[Any]] = {}
    for error in schema.without_misspelt_missing(errors):  # grouped by pydantic's own paths
        groups.setdefault((error["type"], tuple(error["loc"][:-1])), []).append(error)
    problems = []
    for group in groups.values():
        if len(group) <= ALIKE:
            problems += [_translate(error, schema, origin) for error in group]
            continue
        first = _translate(group[0], schema, origin)
        others = ", ".join(_dotted(schema.user_path(error["loc"])) for error in group[1:10])
        if len(group) > 10:
            others += f" and {len(group) - 10:,} more"
        likewise = f"{first.problem} (and likewise at {others})"
        problems.append(dataclasses.replace(first, problem=likewise))
    return sorted(problems, key=lambda p: p.line or 10**9)


def _dotted(path: Path_) -> str:
    return ".".join(str(p) for p in path)


def child(node: Any, part: str | int) -> Any:
    """node[part] for a mapping or a list, None where there is no such item."""
    if isinstance(node, list):
        return node[part] if isinstance(part, int) and part < len(node) else None
    return node.get(part) if isinstance(node, dict) else None


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
# YAML 1.1's booleans, which YAML 1.2 (and so a config) reads as text.
_YAML11_BOOLEANS = {"yes", "no", "on", "off", "y", "n"}


def _translate(error: Any, schema: _Schema, origin: ConfigSource) -> Problem:
    loc = schema.user_path(error["loc"])
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "extra_forbidden":
        fields = schema.fields_at(loc[:-1])
        return origin.problem(loc, "unknown key", did_you_mean(str(loc[-1]), fields))
    if kind == "missing":
        return origin.problem(loc, "missing required key", schema.example(loc))
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tag_key = ctx.get("discriminator", "").strip("'")
        what = _KINDS.get(next((str(p) for p in reversed(loc) if isinstance(p, str)), ""), "name")
        tags = schema.tags_at(loc)
        if kind == "union_tag_not_found":
            return origin.problem(
                loc, f"missing '{tag_key}'", "expected one of: " + ", ".join(tags)
            )
        tag = str(ctx.get("tag"))
        return origin.problem(
            (*loc, tag_key), f"unknown {what} '{clip(tag)}'", did_you_mean(tag, tags)
        )
    if kind in _EXPECTED:  # shown as written: `got FALSE`, not `got false`
        written = origin.written(loc)
        shown = clip(written) if written is not None else _show(value)
        hint = _type_hint(kind, value, written)
        return origin.problem(loc, f"expected {_EXPECTED[kind]}, got {shown}", hint)
    message = error["msg"].removeprefix("Value error, ")
    message = message[0].lower() + message[1:]
    if kind not in ("unknown_name", "bad_name"):  # our own messages already read well
        message = f"{message.replace('input should', 'must')}, got {_show(value)}"
    return origin.problem(loc, message, ctx.get("hint"))


def _type_hint(kind: str, value: Any, written: str | None) -> str | None:
    """How to write what was expected, where YAML read the value as something else."""
    if kind == "string_type" and isinstance(value, bool | int | float):
        return f"quote it ('{clip(written or _show(value))}') to keep it as text"
    if kind == "bool_type" and isinstance(value, str) and value.lower() in _YAML11_BOOLEANS:
        return "write true or false (YAML 1.2 reads yes, no, on and off as text)"
    return None


@dataclass(frozen=True)
class _Schema:
    """The raw YAML data beside the model that validates it, to look up fields by path."""

    raw: dict[str, Any]
    root: type[BaseModel]

    def user_path(self, loc: tuple[Any, ...]) -> Path_:
        """Drop the union tags pydantic inserts (`layers.0.dense.units` -> `layers.0.units`)."""
        path: list[str | int] = []
        node: Any = self.raw
        for part in loc:
            tags = (node.get("type"), node.get("name")) if isinstance(node, dict) else ()
            if isinstance(node, dict) and part not in node and part in tags:
                continue
            path.append(part)
            node = child(node, part)
        return tuple(path)

    def annotation_at(self, path: Path_) -> tuple[Any, Any]:
        """The type annotation that validates `path`, and the raw data found there."""
        annotation: Any = self.root
        node: Any = self.raw
        for part in path:
            annotation = _without_none(annotation)
            if typing.get_origin(annotation) is list and isinstance(part, int):
                annotation = typing.get_args(annotation)[0]
            elif typing.get_origin(annotation) is dict:  # a mapping of names, e.g. model.inputs
                annotation = typing.get_args(annotation)[1]
            else:
                model = _resolve(annotation, node)
                if model is None or part not in model.model_fields:
                    return None, None
                annotation = model.model_fields[str(part)].annotation
            node = child(node, part)
        return annotation, node

    def model_at(self, path: Path_) -> type[BaseModel] | None:
        """The model class that validates the mapping at `path`."""
        annotation, node = self.annotation_at(path)
        return _resolve(_without_none(annotation), node)

    def tags_at(self, path: Path_) -> list[str]:
        """The tags (`type` or `name` values) a tagged union at `path` accepts."""
        annotation, _ = self.annotation_at(path)
        return [str(_tag_of(model)) for model in _members(annotation)]

    def fields_at(self, path: Path_) -> list[str]:
        """The keys the mapping at `path` accepts; none where no model validates it."""
        model = self.model_at(path)
        return list(model.model_fields) if model else []

    def example(self, path: Path_) -> str | None:
        """A hint for a missing key: its documented example, or where to find a section."""
        model = self.model_at(path[:-1])
        if model is None or path[-1] not in model.model_fields:
            return None
        field_info = model.model_fields[str(path[-1])]
        if isinstance(field_info.annotation, type) and issubclass(field_info.annotation, BaseModel):
            return f"add a '{path[-1]}:' section, as in configs/mpg.yaml"
        if not field_info.examples:
            return None
        shown = yaml.safe_dump({path[-1]: field_info.examples[0]}, default_flow_style=True)
        return "e.g. " + shown.strip().removeprefix("{").removesuffix("}")

    def without_misspelt_missing(self, errors: list[Any]) -> list[Any]:
        """A misspelt required key is one mistake: report it as unknown, not also as missing."""
        if not any(error["type"] == "missing" for error in errors):
            return errors  # nothing to drop: skip difflib over every unknown key
        misspelt: set[Path_] = set()
        for error in errors:
            if error["type"] == "extra_forbidden":
                loc = self.user_path(error["loc"])
                close = difflib.get_close_matches(str(loc[-1]), self.fields_at(loc[:-1]), n=1)
                misspelt.update((*loc[:-1], name) for name in close)
        return [
            e
            for e in errors
            if not (e["type"] == "missing" and self.user_path(e["loc"]) in misspelt)
        ]


def _resolve(annotation: Any, node: Any) -> type[BaseModel] | None:
    """The model an annotation stands for; for a tagged union, the member `node` selects."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _resolve(typing.get_args(annotation)[0], node)
    if origin in (typing.Union, types.UnionType):
        for member in typing.get_args(annotation):
            model = _resolve(member, node)
            if model and isinstance(node, dict) and _tag_of(model) in node.values():
                return model
        return None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _without_none(annotation: Any) -> Any:
    """X for Optional[X] (X | None); anything else as it is."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [m for m in typing.get_args(annotation) if m is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _members(annotation: Any) -> list[type[BaseModel]]:
    """The models a (possibly Annotated, Optional or union) annotation admits, in order."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _members(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [model for member in typing.get_args(annotation) for model in _members(member)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _tag_of(model: type[BaseModel]) -> Any:
    for key in ("type", "name"):
        if key in model.model_fields:
            (tag,) = typing.get_args(model.model_fields[key].annotation)
            return tag
    return None


def _show(value: Any) -> str:
    """A value as JSON (`true`, `"8"`), cut to a few hundred characters."""
    try:
        return clip(json.dumps(value))
    except (TypeError, ValueError):
        return clip(repr(value))
