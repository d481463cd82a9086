"""Read YAML safely, remembering the line of every key, and refusing what YAML lets slide.

PyYAML's SafeLoader is the base, with three changes that matter for configs:
- `1e-3` is a float (YAML 1.1 needs a dot, so PyYAML reads it as the string "1e-3");
- a duplicate key at any depth is an error naming both lines, never "last one wins";
- any explicit tag other than the plain map/seq/scalar ones (e.g. `!!python/object`) is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from mlpkit.errors import ConfigError, Problem

Path_ = tuple[str | int, ...]

# YAML 1.2 core-schema floats: an exponent without a dot counts.
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_PLAIN_TAGS = {
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
}


# What YAML reads on its own (no tag written) but a config cannot hold, said in the user's terms.
_UNSUPPORTED = {
    "tag:yaml.org,2002:timestamp": ("a date is not a config value", "quote it to keep it as text"),
    "tag:yaml.org,2002:merge": ("merge keys (<<) are not supported", "write the keys out"),
    "tag:yaml.org,2002:binary": ("binary data is not a config value", "remove it"),
}


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats; resolvers copied so SafeLoader itself is untouched."""

    yaml_implicit_resolvers = {  # noqa: RUF012 (PyYAML's own class attribute)
        key: list(resolvers) for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


_ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


@dataclass
class YamlDoc:
    """Plain data from a YAML file plus the line each key path starts on."""

    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)

    def line_of(self, path: Path_) -> int | None:
        """The line of `path`, or of its nearest ancestor that exists in the file."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None


def parse_yaml(text: str, source: str) -> YamlDoc:
    """Parse one YAML document. `source` names the file in error messages.

    Raises:
        ConfigError: syntax errors (with line and column), unsafe tags, duplicate keys.
    """
    loader = None
    try:
        loader = _ConfigLoader(text)  # a control character already fails here
        root = loader.get_single_node()
        doc = YamlDoc(data=None)
        if root is not None:
            doc.data = _build(root, (), loader, doc, source)
        return doc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        column = f", column {mark.column + 1}" if mark else ""
        problem = f"invalid YAML{column}: {exc.problem or exc.context}"
        raise ConfigError(Problem(problem, file=source, line=line)) from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        problem = f"control character U+{int(exc.character):04X} is not allowed in YAML"
        raise ConfigError(Problem(problem, file=source, line=line)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(Problem(f"invalid YAML: {exc}", file=source)) from None
    finally:
        if loader is not None:
            loader.dispose()


def _build(node: yaml.Node, path: Path_, loader: _ConfigLoader, doc: YamlDoc, source: str) -> Any:
    line = node.start_mark.line + 1
    if node.tag not in _PLAIN_TAGS:
        problem, hint = _UNSUPPORTED.get(
            node.tag, (f"the tag '{node.tag}' is not allowed", "configs hold plain values only")
        )
        raise ConfigError(
            Problem(problem, file=source, line=line, where=_dotted(path) or None, hint=hint)
        )
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError(
                    Problem(
                        "a key must be a plain name, not a list or mapping",
                        file=source,
                        line=key_line,
                        where=_dotted(path) or None,
                    )
                )
            key = _build(key_node, path, loader, doc, source)
            if key in first_line:
                raise ConfigError(
                    Problem(
                        f"duplicate key '{key}' (also on line {first_line[key]})",
                        file=source,
                        line=key_line,
                        where=_dotted(path) or None,
                        hint="keep one of them",
                    )
                )
            first_line[key] = key_line
            doc.lines[(*path, key)] = key_line
            result[key] = _build(value_node, (*path, key), loader, doc, source)
        return result
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            doc.lines[(*path, index)] = item.start_mark.line + 1
            items.append(_build(item, (*path, index), loader, doc, source))
        return items
    return loader.construct_object(node, deep=True)


def _dotted(path: Path_) -> str:
    return ".".join(str(p) for p in path)
