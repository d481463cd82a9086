"""Read YAML safely and within bounds, remembering the line of every key, and refusing what YAML
lets slide.

PyYAML's safe constructor is the base, with these changes for configs:
- scalars are read as YAML 1.2 reads them: `1e-3` is a float (YAML 1.1 needs a dot); only
  true/false are booleans (`yes`, `no`, `on`, `off` stay text, so a column named NO is the
  text NO); `1:30` is text, not the sexagesimal 90; `=` is text;
- a number with a leading zero (`010`) is refused: YAML 1.1 reads it as octal 8, YAML 1.2 as 10,
  so the message shows the text and asks for `10` or `'010'`;
- a duplicate key at any depth is an error naming both lines, never "last one wins";
- any explicit tag other than the plain map/seq/scalar ones (e.g. `!!python/object`) is refused;
- a document may hold at most MAX_VALUES values and nest MAX_DEPTH levels, both counted as if
  every alias were expanded. The composer counts while it builds the node graph, in one pass
  (an alias adds the size it names, known once that node is composed), so a "billion laughs"
  file is refused after a few hundred events, and nothing is ever expanded past the limits.

MAX_VALUES bounds the work too: a hostile 4 MB file (the largest config read) of tiny values
is refused after 100,000 of them, in ~0.4 s of CPU and ~40 MB. Events come from libyaml where
PyYAML was built with it (five times faster than PyYAML's own parser, used otherwise); the
composing, counting and resolving above are the same Python code on both. The module runs a
little past ~400 lines because these rules are one reader: each hooks the same composer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

from mlpkit.errors import ConfigError, Problem, clip

Path_ = tuple[str | int, ...]

MAX_VALUES = 100_000  # values (keys, items, lists, mappings) once aliases are expanded
MAX_DEPTH = 64  # levels of nesting, aliases expanded; a config uses five or six

_TOO_DEEP = (
    f"nested deeper than {MAX_DEPTH} levels once aliases are expanded",
    f"a config may nest at most {MAX_DEPTH} levels",
)

_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_LEADING_ZERO = "tag:mlpkit,2026:leading-zero"  # resolved only to be refused in _build

# YAML 1.2 core-schema booleans.
_TRUE_FALSE = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
# Integers: decimal (digits may be grouped with _), 0x hex, 0b binary; each with a digit.
_INTEGER = re.compile(
    r"""^(?:[-+]?0b[01][01_]*
    |[-+]?0x[0-9a-fA-F][0-9a-fA-F_]*
    |[-+]?(?:0|[1-9][0-9_]*))$""",
    re.X,
)
_LEADING = re.compile(r"^[-+]?0_*[0-9][0-9_]*$")
# YAML 1.2 core-schema floats: an exponent without a dot counts.
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_STR = "tag:yaml.org,2002:str"
_PLAIN_TAGS = {
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
    _STR,
    _INT,
    _FLOAT_TAG,
    _BOOL,
    "tag:yaml.org,2002:null",
}


# What YAML reads on its own (no tag written) but a config cannot hold, said in the user's terms.
_UNSUPPORTED = {
    "tag:yaml.org,2002:timestamp": ("a date is not a config value", "quote it to keep it as text"),
    "tag:yaml.org,2002:merge": ("merge keys (<<) are not supported", "write the keys out"),
    "tag:yaml.org,2002:binary": ("binary data is not a config value", "remove it"),
}


class _Resolver(Resolver):
    """PyYAML's resolvers with YAML 1.2's booleans, integers and floats in place of 1.1's;
    copied, so PyYAML's own loaders are untouched."""

    yaml_implicit_resolvers = {  # noqa: RUF012 (PyYAML's own class attribute)
        first: [
            (tag, pattern)
            for tag, pattern in resolvers
            if tag not in (_BOOL, _INT, _FLOAT_TAG, "tag:yaml.org,2002:value")
        ]
        for first, resolvers in Resolver.yaml_implicit_resolvers.items()
    }


_Resolver.add_implicit_resolver(_BOOL, _TRUE_FALSE, list("tTfF"))
_Resolver.add_implicit_resolver(_INT, _INTEGER, list("-+0123456789"))
_Resolver.add_implicit_resolver(_LEADING_ZERO, _LEADING, list("-+0"))
_Resolver.add_implicit_resolver(_FLOAT_TAG, _FLOAT, list("-+0123456789."))


class _BoundedComposer(Composer):
    """PyYAML's composer, counting values and depth as if every alias were expanded.

    A node's size and height are known when its composing ends; an alias then adds the size
    of the node it names, and reaches its height below the alias. So the count is exact, costs
    one pass over the events, and stops at the first event past a limit.
    """

    peek_event: Callable[[], Any]  # from the parser it is mixed with
    get_event: Callable[[], Any]
    resolve: Callable[[type[yaml.Node], str, Any], str]  # from the resolver

    def __init__(self, source: str) -> None:
        Composer.__init__(self)
        self.source = source
        self.values = 0  # counted so far, aliases expanded
        self.depth = 0  # of the node being composed
        self.deepest = 0  # the deepest level reached inside the node being composed
        self.extent: dict[int, tuple[int, int]] = {}  # anchored node -> (values, height)
        # (list node, index) -> the line of an alias written there: its item's line is the
        # alias's, not the line of the value it repeats
        self.alias_lines: dict[tuple[int, int], int] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        if type(event) is yaml.ScalarEvent and event.anchor is None:  # most nodes: made here
            return self._scalar(self.get_event())
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            if id(node) not in self.extent:
                raise self._error(
                    event.start_mark,
                    f"the alias *{clip(str(event.anchor), 60)} names a value that holds it",
                    "an alias can repeat a finished value only: write the value out",
                )
            size, height = self.extent[id(node)]
            self._grow(size, self.depth + height, event.start_mark)
            if isinstance(index, int) and event.start_mark is not None:
                self.alias_lines[(id(parent), index)] = event.start_mark.line + 1
            return node
        self.depth += 1
        start, outer = self.values, self.deepest
        self.deepest = 0
        self._grow(1, self.depth, event.start_mark)
        node = super().compose_node(parent, index)
        if event.anchor is not None and node is not None:
            self.extent[id(node)] = (self.values - start, self.deepest - self.depth + 1)
        self.deepest = max(outer, self.deepest)
        self.depth -= 1
        return node

    def _scalar(self, event: Any) -> yaml.ScalarNode:
        """Composer.compose_scalar_node for a scalar without an anchor, counted, and without
        the path resolvers (a config has none): a third faster on a long list."""
        self._grow(1, self.depth + 1, event.start_mark)
        tag = event.tag
        if tag is None or tag == "!":
            tag = self.resolve(yaml.ScalarNode, event.value, event.implicit)
        return yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)

    def _grow(self, values: int, reached: int, mark: Any) -> None:
        """Count `values` more, reaching level `reached`.

        Raises:
            ConfigError: past MAX_VALUES or MAX_DEPTH.
        """
        self.values += values
        self.deepest = max(self.deepest, reached)
        if self.values > MAX_VALUES:
            raise self._error(
                mark,
                f"more than {MAX_VALUES:,} values once aliases are expanded",
                f"a config may hold at most {MAX_VALUES:,} values (keys and items)",
            )
        if reached > MAX_DEPTH:
            raise self._error(mark, *_TOO_DEEP)

    def _error(self, mark: Any, problem: str, hint: str) -> ConfigError:
        line = mark.line + 1 if mark is not None else None
        return ConfigError(Problem(problem, file=self.source, line=line, hint=hint))


class _PythonLoader(
    yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, _BoundedComposer,
    SafeConstructor, _Resolver,
):  # fmt: skip
    """Events from PyYAML's own (pure Python) parser."""

    offsets_in_bytes = False  # a ReaderError's position counts characters

    def __init__(self, text: str, source: str) -> None:
        yaml.reader.Reader.__init__(self, text)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        _BoundedComposer.__init__(self, source)
        SafeConstructor.__init__(self)
        _Resolver.__init__(self)


_Loader: type[Any] = _PythonLoader
if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _LibyamlLoader(_BoundedComposer, CParser, SafeConstructor, _Resolver):
        """Events from libyaml; composing (ours, first in line) and resolving stay Python."""

        offsets_in_bytes = True  # libyaml reads the text as UTF-8

        def __init__(self, text: str, source: str) -> None:
            CParser.__init__(self, text)
            _BoundedComposer.__init__(self, source)
            SafeConstructor.__init__(self)
            _Resolver.__init__(self)

    _Loader = _LibyamlLoader


class _Dumper(yaml.SafeDumper):
    """PyYAML's safe dumper, quoting a string that either YAML 1.1 (PyYAML's resolvers, and
    other tools) or parse_yaml would read as something else: `08`, `-.5`, `1e3`, `yes`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ours: Any = _Resolver()

    def resolve(self, kind: type[yaml.Node], value: Any, implicit: Any) -> str:
        ours: str = self.ours.resolve(kind, value, implicit)
        yaml11: Any = super()
        theirs: str = yaml11.resolve(kind, value, implicit)
        return theirs if ours == _STR else ours


def dump_yaml(value: Any, **options: Any) -> str:
    """YAML text of plain data that parse_yaml (and a YAML 1.1 reader) reads back as `value`;
    `options` as yaml.safe_dump takes them (sort_keys, default_flow_style, width)."""
    text: str = yaml.dump(value, Dumper=_Dumper, **options)
    return text


@dataclass
class YamlDoc:
    """Plain data from a YAML file plus the line each key path starts on.

    `lines` leaves out a path on the line of the path above it (the items of a flow list):
    ask `line_of`. `texts` keeps the written text of a scalar that YAML read as something other
    than text and would show otherwise (`FALSE`, `0x10`, `1_000`, not `8`), so a message can
    show what the user wrote.
    """

    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)
    texts: dict[Path_, str] = field(default_factory=dict)

    def line_of(self, path: Path_) -> int | None:
        """The line of `path`, or of its nearest ancestor that exists in the file."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None


def parse_yaml(text: str, source: str) -> YamlDoc:
    """Parse one YAML document. `source` names the file in error messages.

    Raises:
        ConfigError: syntax errors (with line and column), unsafe tags, duplicate keys,
            leading-zero numbers, more than MAX_VALUES values or MAX_DEPTH levels.
    """
    loader = None
    try:
        loader = _Loader(text, source)  # a control character may already fail here
        root = loader.get_single_node()  # bounded: see _BoundedComposer
        doc = YamlDoc(data=None)
        if root is not None:
            doc.data = _build(root, (), loader, doc, source)
        return doc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        if "maximum nesting depth" in str(exc.problem):  # libyaml's own (1,000), met first
            problem, hint = _TOO_DEEP
            raise ConfigError(Problem(problem, file=source, line=line, hint=hint)) from None
        column = f", column {mark.column + 1}" if mark else ""
        problem = f"invalid YAML{column}: {exc.problem or exc.context}"
        raise ConfigError(Problem(problem, file=source, line=line)) from None
    except yaml.reader.ReaderError as exc:
        if _Loader.offsets_in_bytes:
            line = text.encode()[: exc.position].count(b"\n") + 1
        else:
            line = text[: exc.position].count("\n") + 1
        problem = f"control character U+{int(exc.character):04X} is not allowed in YAML"
        raise ConfigError(Problem(problem, file=source, line=line)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(Problem(f"invalid YAML: {exc}", file=source)) from None
    finally:
        if loader is not None:
            loader.dispose()


def _build(
    node: yaml.Node, path: Path_, loader: Any, doc: YamlDoc, source: str, key: bool = False
) -> Any:
    """The plain data of `node` at `path` (a `key` in the mapping there), recording lines and
    texts; the composer's count bounds the walk."""
    if node.tag not in _PLAIN_TAGS:
        raise _refused(node, path, source)
    if isinstance(node, yaml.MappingNode):
        return _build_mapping(node, path, loader, doc, source)
    if isinstance(node, yaml.SequenceNode):
        items = []
        above = doc.line_of(path)
        for index, item in enumerate(node.value):
            item_path = (*path, index)
            line = loader.alias_lines.get((id(node), index)) or item.start_mark.line + 1
            if line != above:  # else line_of finds it above: a flow list costs no entries
                doc.lines[item_path] = line
            items.append(_build(item, item_path, loader, doc, source))
        return items
    if node.tag == _STR:
        return node.value
    value = loader.yaml_constructors[node.tag](loader, node)  # a plain int, float, bool, null
    if not key and value is not None and node.value != _plain(value):
        doc.texts[path] = str(node.value)
    return value


def _plain(value: Any) -> str:
    """How YAML writes a value plainly: `true`, `8`, `0.5`; a message that shows this needs
    no record of the text it was written as."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _refused(node: yaml.Node, path: Path_, source: str) -> ConfigError:
    """The error for a node a config cannot hold: a leading-zero number, a tag, a date."""
    if node.tag == _LEADING_ZERO:
        problem, hint = _leading_zero(str(node.value))
    else:
        problem, hint = _UNSUPPORTED.get(
            node.tag,
            (f"the tag '{clip(node.tag, 80)}' is not allowed", "configs hold plain values only"),
        )
    line = node.start_mark.line + 1
    return ConfigError(
        Problem(problem, file=source, line=line, where=_dotted(path) or None, hint=hint)
    )


def _build_mapping(
    node: yaml.MappingNode, path: Path_, loader: Any, doc: YamlDoc, source: str
) -> dict[Any, Any]:
    """A mapping's plain data; a key that is not a scalar, or repeats, is an error."""
    result: dict[Any, Any] = {}
    first_line: dict[Any, int] = {}
    above = doc.line_of(path)
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
        key = _build(key_node, path, loader, doc, source, key=True)
        if key in first_line:
            raise ConfigError(
                Problem(
                    f"duplicate key '{clip(str(key))}' (also on line {first_line[key]})",
                    file=source,
                    line=key_line,
                    where=_dotted(path) or None,
                    hint="keep one of them",
                )
            )
        first_line[key] = key_line
        if key_line != above:
            doc.lines[(*path, key)] = key_line
        result[key] = _build(value_node, (*path, key), loader, doc, source)
    return result


def _leading_zero(text: str) -> tuple[str, str]:
    """The problem and hint for a number written with a leading zero, such as 010."""
    digits = text.replace("_", "")
    decimal = int(digits)
    octal = f"octal {int(digits, 8)}" if set(digits.lstrip("+-")) <= set("01234567") else "text"
    return (
        f"{text} has a leading zero: YAML 1.1 reads it as {octal}, YAML 1.2 as {decimal}",
        f"write {decimal} for the number, or quote it ('{text}') for text",
    )


def _dotted(path: Path_) -> str:
    return ".".join(str(p) for p in path)
