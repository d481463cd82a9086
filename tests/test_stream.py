"""Streamed files (data.stream: true): the scan, the hash split, samples, workers, Parquet, errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import Cli, Project, tiny_csv

from mlpkit.config.load import load_config
from mlpkit.config.schema import DataConfig, SplitConfig
from mlpkit.data.filestream import assign_parts, scan
from mlpkit.data.preprocessing import NumericFeature, TargetScale, TrainingRows, fit_preprocessor
from mlpkit.data.table import read_table
from mlpkit.flows.evaluate import evaluate_run

STREAM = "  path: data.csv\n  stream: true\n  chunk_rows: 40\n  workers: 0\n"


@pytest.fixture
def streamed(project: Project) -> Project:
    project.data.write_text(tiny_csv(rows=400))
    project.edit_config("  path: data.csv\n", STREAM)
    return project


def test_the_part_of_a_row_depends_on_its_values_and_the_seed_only() -> None:
    frame = pd.DataFrame({"a": np.arange(20000) / 7, "c": ["x", "y"] * 10000})
    split = SplitConfig(train=0.7, val=0.1, test=0.2)
    part, priority = assign_parts(frame, split, seed=3)
    shuffled = frame.sample(frac=1, random_state=0)
    again, _ = assign_parts(shuffled.iloc[:500], split, seed=3)  # another block, another order
    np.testing.assert_array_equal(again, part[shuffled.index[:500]])
    assert np.bincount(part) / len(part) == pytest.approx([0.7, 0.1, 0.2], abs=0.01)
    other, _ = assign_parts(frame, split, seed=4)
    assert (other != part).mean() > 0.3
    assert len(np.unique(priority)) == len(frame)


def test_training_rows_in_chunks_give_the_one_pass_statistics() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "a": rng.normal(5, 3, 1000),
            "c": rng.choice(["p", "q", "r"], 1000),
            "y": rng.normal(size=1000),
        }
    )
    data = DataConfig(
        path="x.csv", target="y", features=["a", "c"], categorical=["c"], scale_target=True
    )
    whole = fit_preprocessor(frame, data)
    chunked = TrainingRows(data, classification=False)
    for start in range(0, 1000, 170):
        chunked.add(frame.iloc[start : start + 170])
    pieces = chunked.preprocessor()
    numeric, expected = pieces.features[0], whole.features[0]
    assert isinstance(numeric, NumericFeature) and isinstance(expected, NumericFeature)
    assert numeric.mean == pytest.approx(expected.mean, rel=1e-12)
    assert numeric.std == pytest.approx(expected.std, rel=1e-12)
    assert pieces.features[1] == whole.features[1]
    assert isinstance(pieces.target, TargetScale) and isinstance(whole.target, TargetScale)
    assert pieces.target.std == pytest.approx(whole.target.std, rel=1e-12)
    assert chunked.target_range == (frame.y.min(), frame.y.max())


def test_scan_counts_every_row_and_keeps_samples_the_block_size_does_not_change(
    streamed: Project,
) -> None:
    loaded = load_config(streamed.config, ["data.eval_rows=15"])
    found = scan(loaded)
    assert found.rows == 400 and len(found.blocks) == 10
    assert found.counts["train"] > 200 and found.counts["val"] > 40 and found.counts["test"] > 40
    assert [len(found.split.val), len(found.split.test)] == [15, 15]
    other = scan(load_config(streamed.config, ["data.eval_rows=15", "data.chunk_rows=7"]))
    assert other.counts == found.counts
    np.testing.assert_array_equal(other.table.lines, found.table.lines)
    whole = read_table(streamed.data, loaded.config.data)
    test_lines = found.table.lines[found.split.test]
    np.testing.assert_allclose(  # the sampled rows are the file's rows at those lines
        found.table.frame["a"].to_numpy()[found.split.test],
        whole.frame["a"].to_numpy()[np.searchsorted(whole.lines, test_lines)],
    )
    assert found.table.sha256 == whole.sha256


def test_streamed_training_writes_a_run_eval_reproduces(cli: Cli, streamed: Project) -> None:
    result = cli("train", streamed.config, "--runs-dir", streamed.runs)
    assert result.code == 0, result.err
    assert "(streamed; val and test scored on up to 10000 rows)" in result.out
    run = Path(result.last_line)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["r2"] > 0.5  # 3 epochs of the tiny regression
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["data"]["rows"] == 400
    predictions = pd.read_csv(run / "predictions.csv")
    assert len(predictions) == metrics_rows(streamed) and predictions.columns[0] == "line"
    assert evaluate_run(run).scores == metrics["test"]  # the same test sample, exactly
    streamed.data.write_text(streamed.data.read_text() + "1,2,red,3\n")
    changed = cli("eval", run)
    assert changed.code == 2 and "the data file changed since the run was trained" in changed.err


def metrics_rows(project: Project) -> int:
    return scan(load_config(project.config)).counts["test"]


def test_worker_count_does_not_change_the_weights(cli: Cli, streamed: Project) -> None:
    weights = []
    for workers in ("0", "2"):
        run = streamed.train(cli, "--set", f"data.workers={workers}")
        weights.append((run / "model.safetensors").read_bytes())
    assert weights[0] == weights[1]


def test_parquet_in_memory_matches_the_csv_and_streams(cli: Cli, project: Project) -> None:
    pd.read_csv(project.data).to_parquet(project.root / "data.parquet", row_group_size=16)
    csv_run = project.train(cli)
    project.edit_config("path: data.csv", "path: data.parquet")
    parquet_run = project.train(cli)
    first, second = (
        json.loads((run / "metrics.json").read_text()) for run in (csv_run, parquet_run)
    )
    assert first["test"] == pytest.approx(second["test"], rel=1e-5)
    project.edit_config("path: data.parquet\n", "path: data.parquet\n  stream: true\n")
    streamed = project.train(cli)
    assert pd.read_csv(streamed / "predictions.csv").columns[0] == "row"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda lines: lines.__setitem__(301, "abc,1,red,2"),
            "data.csv: column 'a', line 302: non-numeric value 'abc'",
        ),
        (
            lambda lines: lines.__setitem__(120, lines[120] + ",9"),
            "data.csv: line 121: has 5 fields, expected 4 like the header",
        ),
        (
            lambda lines: lines[200:200].extend(["", "\r"]) or lines.__setitem__(301, "NA,1,red,2"),
            "column 'a', line 302: missing value",
        ),
        (
            lambda lines: lines.__setitem__(0, "a,b,colour,y"),
            "column 'color': column missing from the header; did you mean 'colour'?",
        ),
        (lambda lines: lines.__setitem__(350, "1,2,,3"), "column 'color', line 351: missing value"),
    ],
)
def test_a_bad_cell_in_any_block_names_its_line(
    cli: Cli, streamed: Project, edit: Callable[[list[str]], object], expected: str
) -> None:
    lines = streamed.data.read_text().split("\n")
    edit(lines)
    streamed.data.write_text("\n".join(lines))
    result = cli("train", streamed.config, "--runs-dir", streamed.runs)
    assert result.code == 2 and expected in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not streamed.runs.exists()


def test_a_bad_parquet_cell_names_its_row(cli: Cli, project: Project) -> None:
    frame = pd.read_csv(project.data)
    frame.loc[37, "b"] = np.nan
    frame.to_parquet(project.root / "data.parquet", row_group_size=10)
    project.edit_config("  path: data.csv\n", "  path: data.parquet\n  stream: true\n")
    result = cli("check", project.config)
    assert result.code == 2
    assert "data.parquet: column 'b', row 38: missing value" in result.err


def test_a_file_that_is_not_parquet_is_one_line(cli: Cli, project: Project) -> None:
    (project.root / "data.parquet").write_text("a,b\n1,2\n")
    project.edit_config("path: data.csv", "path: data.parquet")
    result = cli("check", project.config)
    assert result.code == 2 and "data.path: cannot read it as Parquet" in result.err, result.err


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.workers=2", "data.workers: only applies to a streamed file"),
        (
            "data.eval_rows=5",
            "data.eval_rows: only applies to a streamed file or a synthetic source",
        ),
    ],
)
def test_stream_settings_need_a_stream(
    cli: Cli, project: Project, override: str, expected: str
) -> None:
    result = cli("check", project.config, "--set", override)
    assert result.code == 2 and expected in result.err, result.err


def test_padded_categories_read_the_same_streamed_or_whole(streamed: Project) -> None:
    lines = streamed.data.read_text().split("\n")
    lines[1:] = [line.replace(",red,", ", red ,") for line in lines[1:]]
    streamed.data.write_text("\n".join(lines))
    found = scan(load_config(streamed.config))
    whole = read_table(streamed.data, load_config(streamed.config).config.data)
    assert set(found.table.frame["color"]) == set(whole.frame["color"]) == {"red", "green", "blue"}
