"""predictions.csv holds each test row's target as the file has it, whatever the scaling."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import Cli, Project


def awkward_targets(path: Path, rows: int = 60) -> dict[str, str]:
    """A table whose targets do not survive a float32 round trip through a scaler (191,
    0.1, 12345.678, 1e-07...): each line's target cell, as written."""
    rng = np.random.default_rng(5)
    a = rng.normal(size=rows)
    written = ["191", "0.1", "12345.678", "1e-07", "-3.3", "2.675", "100000.5", "7"]
    cells = {}
    lines = ["a,b,color,y"]
    for i in range(rows):
        target = written[i % len(written)] if i % 3 else f"{200 + 17.3 * a[i]:.6f}"
        lines.append(f"{a[i]:.4f},{i % 7},{'red' if i % 2 else 'blue'},{target}")
        cells[str(i + 2)] = target
    path.write_text("\n".join(lines) + "\n")
    return cells


@pytest.mark.parametrize("scale_target", ["true", "false"])
def test_the_target_column_is_the_file_value_and_the_prediction_is_unscaled(
    cli: Cli, project: Project, scale_target: str
) -> None:
    cells = awkward_targets(project.data)
    project.edit_config("target: y", f"target: y\n  scale_target: {scale_target}")
    run = project.train(cli)
    with (run / "predictions.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 12  # 0.2 of 60
    for row in rows:
        assert float(row["y"]) == float(cells[row["line"]]), row  # exactly, as read
    # predict gives the same predictions: the model's outputs in target units.
    predicted = cli("predict", run, "--data", project.data)
    assert predicted.code == 0, predicted.err
    by_line = {row["line"]: row for row in csv.DictReader(predicted.out.splitlines())}
    for row in rows:
        assert float(by_line[row["line"]]["prediction"]) == pytest.approx(
            float(row["prediction"]), rel=1e-6, abs=1e-6
        )


def test_eval_on_the_run_scores_as_metrics_json_with_a_scaled_target(
    cli: Cli, project: Project
) -> None:
    awkward_targets(project.data)
    project.edit_config("target: y", "target: y\n  scale_target: true")
    run = project.train(cli)
    result = cli("eval", run)
    assert result.code == 0, result.err
    assert "no" not in result.out.split()  # every metric the same as metrics.json
