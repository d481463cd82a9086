"""Streamed files (data.stream: true): the scan, the hash split, samples, workers, Parquet, errors."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import Cli, Project, tiny_csv

from mlpkit.config.load import load_config
from mlpkit.config.schema import DataConfig, SplitConfig
from mlpkit.data.blocks import load_table
from mlpkit.data.filestream import assign_parts, scan
from mlpkit.data.fitting import TrainingRows, fit_preprocessor
from mlpkit.data.preprocessing import NumericFeature, TargetScale
from mlpkit.data.table import read_table
from mlpkit.errors import DataError
from mlpkit.flows.evaluate import evaluate_run
from mlpkit.reading import size_text

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


# --- hostile files: bounded lines, sized Parquet, no FIFO ----------------------------------


def test_a_streamed_line_is_read_with_a_bound(
    streamed: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mlpkit.data.blocks.LINE_LIMIT", 64)
    lines = streamed.data.read_text().split("\n")
    lines[150] = "1," * 40 + "1"  # 81 bytes: past the bound, cut there, never read whole
    streamed.data.write_text("\n".join(lines))
    with pytest.raises(DataError) as caught:
        scan(load_config(streamed.config))
    assert caught.value.render() == (
        f"Error: {streamed.data}: line 151: the line is longer than 64 bytes; is it a CSV file?"
    )


def test_a_header_is_read_with_a_bound(streamed: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mlpkit.data.table.LINE_LIMIT", 8)
    with pytest.raises(DataError) as caught:
        scan(load_config(streamed.config))
    assert caught.value.render() == (
        f"Error: {streamed.data}: line 1: the first line is longer than 8 bytes; is it a CSV file?"
    )


def test_a_fifo_is_never_streamed(streamed: Project) -> None:
    streamed.data.unlink()
    os.mkfifo(streamed.data)
    with pytest.raises(DataError, match=r"data\.path: is a FIFO \(named pipe\), not a regular"):
        scan(load_config(streamed.config))  # returns at once: the open never waits


@pytest.fixture
def parquet(project: Project) -> Project:
    """5 row groups of 1,000 rows; `sizes` gives its footer, largest group and total bytes."""
    project.data.write_text(tiny_csv(rows=5000))
    pd.read_csv(project.data).to_parquet(project.root / "data.parquet", row_group_size=1000)
    project.edit_config("path: data.csv", "path: data.parquet")
    return project


def sizes(path: Path) -> tuple[int, int, int]:
    import pyarrow.parquet as pq

    metadata = pq.ParquetFile(path).metadata
    groups = [metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups)]
    return metadata.serialized_size, max(groups), sum(groups)


def test_parquet_too_large_to_read_whole_points_at_streaming(
    parquet: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    footer, group, total = sizes(parquet.root / "data.parquet")
    available = 8 * max(footer, group) + 1  # a row group fits, the whole file does not
    assert available < 8 * total
    monkeypatch.setattr("mlpkit.reading.available_memory", lambda: available)
    loaded = load_config(parquet.config)
    with pytest.raises(DataError) as caught:
        load_table(loaded.data_path, loaded.config.data, loaded)
    assert caught.value.render() == (
        f"Error: {parquet.config}:4: data.path: holds {size_text(total)} uncompressed; reading "
        f"it whole takes about {size_text(8 * total)} of memory, more than the "
        f"{size_text(available)} available: {parquet.root / 'data.parquet'}; "
        "set data.stream: true to read it block by block"
    )
    streamed = load_config(parquet.config, ["data.stream=true", "data.workers=0"])
    assert scan(streamed).rows == 5000  # one row group at a time fits


def test_a_parquet_row_group_too_large_for_memory_is_refused(
    parquet: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    footer, group, _ = sizes(parquet.root / "data.parquet")
    available = 8 * footer + 1
    assert available < 8 * group
    monkeypatch.setattr("mlpkit.reading.available_memory", lambda: available)
    loaded = load_config(parquet.config, ["data.stream=true", "data.workers=0"])
    with pytest.raises(DataError) as caught:
        scan(loaded)
    assert caught.value.render() == (
        f"Error: {parquet.root / 'data.parquet'}: a row group holds {size_text(group)} "
        f"uncompressed; reading it takes about {size_text(8 * group)} of memory, more than the "
        f"{size_text(available)} available; write the file again with smaller row groups"
    )


def test_a_parquet_footer_claiming_gigabytes_is_refused_unread(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mlpkit.reading.available_memory", lambda: 8 * 1024**3)
    path = project.root / "data.parquet"
    with path.open("wb") as file:  # sparse: PAR1, a hole, then a footer of 4 GB and PAR1
        file.write(b"PAR1")
        file.seek(5 * 1024**3)
        file.write((4 * 1024**3 - 1).to_bytes(4, "little") + b"PAR1")
    project.edit_config("path: data.csv", "path: data.parquet")
    loaded = load_config(project.config)
    with pytest.raises(DataError) as caught:
        load_table(loaded.data_path, loaded.config.data, loaded)
    assert caught.value.render().startswith(
        f"Error: {project.config}:4: data.path: its metadata claims 4.0 GB; reading it whole "
        "takes about 32.0 GB of memory, more than the 8.0 GB available"
    )
