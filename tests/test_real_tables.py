"""Real tables with missing cells, from `mlpkit init` or a shipped config to a model that beats
or matches the linear baselines: Palmer penguins (text columns, 19 empty cells) and auto-mpg
as it comes (406 cars, mpg or horsepower missing in 14)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, Cli

PENGUINS = REPO / "data" / "penguins.csv"


@pytest.mark.slow
def test_penguins_from_init_reach_097_accuracy_over_five_seeds(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "penguins.yaml"
    assert cli("init", PENGUINS, "--target", "species", "--out", out).code == 0
    result = cli("train", out, "--seeds", "5", "--runs-dir", tmp_path / "runs", "-q")
    assert result.code == 0, result.err
    summary = json.loads(Path(result.last_line).read_text())
    accuracy = summary["test"]["accuracy"]
    assert len(accuracy["values"]) == 5 and accuracy["mean"] >= 0.97  # 0.978 measured
    # eval and predict give the run's own numbers from its directory and the raw file
    run = Path(summary["runs"][0])
    metrics = json.loads((run / "metrics.json").read_text())
    info = json.loads((run / "run.json").read_text())["data"]
    assert info["dropped_rows"] == 0 and sum(info["filled_cells"].values()) == 19
    evaluated = cli("eval", run)
    assert evaluated.code == 0, evaluated.err
    accuracy_row = next(line for line in evaluated.out.splitlines() if "│ accuracy " in line)
    assert f"{metrics['test']['accuracy']:.6g}" in accuracy_row and "│ yes" in accuracy_row
    predicted = cli("predict", run, "--data", PENGUINS)
    assert predicted.code == 0, predicted.err
    rows = pd.read_csv(io.StringIO(predicted.out))
    assert len(rows) == 344  # a row without a target or with holes still gets a prediction
    test_lines = pd.read_csv(run / "predictions.csv")["line"]
    table = pd.read_csv(PENGUINS, keep_default_na=False)
    table["line"] = np.arange(2, len(table) + 2)
    scored = rows.merge(table, on="line").set_index("line").loc[test_lines]
    hits = (scored["prediction"] == scored["species"]).mean()
    assert hits == pytest.approx(metrics["test"]["accuracy"])


@pytest.mark.slow
def test_auto_mpg_with_its_missing_cells_beats_the_linear_baseline(
    cli: Cli, tmp_path: Path
) -> None:
    config = REPO / "configs" / "mpg-missing.yaml"
    result = cli("train", config, "--runs-dir", tmp_path / "runs")
    assert result.code == 0, result.err
    assert (
        "398 rows of mpg-missing.csv (8 dropped for a missing target; 6 missing cells filled in "
        "1 column)" in result.out
    )
    run = Path(result.last_line)
    info = json.loads((run / "run.json").read_text())["data"]
    assert (info["dropped_rows"], info["filled_cells"]) == (8, {"horsepower": 6})
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["r2"] >= 0.83  # seed 1: 0.885; seeds 0-4 0.835-0.910
    assert metrics["test"]["r2"] > metrics["baselines"]["linear_regression"]["r2"]


@pytest.mark.slow
def test_auto_mpg_with_missing_cells_from_init_beats_the_linear_baseline_over_five_seeds(
    cli: Cli, tmp_path: Path
) -> None:
    out = tmp_path / "mpg.yaml"
    table = REPO / "data" / "mpg-missing.csv"
    assert cli("init", table, "--target", "mpg", "--out", out).code == 0
    assert "      horsepower: median" in out.read_text()
    result = cli("train", out, "--seeds", "5", "--runs-dir", tmp_path / "runs", "-q")
    assert result.code == 0, result.err
    summary = json.loads(Path(result.last_line).read_text())
    r2 = summary["test"]["r2"]["mean"]
    assert r2 >= 0.85  # 0.887 measured (bench/init_defaults.py)
    assert r2 > summary["baselines"]["linear_regression"]["r2"]["mean"]
