"""mlpkit train --seeds N: N ordinary runs, the spread of their test metrics, a summary file."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from conftest import Cli, Project
from rich.console import Console

from mlpkit.flows import seeds


def summary_of(path: Path) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(path.read_text())
    return found


def test_seeds_trains_one_run_per_seed_and_summarizes(cli: Cli, project: Project) -> None:
    result = cli("train", project.config, "--runs-dir", project.runs, "--seeds", "3")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    summary_path = Path(lines[-1])
    assert summary_path.parent == project.runs / "tiny"
    assert summary_path.name.startswith("seeds-") and summary_path.suffix == ".json"
    summary = summary_of(summary_path)
    runs = [Path(run) for run in summary["runs"]]
    assert summary["seeds"] == [0, 1, 2] and summary["std"] == "sample standard deviation (ddof=1)"
    assert sorted([*runs, summary_path]) == project.run_dirs()  # what it made, nothing else

    assert lines[0].startswith("tiny: 50 rows of data.csv -> 30 train / 10 val / 10 test")
    for seed, run, line in zip([0, 1, 2], runs, lines[1:4], strict=True):
        assert line.startswith(f"seed {seed} ({seed + 1}/3): test r2 ") and line.endswith(str(run))
        assert json.loads((run / "run.json").read_text())["status"] == "complete"
        assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == seed

    tests = [json.loads((run / "metrics.json").read_text())["test"] for run in runs]
    assert set(summary["test"]) == set(tests[0])
    for name, found in summary["test"].items():
        values = np.array([test[name] for test in tests])
        assert found["values"] == values.tolist()
        assert found["mean"] == np.mean(values)
        assert found["std"] == np.std(values, ddof=1)
    linear = [
        json.loads((run / "metrics.json").read_text())["baselines"]["linear_regression"]["r2"]
        for run in runs
    ]
    assert summary["baselines"]["linear_regression"]["r2"]["values"] == linear

    table = "\n".join(lines[4:-1])
    assert "test metrics over 3 seeds (std: sample, ddof=1)" in table
    r2 = summary["test"]["r2"]
    row = next(line for line in table.splitlines() if line.startswith("│ r2 "))
    cells = [cell.strip() for cell in row.split("│")[2:-1]]
    assert cells == [f"{v:.4f}" for v in (r2["mean"], r2["std"], *r2["values"])]
    assert "linear_regression r2" in table


def test_quiet_prints_the_runs_and_the_summary_file(cli: Cli, project: Project) -> None:
    result = cli("train", project.config, "--runs-dir", project.runs, "--seeds", "2", "-q")
    assert result.code == 0
    lines = result.out.splitlines()
    summary = summary_of(Path(lines[-1]))
    assert lines[:-1] == summary["runs"] and len(lines) == 3


def test_seeds_start_from_the_config_seed_after_set(cli: Cli, project: Project) -> None:
    result = cli(
        "train", project.config, "--runs-dir", project.runs, "--seeds", "2", "-q",
        "--set", "seed=5", "--set", "training.epochs=1",
    )  # fmt: skip
    summary = summary_of(Path(result.last_line))
    assert summary["seeds"] == [5, 6]
    assert summary["overrides"] == ["seed=5", "training.epochs=1"]
    for run, seed in zip(summary["runs"], [5, 6], strict=True):
        config = yaml.safe_load((Path(run) / "config.yaml").read_text())
        assert (config["seed"], config["training"]["epochs"]) == (seed, 1)


def test_seeds_refusals_are_one_line_and_write_nothing(cli: Cli, project: Project) -> None:
    args = ("train", project.config, "--runs-dir", project.runs)
    result = cli(*args, "--seeds", "2", "--resume", project.root)
    assert (result.code, result.err) == (
        2,
        "Error: --seeds: cannot be combined with --resume; "
        "resume the run alone, then train the other seeds with --set seed=S\n",
    )
    result = cli(*args, "--seeds", "1")
    assert result.code == 2 and len(result.err.splitlines()) == 1
    assert "Invalid value for '--seeds'" in result.err
    project.edit_config("epochs: 3", "epoch: 3")
    result = cli(*args, "--seeds", "2")
    assert result.code == 2 and "training.epoch: unknown key" in result.err
    assert not project.runs.exists()


def test_spread_is_numpys_mean_and_sample_std() -> None:
    values = [0.81, 0.86, 0.9, 0.84]
    found = seeds.spread(values)
    assert found.mean == np.mean(values) and found.std == np.std(values, ddof=1)
    assert found.values == values


def test_the_table_shows_mean_std_and_each_seed() -> None:
    summary = seeds.SeedsSummary(
        config=Path("c.yaml"),
        overrides=[],
        seeds=[1, 2],
        runs=[Path("runs/a/1"), Path("runs/a/2")],
        test={"mae": seeds.spread([2.0, 2.5]), "r2": seeds.spread([0.875, 0.8])},
        baselines={"mean": {"r2": seeds.spread([-0.01, -0.03])}},
    )
    console = Console(width=100, record=True, markup=False, file=io.StringIO())
    console.print(seeds.render(summary))
    text = "".join(line.rstrip() + "\n" for line in console.export_text().splitlines())
    assert text == (
        "  test metrics over 2 seeds (std: sample, ddof=1)\n"
        "┏━━━━━━━━━━━┳━━━━━━━━━┳━━━━━━━━┳━━━━━━━━━┳━━━━━━━━━┓\n"
        "┃ metric    ┃    mean ┃    std ┃  seed 1 ┃  seed 2 ┃\n"
        "┡━━━━━━━━━━━╇━━━━━━━━━╇━━━━━━━━╇━━━━━━━━━╇━━━━━━━━━┩\n"
        "│ mae       │  2.2500 │ 0.3536 │  2.0000 │  2.5000 │\n"
        "│ r2        │  0.8375 │ 0.0530 │  0.8750 │  0.8000 │\n"
        "├───────────┼─────────┼────────┼─────────┼─────────┤\n"
        "│ baselines │         │        │         │         │\n"
        "│ mean r2   │ -0.0200 │ 0.0141 │ -0.0100 │ -0.0300 │\n"
        "└───────────┴─────────┴────────┴─────────┴─────────┘\n"
    )
