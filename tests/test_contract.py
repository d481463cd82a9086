"""The error contract of RELIABILITY.md, case by case: config file, data file and command line.

Every rejected input must exit 2 with one `Error: ` line per problem that names the file, the line
or dotted key (or `column 'x', line N`) and the fix, print no traceback, and leave runs/ untouched.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_CONFIG, Cli, Project, Result, tiny_csv

from mlpkit.cli import run_cli
from mlpkit.config.load import load_config

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
HEADER = "a,b,color,y\n"
BINARY = (("loss: mse", "loss: bce"), ("units: 1}", "units: 1, activation: sigmoid}"))


def rows(count: int) -> str:
    """`count` valid data rows for the tiny config, with a varying target."""
    return "".join(f"{i * 0.1:.1f},{i % 7},{('red', 'blue')[i % 2]},{i}\n" for i in range(count))


def one_bad_row(row: str) -> str:
    """The tiny CSV with `row` as its first data row (physical line 2)."""
    return tiny_csv().replace("\n", "\n" + row + "\n", 1)


def fill(text: str, project: Project) -> str:
    """Expand {config}, {data} and {root} in an expected fragment."""
    return (
        text.replace("{config}", str(project.config))
        .replace("{data}", str(project.data))
        .replace("{root}", str(project.root))
    )


def replace_config(text: str | bytes) -> Callable[[Project], None]:
    def setup(project: Project) -> None:
        if isinstance(text, bytes):
            project.config.write_bytes(text)
        else:
            project.write_config(text)

    return setup


def into_directory(which: str) -> Callable[[Project], None]:
    def setup(project: Project) -> None:
        path = getattr(project, which)
        path.unlink()
        path.mkdir()

    return setup


def unreadable(which: str) -> Callable[[Project], None]:
    def setup(project: Project) -> None:
        getattr(project, which).chmod(0)

    return setup


def remove(which: str) -> Callable[[Project], None]:
    def setup(project: Project) -> None:
        getattr(project, which).unlink()

    return setup


def python_tag(project: Project) -> None:
    marker = project.root / "pwned"
    project.edit_config("name: tiny", f"name: !!python/object/apply:os.system ['touch {marker}']")


def block_optimizer_with_duplicate_lr(project: Project) -> None:
    project.edit_config(
        "  optimizer: {name: adam, lr: 1e-2}",
        "  optimizer:\n    name: adam\n    lr: 1e-2\n    lr: 1e-3",
    )


@dataclass(frozen=True)
class Case:
    """One rejected input: how to build it, and what its error lines must contain."""

    id: str
    expected: tuple[str, ...]
    edits: tuple[tuple[str, str], ...] = ()
    data: str | bytes | None = None
    setup: Callable[[Project], object] | None = None  # what it returns is ignored
    lines: int = 1
    never_created: str | None = None  # a file (relative to the project) nothing may create
    needs_non_root: bool = False
    xfail: str | None = None

    def build(self, project: Project) -> None:
        for old, new in self.edits:
            project.edit_config(old, new)
        if isinstance(self.data, bytes):
            project.data.write_bytes(self.data)
        elif self.data is not None:
            project.data.write_text(self.data)
        if self.setup is not None:
            self.setup(project)

    def param(self, wording: bool = True) -> object:
        """A pytest param; wording=False drops the xfail of a message defect (exit 2 still holds)."""
        marks: list[pytest.MarkDecorator] = []
        if self.needs_non_root:
            marks.append(pytest.mark.skipif(AS_ROOT, reason="root can read a chmod-000 file"))
        if self.xfail and wording:
            marks.append(pytest.mark.xfail(strict=True, reason=self.xfail))
        return pytest.param(self, id=self.id, marks=marks)


CONFIG_FILE_CASES = [
    Case("config missing", ("Error: {config}: config file not found",), setup=remove("config")),
    Case(
        "config is a directory",
        ("Error: {config}: is a directory, not a config file",),
        setup=into_directory("config"),
    ),
    Case(
        "config unreadable",
        ("Error: {config}: cannot read the file",),
        setup=unreadable("config"),
        needs_non_root=True,
    ),
    Case(
        "config empty",
        ("Error: {config}: the file is empty", "a config is a mapping with name, data"),
        setup=replace_config(""),
    ),
    Case(
        "config top level a list",
        ("Error: {config}: the file is a list, not a mapping",),
        setup=replace_config("- a\n- b\n"),
    ),
    Case(
        "config top level a scalar",
        ("Error: {config}: the file is a str, not a mapping",),
        setup=replace_config("just words\n"),
    ),
    Case(
        "config only whitespace and comments",
        ("Error: {config}: the file is empty",),
        setup=replace_config("\n   \n# nothing yet\n"),
    ),
    Case(
        "yaml syntax error with line and column",
        ("Error: {config}:16: invalid YAML, column 12",),
        edits=(("  batch_size: 8", "  batch_size: [8"),),
    ),
    Case(
        "config not utf-8",
        ("Error: {config}:1: the file is not UTF-8 text; save it as UTF-8",),
        setup=replace_config(TINY_CONFIG.replace("name: tiny", "name: caf\xe9").encode("latin-1")),
    ),
    Case(
        "python tag rejected and never run",
        ("Error: {config}:1: name: the tag 'tag:yaml.org,2002:python/object/apply:os.system'",),
        setup=python_tag,
        never_created="pwned",
    ),
    Case(
        "python tag deep in the config",
        ("Error: {config}:16: training.optimizer.lr: the tag ", "python/object/new:float"),
        edits=(("lr: 1e-2}", "lr: !!python/object/new:float [0.1]}"),),
    ),
    Case(
        "duplicate key at top level names both lines",
        ("Error: {config}:3: duplicate key 'seed' (also on line 2)", "keep one of them"),
        edits=(("seed: 0", "seed: 0\nseed: 1"),),
    ),
    Case(
        "duplicate key nested names both lines",
        ("Error: {config}:19: training.optimizer: duplicate key 'lr' (also on line 18)",),
        setup=block_optimizer_with_duplicate_lr,
    ),
    Case(
        "duplicate key inside a list item",
        ("Error: {config}:11: model.layers.0: duplicate key 'units'",),
        edits=(("units: 8,", "units: 8, units: 4,"),),
    ),
    Case(
        "unknown top-level key with did-you-mean",
        ("Error: {config}:2: sed: unknown key; did you mean 'seed'?",),
        edits=(("seed: 0", "sed: 0"),),
    ),
    Case(
        "unknown nested key with did-you-mean",
        ("Error: {config}:6: data.featurs: unknown key; did you mean 'features'?",),
        edits=(("  features:", "  featurs:"),),
    ),
    Case(
        "unknown key in a flow mapping with did-you-mean",
        ("Error: {config}:8: data.split.tst: unknown key; did you mean 'test'?",),
        edits=(("test: 0.2", "tst: 0.2"),),
    ),
    Case(
        "unknown layer key with did-you-mean",
        ("Error: {config}:11: model.layers.0.unit: unknown key; did you mean 'units'?",),
        edits=(("units: 8,", "unit: 8,"),),
    ),
    Case(
        "missing required key with an example",
        ("Error: {config}:3: data.target: missing required key; e.g. target: ",),
        edits=(("  target: y\n", ""),),
    ),
    Case(
        "missing required section",
        ("Error: {config}: model: missing required key", "add a 'model:' section"),
        setup=lambda p: p.write_config(
            TINY_CONFIG.split("model:")[0] + "training:" + TINY_CONFIG.split("training:")[1]
        ),
    ),
    Case(
        "batch_size true is not an integer",
        ("Error: {config}:15: training.batch_size: expected an integer, got true",),
        edits=(("batch_size: 8", "batch_size: true"),),
    ),
    Case(
        "batch_size quoted string is not an integer",
        ('Error: {config}:15: training.batch_size: expected an integer, got "32"',),
        edits=(("batch_size: 8", 'batch_size: "32"'),),
    ),
    Case(
        "epochs a float",
        ("Error: {config}:14: training.epochs: expected an integer, got 3.5",),
        edits=(("epochs: 3", "epochs: 3.5"),),
    ),
    Case(
        "lr as words",
        ('Error: {config}:16: training.optimizer.lr: expected a number, got "fast"',),
        edits=(("lr: 1e-2", "lr: fast"),),
    ),
    Case(
        "features a string, not a list",
        ('Error: {config}:6: data.features: expected a list, got "a"',),
        edits=(("features: [a, b, color]", "features: a"),),
    ),
    Case(
        "batch_size 0",
        ("Error: {config}:15: training.batch_size: must be greater than 0, got 0",),
        edits=(("batch_size: 8", "batch_size: 0"),),
    ),
    Case(
        "epochs -1",
        ("Error: {config}:14: training.epochs: must be greater than 0, got -1",),
        edits=(("epochs: 3", "epochs: -1"),),
    ),
    Case(
        "lr 0",
        ("Error: {config}:16: training.optimizer.lr: must be greater than 0, got 0",),
        edits=(("lr: 1e-2", "lr: 0"),),
    ),
    Case(
        "dropout 1.5",
        ("Error: {config}:12: model.layers.1.rate: must be less than 1, got 1.5",),
        edits=(
            (
                "    - {type: dense, units: 1}",
                "    - {type: dropout, rate: 1.5}\n    - {type: dense, units: 1}",
            ),
        ),
    ),
    Case(
        "empty layer list",
        ("Error: {config}:10: model.layers: list should have at least 1 item",),
        edits=(
            (
                "  layers:\n    - {type: dense, units: 8, activation: relu}\n"
                "    - {type: dense, units: 1}",
                "  layers: []",
            ),
        ),
    ),
    Case(
        "layer width 0",
        ("Error: {config}:11: model.layers.0.units: must be greater than 0, got 0",),
        edits=(("units: 8", "units: 0"),),
    ),
    Case(
        "lr nan",
        ("Error: {config}:16: training.optimizer.lr: must be a finite number, got NaN",),
        edits=(("lr: 1e-2", "lr: .nan"),),
    ),
    Case(
        "lr inf",
        ("Error: {config}:16: training.optimizer.lr: must be a finite number",),
        edits=(("lr: 1e-2", "lr: .inf"),),
    ),
    Case(
        "dropout inf",
        ("Error: {config}:12: model.layers.1.rate: must be a finite number",),
        edits=(
            (
                "    - {type: dense, units: 1}",
                "    - {type: dropout, rate: .inf}\n    - {type: dense, units: 1}",
            ),
        ),
    ),
    Case(
        "unknown activation with nearest",
        ("Error: {config}:11: model.layers.0.activation: unknown activation 'rleu'", "'relu'"),
        edits=(("activation: relu", "activation: rleu"),),
    ),
    Case(
        "unknown loss with nearest",
        ("Error: {config}:17: training.loss.name: unknown loss 'mse2'", "'mse'"),
        edits=(("loss: mse", "loss: mse2"),),
    ),
    Case(
        "unknown optimizer with nearest",
        ("Error: {config}:16: training.optimizer.name: unknown optimizer 'adma'", "'adam'"),
        edits=(("name: adam", "name: adma"),),
    ),
    Case(
        "unknown metric with nearest",
        ("Error: {config}:18: training.metrics: unknown metric 'mea'", "did you mean"),
        edits=(("  loss: mse", "  loss: mse\n  metrics: [mea]"),),
    ),
    Case(
        "unknown metric far from all lists the valid names",
        ("Error: {config}:18: training.metrics: unknown metric 'zzz'", "expected one of: ", "mae"),
        edits=(("  loss: mse", "  loss: mse\n  metrics: [zzz]"),),
    ),
    Case(
        "unknown name gets the valid names and the nearest one",
        ("unknown activation 'rleu'", "did you mean 'relu'?", "gelu", "tanh"),
        edits=(("activation: relu", "activation: rleu"),),
    ),
    Case(
        "unknown name differing only in case gets the nearest one",
        ("Error: {config}:17: training.loss.name: unknown loss 'MSE'", "did you mean 'mse'?"),
        edits=(("loss: mse", "loss: MSE"),),
    ),
    Case(
        "target among the features (label leakage)",
        ("Error: {config}:6: data.features: lists the target 'y' (label leakage)",),
        edits=(("features: [a, b, color]", "features: [a, b, color, y]"),),
    ),
    Case(
        "bce on a continuous target",
        ("Error: {data}: column 'y': 50 classes", "a binary task needs 2"),
        edits=BINARY,
    ),
    Case(
        "3-unit head on a regression target",
        ("Error: {config}:12: model.layers.1.units: the output layer has 3 units", "set units: 1"),
        edits=(("units: 1}", "units: 3}"),),
    ),
    Case(
        "3-unit head on a binary task",
        ("Error: {config}:12: model.layers.1.units: the output layer has 3 units", "binary"),
        edits=(("loss: mse", "loss: bce"), ("units: 1}", "units: 3, activation: sigmoid}")),
        data=HEADER + "".join(f"{i * 0.1:.1f},{i % 7},red,{i % 2}\n" for i in range(40)),
    ),
    Case(
        "relative data path missing names both paths",
        (
            "Error: {config}:4: data.path: data file not found: {root}/sub/nope.csv",
            "data.path 'sub/nope.csv' is relative to {root}/",
        ),
        edits=(("path: data.csv", "path: sub/nope.csv"),),
    ),
]

DATA_FILE_CASES = [
    Case(
        "data missing names data.path",
        ("Error: {config}:4: data.path: data file not found: {data}",),
        setup=remove("data"),
    ),
    Case(
        "data is a directory names data.path",
        ("Error: {config}:4: data.path: is a directory, not a data file: {data}",),
        setup=into_directory("data"),
    ),
    Case(
        "data unreadable names data.path",
        ("Error: {config}:4: data.path: cannot read the data file", "{data}"),
        setup=unreadable("data"),
        needs_non_root=True,
    ),
    Case("data empty", ("Error: {data}: the file is empty",), data=""),
    Case("data header only", ("Error: {data}: the file has a header but no rows",), data=HEADER),
    Case(
        "too few rows for the split",
        ("Error: {config}:8: data.split.val: 2 data rows leave the val split empty",),
        edits=(("batch_size: 8", "batch_size: 1"),),
        data=HEADER + rows(2),
    ),
    Case(
        "too few rows for the batch size",
        ("Error: {config}:15: training.batch_size: 16 is larger than the 12 training rows",),
        edits=(("batch_size: 8", "batch_size: 16"),),
        data=HEADER + rows(20),
    ),
    Case(
        "too few rows for split and batch size at once",
        ("{config}:8: data.split.val: ", "{config}:15: training.batch_size: 8 is larger than"),
        data=HEADER + rows(2),
        lines=2,
    ),
    Case(
        "configured column missing with did-you-mean",
        ("Error: {data}: column 'color': column missing from the header; did you mean 'colour'?",),
        data=tiny_csv().replace("a,b,color,y", "a,b,colour,y", 1),
    ),
    Case(
        "non-numeric cell names first line and count",
        (
            "Error: {data}: column 'b', line 2: non-numeric value 'oops' (2 cells)",
            "data.categorical",
        ),
        data=tiny_csv().replace("\n", "\n1.0,oops,red,2.0\n1.0,x,red,2.0\n", 1),
    ),
    Case(
        "empty cells name column, first line and count",
        (
            "Error: {data}: column 'b', line 2: missing value (2 cells)",
            'add "missing: median" under data',
        ),
        data=one_bad_row("1.0,,red,2.0\n2.0,,blue,3.0"),
    ),
    Case(
        "nan cell is a missing value",
        ("Error: {data}: column 'a', line 2: missing value",),
        data=one_bad_row("NaN,2.0,red,2.0"),
    ),
    Case(
        "inf cells name column, first line and count",
        ("Error: {data}: column 'b', line 2: infinite value (2 cells); expected a finite number",),
        data=one_bad_row("1.0,inf,red,2.0\n2.0,-inf,blue,3.0"),
    ),
    Case(
        "nan target is a missing value",
        ("Error: {data}: column 'y', line 2: missing value",),
        data=one_bad_row("1.0,2.0,red,nan"),
    ),
    Case(
        "missing category is refused",
        ("Error: {data}: column 'color', line 2: missing value",),
        data=one_bad_row("1.0,2.0,,2.0"),
    ),
    Case(
        "ragged rows name first line and count",
        ("Error: {data}: line 2: has 3 fields, expected 4 like the header (2 rows so)",),
        data=one_bad_row("1.0,2.0,red\n2.0,blue,3.0"),
    ),
    Case(
        "binary data is named, not blamed on the encoding",
        ("Error: {data}: looks like binary data, not CSV text; expected CSV text",),
        data=b"\x00\x01\x02\xff\xfe" * 20,
    ),
    Case(
        "non-utf-8 data hints at data.encoding",
        ("Error: {data}: line 2: the file is not valid utf-8 text; set data.encoding",),
        data=(HEADER + "1,2,rouge\xe9,3\n" + rows(40)).encode("latin-1"),
    ),
    Case(
        "classification target with a single class",
        ("Error: {data}: column 'y': a single class (1); classification needs two or more",),
        edits=BINARY,
        data=HEADER + "".join(f"{i * 0.1:.1f},{i % 7},red,1\n" for i in range(40)),
    ),
    Case(
        "regression target not numeric",
        ("Error: {data}: column 'y', line 2: non-numeric value 'abc'", "regression target"),
        data=one_bad_row("1.0,2.0,red,abc"),
    ),
]

INPUT_CASES = CONFIG_FILE_CASES + DATA_FILE_CASES


def assert_rejected(
    result: Result, expected: tuple[str, ...], lines: int, project: Project
) -> None:
    """Exit 2, `lines` lines each starting `Error: `, every fragment present, plain text."""
    code, err = result.code, result.err
    assert code == 2, err
    assert "Traceback" not in err and "\x1b[" not in err
    err_lines = err.splitlines()
    assert len(err_lines) == lines, err
    assert all(line.startswith("Error: ") for line in err_lines), err
    for fragment in expected:
        assert fill(fragment, project) in err, err


def paths_under(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def runs_empty(project: Project) -> bool:
    return not project.runs.exists() or not any(project.runs.iterdir())


@pytest.mark.parametrize("command", ["train", "check"])
@pytest.mark.parametrize("case", [case.param() for case in INPUT_CASES])
def test_bad_input_is_one_error_line_per_problem_and_no_run(
    cli: Cli, project: Project, case: Case, command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every config and data mistake is caught before a run directory exists, by check too."""
    monkeypatch.chdir(project.root)  # the default runs/ would land here
    case.build(project)
    files = paths_under(project.root)
    args: list[str | Path] = ["--runs-dir", project.runs] if command == "train" else []
    result = cli(command, project.config, *args)
    assert_rejected(result, case.expected, case.lines, project)
    assert result.out == ""
    assert runs_empty(project)
    assert paths_under(project.root) == files  # nothing written anywhere in the project
    if case.never_created:
        assert not (project.root / case.never_created).exists()


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every path under `folder` with its bytes (empty for folders) and modification time."""
    return {
        str(p.relative_to(folder)): (b"" if p.is_dir() else p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


@pytest.mark.parametrize("case", [case.param(wording=False) for case in INPUT_CASES])
def test_rejected_input_leaves_runs_exactly_as_it_was(
    cli: Cli, project: Project, case: Case
) -> None:
    """A runs/ that already holds a run (same name included) is not touched by a rejected train."""
    earlier = project.runs / "tiny" / "20260101-000000-abcdef"
    earlier.mkdir(parents=True)
    (earlier / "run.json").write_text('{"status": "complete"}')
    (project.runs / "notes.txt").write_text("mine")
    before = snapshot(project.runs) | {".": (b"", project.runs.stat().st_mtime_ns)}
    case.build(project)
    result = cli("train", project.config, "--runs-dir", project.runs)
    assert result.code == 2, result.err
    assert snapshot(project.runs) | {".": (b"", project.runs.stat().st_mtime_ns)} == before


def test_lr_in_exponent_form_is_a_float_everywhere(cli: Cli, project: Project) -> None:
    """`lr: 1e-3` is text to plain PyYAML; mlpkit must train with, and record, floats."""
    project.edit_config("lr: 1e-2", "lr: 1e-3, eps: 1E-8, weight_decay: 5e-4")
    result = cli("train", project.config, "--runs-dir", project.runs, "--set", "training.epochs=1")
    assert result.code == 0, result.err
    assert "\x1b[" not in result.out + result.err  # stdout is not a terminal: plain text
    run = Path(result.last_line)
    recorded = yaml.safe_load((run / "config.yaml").read_text())["training"]["optimizer"]["lr"]
    assert isinstance(recorded, float) and recorded == pytest.approx(1e-3)
    reloaded = load_config(run / "config.yaml").config.training.optimizer
    assert isinstance(reloaded.lr, float) and reloaded.lr == pytest.approx(1e-3)
    for name, value in (("eps", 1e-8), ("weight_decay", 5e-4)):
        assert isinstance(getattr(reloaded, name), float)
        assert getattr(reloaded, name) == pytest.approx(value)


def test_relative_data_path_is_resolved_from_the_config_folder(
    cli: Cli, project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The working directory plays no part: data.path is relative to the config file."""
    (project.root / "sub").mkdir()
    project.data.rename(project.root / "sub" / "table.csv")
    project.edit_config("path: data.csv", "path: sub/table.csv")
    elsewhere = project.root / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = cli("check", project.config)
    assert result.code == 0, result.err
    assert result.out.startswith(f"ok: {project.config}: 50 rows")


@pytest.mark.parametrize(
    ("column", "value"),
    [(0, "1.5"), (2, "red"), (3, "5.0")],
    ids=["numeric feature", "categorical feature", "target"],
)
def test_constant_column_trains_without_nan(
    cli: Cli, project: Project, column: int, value: str
) -> None:
    """Standardizing a constant column must not divide by zero into NaN, nor write NaN to JSON."""
    header, *lines = tiny_csv().splitlines()
    cells = [line.split(",") for line in lines]
    for row in cells:
        row[column] = value
    project.data.write_text("\n".join([header] + [",".join(row) for row in cells]) + "\n")
    run = project.train(cli)

    def refuse(literal: str) -> None:
        raise AssertionError(f"non-strict JSON literal {literal}")

    for name in ("preprocessing.json", "metrics.json"):
        json.loads((run / name).read_text(), parse_constant=refuse)
    scores = json.loads((run / "metrics.json").read_text())
    for part in ("train", "val", "test"):
        assert all(math.isfinite(value) for value in scores[part].values())


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny complete run, shared by the predict cases (training once keeps them fast)."""
    root = tmp_path_factory.mktemp("trained")
    project = Project(root)
    project.write_config(TINY_CONFIG)
    project.data.write_text(tiny_csv())
    assert run_cli(["train", str(project.config), "--runs-dir", str(project.runs), "-q"]) == 0
    (run,) = project.run_dirs()
    return run


CANONICAL = "a,b,color\n1.0,2.0,red\n-0.5,7.0,blue\n"


@dataclass(frozen=True)
class PredictCase:
    """A CSV handed to predict; no expected fragments means it must predict like CANONICAL."""

    id: str
    csv: str
    expected: tuple[str, ...] = ()


PREDICT_CASES = [
    PredictCase(
        "missing feature columns are all listed",
        "a,c\n1,2\n",
        ("Error: {new}: 2 columns missing from the header: 'b', 'color'",),
    ),
    PredictCase(
        "missing feature column with did-you-mean",
        "a,b,colour\n1.0,2.0,red\n",
        ("Error: {new}: column 'color': column missing from the header; did you mean 'colour'?",),
    ),
    PredictCase(
        "extra columns are ignored", "id,a,b,color,note\n7,1.0,2.0,red,x\n8,-0.5,7.0,blue,y\n"
    ),
    PredictCase(
        "extra columns with empty cells are ignored",
        "id,a,b,color,note\n,1.0,2.0,red,\n,-0.5,7.0,blue,\n",
    ),
    PredictCase(
        "a target column holding text is ignored", "a,b,color,y\n1.0,2.0,red,abc\n-0.5,7.0,blue,\n"
    ),
    PredictCase("columns are matched by name", "color,b,a\nred,2.0,1.0\nblue,7.0,-0.5\n"),
    PredictCase(
        "reordered with the target and extras",
        "y,color,id,a,b\n3,red,1,1.0,2.0\n4,blue,2,-0.5,7.0\n",
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in PREDICT_CASES])
def test_predict_matches_feature_columns_by_name(
    cli: Cli, trained: Path, tmp_path: Path, case: PredictCase
) -> None:
    """Predict needs the feature columns, in any order, and nothing else; it never edits the run."""
    reference, new = tmp_path / "reference.csv", tmp_path / "new.csv"
    reference.write_text(CANONICAL)
    new.write_text(case.csv)
    before = snapshot(trained)
    result = cli("predict", trained, "--data", new)
    if case.expected:
        assert result.code == 2, result.err
        assert "Traceback" not in result.err and result.out == ""
        (line,) = result.err.splitlines()
        for fragment in case.expected:
            assert fragment.replace("{new}", str(new)) in line
    else:
        assert result.code == 0, result.err
        expected = cli("predict", trained, "--data", reference)
        assert expected.code == 0 and result.out == expected.out
        assert result.out.splitlines()[0] == "line,prediction" and len(result.out.splitlines()) == 3
    assert snapshot(trained) == before


def test_predict_out_onto_an_existing_file_needs_force(
    cli: Cli, trained: Path, tmp_path: Path
) -> None:
    """An existing --out file is the user's: refused untouched unless --force."""
    new, out = tmp_path / "new.csv", tmp_path / "preds.csv"
    new.write_text(CANONICAL)
    out.write_text("keep me")
    result = cli("predict", trained, "--data", new, "--out", out)
    assert (result.code, result.err) == (
        2,
        f"Error: {out}: already exists; pass --force to overwrite\n",
    )
    assert out.read_text() == "keep me"
    forced = cli("predict", trained, "--data", new, "--out", out, "--force")
    assert forced.code == 0, forced.err
    assert out.read_text().startswith("line,prediction\n2,")


@dataclass(frozen=True)
class CommandCase:
    """A mistyped or mis-valued command line: argv after `mlpkit`, and its error's fragments."""

    id: str
    argv: Callable[[Project], list[str | Path]]
    expected: tuple[str, ...]
    setup: Callable[[Project], None] | None = None
    needs_no_cuda: bool = False
    xfail: str | None = None

    def param(self) -> object:
        marks: list[pytest.MarkDecorator] = []
        if self.needs_no_cuda:
            marks.append(
                pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
            )
        if self.xfail:
            marks.append(pytest.mark.xfail(strict=True, reason=self.xfail))
        return pytest.param(self, id=self.id, marks=marks)


def train_args(*extra: str) -> Callable[[Project], list[str | Path]]:
    return lambda p: ["train", p.config, "--runs-dir", p.runs, *extra]


COMMAND_LINE_CASES = [
    CommandCase(
        "command typo suggests the command",
        lambda p: ["trian", p.config, "--runs-dir", p.runs],
        ("Error: mlpkit: No such command 'trian'. Did you mean 'train'?", "see mlpkit --help"),
    ),
    CommandCase(
        "option typo suggests the option",
        train_args("--quite"),
        ("Error: mlpkit train: No such option: --quite", "--quiet", "see mlpkit train --help"),
    ),
    CommandCase(
        "predict option typo suggests the option",
        lambda p: ["predict", p.runs, "--dta", p.data],
        ("Error: mlpkit predict: No such option: --dta", "--data"),
    ),
    CommandCase(
        "option without its value names the option",
        train_args("--device"),
        ("Error: ", "'--device' requires an argument"),
    ),
    CommandCase(
        "bad --device value names the option and the choices",
        train_args("--device", "gpu"),
        ("Error: --device: unknown device 'gpu'; expected auto, cpu or cuda",),
    ),
    CommandCase(
        "empty --device value names the option",
        train_args("--device", ""),
        ("Error: --device: ",),
    ),
    CommandCase(
        "empty --runs-dir value names the option",
        lambda p: ["train", p.config, "--runs-dir", ""],
        ("Error: --runs-dir: ",),
    ),
    CommandCase(
        "--set that is not key=value",
        train_args("--set", "training.epochs"),
        ("Error: --set: 'training.epochs' is not key=value; e.g. --set training.epochs=5",),
    ),
    CommandCase(
        "--set with a bad value names the key",
        train_args("--set", "training.epochs=many"),
        ("Error: --set: training.epochs: expected an integer",),
    ),
    CommandCase(
        "--set with an unknown key gets did-you-mean",
        train_args("--set", "training.epoch=7"),
        ("Error: --set: training.epoch: unknown key; did you mean 'epochs'?",),
    ),
    CommandCase(
        "--device cuda without CUDA fails before reading data",
        train_args("--device", "cuda"),
        ("Error: --device: CUDA is not available on this machine; use --device cpu",),
        setup=remove("data"),  # a data error instead would prove the data was read first
        needs_no_cuda=True,
    ),
    CommandCase(
        "training.device cuda without CUDA fails before reading data",
        train_args("--set", "training.device=cuda"),
        ("Error: --set: training.device: CUDA is not available on this machine",),
        setup=remove("data"),
        needs_no_cuda=True,
    ),
]


@pytest.mark.parametrize("case", [case.param() for case in COMMAND_LINE_CASES])
def test_command_line_mistakes_are_one_line_exit_2(
    cli: Cli, project: Project, case: CommandCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Usage mistakes name the command or option at fault, and never create a run."""
    monkeypatch.chdir(project.root)  # a run misplaced by a bad value lands here, not in the repo
    if case.setup is not None:
        case.setup(project)
    files = paths_under(project.root)
    result = cli(*case.argv(project))
    assert_rejected(result, case.expected, 1, project)
    assert runs_empty(project)
    assert paths_under(project.root) == files


def test_output_off_a_terminal_is_plain_text_with_the_same_exit_codes(
    cli: Cli, project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In CI or a pipe, even with a colour-capable TERM, no ANSI codes and the usual exit codes."""
    for name in ("FORCE_COLOR", "CLICOLOR_FORCE", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "200")
    good = cli("train", project.config, "--runs-dir", project.runs, "--set", "training.epochs=1")
    assert good.code == 0, good.err
    assert "\x1b" not in good.out + good.err
    assert "│" in good.out  # the progress and metrics tables were printed, as text
    project.edit_config("activation: relu", "activation: rleu")
    expected = (
        f"Error: {project.config}:11: model.layers.0.activation: unknown activation 'rleu'; "
        "did you mean 'relu'? expected one of: elu, gelu, leaky_relu, linear, relu, selu, "
        "sigmoid, silu, softmax, tanh\n"
    )
    bad = cli("check", project.config)
    assert (bad.code, bad.out, bad.err) == (2, "", expected)
    piped = subprocess.run(  # the console script, its stdout and stderr real pipes
        [sys.executable, "-m", "mlpkit", "check", str(project.config)],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        check=False,
    )
    assert (piped.returncode, piped.stdout, piped.stderr) == (2, "", expected)
