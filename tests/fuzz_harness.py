"""Hostile-input fuzzer (issue 14): generated configs and CSVs through `check` and `train`.

A case is a config, a data file and maybe some `--set` overrides: one of the shipped configs in
configs/ with a few mutations (wrong types, huge or non-finite numbers, long or odd-unicode
strings, deep nesting, alias bombs, tags, duplicate keys, odd encodings), beside its own data
file, itself mutated or not (truncated, ragged rows, huge cells, NUL bytes, gzip, latin-1,
UTF-16, BOM, empty, header only, binary). Each case runs `mlpkit check` in process and, when
that says ok, `mlpkit train --runs-dir runs -q --set training.epochs=1`. Each command must keep
the error contract (README, "Errors"):

- exit 0, 2 or 3 (diverged); never 1 (a bug), never 4 (here that is the memory cap: bounded
  memory is the contract);
- at most SHOWN + 1 lines on stderr (errors.py renders 10 problems, then counts the rest),
  each `Error: ...`: no traceback, no warning or library text, no line
  over 2,000 characters, no raw control characters from the input;
- no run folder left after exit 2, and `check` refuses what `train` refuses;
- each command under 10 s (of the clock or of CPU time: a busy machine stretches only the
  first); nothing a YAML tag asked for is executed.

The cases run in a child process that, once torch, pandas and mlpkit are imported and a warm-up
run is done, caps its own address space at what it has mapped plus 1 GB: a runaway case then
fails inside the cap instead of taking the machine. A supervisor restarts the child after the
case that killed it or hung it (60 s), and records that case too. Cases come from Hypothesis
with a fixed seed and no database, so a run is reproducible. A violating case is saved to
OUT/violations/<class>/<case>/ (config.yaml, data.csv, case.json with the commands; result.json
with what they printed; crash.txt for an exit 1) and can be run again alone:

    python tests/fuzz_harness.py --cases 2000 [--seed 0] [--jobs 2] [--out DIR]  # make fuzz
    python tests/fuzz_harness.py --replay DIR/violations/<class>/<case>

OUT defaults to $TMPDIR/mlpkit-fuzz (/tmp/mlpkit-fuzz).

tests/test_fuzz.py runs 25 cases in `make test`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import gzip
import hashlib
import importlib
import io
import json
import os
import random
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from mlpkit.errors import SHOWN

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
SHIPPED = tuple(sorted(path.stem for path in CONFIGS.glob("*.yaml")))

CONFIG_NAME = "config.yaml"
DATA_NAME = "data.csv"
RUNS_NAME = "runs"
PWNED = "PWNED"  # what a python tag in a generated config would create, if it ran
CAPS = ("training.epochs=1",)  # train stays cheap whatever the config says

CAP_MB = 1024  # address space a case may add to what the child mapped before the cases
SLOW_SECONDS = 10.0  # one command
HANG_SECONDS = 60.0  # one case; the supervisor kills the child then
MAX_LINES = SHOWN + 1  # every problem at once, as the contract says, but never a flood
LONG_LINE = 2000
KEEP_PER_CLASS = 10  # violating cases saved in full per class; the rest are only counted

RunCli = Callable[[list[str]], int]


# ---------------------------------------------------------------------------------------------
# Cases


@dataclass(frozen=True)
class Raw:
    """YAML text written where a value goes, as is: a tag, an alias bomb, deep nesting."""

    text: str


@dataclass(frozen=True)
class Case:
    """One generated input: the files, the user's --set overrides and what was done to them."""

    notes: tuple[str, ...]
    config: bytes
    data: bytes
    overrides: tuple[str, ...] = ()
    caps: tuple[str, ...] = CAPS

    def check_argv(self, capped: bool = False) -> list[str]:
        return ["check", CONFIG_NAME, *_sets(self.overrides + (self.caps if capped else ()))]

    def train_argv(self) -> list[str]:
        sets = _sets(self.overrides + self.caps)  # the caps last, so they win
        # the plots drawn here, before train returns: their labels are fuzzed too
        return ["train", CONFIG_NAME, "--runs-dir", RUNS_NAME, "-q", "--plots", "wait", *sets]


def _sets(overrides: tuple[str, ...]) -> list[str]:
    return [word for override in overrides for word in ("--set", override)]


ANCHOR = "%ANCHOR%"  # replaced by a name unique in the document


def alias_bomb(levels: int) -> str:
    """A flow list whose `levels` anchors each repeat the one before 9 times: 9**levels leaves."""
    parts = [f"&{ANCHOR}0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, levels):
        parts.append(f"&{ANCHOR}{level} [" + ", ".join([f"*{ANCHOR}{level - 1}"] * 9) + "]")
    return "[" + ", ".join(parts) + "]"


HOSTILE: tuple[tuple[str, Callable[[], object]], ...] = (
    ("true", lambda: True),
    ("null", lambda: None),
    ("text", lambda: "hello"),
    ("a number as text", lambda: "32"),
    ("empty list", lambda: []),
    ("empty map", lambda: {}),
    ("mixed list", lambda: [1, "a", None, 2.5]),
    ("map", lambda: {"a": 1}),
    ("0", lambda: 0),
    ("-1", lambda: -1),
    ("0.5", lambda: 0.5),
    ("10**12", lambda: 10**12),
    ("-10**12", lambda: -(10**12)),
    ("10**30", lambda: 10**30),
    ("-10**30", lambda: -(10**30)),
    ("2**63", lambda: 2**63),
    ("largest double", lambda: 1.7976931348623157e308),
    ("smallest double", lambda: 5e-324),
    (".nan", lambda: Raw(".nan")),
    (".inf", lambda: Raw(".inf")),
    ("-.inf", lambda: Raw("-.inf")),
    ("1e309", lambda: Raw("1e309")),
    ("nan as a word", lambda: Raw("nan")),
    ("hex int", lambda: Raw("0x7fffffffffffffff")),
    ("sexagesimal", lambda: Raw("1:30")),
    ("underscored int", lambda: Raw("1_000_000")),
    ("date", lambda: Raw("2001-12-14")),
    ("python tag", lambda: Raw(f'!!python/object/apply:os.system ["touch {PWNED}"]')),
    ("python name tag", lambda: Raw("!!python/name:os.system")),
    ("binary tag", lambda: Raw("!!binary aGVsbG8=")),
    ("set tag", lambda: Raw("!!set {a, b}")),
    ("local tag", lambda: Raw("!custom 3")),
    ("string of 10,000", lambda: Raw('"' + "x" * 10_000 + '"')),
    ("string of 1,000,000", lambda: Raw("x" * 1_000_000)),
    ("string of 5,000,000", lambda: Raw("y" * 5_000_000)),
    ("right-to-left override", lambda: "\u202erelu"),
    ("zero-width space", lambda: "re\u200blu"),
    ("NUL", lambda: "a\x00b"),
    ("ANSI escapes", lambda: "\x1b[31mred\x1b[0m\x1b[2J"),
    ("combining accent", lambda: "e\u0301"),
    ("emoji", lambda: "\U0001f642" * 3),
    ("fullwidth letters", lambda: "\uff52\uff45\uff4c\uff55"),
    ("line separators", lambda: "a\u2028b\u0085c\r\nd"),
    ("BOM in text", lambda: "\ufeffmpg"),
    ("DEL and bell", lambda: "\x7f\x07"),
    ("dotted capital I", lambda: "\u0130"),
    ("list nested 64 deep", lambda: Raw("[" * 64 + "]" * 64)),
    ("list nested 5,000 deep", lambda: Raw("[" * 5_000 + "]" * 5_000)),
    ("list nested 200,000 deep", lambda: Raw("[" * 200_000 + "]" * 200_000)),
    ("map nested 3,000 deep", lambda: Raw("{a: " * 3_000 + "1" + "}" * 3_000)),
    ("list of 100,000 numbers", lambda: Raw("[" + "1, " * 100_000 + "1]")),
    ("list of 20,000 names", lambda: Raw("[" + ", ".join(f"c{i}" for i in range(20_000)) + "]")),
    ("alias bomb, 3 levels", lambda: Raw(alias_bomb(3))),
    ("alias bomb, 6 levels", lambda: Raw(alias_bomb(6))),
    ("alias bomb, 9 levels", lambda: Raw(alias_bomb(9))),
)

KEY_RENAMES: tuple[tuple[str, Callable[[str], object]], ...] = (
    ("typo", lambda key: key[:-1] or "x"),
    ("upper case", lambda key: key.upper()),
    ("right-to-left override", lambda key: "\u202e" + key),
    ("zero-width space", lambda key: key + "\u200b"),
    ("trailing space", lambda key: key + " "),
    ("empty", lambda key: ""),
    ("int", lambda key: 1),
    ("null", lambda key: None),
    ("true", lambda key: True),
    ("repeated 500 times", lambda key: key * 500),
    ("control characters", lambda key: key + "\x1b[2J\x07"),
)

Path_ = tuple[str | int, ...]


def _paths(node: object, prefix: Path_ = ()) -> list[Path_]:
    """Every path below `node`, parents before children."""
    found: list[Path_] = []
    items: list[tuple[Any, object]] = []
    if isinstance(node, dict):
        items = list(node.items())
    elif isinstance(node, list):
        items = list(enumerate(node))
    for key, value in items:
        found.append((*prefix, key))
        found.extend(_paths(value, (*prefix, key)))
    return found


def _leaves(node: object) -> list[object]:
    if isinstance(node, dict):
        return [leaf for value in node.values() for leaf in _leaves(value)]
    if isinstance(node, list):
        return [leaf for value in node for leaf in _leaves(value)]
    return [node]


def _parent(tree: dict[str, Any], path: Path_) -> Any:
    node: Any = tree
    for part in path[:-1]:
        node = node[part]
    return node


class _Mutator:
    """Mutations of one config's tree; Raw values wait as tokens until the text is written."""

    def __init__(self, draw: st.DrawFn, tree: dict[str, Any]) -> None:
        self.draw = draw
        self.tree = tree
        self.raws: dict[str, str] = {}
        self.overrides: list[str] = []

    def hostile(self) -> tuple[str, object]:
        label, make = self.draw(st.sampled_from(HOSTILE))
        value = make()
        if isinstance(value, Raw):
            token = f"FUZZRAW{len(self.raws)}X"
            self.raws[token] = value.text.replace(ANCHOR, f"b{len(self.raws)}_")
            return label, token
        return label, value

    def path(self) -> Path_ | None:
        paths = _paths(self.tree)
        return self.draw(st.sampled_from(paths)) if paths else None

    def apply(self, kind: str | None = None) -> str:
        """One change at a random path: `kind`, or one drawn."""
        kinds = ("replace",) * 3 + ("stretch",) * 3 + ("delete", "rename", "add", "grow")
        kind = kind or self.draw(st.sampled_from(kinds))
        path = self.path()
        if path is None:
            return "nothing left to mutate"
        where = ".".join(map(str, path))
        parent, key = _parent(self.tree, path), path[-1]
        if kind == "replace":
            label, parent[key] = self.hostile()
            return f"{where} = {label}"
        if kind == "stretch":
            label, parent[key] = self.stretch(parent[key])
            return f"{where} = {label}"
        if kind == "delete":
            del parent[key]
            return f"{where} deleted"
        if kind == "rename" and isinstance(parent, dict):
            label, rename = self.draw(st.sampled_from(KEY_RENAMES))
            renamed = {(rename(str(k)) if k == key else k): v for k, v in parent.items()}
            parent.clear()
            parent.update(renamed)
            return f"{where} key renamed: {label}"
        node = parent[key]
        if kind == "grow" and isinstance(node, list) and node:
            times = self.draw(st.sampled_from((2, 50, 1000)))
            parent[key] = [copy.deepcopy(item) for item in node * times]
            return f"{where} repeated {times} times"
        target = node if isinstance(node, dict) else parent if isinstance(parent, dict) else None
        if target is None:
            label, parent[key] = self.hostile()
            return f"{where} = {label}"
        label, value = self.hostile()
        name = self.draw(st.sampled_from(("extra", "Extra key", "\u202eextra", "units", "x" * 300)))
        target[name] = value
        return f"unknown key {name[:20]!r} = {label} beside {where}"

    def stretch(self, value: object) -> tuple[str, object]:
        """A value of the same type, at an edge: what a config may legally say, but rarely does."""
        if isinstance(value, bool):
            return "flipped", not value
        if isinstance(value, int):
            new = self.draw(st.sampled_from((0, 1, 2, -1, 7, 10**4, 10**6, 10**9, 2**31, 10**12)))
            return str(new), new
        if isinstance(value, float):
            edges = (0.0, 1e-300, 1e-12, 1e-6, 0.999999, 1.0, 10.0, 1e6, 1e30, -0.5)
            new_float = self.draw(st.sampled_from(edges))
            return repr(new_float), new_float
        if isinstance(value, str):
            texts = sorted({v for v in _leaves(self.tree) if isinstance(v, str)} - {value})
            options = [value.upper(), f" {value} ", value * 2, *texts]
            new_text = self.draw(st.sampled_from(options))
            return f"{new_text[:30]!r}", new_text
        if isinstance(value, list) and value:
            how = self.draw(st.sampled_from(("reversed", "first only", "first twice", "empty")))
            lists = {
                "reversed": value[::-1],
                "first only": value[:1],
                "first twice": [value[0], *value],
                "empty": [],
            }
            return f"the list {how}", copy.deepcopy(lists[how])
        return self.hostile()

    def set_override(self) -> str:
        path = self.path() or ("training", "epochs")
        parts = [str(part) for part in path]
        spelling = self.draw(st.sampled_from(("as is",) * 6 + ("superscript index", "empty part")))
        if spelling == "superscript index":
            parts.append("\u00b2")
        elif spelling == "empty part":
            parts.insert(len(parts) - 1, "")
        label, value = self.draw(st.sampled_from(HOSTILE))
        made = value()
        text = made.text.replace(ANCHOR, "s") if isinstance(made, Raw) else _flow(made)
        text = text[:100_000]  # an argument the shell could still pass
        self.overrides.append(".".join(parts) + "=" + text)
        return f"--set {'.'.join(parts)}={label} ({spelling})"

    def text(self) -> str:
        """The tree as block YAML, each token replaced by its raw text."""
        written = yaml.safe_dump(
            self.tree,
            sort_keys=False,
            allow_unicode=self.draw(st.booleans()),
            default_flow_style=False,
            width=1_000_000,
        )
        for token, raw in self.raws.items():
            written = written.replace(token, raw)
        return written


def _flow(value: object) -> str:
    """A value as one line of YAML flow text, the way a user types it after --set key=."""
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=1_000_000)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _duplicate_key(draw: st.DrawFn, text: str) -> str:
    lines = text.split("\n")
    keyed = [i for i, line in enumerate(lines) if re.match(r"^\s*[^\s#-][^:]*:", line)]
    if not keyed:
        return text
    at = draw(st.sampled_from(keyed))
    return "\n".join([*lines[: at + 1], lines[at], *lines[at + 1 :]])


def _truncate(draw: st.DrawFn, text: str) -> str:
    return text[: draw(st.integers(0, max(len(text) - 1, 0)))]


TEXT_EDITS: tuple[tuple[str, Callable[[st.DrawFn, str], str]], ...] = (
    ("a duplicated key line", _duplicate_key),
    ("truncated", _truncate),
    ("a tab in the indentation", lambda draw, text: text.replace("\n  ", "\n\t", 1)),
    ("a second document", lambda draw, text: text + "---\nname: second\n"),
    ("CRLF line ends", lambda draw, text: text.replace("\n", "\r\n")),
    ("CR line ends", lambda draw, text: text.replace("\n", "\r")),
    ("a complex key", lambda draw, text: text + "? [a, b]\n: 1\n"),
    ("a merge key", lambda draw, text: text + "base: &m {a: 1}\nmore:\n  <<: *m\n"),
    ("an undefined alias", lambda draw, text: text + "extra: *nowhere\n"),
    ("a comment of 1,000,000 characters", lambda draw, text: "# " + "x" * 1_000_000 + "\n" + text),
    ("500 unknown top-level keys", lambda draw, text: text + _keys(500)),
    ("50,000 unknown top-level keys", lambda draw, text: text + _keys(50_000)),
    (
        "a %TAG directive to python",
        lambda draw, text: (
            "%TAG !p! tag:yaml.org,2002:python/\n---\n"
            + text
            + f'extra: !p!object/apply:os.system ["touch {PWNED}"]\n'
        ),
    ),
    ("a %YAML 1.1 directive", lambda draw, text: "%YAML 1.1\n---\n" + text),
)


def _keys(count: int) -> str:
    return "".join(f"key{i}: {i}\n" for i in range(count))


def _insert(draw: st.DrawFn, data: bytes, extra: bytes) -> bytes:
    at = draw(st.integers(0, len(data)))
    return data[:at] + extra + data[at:]


ENCODINGS: tuple[tuple[str, Callable[[st.DrawFn, str], bytes]], ...] = (
    ("UTF-8 with a BOM", lambda draw, text: b"\xef\xbb\xbf" + text.encode()),
    ("UTF-16", lambda draw, text: text.encode("utf-16")),
    ("a latin-1 byte", lambda draw, text: _insert(draw, text.encode(), "\u00e9".encode("latin-1"))),
    ("a NUL byte", lambda draw, text: _insert(draw, text.encode(), b"\x00")),
    ("binary bytes appended", lambda draw, text: text.encode() + _noise(draw, 64)),
    ("all binary", lambda draw, text: _noise(draw, draw(st.sampled_from((1, 100, 4096))))),
    ("empty", lambda draw, text: b""),
    ("whitespace only", lambda draw, text: b"  \n\t\n"),
    ("a list at the top", lambda draw, text: b"- a\n- b\n"),
    ("a number at the top", lambda draw, text: b"42\n"),
    ("null at the top", lambda draw, text: b"~\n"),
)


def _noise(draw: st.DrawFn, size: int) -> bytes:
    return random.Random(draw(st.integers(0, 2**32 - 1))).randbytes(size)


def _float_strings(node: Any) -> Any:
    """yaml.safe_load reads `1e-3` as text; mlpkit reads it as a float, so we do too."""
    if isinstance(node, dict):
        return {key: _float_strings(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_float_strings(value) for value in node]
    if isinstance(node, str) and re.fullmatch(r"[-+]?[0-9]+(\.[0-9]*)?[eE][-+]?[0-9]+", node):
        return float(node)
    return node


@dataclass(frozen=True)
class Shipped:
    """A shipped config as a tree (data.path pointing at data.csv beside it) and its data."""

    tree: dict[str, Any]
    data: bytes  # its data file's bytes (or a small XOR table for a config with a source)
    target: str | None
    caps: tuple[str, ...]
    reads_data: bool  # False for a config with a generated source: data edits are moot


XOR_CSV = (
    b"x1,x2,y\n" + b"".join(f"{a},{b},{a ^ b}\n".encode() for a in (0, 1) for b in (0, 1)) * 50
)


@functools.cache
def shipped(name: str) -> Shipped:
    """configs/NAME.yaml, read once (callers copy the tree before they change it)."""
    path = CONFIGS / f"{name}.yaml"
    tree = _float_strings(yaml.safe_load(path.read_text()))
    data_section = tree.get("data", {})
    data = XOR_CSV
    if "path" in data_section:
        data = (path.parent / data_section["path"]).read_bytes()
        data_section["path"] = DATA_NAME
    caps: tuple[str, ...] = CAPS
    if "iterations_per_epoch" in tree.get("training", {}):  # a stream: cap its epoch too
        caps = (*CAPS, "training.iterations_per_epoch=20")
    return Shipped(tree, data, data_section.get("target"), caps, "path" in data_section)


ODD_CELLS = (
    b"nan",
    b"NaN",
    b"inf",
    b"-inf",
    b"1e400",
    b"-1e400",
    b"1e-400",
    b"3.5e38",
    b"0x10",
    b"1_000",
    "\uff11\uff12".encode(),
    "\u0663".encode(),
    b"  7  ",
    b"",
    b"NA",
    b"null",
    b"None",
    b'"1,5"',
    b"3.4.5",
    b"True",
    "\u202e1".encode(),
    b"\x1b[2J",
    b"9" * 400,
    b"-0",
    b"\x00",
    "caf\u00e9".encode("latin-1"),
)


def _cells(data: bytes) -> list[list[bytes]]:
    return [line.split(b",") for line in data.split(b"\n")]


def _joined(rows: list[list[bytes]]) -> bytes:
    return b"\n".join(b",".join(row) for row in rows)


def _some_row(draw: st.DrawFn, rows: list[list[bytes]], header: bool = False) -> list[bytes]:
    last = max(len(rows) - 2, 0)  # the file ends with a newline: the last "row" is empty
    return rows[0 if header or last == 0 else draw(st.integers(1, last))]


def _edit_cell(draw: st.DrawFn, data: bytes, value: bytes, header: bool = False) -> bytes:
    rows = _cells(data)
    row = _some_row(draw, rows, header)
    row[draw(st.integers(0, len(row) - 1))] = value
    return _joined(rows)


def _ragged(draw: st.DrawFn, data: bytes, extra: bool) -> bytes:
    rows = _cells(data)
    row = _some_row(draw, rows)
    if extra:
        row.append(draw(st.sampled_from((b"7", b""))))
    elif len(row) > 1:
        row.pop()
    return _joined(rows)


def _column(draw: st.DrawFn, data: bytes, index: int | None, same: bytes | None) -> bytes:
    """Every data row's cell in one column set to the first row's (or `same`)."""
    rows = _cells(data)
    if len(rows) < 2:
        return data
    at = draw(st.integers(0, len(rows[0]) - 1)) if index is None else index
    for row in rows[1:]:
        if at < len(row):
            row[at] = same if same is not None else rows[1][at] if at < len(rows[1]) else b""
    return _joined(rows)


def _quoted(cell: bytes) -> bytes:
    return b'"' + cell.replace(b'"', b'""') + b'"'


LABELS: tuple[tuple[str, Callable[[bytes], bytes]], ...] = (
    ("mathtext", lambda v: _quoted(b"$\\frac{" + v + b"^$")),
    ("right-to-left override", lambda v: "\u202e".encode() + v),
    ("ANSI escapes", lambda v: v + b"\x1b[2J\x07"),
    ("emoji", lambda v: "\U0001f642".encode() + v),
    ("spaces around", lambda v: b"  " + v + b"  "),
    ("a comma and a quote", lambda v: _quoted(v + b', "x"')),
    ("1,000 characters long", lambda v: v + b"L" * 1000),
    ("a quoted newline", lambda v: _quoted(v + b"\nnext")),
    ("markup", lambda v: b"[bold red]" + v + b"[/]<script>"),
    ("numbers", lambda v: str(sum(v)).encode()),
)


def _relabel(draw: st.DrawFn, data: bytes, target: str | None) -> bytes:
    """The target's cells (or another column's) renamed consistently: the same classes, in odd
    words, so the case still trains and its labels reach run files, tables and plots."""
    rows = _cells(data)
    index = _target_index(data, target)
    at = (
        index
        if index is not None and draw(st.booleans())
        else draw(st.integers(0, len(rows[0]) - 1))
    )
    _, change = draw(st.sampled_from(LABELS))
    for row in rows[1:]:
        if at < len(row) and row != [b""]:
            row[at] = change(row[at])
    return _joined(rows)


def _extreme(draw: st.DrawFn, data: bytes, target: str | None) -> bytes:
    """A column's numbers scaled to the edge of float32, or to tiny ones."""
    rows = _cells(data)
    at = draw(st.integers(0, len(rows[0]) - 1))
    scale = draw(st.sampled_from((1e36, 1e30, 1e-30, -1e36, 1e18)))
    for row in rows[1:]:
        with contextlib.suppress(ValueError, IndexError):
            row[at] = repr(float(row[at]) * scale).encode()
    return _joined(rows)


def _target_index(data: bytes, target: str | None) -> int | None:
    header = data.split(b"\n", 1)[0].split(b",")
    name = (target or "").encode()
    return header.index(name) if name in header else None


def _wide(data: bytes, extra: int) -> bytes:
    rows = _cells(data)
    for number, row in enumerate(rows):
        if row != [b""]:
            row.extend(f"x{i}".encode() if number == 0 else b"1" for i in range(extra))
    return _joined(rows)


DataEdit = Callable[[st.DrawFn, bytes, str | None], bytes]
DATA_EDITS: tuple[tuple[str, DataEdit], ...] = (
    ("header only", lambda draw, data, target: data.split(b"\n", 1)[0] + b"\n"),
    (
        "the first rows only",
        lambda draw, data, target: (
            b"\n".join(data.split(b"\n")[: 1 + draw(st.sampled_from((1, 2, 3, 5, 12)))]) + b"\n"
        ),
    ),
    ("truncated", lambda draw, data, target: data[: draw(st.integers(1, max(len(data) - 1, 1)))]),
    ("a row with an extra field", lambda draw, data, target: _ragged(draw, data, True)),
    ("a row with a field missing", lambda draw, data, target: _ragged(draw, data, False)),
    (
        "a huge cell",
        lambda draw, data, target: _edit_cell(
            draw,
            data,
            draw(st.sampled_from((b"9", b"a")))
            * draw(st.sampled_from((100_000, 2_000_000, 16_000_000))),
        ),
    ),
    (
        "an odd cell",
        lambda draw, data, target: _edit_cell(draw, data, draw(st.sampled_from(ODD_CELLS))),
    ),
    (
        "an odd header name",
        lambda draw, data, target: _edit_cell(
            draw,
            data,
            draw(st.sampled_from((b"", b"x" * 5000, "\u202ey".encode(), b"\x1b[2J", b'"a,b"'))),
            header=True,
        ),
    ),
    (
        "a duplicated column name",
        lambda draw, data, target: _edit_cell(
            draw, data, data.split(b"\n", 1)[0].split(b",")[0], header=True
        ),
    ),
    ("a NUL byte", lambda draw, data, target: _insert(draw, data, b"\x00")),
    ("gzip", lambda draw, data, target: gzip.compress(data, mtime=0)),
    (
        "latin-1 text",
        lambda draw, data, target: _edit_cell(draw, data, "caf\u00e9".encode("latin-1")),
    ),
    ("UTF-16", lambda draw, data, target: data.decode("latin-1").encode("utf-16")),
    ("a BOM", lambda draw, data, target: b"\xef\xbb\xbf" + data),
    ("empty", lambda draw, data, target: b""),
    ("newlines only", lambda draw, data, target: b"\n" * 1000),
    ("binary", lambda draw, data, target: _noise(draw, draw(st.sampled_from((1, 1000, 100_000))))),
    ("an unterminated quote", lambda draw, data, target: _edit_cell(draw, data, b'"open')),
    ("a quoted newline", lambda draw, data, target: _edit_cell(draw, data, b'"a\nb"')),
    ("CRLF line ends", lambda draw, data, target: data.replace(b"\n", b"\r\n")),
    ("CR line ends", lambda draw, data, target: data.replace(b"\n", b"\r")),
    ("tab separated", lambda draw, data, target: data.replace(b",", b"\t")),
    ("semicolon separated", lambda draw, data, target: data.replace(b",", b";")),
    ("2,000 more columns", lambda draw, data, target: _wide(data, 2000)),
    ("rows repeated 5 times", lambda draw, data, target: data + data.partition(b"\n")[2] * 4),
    (
        "one class (target constant)",
        lambda draw, data, target: _column(draw, data, _target_index(data, target), None),
    ),
    ("a constant column", lambda draw, data, target: _column(draw, data, None, None)),
    ("blank lines", lambda draw, data, target: data.replace(b"\n", b"\n\n", 3)),
    ("odd labels in a column", _relabel),
    ("odd labels in a column", _relabel),
    ("extreme numbers in a column", _extreme),
    ("extreme numbers in a column", _extreme),
    (
        "every cell quoted",
        lambda draw, data, target: _joined(
            [[_quoted(c) for c in row] if row != [b""] else row for row in _cells(data)]
        ),
    ),
)


MILD_DATA = {
    "odd labels in a column",
    "extreme numbers in a column",
    "every cell quoted",
    "a constant column",
    "one class (target constant)",
    "rows repeated 5 times",
    "blank lines",
    "CRLF line ends",
    "a BOM",
    "2,000 more columns",
}


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """A shipped config and its data file, and what is done to them (the focus):
    config: 1-3 changes to its tree or --set overrides, maybe an edit of its text or bytes;
    data: 1-2 edits of the data file; both; mild: 1-2 changes that keep types and shapes
    (edge values, odd labels, extreme numbers), so that most such cases go on to train."""
    name = draw(st.sampled_from(SHIPPED))
    base = shipped(name)
    mutator = _Mutator(draw, copy.deepcopy(base.tree))
    notes = [f"configs/{name}.yaml"]
    focus = draw(st.sampled_from(("config", "data", "both", "mild")))
    if not base.reads_data and focus in ("data", "both"):
        focus = "config"
    data_edits = 0
    if focus in ("config", "both"):
        for _ in range(draw(st.integers(1, 3))):
            set_it = draw(st.integers(0, 5)) == 0
            notes.append(mutator.set_override() if set_it else mutator.apply())
    elif focus == "mild":
        for _ in range(draw(st.integers(1, 2))):
            if draw(st.booleans()) or not base.reads_data:
                notes.append(mutator.apply("stretch"))
            else:
                data_edits += 1
    text, encoding = mutator.text(), None
    if focus in ("config", "both"):
        edit = draw(st.sampled_from((None,) * 30 + TEXT_EDITS))
        if edit is not None:
            notes.append(f"config text: {edit[0]}")
            text = edit[1](draw, text)
        encoding = draw(st.sampled_from((None,) * 60 + ENCODINGS))
        if encoding is not None:
            notes.append(f"config bytes: {encoding[0]}")
    config = text.encode() if encoding is None else encoding[1](draw, text)
    if focus in ("data", "both"):
        data_edits = draw(st.integers(1, 2))
    edits = DATA_EDITS if focus != "mild" else [e for e in DATA_EDITS if e[0] in MILD_DATA]
    data = base.data
    for _ in range(data_edits):
        label, change = draw(st.sampled_from(edits))
        data = change(draw, data, base.target)
        notes.append(f"data: {label}")
    return Case(tuple(notes), config, data, tuple(mutator.overrides), base.caps)


def generate(seed: int, count: int) -> list[Case]:
    """The first `count` cases of `seed`, in order."""
    found: list[Case] = []
    explore(seed, count, found.append)
    return found


CHUNK = 20  # cases per Hypothesis run: each run starts afresh, so the stream strays further


def explore(seed: int, count: int, each: Callable[[Case], None]) -> None:
    """Call `each` on `count` distinct cases of `seed`: Hypothesis runs of CHUNK cases, each
    with its own seed derived from `seed` and no database, so the stream is the same every
    time. Hypothesis mutates the cases it made into new ones; exact repeats are rejected."""
    seen: set[bytes] = set()
    done = chunk = barren = 0
    while done < count and barren < 10:
        accepted = _chunk(seed * 1_000_003 + chunk, min(CHUNK, count - done), seen, each)
        done, chunk = done + accepted, chunk + 1
        barren = barren + 1 if accepted == 0 else 0


def _chunk(seed: int, count: int, seen: set[bytes], each: Callable[[Case], None]) -> int:
    accepted = 0

    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @hypothesis_seed(seed)
    @given(cases())
    def run(case: Case) -> None:
        nonlocal accepted
        digest = _digest(case)
        assume(digest not in seen)
        seen.add(digest)
        accepted += 1
        each(case)

    with contextlib.suppress(Unsatisfiable):  # every case of the run was a repeat
        run()
    return accepted


def _digest(case: Case) -> bytes:
    hashed = hashlib.sha256()
    for part in (case.config, case.data, "\0".join(case.overrides).encode()):
        hashed.update(len(part).to_bytes(8, "little"))
        hashed.update(part)
    return hashed.digest()


# ---------------------------------------------------------------------------------------------
# Running a case and judging it


@dataclass
class Step:
    """One command: its words, exit code (None: an exception escaped run_cli), output, time."""

    argv: list[str]
    code: int | None
    seconds: float
    out: str
    err: str
    cpu_seconds: float = 0.0  # the process's CPU time (all threads) over the command
    classes: list[str] = field(default_factory=list)  # what judge_step found

    def brief(self) -> dict[str, Any]:
        return {
            "command": _shown(self.argv),
            "classes": self.classes,
            "code": self.code,
            "seconds": round(self.seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "stderr_lines": len(self.err.splitlines()),
            "stderr": self.err[:4000],
            "stdout_tail": self.out[-500:],
        }


def _shown(argv: list[str]) -> str:
    words = [word if len(word) <= 200 else f"{word[:200]}...({len(word)} chars)" for word in argv]
    return shlex.join(["mlpkit", *words])


def call(run_cli: RunCli, argv: list[str]) -> Step:
    """`mlpkit ARGV` in this process: Python's stdout and stderr captured, and file descriptor 2
    too (what a C library writes there is the user's stderr as well)."""
    out, err = io.StringIO(), io.StringIO()
    code: int | None
    with tempfile.TemporaryFile() as native:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(native.fileno(), 2)
        started, cpu = time.perf_counter(), time.process_time()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = run_cli(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except Exception as exc:  # run_cli promised not to raise: that is a finding
            code = None
            err.write(f"[fuzz: {type(exc).__name__} escaped run_cli]\n")
        finally:
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            os.dup2(saved, 2)
            os.close(saved)
        native.seek(0)
        from_fd = native.read().decode("utf-8", "replace")
    return Step(argv, code, seconds, out.getvalue(), err.getvalue() + from_fd, cpu)


BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _raw_controls(text: str) -> bool:
    return any(ch in BIDI or (unicodedata.category(ch) == "Cc" and ch not in "\n\t") for ch in text)


def _bug(err: str, folder: Path) -> str:
    """An exit 1 as a class: the exception and the innermost mlpkit function it came from.
    The crash report moves into the case folder as crash.txt."""
    found = re.search(r"the full report is in (\S+)", err)
    if not found or not Path(found[1]).is_file():
        return "exit 1: " + _normal(err.strip().splitlines()[-1] if err.strip() else "(silent)")
    report = Path(found[1])
    text = report.read_text(errors="replace")
    shutil.move(report, folder / "crash.txt")
    frames = re.findall(r'File "([^"]+)", line \d+, in (\S+)', text)
    ours = [(path, name) for path, name in frames if "/mlpkit/" in path]
    path, name = (ours or frames or [("?", "?")])[-1]
    kind = text.strip().splitlines()[-1].split(":")[0] if text.strip() else "?"
    where = path.split("/src/", 1)[-1] if "/src/" in path else Path(path).name
    return f"exit 1: {kind} in {where}:{name}"


def _normal(text: str) -> str:
    """A message shortened and with digits, quotes and paths blurred, to group like with like."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)
    text = re.sub(r"/\S+", "PATH", text)
    return re.sub(r"\d+", "N", text)[:80]


def _stray(lines: list[str]) -> list[str]:
    """Classes for stderr lines that are not `Error: ...`."""
    if any("Traceback (most recent call last)" in line for line in lines):
        return ["traceback on stderr"]
    found = []
    for line in lines:
        if line.startswith(("Error: ", " ", "\t", "[fuzz: ")) or not line.strip():
            continue
        warning = re.search(r"\b(\w+Warning)\b", line)
        if line.startswith("Warning: "):
            found.append("warning on stderr: " + _normal(re.split(r"[(;:]", line[9:])[0].strip()))
        elif warning:
            found.append(f"warning on stderr: {warning[1]}")
        else:
            found.append("stray text on stderr: " + _normal(line)[:40])
    return found


def judge_step(step: Step, folder: Path) -> list[str]:
    """The contract's violations by one command, as classes."""
    verb, code, lines = step.argv[0], step.code, step.err.splitlines()
    found = []
    if code is None:
        found.append("an exception escaped run_cli")
    elif code == 1:
        found.append(_bug(step.err, folder))
    elif code == 4:
        memory = "memory" in step.err.lower()
        found.append("exit 4: " + ("out of memory under the cap" if memory else _normal(step.err)))
    elif code not in (0, 2, 3):
        found.append(f"exit {code}")
    found.extend(_stray(lines))  # before the count: a warning's lines are counted too
    if code in (2, 3) and not any(line.startswith("Error: ") for line in lines):
        found.append(f"exit {code} without an 'Error: ' line")
    if len(lines) > MAX_LINES:
        found.append(_too_many(lines))
    if any(len(line) > LONG_LINE for line in lines):
        found.append(f"a stderr line over {LONG_LINE:,} characters")
    if _raw_controls(step.err):
        found.append("raw control characters on stderr")
    # Slow by the clock and by the CPU: a machine busy with other work stretches the one, torch's
    # threads the other; a command that waits on nothing for long is the supervisor's (a hang).
    if min(step.seconds, step.cpu_seconds) > SLOW_SECONDS:
        found.append(f"{verb} over {SLOW_SECONDS:.0f} s")
    if verb == "train" and code == 2 and _runs_left(folder):
        found.append("train exit 2 left a run folder")
    return found


def _too_many(lines: list[str]) -> str:
    """More than MAX_LINES lines: the same problem again and again (never summarised), or
    that many different ones (the contract's "at most a few lines" against "every problem")."""
    problems = [_normal(re.sub(r"^Error: (\S+?:(\d+:)? )?([^:;]+: )?", "", line)) for line in lines]
    repeated = max(problems.count(problem) for problem in problems)
    if repeated > MAX_LINES:
        return f"more than {MAX_LINES} lines on stderr: one problem repeated, not summarised"
    return f"more than {MAX_LINES} lines on stderr: different problems"


def _runs_left(folder: Path) -> bool:
    runs = folder / RUNS_NAME
    return runs.exists() and any(runs.iterdir())


@dataclass
class Outcome:
    """A case's commands and the contract's violations, as classes (empty: it kept it)."""

    steps: list[Step]
    classes: list[str] = field(default_factory=list)


def run_case(case: Case, folder: Path, run_cli: RunCli) -> Outcome:
    """Write the case into `folder` (emptied first) and run check, then train if check is ok."""
    write_case(case, folder)
    here = Path.cwd()
    os.chdir(folder)
    try:
        steps = [call(run_cli, case.check_argv())]
        if steps[0].code == 0:
            steps.append(call(run_cli, case.train_argv()))
        if steps[-1].argv[0] == "train" and steps[-1].code == 2:
            steps.append(call(run_cli, case.check_argv(capped=True)))
    finally:
        os.chdir(here)
    for step in steps:
        step.classes = judge_step(step, folder)
    classes = [found for step in steps for found in step.classes]
    if len(steps) == 3 and steps[2].code == 0:
        classes.append("check ok, train refused (exit 2)")
    if (folder / PWNED).exists():
        classes.append("code from a YAML tag ran")
    return Outcome(steps, list(dict.fromkeys(classes)))


def write_case(case: Case, folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / CONFIG_NAME).write_bytes(case.config)
    (folder / DATA_NAME).write_bytes(case.data)
    commands = [_shown(case.check_argv()), _shown(case.train_argv())]
    described = {**asdict(case), "config": None, "data": None, "commands": commands}
    (folder / "case.json").write_text(json.dumps(described, indent=1, ensure_ascii=True))


def read_case(folder: Path) -> Case:
    described = json.loads((folder / "case.json").read_text())
    config, data = (folder / CONFIG_NAME).read_bytes(), (folder / DATA_NAME).read_bytes()
    return Case(
        tuple(described["notes"]),
        config,
        data,
        tuple(described["overrides"]),
        tuple(described["caps"]),
    )


# ---------------------------------------------------------------------------------------------
# The child: imports, warm-up, memory cap, then the cases


def _vm_size() -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmSize:")[1].split()[0]) * 1024


def prepare(cap_mb: int) -> RunCli:
    """Import what a command imports, run one shipped config through check and train, then cap
    the address space at what is mapped now plus `cap_mb`."""
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import torch  # noqa: F401

    from mlpkit.cli import run_cli

    for name in ("mlpkit.flows.train", "mlpkit.flows.check", "mlpkit.report.plots"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    with tempfile.TemporaryDirectory() as warm:
        base = shipped("mpg-tiny")
        text = yaml.safe_dump(base.tree, sort_keys=False)
        outcome = run_case(Case(("warm-up",), text.encode(), base.data), Path(warm), run_cli)
    if [step.code for step in outcome.steps] != [0, 0]:
        raise RuntimeError(f"the warm-up run failed: {[step.brief() for step in outcome.steps]}")
    limit = _vm_size() + cap_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return run_cli


def _log(log: TextIO, record: dict[str, Any]) -> None:
    log.write(json.dumps(record, ensure_ascii=True) + "\n")
    log.flush()


def child(job: Path, seed: int, count: int, start: int, cap_mb: int, out: Path) -> None:
    """Run cases `start`..`count`-1 of `seed`, one log line as each starts and ends."""
    run_cli = prepare(cap_mb)
    work = job / "case"
    index = -1
    with (job / "log.jsonl").open("a") as log:

        def each(case: Case) -> None:
            nonlocal index
            index += 1
            if index < start:
                return
            _log(log, {"event": "start", "index": index, "time": time.time()})
            outcome = run_case(case, work, run_cli)
            steps = [step.brief() for step in outcome.steps]
            record = {"event": "done", "index": index, "classes": outcome.classes}
            if outcome.classes:
                record["saved"] = save(work, out, outcome.classes, f"{job.name}-{index}", steps)
            _log(log, {**record, "notes": list(case.notes), "steps": steps})

        explore(seed, count, each)


def save(work: Path, out: Path, classes: list[str], name: str, steps: list[Any]) -> str | None:
    """Keep a violating case under OUT/violations/<first class>/, unless that class already has
    KEEP_PER_CLASS cases there."""
    kind = out / "violations" / _slug(classes[0])
    if kind.exists() and len(list(kind.iterdir())) >= KEEP_PER_CLASS:
        return None
    kind.mkdir(parents=True, exist_ok=True)
    place = kind / name
    shutil.copytree(work, place, ignore=shutil.ignore_patterns(RUNS_NAME))
    result = {"classes": classes, "steps": steps}
    (place / "result.json").write_text(json.dumps(result, indent=1, ensure_ascii=True))
    return str(place)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")[:80] or "unnamed"


# ---------------------------------------------------------------------------------------------
# The supervisor: children under a watch, restarted after a case that killed or hung them


@dataclass(frozen=True)
class Job:
    number: int
    seed: int
    count: int
    folder: Path


def _records(job: Job) -> list[dict[str, Any]]:
    log = job.folder / "log.jsonl"
    if not log.exists():
        return []
    parsed = (_parse(line) for line in log.read_bytes().splitlines())
    return [record for record in parsed if record is not None]


def _parse(line: bytes) -> dict[str, Any] | None:
    """A log line, or None for one a killed child left half written."""
    try:
        record: dict[str, Any] = json.loads(line)
    except ValueError:
        return None
    return record


class _Tail:
    """A job's log.jsonl read as it grows: which case has started and not ended, since when."""

    def __init__(self, job: Job) -> None:
        self.log = job.folder / "log.jsonl"
        self.offset = 0
        self.started: dict[int, float] = {}

    def pending(self) -> tuple[int, float] | None:
        if self.log.exists():
            with self.log.open("rb") as log:
                log.seek(self.offset)
                chunk = log.read()
            whole = chunk[: chunk.rfind(b"\n") + 1]  # a line being written waits for next time
            self.offset += len(whole)
            for line in whole.splitlines():
                record = _parse(line) or {"event": "torn"}
                if record["event"] == "start":
                    self.started[record["index"]] = record["time"]
                elif record["event"] == "done":
                    self.started.pop(record["index"], None)
        return max(self.started.items()) if self.started else None


def _next(job: Job) -> int:
    done = [record["index"] for record in _records(job) if record["event"] == "done"]
    return max(done) + 1 if done else 0


def supervise(job: Job, out: Path, cap_mb: int, hang: float) -> None:
    """Run the job's cases in children until all are done."""
    job.folder.mkdir(parents=True, exist_ok=True)
    (job.folder / "tmp").mkdir(exist_ok=True)  # crash reports land here, not in /tmp
    env = {key: value for key, value in os.environ.items() if key != "MLPKIT_DEBUG"}
    env.update(TMPDIR=str(job.folder / "tmp"), PYTHONHASHSEED="0")
    tail = _Tail(job)
    while (start := _next(job)) < job.count:
        argv = [sys.executable, __file__, "--child", str(job.folder), "--seed", str(job.seed)]
        argv += ["--cases", str(job.count), "--start", str(start), "--cap-mb", str(cap_mb)]
        argv += ["--out", str(out)]
        with (job.folder / "child.log").open("ab") as output:
            process = subprocess.Popen(
                argv, cwd=job.folder, stdout=output, stderr=subprocess.STDOUT, env=env
            )
            failure = _watch(process, tail, hang)
        if failure is None:
            return  # all its cases (fewer if Hypothesis ran out of new ones)
        pending = tail.pending()
        if pending is None:
            said = (job.folder / "child.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"fuzz child {job.number} failed between cases:\n{said}")
        _record_lost(job, out, pending[0], failure)


def _watch(process: subprocess.Popen[bytes], tail: _Tail, hang: float) -> str | None:
    """None when the child ends well; else why it was lost (a signal, an exit code, a hang)."""
    while True:
        try:
            code = process.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pending = tail.pending()
            if pending is not None and time.time() - pending[1] > hang:
                process.kill()
                process.wait()
                return f"hang: case over {hang:g} s, child killed"
            continue
        if code == 0:
            return None
        if code < 0:
            return f"child process died: {signal.Signals(-code).name}"
        return f"child process died: exit {code}"


def _record_lost(job: Job, out: Path, index: int, why: str) -> None:
    """A case that took its child down: saved from the child's work folder, logged as done."""
    tail = (job.folder / "child.log").read_text(errors="replace")[-4000:]
    steps = [{"child_log_tail": tail}]
    work = job.folder / "case"
    saved = save(work, out, [why], f"{job.folder.name}-{index}", steps) if work.exists() else None
    notes = json.loads((work / "case.json").read_text())["notes"] if work.exists() else []
    record = {"event": "done", "index": index, "classes": [why], "saved": saved, "notes": notes}
    with (job.folder / "log.jsonl").open("a") as log:
        log.write("\n")  # ends a line the child may have left half written
        _log(log, {**record, "steps": steps})


@dataclass
class Summary:
    """What a campaign found: every case's record, grouped by class."""

    records: list[dict[str, Any]]
    seconds: float
    out: Path

    @property
    def tried(self) -> int:
        return len(self.records)

    @property
    def violations(self) -> list[dict[str, Any]]:
        return [record for record in self.records if record["classes"]]

    def by_class(self) -> dict[str, list[dict[str, Any]]]:
        grouped: dict[str, list[dict[str, Any]]] = {}
        for record in self.violations:
            for kind in record["classes"]:
                grouped.setdefault(kind, []).append(record)
        return dict(sorted(grouped.items(), key=lambda item: -len(item[1])))

    def render(self) -> str:
        lines = [
            f"fuzz: {self.tried} cases in {self.seconds:.0f} s, {len(self.violations)} with "
            f"violations (saved under {self.out / 'violations'})"
        ]
        for kind, records in self.by_class().items():
            example = next((r for r in records if r.get("saved")), records[0])
            lines.append(f"{len(records):6d}  {kind}")
            lines.append(f"        e.g. {'; '.join(example.get('notes', []))}")
            steps = example["steps"]
            step = next((s for s in steps if kind in s.get("classes", [])), steps[-1])
            if "command" in step:
                said = step["stderr"].strip().splitlines() or ["(nothing on stderr)"]
                lines.append(f"        {step['command'][:200]}  -> exit {step['code']}")
                more = f"  (+{len(said) - 1} lines)" if len(said) > 1 else ""
                lines.append(f"        {said[0][:200]}{more}")
            if example.get("saved"):
                lines.append(f"        {example['saved']}")
        return visible("\n".join(lines))


def visible(text: str) -> str:
    """Text with control and bidi characters escaped, safe to print on a terminal."""
    return "".join(
        f"\\u{ord(ch):04x}"
        if ch in BIDI or (unicodedata.category(ch) == "Cc" and ch != "\n")
        else ch
        for ch in text
    )


def campaign(
    cases: int,
    seed: int,
    out: Path,
    jobs: int = 1,
    cap_mb: int = CAP_MB,
    hang: float = HANG_SECONDS,
) -> Summary:
    """Run `cases` cases over `jobs` children (job j: seed + j) and gather what they found.
    OUT's earlier jobs/ and violations/ are removed first."""
    for old in ("jobs", "violations"):
        shutil.rmtree(out / old, ignore_errors=True)
    started = time.perf_counter()
    shares = [cases // jobs + (1 if j < cases % jobs else 0) for j in range(jobs)]
    planned = [
        Job(j, seed + j, share, out / "jobs" / f"job{j}") for j, share in enumerate(shares) if share
    ]
    errors: list[BaseException] = []

    def work(job: Job) -> None:
        try:
            supervise(job, out, cap_mb, hang)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(job,)) for job in planned]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    records = [r for job in planned for r in _records(job) if r["event"] == "done"]
    summary = Summary(records, time.perf_counter() - started, out)
    (out / "summary.json").write_text(
        json.dumps(
            {
                "cases": summary.tried,
                "by_class": {kind: len(found) for kind, found in summary.by_class().items()},
            },
            indent=1,
            ensure_ascii=True,
        )
    )
    return summary


def replay(folder: Path, cap_mb: int) -> tuple[Outcome, Path]:
    """Run a saved case again under the same cap, in a new folder that is kept (its runs/, and
    crash.txt after an exit 1)."""
    case = read_case(folder)
    run_cli = prepare(cap_mb)
    place = Path(tempfile.mkdtemp(prefix="mlpkit-fuzz-replay-")) / "case"
    return run_case(case, place, run_cli), place


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="children in parallel (seed + j each)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "mlpkit-fuzz")
    parser.add_argument("--cap-mb", type=int, default=CAP_MB)
    parser.add_argument("--hang", type=float, default=HANG_SECONDS, help="kill a case after")
    parser.add_argument("--replay", type=Path, help="run one saved case folder again")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.seed, args.cases, args.start, args.cap_mb, args.out)
    elif args.replay is not None:
        outcome, place = replay(args.replay, args.cap_mb)
        for step in outcome.steps:
            print(visible(json.dumps(step.brief(), indent=1, ensure_ascii=False)))
        print(f"ran in {place}; violations: {outcome.classes or 'none'}")
    else:
        summary = campaign(args.cases, args.seed, args.out, args.jobs, args.cap_mb, args.hang)
        print(summary.render())
        sys.exit(1 if summary.violations else 0)


if __name__ == "__main__":
    main()
