"""data.dates: ISO date columns become numeric parts, the same in training, eval, predict and
both exports."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnxruntime
import pandas as pd
import pytest
import torch
from conftest import Cli, Project
from torch import nn

from mlpkit.config.schema import DATE_PARTS, DataConfig, MissingConfig
from mlpkit.data.dates import date_parts, parse_dates
from mlpkit.data.fitting import fit_preprocessor
from mlpkit.data.preprocessing import DateFeature
from mlpkit.flows import export


def dated_csv(rows: int = 120, seed: int = 0) -> str:
    """A table whose target depends on the weekend and the days since the start; a few date
    cells missing, one before 1970, times and a UTC offset among them."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2021-01-01")
    offsets = rng.integers(0, 730, size=rows)
    x = rng.normal(size=rows)
    lines = ["when,x,y"]
    for i in range(rows):
        when = start + pd.Timedelta(days=int(offsets[i]))
        y = 3.0 * (when.day_of_week >= 5) + 0.004 * offsets[i] + x[i]
        cell = when.strftime("%Y-%m-%d") if i % 3 else when.strftime("%Y-%m-%dT%H:%M:%S")
        if i % 17 == 5:
            cell = "" if i % 2 else "NA"
        if i == 8:
            cell = "1969-07-20T20:17:40+01:00"
        lines.append(f"{cell},{x[i]:.4f},{y:.4f}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def dated(project: Project) -> Project:
    project.data.write_text(dated_csv())
    config = project.config.read_text()
    config = config.replace("features: [a, b, color]", "features: [when, x]")
    config = config.replace("  categorical: [color]", "  dates: [when]\n  missing: median")
    project.config.write_text(config)
    return project


def test_parts_match_pandas_calendar_across_four_centuries() -> None:
    rng = np.random.default_rng(0)
    seconds = rng.uniform(-4e9, 8e9, size=20000).round()  # 1843 to 2223
    stamps = pd.to_datetime(seconds, unit="s", utc=True)
    parts = date_parts(seconds)
    assert set(parts) == set(DATE_PARTS)
    expected = {
        "year": stamps.year,
        "month": stamps.month,
        "day": stamps.day,
        "day_of_week": stamps.day_of_week,
        "day_of_year": stamps.day_of_year,
        "hour": stamps.hour,
        "minute": stamps.minute,
    }
    for part, values in expected.items():
        assert np.array_equal(parts[part], np.asarray(values, dtype=np.float64)), part
    assert np.allclose(parts["ordinal"], seconds / 86400)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_compiles_the_same_function_to_the_same_parts() -> None:
    class Parts(nn.Module):
        def forward(self, seconds: torch.Tensor) -> torch.Tensor:
            found = date_parts(seconds)
            return torch.stack([found["year"], found["day_of_year"], found["day_of_week"]])

    seconds = np.asarray([-86401.0, -1.0, 0.0, 951782400.0, 1709251199.0])
    scripted = torch.jit.script(Parts())
    got = scripted(torch.from_numpy(seconds)).numpy()
    parts = date_parts(seconds)
    assert np.array_equal(
        got, np.stack([parts["year"], parts["day_of_year"], parts["day_of_week"]])
    )


def test_iso_forms_parse_to_utc_and_others_are_bad() -> None:
    cells = pd.Series(
        ["1970-01-01", "1970-01-02T00:00:01", "1970-01-01 01:00", "1970-01-01T02:00:00+02:00",
         "1970-01-01T00:00:00Z", "", "2024-13-01", "01/02/2024", "yesterday", "2024-02-30",
         "2024-01-01T10:00:00+99:99", "0001-01-01", "9999-12-31T23:59:59"]
    )  # fmt: skip
    seconds, bad = parse_dates(cells)
    assert list(seconds[:5]) == [0.0, 86401.0, 3600.0, 0.0, 0.0]
    assert np.isnan(seconds[5]) and not bad[5]  # empty: missing, not bad
    assert bad[6:11].all() and np.isnan(seconds[6:11]).all()
    # years beyond pandas' nanoseconds (1677-2262) are dates too, with the calendar's parts
    assert not bad[11:].any()
    parts = date_parts(seconds[11:])
    assert list(parts["year"]) == [1, 9999] and list(parts["day_of_year"]) == [1, 365]


def test_parts_are_standardized_over_the_training_rows_after_filling() -> None:
    data = DataConfig(
        target="y",
        features=["d"],
        dates={"d": ["year", "month"]},
        missing=MissingConfig(strategy="median"),
    )
    seconds = parse_dates(pd.Series(["2020-01-15", "2022-03-15", "2021-02-15"]))[0]
    train = pd.DataFrame({"d": [*seconds, np.nan], "y": [0.0, 1.0, 2.0, 3.0]})
    fitted = fit_preprocessor(train, data)
    feature = fitted.features[0]
    assert isinstance(feature, DateFeature) and fitted.input_names == ["d:year", "d:month"]
    assert feature.fill == seconds[2]  # the median date fills the missing one
    x = fitted.transform(train)
    assert np.allclose(x.mean(axis=0), 0, atol=1e-6) and np.allclose(x.std(axis=0), 1, atol=1e-6)
    assert np.array_equal(x[3], x[2])  # the filled row is the median date's row


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("  dates: [when]", "  dates: [wen]"), "data.dates.wen: 'wen' is not in data.features"),
        (
            ("  dates: [when]", "  dates: [when]\n  categorical: [when]"),
            "'when' is also in data.categorical",
        ),
        (("  dates: [when]", "  dates: {when: [year, year]}"), "lists 'year' twice"),
        (("  dates: [when]", "  dates: {when: [yr]}"), "data.dates.when.0"),
    ],
)
def test_config_mistakes_are_one_line_at_the_key(
    cli: Cli, dated: Project, edit: tuple[str, str], expected: str
) -> None:
    dated.edit_config(*edit)
    result = cli("check", dated.config)
    assert result.code == 2
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert expected in result.err


def test_a_date_column_not_listed_in_dates_gets_the_line_to_add(cli: Cli, dated: Project) -> None:
    dated.edit_config("  dates: [when]\n", "")
    result = cli("check", dated.config)
    assert result.code == 2
    assert "column 'when', line 2: non-numeric value '" in result.err
    assert result.err.strip().endswith("a date: list 'when' in data.dates for its year, month, ...")


def test_a_cell_that_is_not_a_date_names_its_line(cli: Cli, dated: Project) -> None:
    lines = dated.data.read_text().splitlines()
    lines[3] = "03/01/2021" + lines[3][lines[3].index(",") :]
    dated.data.write_text("\n".join(lines) + "\n")
    result = cli("check", dated.config)
    assert result.code == 2
    assert result.err.startswith(
        f"Error: {dated.data}: column 'when', line 4: '03/01/2021' is not a date; expected an "
        "ISO date (2024-03-05) or date-time (2024-03-05T14:30:00), a real day"
    )


def test_a_streamed_file_reads_fills_and_scales_dates_too(cli: Cli, dated: Project) -> None:
    whole = dated.train(cli)
    dated.edit_config("  path: data.csv", "  path: data.csv\n  stream: true\n  chunk_rows: 16")
    streamed = dated.train(cli)
    features = [
        json.loads((run / "preprocessing.json").read_text())["features"][0]
        for run in (whole, streamed)
    ]
    assert features[0]["kind"] == "date" and features[0]["parts"] == [
        "year", "month", "day_of_week", "ordinal"
    ]  # fmt: skip
    # the stream splits by hash, so its training rows (and statistics) differ; both fill
    assert features[1]["parts"] == features[0]["parts"] and features[1]["fill"] is not None
    predictions = pd.read_csv(streamed / "predictions.csv")["prediction"]
    assert len(predictions) > 0 and np.isfinite(predictions).all()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_predict_eval_onnx_and_torchscript_agree_on_dates(
    cli: Cli, dated: Project, tmp_path: Path
) -> None:
    dated.edit_config("  dates: [when]", "  dates: {when: [year, month, day, day_of_week, "
                      "day_of_year, hour, minute, ordinal]}\n  scale_target: true")  # fmt: skip
    dated.edit_config("{type: dense, units: 8", "{type: dense, units: 16")
    dated.edit_config("epochs: 3", "epochs: 60")
    run = dated.train(cli)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["r2"] > 0.5
    assert cli("eval", run).code == 0
    rows = tmp_path / "rows.csv"
    when = ["2021-06-05", "", "1960-02-29T23:59:00", "2024-12-31T12:30:00Z", "NA"]
    rows.write_text("when,x\n" + "".join(f"{w},{i / 3:.4f}\n" for i, w in enumerate(when)))
    predicted = cli("predict", run, "--data", rows)
    assert predicted.code == 0, predicted.err
    want = pd.read_csv(io.StringIO(predicted.out))["prediction"].to_numpy()
    assert len(want) == 5 and np.isfinite(want).all()
    numbers = {
        "when": parse_dates(pd.Series(when).replace("NA", ""))[0],
        "x": np.asarray([round(i / 3, 4) for i in range(5)]),
    }
    done = {fmt: export.export_run(run, fmt).path for fmt in ("onnx", "torchscript")}
    session = onnxruntime.InferenceSession(done["onnx"], providers=["CPUExecutionProvider"])
    onnx_got = session.run(None, numbers)[0]
    assert np.abs(onnx_got - want).max() <= 1e-5
    loaded = torch.jit.load(done["torchscript"])  # type: ignore[no-untyped-call]
    script_got = loaded({k: torch.from_numpy(v) for k, v in numbers.items()}).numpy()
    assert np.abs(script_got - want).max() <= 1e-5


def test_init_recognises_a_date_column_and_its_config_trains(cli: Cli, tmp_path: Path) -> None:
    table = tmp_path / "dated.csv"
    table.write_text(dated_csv())
    out = tmp_path / "dated.yaml"
    assert cli("init", table, "--target", "y", "--out", out).code == 0
    text = out.read_text()
    assert "  dates: [when]" in text and "ISO date-times, 1969-07-20T20:17:40+01:00 to" in text
    result = cli("train", out, "--runs-dir", tmp_path / "runs", "-q", "--set", "training.epochs=2")
    assert result.code == 0, result.err
    features = json.loads((Path(result.last_line) / "preprocessing.json").read_text())["features"]
    assert features[0]["kind"] == "date"
