"""mlpkit export: ONNX and TorchScript files that take raw columns and give predict's numbers.

The runs are trained once for the module (a few epochs each) and exported once in each format;
the tests then load the files as a user would (onnxruntime, torch.jit.load), feed them rows of
the data file as text, and compare with `mlpkit predict` on the same rows.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pandas as pd
import pytest
import torch
from conftest import REPO, Cli, Project

from mlpkit import MlpkitError
from mlpkit.config import registries
from mlpkit.config.load import load_config
from mlpkit.config.schema import BatchNormLayer, DenseLayer, DropoutLayer, Layer
from mlpkit.data.preprocessing import CategoricalFeature, NumericFeature, Preprocessor, TargetScale
from mlpkit.flows import export
from mlpkit.flows.train import train
from mlpkit.report import onnx_graph, torchscript
from mlpkit.rundir import runs
from mlpkit.train.model import InputSpec, build_model
from mlpkit.train.tasks import Regression

TOLERANCE = 1e-5
FORMATS = ("onnx", "torchscript")
# name -> (config, overrides): few epochs; the point is the export, not the fit
RUNS = {
    "mpg": ("mpg.yaml", ["training.epochs=2"]),
    # origin one-hot encoded (text inputs) and a scaled target (undone in the export)
    "mpg_onehot": (
        "mpg.yaml",
        ["training.epochs=2", "data.categorical=[origin]", "data.scale_target=true"],
    ),
    "wine": ("wine.yaml", ["training.epochs=3"]),  # multiclass
    "breast_cancer": ("breast-cancer.yaml", ["training.epochs=2"]),  # binary
    # model.ensemble: the members combined in the graph (mean; log-sum-exp of log-probabilities)
    "mpg_ensemble": ("mpg.yaml", ["training.epochs=2", "model.ensemble=3"]),
    "wine_ensemble": ("wine.yaml", ["training.epochs=3", "model.ensemble=3"]),
    "breast_cancer_ensemble": ("breast-cancer.yaml", ["training.epochs=2", "model.ensemble=3"]),
    "xor": (
        "xor.yaml",
        ["training.epochs=1", "training.iterations_per_epoch=20", "data.eval_rows=200"],
    ),
}
# jit.load is what a user calls to run the file; torch 2.13 deprecates it for torch.export
JIT_LOAD_DEPRECATED = "ignore:`torch.jit.load` is deprecated:DeprecationWarning"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each of RUNS trained once, about 4 s in all: the tests that use them are marked slow."""
    folder = tmp_path_factory.mktemp("runs")
    done = {}
    for name, (config, overrides) in RUNS.items():
        result = train(load_config(REPO / "configs" / config, [*overrides, f"name={name}"]), folder)
        done[name] = result.run_dir
    return done


@pytest.fixture(scope="module")
def exported(trained: dict[str, Path]) -> dict[tuple[str, str], export.Exported]:
    """Every run exported in both formats to the default paths."""
    return {
        (name, fmt): export.export_run(run, fmt) for name, run in trained.items() for fmt in FORMATS
    }


@pytest.mark.slow
def test_every_export_passes_its_check_and_is_recorded_in_run_json(
    trained: dict[str, Path], exported: dict[tuple[str, str], export.Exported]
) -> None:
    for (name, fmt), done in exported.items():
        run = trained[name]
        assert done.path == run / runs.EXPORTS[fmt]
        info = runs.open_run(run).info  # run.json with its exports still validates
        records = {record.path: record for record in info.exports}
        assert set(records) == {"model.onnx", "model.torchscript.pt"}
        record = records[runs.EXPORTS[fmt]]
        assert record == done.record
        assert record.format == fmt and record.split == "test"
        assert 0 <= record.max_abs_diff <= TOLERANCE, (name, fmt, record.max_abs_diff)
        assert record.sha256 == hashlib.sha256(done.path.read_bytes()).hexdigest()
        with open(run / "predictions.csv") as f:  # one row per test row
            assert record.rows == len(list(csv.DictReader(f))) > 0
        assert not list(run.glob(".*.tmp"))  # written atomically, nothing left behind


def _test_rows_csv(run: Path, folder: Path, unseen_origin: bool = False) -> Path:
    """The run's test rows copied as text from its data file (their lines are in
    predictions.csv); with `unseen_origin`, one more row whose origin training never saw."""
    lines = Path(runs.open_run(run).info.data.path).read_text().splitlines()
    with open(run / "predictions.csv") as f:
        wanted = [int(row["line"]) for row in csv.DictReader(f)]
    text = [lines[0]] + [lines[n - 1] for n in wanted]
    if unseen_origin:
        header = lines[0].split(",")
        cells = next(csv.reader([text[1]]))
        cells[header.index("origin")] = "9"
        text.append(",".join(cells))
    path = folder / f"{run.parent.name}.csv"
    path.write_text("\n".join(text) + "\n")
    return path


def _data_csv(run: Path, name: str, folder: Path) -> Path:
    if name == "xor":  # a synthetic source: no file; the four points
        path = folder / "xor.csv"
        path.write_text("x1,x2\n0,0\n0,1\n1,0\n1,1\n")
        return path
    return _test_rows_csv(run, folder, unseen_origin=name == "mpg_onehot")


def _raw_columns(path: Path, text_columns: set[str], names: list[str]) -> dict[str, np.ndarray]:
    """Columns of a CSV as a user without mlpkit would read them: text, or float64."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {
        name: np.asarray([row[name] for row in rows], dtype=object)
        if name in text_columns
        else np.asarray([float(row[name]) for row in rows])
        for name in names
    }


def _predicted(cli: Cli, run: Path, data: Path, classes: list[str], binary: bool) -> np.ndarray:
    """`mlpkit predict`'s numbers: the prediction, P(positive class), or every P(class)."""
    result = cli("predict", run, "--data", data)
    assert result.code == 0, result.err
    frame = pd.read_csv(io.StringIO(result.out), dtype=str)
    if not classes:
        return frame["prediction"].astype(float).to_numpy()
    wanted = [f"p_{classes[1]}"] if binary else [f"p_{label}" for label in classes]
    values = frame[wanted].astype(float).to_numpy()
    return values[:, 0] if binary else values


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_onnx_file_on_raw_csv_rows_matches_mlpkit_predict(
    cli: Cli,
    name: str,
    trained: dict[str, Path],
    exported: dict[tuple[str, str], export.Exported],
    tmp_path: Path,
) -> None:
    run, path = trained[name], exported[name, "onnx"].path
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    meta = {prop.key: prop.value for prop in model.metadata_props}
    classes = json.loads(meta.get("mlpkit.classes", "[]"))
    text = {
        i.name for i in model.graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.STRING
    }
    for column in model.graph.input:  # one input per column, any number of rows
        assert column.type.tensor_type.shape.dim[0].dim_param == "batch"
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    data = _data_csv(run, name, tmp_path)
    feeds = _raw_columns(data, text, [i.name for i in session.get_inputs()])
    (got,) = session.run([meta["mlpkit.output"]], feeds)
    want = _predicted(cli, run, data, classes, binary=meta["mlpkit.output"] == "probability")
    assert got.dtype == np.float64 and got.shape == want.shape
    assert np.abs(got - want).max() <= TOLERANCE


@pytest.mark.slow
@pytest.mark.filterwarnings(JIT_LOAD_DEPRECATED)
@pytest.mark.parametrize("name", list(RUNS))
def test_torchscript_file_on_raw_csv_rows_matches_mlpkit_predict(
    cli: Cli,
    name: str,
    trained: dict[str, Path],
    exported: dict[tuple[str, str], export.Exported],
    tmp_path: Path,
) -> None:
    run = trained[name]
    module = torch.jit.load(exported[name, "torchscript"].path)  # type: ignore[no-untyped-call]
    data = _data_csv(run, name, tmp_path)
    columns = _raw_columns(data, set(module.categorical), list(module.columns))
    numbers = {c: torch.from_numpy(v) for c, v in columns.items() if c not in module.categorical}
    categories = {c: list(columns[c]) for c in module.categorical}
    got = module(numbers, categories).numpy()
    want = _predicted(cli, run, data, list(module.classes), binary=module.output == "probability")
    assert got.dtype == np.float64 and got.shape == want.shape
    assert np.abs(got - want).max() <= TOLERANCE


@pytest.mark.slow
def test_the_signatures_name_columns_outputs_and_classes(
    exported: dict[tuple[str, str], export.Exported],
) -> None:
    graph = onnx.load(exported["mpg_onehot", "onnx"].path).graph
    types = {
        i.name: onnx.TensorProto.DataType.Name(i.type.tensor_type.elem_type) for i in graph.input
    }
    assert types == {
        **dict.fromkeys(["cylinders", "displacement", "horsepower", "weight"], "DOUBLE"),
        **dict.fromkeys(["acceleration", "model_year"], "DOUBLE"),
        "origin": "STRING",
    }
    outputs = {}
    for name in ("mpg", "wine", "breast_cancer"):
        model = onnx.load(exported[name, "onnx"].path)
        (output,) = model.graph.output
        dims = [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim]
        meta = {prop.key: prop.value for prop in model.metadata_props}
        outputs[name] = (output.name, dims, meta.get("mlpkit.classes"))
    assert outputs == {
        "mpg": ("prediction", ["batch"], None),
        "wine": ("probabilities", ["batch", 3], '["class_0", "class_1", "class_2"]'),
        "breast_cancer": ("probability", ["batch"], '["benign", "malignant"]'),
    }


def test_every_layer_model_py_builds_exports(tmp_path: Path) -> None:
    # Every activation, batch norm (with real statistics), dropout and branches with and
    # without layers: a module _layer does not know fails here, not in a user's export.
    target = TargetScale(name="t", mean=20.0, std=7.0)
    preprocessor = Preprocessor(
        features=[
            NumericFeature(name="a", mean=1.5, std=2.0),
            NumericFeature(name="b", mean=-3.0, std=0.5),
            CategoricalFeature(name="c", categories=["x", "y", "z"]),
        ],
        target=target,
    )
    # each activation in a branch of its own over every column, so that none hides another
    inputs = [
        InputSpec(name, [0, 1, 2, 3, 4], [DenseLayer(type="dense", units=3, activation=name)])
        for name in registries.ACTIVATIONS
    ]
    branch: list[Layer] = [
        DenseLayer(type="dense", units=3, activation="tanh"),
        BatchNormLayer(type="batch_norm"),
    ]
    inputs += [InputSpec("numbers", [0, 1], branch), InputSpec("c", [2, 3, 4], [])]
    layers: list[Layer] = [
        DenseLayer(type="dense", units=8, activation="linear"),
        BatchNormLayer(type="batch_norm"),
        DropoutLayer(type="dropout", rate=0.5),
        DenseLayer(type="dense", units=1, bias=False),
    ]
    model = build_model(layers, 5, seed=0, inputs=inputs).eval()
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.uniform_(-1, 1, generator=generator)
            module.running_var.uniform_(0.5, 2, generator=generator)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "a": rng.normal(size=64),
            "b": rng.normal(size=64),
            "c": rng.choice(["x", "y", "z", "new"], 64),
        }
    )
    task = Regression(target, "mse", {})
    want = export.reference(preprocessor, model, task, frame)
    assert np.unique(want).size == 64  # not a constant: every row tells
    onnx_got = onnx_graph.run_onnx(
        onnx_graph.onnx_bytes(preprocessor, model, task), preprocessor, frame
    )
    script_got = torchscript.run_torchscript(
        torchscript.torchscript_bytes(preprocessor, model, task), preprocessor, frame
    )
    assert np.abs(onnx_got - want).max() <= TOLERANCE
    assert np.abs(script_got - want).max() <= TOLERANCE


def test_column_names_never_clash_with_the_graph_s_own() -> None:
    # "/c0" and "/0/Unsqueeze" are the names the graph would give its first constant and node
    names = ["/c0", "/0/Unsqueeze"]
    target = TargetScale(name="t")
    preprocessor = Preprocessor(
        features=[NumericFeature(name=n, mean=1.0, std=3.0) for n in names], target=target
    )
    model = build_model([DenseLayer(type="dense", units=1)], 2, seed=0).eval()
    task = Regression(target, "mse", {})
    frame = pd.DataFrame({"/c0": [0.0, 5.0, 7.0], "/0/Unsqueeze": [1.0, -2.0, 4.0]})
    got = onnx_graph.run_onnx(onnx_graph.onnx_bytes(preprocessor, model, task), preprocessor, frame)
    assert np.abs(got - export.reference(preprocessor, model, task, frame)).max() <= TOLERANCE
    named = preprocessor.model_copy(
        update={"features": [NumericFeature(name="prediction", mean=0, std=1)]}
    )
    with pytest.raises(MlpkitError, match="a feature column is named 'prediction'"):
        onnx_graph.onnx_model(
            named, build_model([DenseLayer(type="dense", units=1)], 1, seed=0), task
        )


@pytest.mark.slow
def test_without_the_export_extra_onnx_says_what_to_install(
    cli: Cli,
    trained: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails
    out = tmp_path / "model.onnx"
    result = cli("export", trained["mpg"], "--format", "onnx", "--out", out)
    assert (result.code, result.out) == (2, "")
    assert result.err == (
        "Error: --format onnx: needs the onnx and onnxruntime packages, which are not "
        "installed; pip install 'mlpkit[export]'\n"
    )
    assert not out.exists()
    script = tmp_path / "model.pt"  # TorchScript needs only torch
    assert cli("export", trained["mpg"], "--format", "torchscript", "--out", script).code == 0
    assert script.exists()


@pytest.mark.slow
def test_not_a_run_and_an_incomplete_run_are_refused(
    cli: Cli,
    trained: dict[str, Path],
    tmp_path: Path,
) -> None:
    result = cli("export", tmp_path, "--format", "onnx")
    assert (result.code, result.err) == (
        2,
        f"Error: {tmp_path}: not a run directory (no run.json); pass a folder that mlpkit "
        "train printed\n",
    )
    copy = tmp_path / "run"
    shutil.copytree(trained["mpg"], copy, ignore=shutil.ignore_patterns("model.*.pt"))
    info = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps(info | {"status": "interrupted"}))
    result = cli("export", copy, "--format", "torchscript")
    assert (result.code, result.err) == (
        2,
        f"Error: {copy}: the run is interrupted, not complete; resume it: mlpkit train "
        f"--resume {copy}\n",
    )
    assert not (copy / "model.torchscript.pt").exists()


@pytest.mark.slow
def test_a_run_json_without_exports_opens_with_none(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    copy = tmp_path / "run"
    shutil.copytree(trained["wine"], copy)
    info = json.loads((copy / "run.json").read_text())
    del info["exports"]
    (copy / "run.json").write_text(json.dumps(info))
    assert runs.open_run(copy).info.exports == []


@pytest.mark.slow
def test_an_existing_out_needs_force_and_the_record_follows_the_file(
    cli: Cli,
    trained: dict[str, Path],
    exported: dict[tuple[str, str], export.Exported],
    tmp_path: Path,
) -> None:
    run = trained["xor"]
    out = tmp_path / "xor.onnx"
    out.write_text("keep me")
    result = cli("export", run, "--format", "onnx", "--out", out)
    assert (result.code, result.err) == (
        2,
        f"Error: {out}: already exists; pass --force to overwrite\n",
    )
    assert out.read_text() == "keep me"
    default = cli("export", run, "--format", "onnx")  # the default path exists too by now
    assert default.code == 2 and "already exists" in default.err
    for _ in range(2):  # twice: one record per path
        result = cli("export", run, "--format", "onnx", "--out", out, "--force")
        assert result.code == 0, result.err
    assert result.out.startswith(f"{out}: onnx, matches mlpkit predict on the run's 200 test rows")
    records = runs.open_run(run).info.exports
    assert [r.path for r in records] == ["model.onnx", "model.torchscript.pt", str(out.resolve())]
    assert records[-1].sha256 == hashlib.sha256(out.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_failed_check_is_an_error_and_writes_nothing(
    cli: Cli,
    trained: dict[str, Path],
    exported: dict[tuple[str, str], export.Exported],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    run = trained["breast_cancer"]
    before = (run / "run.json").read_bytes()
    rows = (run / "predictions.csv").read_text().count("\n") - 1  # the test rows, one a line
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # no difference passes, not even 0
    monkeypatch.setattr(export, "RELATIVE", 0.0)
    for fmt in FORMATS:
        out = tmp_path / f"model.{fmt}"
        result = cli("export", run, "--format", fmt, "--out", out)
        assert result.code == 2
        assert len(result.err.splitlines()) == 1
        assert result.err.startswith(
            f"Error: {out}: the exported model differs from mlpkit predict by up to "
        )
        assert (
            f"on the run's {rows} test rows (tolerance -1 + 0 x |value|); nothing was written;"
            in result.err
        )
        assert list(tmp_path.iterdir()) == []
    assert (run / "run.json").read_bytes() == before


def test_a_changed_data_file_is_refused(cli: Cli, project: Project) -> None:
    run = project.train(cli)
    with open(project.data, "a") as f:
        f.write("0.5,1.0,red,3.0\n")
    result = cli("export", run, "--format", "onnx")
    assert (result.code, result.err) == (
        2,
        f"Error: {project.data}: the data file changed since the run was trained; restore the "
        "file the run was trained on: the export is checked on its test rows\n",
    )
    assert not (run / "model.onnx").exists()


@pytest.mark.slow
def test_an_unknown_format_gets_a_suggestion(cli: Cli, trained: dict[str, Path]) -> None:
    result = cli("export", trained["mpg"], "--format", "onx")
    assert (result.code, result.err) == (
        2,
        "Error: --format: unknown format 'onx'; did you mean 'onnx'? expected one of: onnx, "
        "torchscript\n",
    )


def test_large_valued_targets_pass_with_a_tolerance_relative_to_the_value(
    cli: Cli, project: Project
) -> None:
    """float32 rounding grows with the value: at 20,000 one step is 0.002, so the bar is
    1e-5 + 1e-6 x |value| (numpy.isclose's form), not 1e-5 alone."""
    header, *lines = project.data.read_text().splitlines()
    scaled = [
        ",".join([*line.split(",")[:3], str(float(line.split(",")[3]) * 10000)]) for line in lines
    ]
    project.data.write_text("\n".join([header, *scaled]) + "\n")
    project.edit_config("target: y", "target: y\n  scale_target: true")
    run = project.train(cli)
    result = cli("export", run, "--format", "onnx")
    assert result.code == 0, result.err
    predictions = np.loadtxt(run / "predictions.csv", delimiter=",", skiprows=1, usecols=2)
    (record,) = runs.open_run(run).info.exports
    assert np.abs(predictions).max() > 1000  # the values are large...
    assert record.max_abs_diff <= 1e-5 + 1e-6 * np.abs(predictions).max()  # ...and so is the bar


@pytest.mark.slow
@pytest.mark.parametrize("target", ["model.safetensors", "run.json", "checkpoints/x.onnx"])
def test_an_export_never_overwrites_the_runs_own_files(
    cli: Cli, trained: dict[str, Path], target: str
) -> None:
    run = trained["wine"]
    out = run / target
    before = out.read_bytes() if out.is_file() else None
    result = cli("export", run, "--format", "onnx", "--out", out, "--force")
    part = target.split("/")[0]
    assert (result.code, result.err) == (
        2,
        f"Error: {out}: is part of the run ({part}); an export never overwrites it; choose "
        "another --out, e.g. the default model.onnx in the run directory\n",
    )
    assert (out.read_bytes() if out.is_file() else None) == before
    assert not (run / "checkpoints" / "x.onnx").exists()


@pytest.mark.filterwarnings(JIT_LOAD_DEPRECATED)
def test_text_cells_match_as_predict_reads_them(cli: Cli, project: Project, tmp_path: Path) -> None:
    """predict strips the spaces around a cell, and categories may hold regex characters: the
    exported one-hot must agree on both ('r.d+' is not 'rxd+')."""
    project.data.write_text(
        project.data.read_text().replace("red", "r.d+").replace("blue", "(blue)")
    )
    run = project.train(cli)
    for fmt in FORMATS:
        assert cli("export", run, "--format", fmt).code == 0
    cells = ["r.d+", " r.d+ ", "\t(blue)", "green ", "rxd+", "(blue", "purple"]
    rows = tmp_path / "rows.csv"
    rows.write_text("a,b,color\n" + "".join(f'0.5,2.0,"{c}"\n' for c in cells))
    want = np.loadtxt(
        io.StringIO(cli("predict", run, "--data", rows).out), delimiter=",", skiprows=1
    )[:, 1]
    assert want[0] == want[1] and want[4] == want[6] and want[5] == want[6]  # stripped; unknown
    numbers = {"a": np.full(len(cells), 0.5), "b": np.full(len(cells), 2.0)}
    session = onnxruntime.InferenceSession(run / "model.onnx", providers=["CPUExecutionProvider"])
    feeds = numbers | {"color": np.asarray(cells, dtype=object)}
    (got,) = session.run(["prediction"], feeds)
    assert np.abs(got - want).max() <= TOLERANCE
    module = torch.jit.load(run / "model.torchscript.pt")  # type: ignore[no-untyped-call]
    script = module({k: torch.from_numpy(v) for k, v in numbers.items()}, {"color": cells})
    assert np.abs(script.numpy() - want).max() <= TOLERANCE
