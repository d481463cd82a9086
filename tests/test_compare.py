"""mlpkit compare: runs side by side, the best value marked, the config fields that differ."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from conftest import Cli, Project
from rich.console import Console
from test_startup import probe

from mlpkit.config.load import differences
from mlpkit.report import compare


def rendered(table: object, width: int = 100, styles: bool = False) -> str:
    """The table as a console of `width` columns prints it, each line's trailing blanks cut."""
    console = Console(width=width, record=True, markup=False, file=io.StringIO())
    console.print(table)
    return "".join(line.rstrip() + "\n" for line in console.export_text(styles=styles).splitlines())


# --- units --------------------------------------------------------------------------------


def test_differences_names_dotted_paths_and_layer_fields() -> None:
    old = {
        "seed": 0,
        "data": {"features": ["a", "b"], "split": {"train": 0.8}},
        "model": {"layers": [{"units": 8, "activation": "relu"}, {"units": 1}]},
    }
    new = {
        "seed": 1,
        "data": {"features": ["a", "c"], "split": {"train": 0.8}, "extra": True},
        "model": {"layers": [{"units": 16, "activation": "relu"}, {"units": 1}]},
    }
    assert differences(new, old) == ["seed", "data.features", "data.extra", "model.layers.0.units"]
    three_layers = {"layers": [{"units": 8}, {"units": 8}, {"units": 1}]}
    assert differences(three_layers, {"layers": [{"units": 8}, {"units": 1}]}) == ["layers"]
    assert differences(old, old) == []


def test_config_differences_show_a_value_per_run_field_by_field() -> None:
    layers = [{"type": "dense", "units": 8}, {"type": "dense", "units": 1}]
    first = {"seed": 0, "training": {"early_stopping": None}, "model": {"layers": layers}}
    second = {
        "seed": 0,
        "training": {"early_stopping": {"monitor": "val_loss", "patience": 5}},
        "model": {"layers": [{"type": "dense", "units": 16}, *layers]},
    }
    third = {**first, "seed": 2}
    assert compare.config_differences([first, second, third]) == {
        "training.early_stopping.monitor": ["-", "val_loss", "-"],
        "training.early_stopping.patience": ["-", "5", "-"],
        "model.layers.0.units": ["8", "16", "8"],
        "model.layers.1.units": ["1", "8", "1"],
        "model.layers.2.type": ["-", "dense", "-"],
        "model.layers.2.units": ["-", "1", "-"],
        "seed": ["0", "0", "2"],
    }
    assert compare.config_differences([first, first]) == {}


def test_best_of_follows_each_metrics_direction() -> None:
    assert compare.best_of("r2", [0.8, 0.9, None]) == {1}
    assert compare.best_of("mae", [2.0, 1.5, 1.5]) == {1, 2}  # a tie marks both
    assert compare.best_of("log_loss", [0.3, 0.2]) == {1}
    assert compare.best_of("accuracy", [0.9, None]) == set()  # nothing to compare with


COMPARISON = compare.Comparison(
    runs=[Path("runs/a/1"), Path("runs/a/2")],
    labels=["1", "2"],
    folder=Path("runs/a"),
    task="regression",
    metrics={"mae": [2.5, 2.25], "r2": [0.875, 0.5]},
    best={"mae": {1}, "r2": {0}},
    baselines={"mean r2": [-0.0125, 0.0], "linear_regression r2": [0.75, None]},
    config={"seed": ["0", "1"], "model.layers.0.units": ["8", "16"]},
    skipped=[],
)

EXPECTED = """\
  2 regression runs in runs/a (* best test value)
┏━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━┳━━━━━━━━━━┓
┃                            ┃        1 ┃        2 ┃
┡━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━╇━━━━━━━━━━┩
│ test metrics               │          │          │
│ mae                        │   2.5000 │ * 2.2500 │
│ r2                         │ * 0.8750 │   0.5000 │
├────────────────────────────┼──────────┼──────────┤
│ baselines (test)           │          │          │
│ mean r2                    │  -0.0125 │   0.0000 │
│ linear_regression r2       │   0.7500 │        - │
├────────────────────────────┼──────────┼──────────┤
│ config: fields that differ │          │          │
│ seed                       │        0 │        1 │
│ model.layers.0.units       │        8 │       16 │
└────────────────────────────┴──────────┴──────────┘
"""


def test_the_table_marks_the_best_with_a_star_and_bold() -> None:
    assert rendered(compare.render(COMPARISON)) == EXPECTED
    ansi = rendered(compare.render(COMPARISON), styles=True)
    assert "\x1b[1m* 2.2500\x1b[0m" in ansi and "\x1b[1m* 0.8750\x1b[0m" in ansi
    assert ansi.count("\x1b[1m*") == 2  # only the best values are bold


def test_a_table_too_wide_numbers_the_runs_and_names_them_below() -> None:
    long = [f"mpg/20261121-1015{n:02d}-1a2b3c" for n in range(2)]
    wide = compare.Comparison(**{**COMPARISON.__dict__, "labels": long})
    assert f"┃ {long[0]} ┃ {long[1]} ┃" in rendered(compare.render(wide, width=100))
    narrow = rendered(compare.render(wide, width=60), width=60).splitlines()
    assert narrow[2] == "┃                            ┃    run 1 ┃    run 2 ┃"
    assert narrow[-2:] == [f"run 1: {long[0]}", f"run 2: {long[1]}"]


# --- the command --------------------------------------------------------------------------


def test_compare_two_runs_end_to_end(cli: Cli, project: Project) -> None:
    first = project.train(cli)
    second = project.train(cli, "--set", "seed=1", "--set", "model.layers.0.units=4")
    result = cli("compare", first, second)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].strip() == f"2 regression runs in {first.parent} (* best test value)"
    assert lines[2].split("┃")[2:4] == [f" {first.name} ", f" {second.name} "]
    rows = {line.split("│")[1].strip(): line.split("│")[2:4] for line in lines if "│" in line}
    tests = [json.loads((run / "metrics.json").read_text())["test"] for run in (first, second)]
    for name in ("mae", "r2", "rmse"):
        values = [test[name] for test in tests]
        better = min(values) if name != "r2" else max(values)
        cells = [cell.strip() for cell in rows[name]]
        assert [c.removeprefix("* ") for c in cells] == [f"{v:.4f}" for v in values]
        assert [c.startswith("* ") for c in cells] == [v == better for v in values]
    baseline = json.loads((first / "metrics.json").read_text())["baselines"]["mean"]["r2"]
    assert rows["mean r2"][0].strip() == f"{baseline:.4f}"
    assert "linear_regression mae" in rows
    assert [c.strip() for c in rows["seed"]] == ["0", "1"]
    assert [c.strip() for c in rows["model.layers.0.units"]] == ["8", "4"]
    assert [key for key in rows if "." in key or key == "seed"][-2:] == [
        "seed",
        "model.layers.0.units",
    ]


def test_a_folder_stands_for_its_complete_runs(cli: Cli, project: Project) -> None:
    first, second = project.train(cli), project.train(cli)
    broken = project.train(cli)
    info = json.loads((broken / "run.json").read_text())
    (broken / "run.json").write_text(json.dumps(info | {"status": "failed"}))
    result = cli("compare", project.runs)
    assert result.code == 0
    assert result.err == f"Warning: skipped {broken}: the run is failed, not complete\n"
    assert "config: the same in every run" in result.out  # same config, same seed
    title, _, header = result.out.splitlines()[:3]
    assert title.strip() == f"2 regression runs in {project.runs / 'tiny'} (* best test value)"
    # two runs started in one second may list either way round: their names say nothing more
    assert sorted(header.split("┃")[2:4]) == sorted([f" {first.name} ", f" {second.name} "])
    assert broken.name not in result.out


def test_refusals_are_one_line(cli: Cli, project: Project) -> None:
    run = project.train(cli)
    missing = project.root / "nope"
    assert cli("compare", run, missing).err == (
        f"Error: {missing}: does not exist; expected a run directory\n"
    )
    empty = project.root / "empty"
    empty.mkdir()
    assert cli("compare", empty).err == (
        f"Error: {empty}: no runs under it; pass run directories that mlpkit train printed\n"
    )
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(info | {"status": "interrupted"}))
    result = cli("compare", run)
    assert result.code == 2
    assert result.err == (
        f"Error: {run}: the run is interrupted, not complete; "
        f"resume it: mlpkit train --resume {run}\n"
    )


def test_runs_of_different_tasks_are_refused(cli: Cli, project: Project) -> None:
    regression = project.train(cli)
    classes = project.train(
        cli,
        "--set",
        "data.target=color",
        "--set",
        "data.features=[a, b, y]",
        "--set",
        "data.categorical=[]",
        "--set",
        "training.loss=cross_entropy",
        "--set",
        "model.layers.1={type: dense, units: 3, activation: softmax}",
    )
    result = cli("compare", regression, classes)
    assert result.code == 2
    assert result.err == (
        f"Error: {classes}: is a multiclass run, and {regression} a regression run: their "
        "metrics do not compare; compare runs of one task\n"
    )


@pytest.mark.parametrize("command", ["compare", "init"])
def test_help_imports_neither_torch_nor_pandas(command: str) -> None:
    code, imported, out, err = probe(command, "--help")
    assert (code, err, imported) == (0, "", [])
    assert f"Example: mlpkit {command}" in out


def test_runs_of_different_targets_are_refused_and_a_repeat_shown_once(
    cli: Cli, project: Project
) -> None:
    run = project.train(cli)
    other = project.train(cli, "--set", "data.target=b", "--set", "data.features=[a, y, color]")
    result = cli("compare", run, other)
    assert (result.code, result.err) == (
        2,
        f"Error: {other}: predicts 'b', and {run} predicts 'y': their metrics do not compare; "
        "compare runs of one target\n",
    )
    twice = cli("compare", run, run)
    assert twice.code == 0
    assert twice.err == f"Warning: {run} is given twice; shown once\n"
    assert "1 regression run" in twice.out
