"""data.missing: missing cells filled from the training rows, the same way by train, eval,
predict and both exports; rows missing the target dropped and counted; no setting, one line
with the fix."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import onnxruntime
import pandas as pd
import pytest
import torch
from conftest import Cli, Project

from mlpkit.config.schema import DataConfig, MissingConfig
from mlpkit.data import fitting
from mlpkit.data.fitting import fit_preprocessor
from mlpkit.data.preprocessing import CategoricalFeature, NumericFeature
from mlpkit.errors import DataError
from mlpkit.flows import export


def holey_csv(rows: int = 80, seed: int = 0) -> str:
    """The tiny table with holes: a few empty and NA cells in a, b and color, and two rows
    whose target is missing (lines 5 and 9)."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=rows), rng.uniform(0, 10, size=rows)
    colors = rng.choice(["red", "green", "blue"], size=rows)
    y = 3 * a - 0.5 * b + (colors == "red") * 2 + rng.normal(scale=0.1, size=rows)
    lines = ["a,b,color,y"]
    for i in range(rows):
        cells = [f"{a[i]:.4f}", f"{b[i]:.4f}", str(colors[i]), f"{y[i]:.4f}"]
        if i % 7 == 1:
            cells[0] = ""
        if i % 11 == 2:
            cells[1] = "NA"
        if i % 9 == 4:
            cells[2] = " na " if i % 2 else ""
        if i in (3, 7):
            cells[3] = "NA"
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


@pytest.fixture
def holey(project: Project) -> Project:
    project.data.write_text(holey_csv())
    return project


def _with_missing(project: Project, section: str) -> None:
    project.edit_config("  categorical: [color]", f"  categorical: [color]\n  missing: {section}")


def test_without_a_setting_one_line_names_the_columns_and_the_line_to_add(
    cli: Cli, holey: Project
) -> None:
    result = cli("train", holey.config, "--runs-dir", holey.runs)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"{holey.data}: missing values in 4 columns: 'a' (" in lines[0]
    assert "'b' (" in lines[0] and "'y' (2 from line 5)" in lines[0]
    assert 'add "missing: median" under data' in lines[0]
    assert not holey.runs.exists()
    # until data.missing is set, only an empty cell is missing in a categorical column ("na"
    # may be a category): color's count is its empty cells alone
    empty = sum(1 for i in range(80) if i % 9 == 4 and i % 2 == 0 and i not in (3, 7))
    assert f"'color' ({empty} from line 6)" in lines[0]


def test_median_fills_trains_and_reports_dropped_rows_and_filled_cells(
    cli: Cli, holey: Project
) -> None:
    _with_missing(holey, "median")
    result = cli("train", holey.config, "--runs-dir", holey.runs)
    assert result.code == 0, result.err
    first = result.out.splitlines()[0]
    assert "78 rows of data.csv (2 dropped for a missing target;" in first
    assert "missing cells filled in 3 columns)" in first
    run = Path(result.out.strip().splitlines()[-1])
    data = json.loads((run / "run.json").read_text())["data"]
    assert data["rows"] == 78 and data["dropped_rows"] == 2
    table = pd.read_csv(io.StringIO(holey_csv()), dtype=str, keep_default_na=False)
    table = table[table["y"] != "NA"]
    assert data["filled_cells"] == {
        "a": int((table["a"] == "").sum()),
        "b": int((table["b"] == "NA").sum()),
        "color": int(table["color"].str.strip().isin(["", "na"]).sum()),
    }
    kept = json.loads((run / "preprocessing.json").read_text())["features"]
    assert [f["fill"] is not None for f in kept] == [True, True, True]
    assert kept[2]["fill"] in ("red", "green", "blue")  # most_frequent for the categorical
    with (run / "predictions.csv").open() as file:
        lines = {row["line"] for row in csv.DictReader(file)}
    assert not lines & {"5", "9"}  # dropped rows are nowhere


def test_statistics_come_from_the_training_rows_only() -> None:
    data = DataConfig(
        target="y", features=["a", "c"], categorical=["c"], missing=MissingConfig(strategy="median")
    )
    train = pd.DataFrame(
        {"a": [1.0, np.nan, 3.0, 10.0], "c": ["x", "", "y", "y"], "y": [0.0, 1, 2, 3]}
    )
    fitted = fit_preprocessor(train, data)
    a, c = fitted.features
    assert isinstance(a, NumericFeature) and isinstance(c, CategoricalFeature)
    assert a.fill == 3.0 and c.fill == "y"
    # standardized as the filled column: [1, 3, 3, 10]
    assert a.mean == pytest.approx(np.mean([1, 3, 3, 10]))
    assert a.std == pytest.approx(np.std([1, 3, 3, 10]))
    # rows seen later (validation, predict) are filled with the training statistics
    later = pd.DataFrame({"a": [np.nan, 100.0], "c": ["", "x"], "y": [0.0, 0.0]})
    x = fitted.transform(later)
    assert x[0, 0] == pytest.approx((3 - a.mean) / a.std)
    assert list(x[0, 1:]) == [0.0, 1.0]  # filled with "y"


@pytest.mark.parametrize(
    ("section", "fill_a", "fill_c"),
    [
        ("mean", 14 / 4, "y"),
        ("most_frequent", 2.0, "y"),  # ties: the smallest (2 and 5 both twice)
        ("{strategy: constant, value: -1}", -1.0, "-1"),
        ("{strategy: median, columns: {c: {constant: other}}}", 3.5, "other"),
    ],
)
def test_each_strategy_fills_as_documented(section: str, fill_a: float, fill_c: str) -> None:
    import yaml

    missing = yaml.safe_load(f"missing: {section}")["missing"]
    data = DataConfig(target="y", features=["a", "c"], categorical=["c"], missing=missing)
    train = pd.DataFrame(
        {"a": [2.0, 5.0, np.nan, 2.0, 5.0], "c": ["y", "y", "", "z", ""], "y": [0.0] * 5}
    )
    a, c = fit_preprocessor(train, data).features
    assert a.fill == pytest.approx(fill_a)
    assert c.fill == fill_c
    assert isinstance(c, CategoricalFeature) and fill_c in c.categories


def test_indicator_adds_an_is_missing_input_after_its_column() -> None:
    data = DataConfig(
        target="y",
        features=["a", "c"],
        categorical=["c"],
        missing=MissingConfig(strategy="median", indicator=True),
    )
    train = pd.DataFrame({"a": [1.0, np.nan, 3.0], "c": ["x", "y", ""], "y": [0.0] * 3})
    fitted = fit_preprocessor(train, data)
    assert fitted.input_names == ["a", "a:missing", "c=x", "c=y", "c:missing"]
    assert fitted.positions(["c"]) == [2, 3, 4]
    x = fitted.transform(train)
    assert list(x[:, 1]) == [0, 1, 0] and list(x[:, 4]) == [0, 0, 1]


def test_a_column_with_no_value_in_training_cannot_take_a_median() -> None:
    data = DataConfig(target="y", features=["a"], missing=MissingConfig(strategy="median"))
    train = pd.DataFrame({"a": [np.nan, np.nan], "y": [0.0, 1.0]})
    with pytest.raises(DataError, match="column 'a': no value in the 2 training rows"):
        fit_preprocessor(train, data)


def test_the_streamed_median_holds_a_bounded_uniform_sample(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fitting._Reservoir, "CAPACITY", 1000)
    sample = fitting._Reservoir()
    values = np.arange(100_000, dtype=np.float64)
    for chunk in np.array_split(values, 37):
        sample.add(chunk)
    assert len(sample.held) == 1000 and sample.seen == 100_000
    assert abs(sample.median() - 50_000) < 5_000  # a uniform sample's median


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            "{columns: {color: mean}}",
            "data.missing.columns.color: mean cannot fill the categorical column 'color'",
        ),
        ("{strategy: constant}", "data.missing.strategy: constant needs a value"),
        (
            "{strategy: constant, value: none}",
            "data.missing.value: 'none' is text but fills the numeric column 'a'",
        ),
        ("{columns: {colour: median}}", "'colour' is not in data.features; did you mean 'color'"),
        ("{strategy: median, value: 3}", "data.missing.value: is used only by constant"),
        ("medain", "data.missing"),
    ],
)
def test_config_mistakes_are_one_line_at_the_key(
    cli: Cli, holey: Project, section: str, expected: str
) -> None:
    _with_missing(holey, section)
    result = cli("check", holey.config)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, lines
    assert expected in lines[0]


def test_target_error_keeps_rows_missing_the_target_an_error(cli: Cli, holey: Project) -> None:
    _with_missing(holey, "{strategy: median, target: error}")
    result = cli("check", holey.config)
    assert result.code == 2
    assert "column 'y', line 5: missing value (2 cells)" in result.err
    assert "data.missing.target: drop" in result.err


def test_a_file_whose_every_target_is_missing_is_refused(cli: Cli, holey: Project) -> None:
    holey.data.write_text("a,b,color,y\n1,2,red,\n3,4,blue,NA\n")
    _with_missing(holey, "median")
    result = cli("check", holey.config)
    assert result.code == 2
    assert "column 'y': all 2 rows miss the target, so none is left" in result.err


def test_a_few_rows_left_after_dropping_is_exit_2_not_a_crash(cli: Cli, holey: Project) -> None:
    rows = ["a,b,color,y"] + [f"{i},1,red,{'' if i > 3 else i}" for i in range(30)]
    holey.data.write_text("\n".join(rows) + "\n")
    _with_missing(holey, "median")
    result = cli("train", holey.config, "--runs-dir", holey.runs)
    assert result.code == 2
    assert "training.batch_size: 8 is larger than the 2 training rows" in result.err


def test_streamed_files_fill_missing_cells_too(cli: Cli, holey: Project) -> None:
    _with_missing(holey, "median")
    holey.edit_config("  path: data.csv", "  path: data.csv\n  stream: true\n  chunk_rows: 16")
    run = holey.train(cli)
    info = json.loads((run / "run.json").read_text())["data"]
    assert info["dropped_rows"] == 2 and sum(info["filled_cells"].values()) > 0
    features = json.loads((run / "preprocessing.json").read_text())["features"]
    assert all(feature["fill"] is not None for feature in features)
    with (run / "predictions.csv").open() as file:
        assert all(np.isfinite(float(row["prediction"])) for row in csv.DictReader(file))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_predict_eval_onnx_and_torchscript_agree_on_rows_with_missing_cells(
    cli: Cli, holey: Project, tmp_path: Path
) -> None:
    _with_missing(holey, "{strategy: mean, indicator: true, columns: {color: {constant: none}}}")
    holey.edit_config("{type: dense, units: 8", "{type: dense, units: 16")
    run = holey.train(cli)
    assert cli("eval", run).code == 0
    # rows with every kind of hole, written as a user's file would have them
    rows = tmp_path / "rows.csv"
    rows.write_text(
        "a,b,color\n,NA,red\n0.5,,NA\n-1,3, na \nnan,null,\n1.5,2.5,purple\n0.1,0.2,blue\n"
    )
    predicted = cli("predict", run, "--data", rows)
    assert predicted.code == 0, predicted.err
    want = pd.read_csv(io.StringIO(predicted.out))["prediction"].to_numpy()
    assert len(want) == 6 and np.isfinite(want).all()
    numbers = {
        "a": np.asarray([np.nan, 0.5, -1, np.nan, 1.5, 0.1]),
        "b": np.asarray([np.nan, np.nan, 3, np.nan, 2.5, 0.2]),
    }
    texts = np.asarray(["red", "NA", " na ", "", "purple", "blue"], dtype=object)
    done = {fmt: export.export_run(run, fmt).path for fmt in ("onnx", "torchscript")}
    session = onnxruntime.InferenceSession(done["onnx"], providers=["CPUExecutionProvider"])
    onnx_got = session.run(None, {**numbers, "color": texts})[0]
    assert np.abs(onnx_got - want).max() <= 1e-5
    loaded = torch.jit.load(done["torchscript"])  # type: ignore[no-untyped-call]
    script_got = loaded(
        {k: torch.from_numpy(v) for k, v in numbers.items()}, {"color": list(texts)}
    ).numpy()
    assert np.abs(script_got - want).max() <= 1e-5
    # a missing cell differs from any value: the indicator moved the prediction of row 1
    assert len(set(np.round(want, 6))) == 6
