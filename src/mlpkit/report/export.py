"""Export a run's model together with its preprocessing: one ONNX or TorchScript file.

The exported model takes the raw feature columns, as the data file holds them, and gives the
numbers `mlpkit predict` gives, so whoever runs it needs neither mlpkit nor preprocessing.json:

- inputs: one per feature column, named after it, batch axis dynamic. A numeric column is
  float64 [batch], a categorical one text [batch] (ONNX: tensor(double) and tensor(string);
  TorchScript: forward(numbers: Dict[str, Tensor], categories: Dict[str, List[str]])).
- inside: standardizing in float64 and rounding to float32, exactly as preprocessing.transform
  does; one-hot (a category not seen in training is all zeros); the named inputs' columns; the
  network in float32.
- output, float64 as predict computes it: regression `prediction` [batch] in the target's
  units; binary `probability` [batch], P(the second class); multiclass `probabilities`
  [batch, classes], in the order of preprocessing.json's classes.

Every export is checked before it is written: the serialized model is loaded back (ONNX
Runtime, torch.jit.load), run on the run's test rows read from its data file (a synthetic
source's rows drawn again from the seed), and compared with the PyTorch model and preprocessing
as predict runs them. A largest difference above TOLERANCE is an error and nothing is written;
otherwise the file is written atomically and recorded in run.json's `exports`.

The ONNX graph is written node by node from the modules model.py builds (_layer) rather than by
torch.onnx.export: that exporter takes seconds and raises warnings on every call (measured:
4.8 s for the first model, 1.6 s after, on torch 2.13), its predecessor is deprecated, and
neither takes text inputs. The parity check is what keeps the two descriptions of a layer equal.
"""

# No `from __future__ import annotations`: TorchScript reads Pipeline's annotations as types,
# and would find strings.
import contextlib
import hashlib
import io
import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import nn

import mlpkit
from mlpkit.config.load import LoadedConfig
from mlpkit.data.preprocessing import CategoricalFeature, Preprocessor
from mlpkit.errors import MlpkitError, Problem, did_you_mean
from mlpkit.flows.experiment import load_run_config, trained_rows
from mlpkit.rundir import lock, runs
from mlpkit.train.loop import predict
from mlpkit.train.model import MultiInput
from mlpkit.train.prepare import network
from mlpkit.train.tasks import Binary, Multiclass, Regression, Task, make_task

if TYPE_CHECKING:
    import onnx

FILE_NAMES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}  # default --out
# Largest |exported - predict| accepted: TOLERANCE, plus RELATIVE of the value, as
# numpy.isclose: float32 rounding grows with an output's size (one step is 1.5e-5 at 200), so
# an absolute bar alone would refuse every large-valued regression target.
TOLERANCE = 1e-5
RELATIVE = 1e-6
# What the run format owns inside a run directory: an export never overwrites these.
RUN_OWNED = {
    "config.yaml",
    "run.json",
    "summary.txt",
    "preprocessing.json",
    "history.csv",
    "metrics.json",
    "predictions.csv",
    "model.safetensors",
    "checkpoints",
    "plots",
    "tensorboard",
    "mlflow.json",
    ".lock",
}
OPSET = 20  # RegexFullMatch and Gelu are operators from opset 20
IR_VERSION = 9  # the IR that came with opset 20 (ONNX 1.15), for older runtimes


def _refuse_run_files(path: Path, run_dir: Path) -> None:
    """--out may point into the run directory, but never at a file the run itself owns."""
    try:
        inside = path.resolve().relative_to(run_dir.resolve())
    except ValueError:
        return
    if inside.parts and inside.parts[0] in RUN_OWNED:
        raise MlpkitError(
            Problem(
                f"is part of the run ({inside.parts[0]}); an export never overwrites it",
                file=str(path),
                hint="choose another --out, e.g. the default model.onnx in the run directory",
            )
        )


@dataclass(frozen=True)
class Exported:
    path: Path
    record: runs.ExportInfo


def export_run(run_dir: Path, fmt: str, out: Path | None = None, force: bool = False) -> Exported:
    """Export a complete run's model with its preprocessing, check it, write it, record it.

    `out` defaults to model.onnx or model.torchscript.pt inside the run directory.

    Raises:
        RunDirError: the run is not complete or not a run; out's folder does not exist.
        DataError: the data file changed since training (the run's test rows are gone).
        MlpkitError: an unknown format, out exists (without force), the format's packages are
            not installed, or the exported model differs from predict by more than TOLERANCE
            (nothing is written then).
    """
    if fmt not in FILE_NAMES:
        problem = f"unknown format '{fmt}'"
        raise MlpkitError(Problem(problem, where="--format", hint=did_you_mean(fmt, FILE_NAMES)))
    run = runs.open_run(run_dir)
    path = out if out is not None else run_dir / FILE_NAMES[fmt]
    _refuse_run_files(path, run.path)
    if path.exists() and not force:
        raise MlpkitError(
            Problem("already exists", file=str(path), hint="pass --force to overwrite")
        )
    if fmt == "onnx":
        _require_onnx()
    loaded, task, model = _rebuild(run)
    frame, part = check_rows(run, loaded)
    serialize, execute = _FORMATS[fmt]
    data = serialize(run.preprocessor, model, task)
    expected = reference(run.preprocessor, model, task, frame)
    gaps = np.abs(execute(data, run.preprocessor, frame) - expected)
    difference = float(np.max(gaps))
    if not np.all(gaps <= TOLERANCE + RELATIVE * np.abs(expected)):  # NaN fails too
        raise MlpkitError(
            Problem(
                f"the exported model differs from mlpkit predict by up to {difference:.3g} on "
                f"the run's {len(frame)} {part} rows (tolerance {TOLERANCE:g} + {RELATIVE:g} "
                "x |value|); nothing was written",
                file=str(path),
                hint="please report it, with the run directory",
            )
        )
    record = runs.ExportInfo(
        format=fmt,
        path=_recorded_path(path, run.path),
        sha256=hashlib.sha256(data).hexdigest(),
        rows=len(frame),
        split=part,
        max_abs_diff=difference,
        exported=datetime.now().astimezone().isoformat(timespec="seconds"),
    )
    _write(run.path, path, data, record)
    return Exported(path, record)


def _rebuild(run: runs.Run) -> tuple[LoadedConfig, Task, nn.Module]:
    """The run's config, task and trained network on the CPU, in eval mode."""
    loaded = load_run_config(run)
    task = make_task(loaded.config, run.preprocessor.target, None)
    model = network(loaded.config, run.preprocessor, task, torch.device("cpu"))
    run.load_weights(model)
    return loaded, task, model.eval().requires_grad_(False)  # no autograd graph in the export


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise MlpkitError(
            Problem(
                "needs the onnx and onnxruntime packages, which are not installed",
                where="--format onnx",
                hint="pip install 'mlpkit[export]'",
            )
        ) from None


def _recorded_path(path: Path, run_dir: Path) -> str:
    """Relative to the run directory when inside it (the run stays movable), else absolute."""
    absolute = path.resolve()
    if absolute.is_relative_to(run_dir.resolve()):
        return str(absolute.relative_to(run_dir.resolve()))
    return str(absolute)


def _write(run_dir: Path, path: Path, data: bytes, record: runs.ExportInfo) -> None:
    """The file, then its record in run.json (replacing one for the same path), under the
    run's lock so that two exports cannot lose each other's record."""
    with lock.hold(run_dir):
        runs.write_bytes(path, data)
        info = runs.open_run(run_dir).info  # as it is now that we hold the lock
        kept = [old for old in info.exports if old.path != record.path]
        runs.write_info(run_dir, info.model_copy(update={"exports": [*kept, record]}))


# --- the rows and numbers the check compares ------------------------------------------------


def check_rows(run: runs.Run, loaded: LoadedConfig) -> tuple[pd.DataFrame, str]:
    """The run's test rows, read again from its data file (drawn again from the seed for a
    synthetic source), and which part they are: the validation or else the training rows
    when the split has no test part.

    Raises:
        DataError: the data file changed since the run was trained.
    """
    hint = "restore the file the run was trained on: the export is checked on its test rows"
    table, split = trained_rows(run, loaded, hint)
    part = next(name for name in ("test", "val", "train") if len(getattr(split, name)))
    return table.frame.iloc[getattr(split, part)], part


def reference(
    preprocessor: Preprocessor, model: nn.Module, task: Task, frame: pd.DataFrame
) -> np.ndarray:
    """What predict computes for `frame`'s rows, as the exported model's output holds it."""
    x = torch.from_numpy(preprocessor.transform(frame))  # [rows, inputs] float32
    outputs = predict(model, x)  # [rows, outputs]
    if isinstance(task, Regression):
        return task.columns(outputs)["prediction"]  # [rows] float64, target units
    return task.probabilities(outputs)  # [rows] or [rows, classes] float64


def output_name(task: Task) -> str:
    if isinstance(task, Regression):
        return "prediction"
    return "probability" if isinstance(task, Binary) else "probabilities"


def raw_columns(preprocessor: Preprocessor, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The feature columns as the exported model takes them: float64, or text as objects."""
    columns: dict[str, np.ndarray] = {}
    for feature in preprocessor.features:
        column = frame[feature.name]
        if isinstance(feature, CategoricalFeature):
            columns[feature.name] = column.astype(str).to_numpy(dtype=object)
        else:
            columns[feature.name] = column.to_numpy(dtype=np.float64)
    return columns


def _metadata(preprocessor: Preprocessor, task: Task) -> dict[str, str]:
    """What a consumer needs to read the output: its name, the target, the classes."""
    found = {
        "mlpkit.version": mlpkit.__version__,
        "mlpkit.target": preprocessor.target.name,
        "mlpkit.output": output_name(task),
    }
    if isinstance(task, Binary | Multiclass):
        found["mlpkit.classes"] = json.dumps(task.labels.classes)
    if isinstance(task, Binary):
        found["mlpkit.threshold"] = repr(task.threshold)
    return found


# --- ONNX -----------------------------------------------------------------------------------


class _Graph:
    """The nodes and constants of an ONNX graph being written, with fresh value names (none
    the name of an input column: those are taken)."""

    def __init__(self, taken: list[str]) -> None:
        from onnx import NodeProto, TensorProto

        self.nodes: list[NodeProto] = []
        self.constants: list[TensorProto] = []
        self.taken = set(taken)

    def op(self, kind: str, *inputs: str, out: str | None = None, **attributes: Any) -> str:
        from onnx import helper

        name = out or self._fresh(f"/{len(self.nodes)}/{kind}")
        self.nodes.append(helper.make_node(kind, list(inputs), [name], name=name, **attributes))
        return name

    def const(self, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self._fresh(f"/c{len(self.constants)}")
        self.constants.append(numpy_helper.from_array(value, name))
        return name

    def _fresh(self, name: str) -> str:
        while name in self.taken:
            name += "_"
        self.taken.add(name)
        return name


def onnx_model(preprocessor: Preprocessor, model: nn.Module, task: Task) -> "onnx.ModelProto":
    """The whole pipeline as an ONNX graph: raw columns -> preprocessing -> network -> output.

    Raises:
        MlpkitError: a feature column has the output's name.
    """
    from onnx import TensorProto, helper

    output = output_name(task)
    if output in [feature.name for feature in preprocessor.features]:
        raise MlpkitError(
            Problem(
                f"a feature column is named '{output}', the exported model's output",
                where=f"column '{output}'",
                hint="rename the column and train again",
            )
        )
    g = _Graph([*[feature.name for feature in preprocessor.features], output])
    x = _preprocessing(g, preprocessor)  # [batch, inputs] float32
    logits = _layer(g, model, x)  # [batch, outputs] float32
    _output(g, logits, task, output)
    columns = [
        helper.make_tensor_value_info(
            feature.name,
            TensorProto.STRING if isinstance(feature, CategoricalFeature) else TensorProto.DOUBLE,
            ["batch"],
        )
        for feature in preprocessor.features
    ]
    shape: list[str | int] = ["batch"]
    if isinstance(task, Multiclass):
        shape.append(len(task.labels.classes))  # [batch, classes]
    result = helper.make_tensor_value_info(output, TensorProto.DOUBLE, shape)
    graph = helper.make_graph(g.nodes, "mlpkit", columns, [result], g.constants)
    built = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="mlpkit",
        producer_version=mlpkit.__version__,
    )
    helper.set_model_props(built, _metadata(preprocessor, task))
    return built


def _preprocessing(g: _Graph, preprocessor: Preprocessor) -> str:
    """Nodes from the raw columns to the model's inputs, as preprocessing.transform computes
    them: (x - mean) / std in float64 rounded to float32; one-hot by matching the known
    categories, spaces around the text aside as mlpkit's reader strips them (all zeros for any
    other value)."""
    from onnx import TensorProto

    axis = g.const(np.asarray([1], dtype=np.int64))
    blocks = []
    for feature in preprocessor.features:
        column = g.op("Unsqueeze", feature.name, axis)  # [batch, 1]
        if isinstance(feature, CategoricalFeature):
            # one [batch, 1] match per category: Equal cannot strip, a full match can
            matches = [
                g.op("RegexFullMatch", column, pattern=rf"\s*{_re2_literal(category)}\s*")
                for category in feature.categories
            ]
            hot = g.op("Concat", *matches, axis=1) if len(matches) > 1 else matches[0]
            blocks.append(g.op("Cast", hot, to=TensorProto.FLOAT))  # [batch, categories]
        else:
            centred = g.op("Sub", column, g.const(np.asarray(feature.mean, dtype=np.float64)))
            scaled = g.op("Div", centred, g.const(np.asarray(feature.std, dtype=np.float64)))
            blocks.append(g.op("Cast", scaled, to=TensorProto.FLOAT))
    return g.op("Concat", *blocks, axis=1) if len(blocks) > 1 else blocks[0]


def _re2_literal(text: str) -> str:
    """`text` as an RE2 pattern matching exactly itself (ONNX's regex engine)."""
    return "".join("\\" + c if c in "\\.+*?()|[]{}^$" else c for c in text)


# Activation modules and the ONNX operator (with attributes) computing each; SiLU has none.
_ACTIVATIONS: dict[type[nn.Module], Callable[[Any], tuple[str, dict[str, Any]]]] = {
    nn.ReLU: lambda m: ("Relu", {}),
    nn.Sigmoid: lambda m: ("Sigmoid", {}),
    nn.Tanh: lambda m: ("Tanh", {}),
    nn.Softmax: lambda m: ("Softmax", {"axis": m.dim}),
    nn.GELU: lambda m: ("Gelu", {"approximate": m.approximate}),
    nn.LeakyReLU: lambda m: ("LeakyRelu", {"alpha": m.negative_slope}),
    nn.ELU: lambda m: ("Elu", {"alpha": m.alpha}),
    nn.SELU: lambda m: ("Selu", {}),  # ONNX's default alpha and gamma are torch's constants
}


def _layer(g: _Graph, module: nn.Module, x: str) -> str:
    """Nodes computing `module` in eval mode on x, for every module model.py builds.

    Raises:
        TypeError: a module this function does not know (a bug: model.py grew a layer).
    """
    if isinstance(module, nn.Sequential):  # an empty one passes x through
        for child in module:
            x = _layer(g, child, x)
        return x
    if isinstance(module, MultiInput):
        parts = []
        for index, branch in enumerate(module.branches):
            positions = module.get_buffer(f"columns_{index}").numpy()  # as MultiInput.forward
            parts.append(_layer(g, branch, g.op("Gather", x, g.const(positions), axis=1)))
        return _layer(g, module.trunk, g.op("Concat", *parts, axis=1))
    if isinstance(module, nn.Linear):  # x @ weight.T + bias
        weights = [g.const(_array(module.weight))]
        if module.bias is not None:
            weights.append(g.const(_array(module.bias)))
        return g.op("Gemm", x, *weights, transB=1)
    if isinstance(module, nn.BatchNorm1d):
        assert module.running_mean is not None and module.running_var is not None
        stats = [module.weight, module.bias, module.running_mean, module.running_var]
        return g.op(
            "BatchNormalization", x, *(g.const(_array(s)) for s in stats), epsilon=module.eps
        )
    if isinstance(module, nn.Dropout):
        return x  # eval mode: the identity
    if isinstance(module, nn.SiLU):
        return g.op("Mul", x, g.op("Sigmoid", x))
    if type(module) in _ACTIVATIONS:
        kind, attributes = _ACTIVATIONS[type(module)](module)
        return g.op(kind, x, **attributes)
    raise TypeError(f"mlpkit export does not know the module {type(module).__name__}")


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def _output(g: _Graph, logits: str, task: Task, name: str) -> None:
    """Predict's numbers from the network's outputs, in float64 as tasks.py computes them."""
    from onnx import TensorProto

    if isinstance(task, Multiclass):
        wide = g.op("Cast", logits, to=TensorProto.DOUBLE)  # [batch, classes]
        g.op("Softmax", wide, axis=1, out=name)
        return
    first = g.op("Gather", logits, g.const(np.asarray(0, dtype=np.int64)), axis=1)  # [batch]
    wide = g.op("Cast", first, to=TensorProto.DOUBLE)
    if isinstance(task, Binary):
        g.op("Sigmoid", wide, out=name)
        return
    scale = task.scale  # values * std + mean, as TargetScale.unscale
    scaled = g.op("Mul", wide, g.const(np.asarray(scale.std, dtype=np.float64)))
    g.op("Add", scaled, g.const(np.asarray(scale.mean, dtype=np.float64)), out=name)


def onnx_bytes(preprocessor: Preprocessor, model: nn.Module, task: Task) -> bytes:
    import onnx

    built = onnx_model(preprocessor, model, task)
    onnx.checker.check_model(built, full_check=True)  # types and shapes, not only structure
    return built.SerializeToString()  # type: ignore[no-any-return]


def run_onnx(data: bytes, preprocessor: Preprocessor, frame: pd.DataFrame) -> np.ndarray:
    """The serialized model's output on `frame`'s rows, in ONNX Runtime."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings would go to stderr
    session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    (result,) = session.run(None, raw_columns(preprocessor, frame))
    return np.asarray(result)


# --- TorchScript ----------------------------------------------------------------------------


class Pipeline(nn.Module):
    """The TorchScript model: raw columns in, predict's numbers out (see the module docstring).

    Its attributes say how to call it and read it: `columns`, `categorical` (the text
    columns), `output` (its name for what it returns) and `classes`.
    """

    columns: list[str]
    categorical: list[str]
    output: str
    classes: list[str]
    means: list[float]  # per column; categorical columns 0
    stds: list[float]  # per column; categorical columns 1
    codes: list[dict[str, int]]  # per column: category -> its one-hot position; numeric {}
    target_mean: float  # regression: predictions are outputs * target_std + target_mean
    target_std: float

    def __init__(self, preprocessor: Preprocessor, traced: nn.Module, task: Task) -> None:
        super().__init__()
        features = preprocessor.features
        self.columns = [feature.name for feature in features]
        self.categorical = [f.name for f in features if isinstance(f, CategoricalFeature)]
        self.means = [0.0 if isinstance(f, CategoricalFeature) else f.mean for f in features]
        self.stds = [1.0 if isinstance(f, CategoricalFeature) else f.std for f in features]
        self.codes = [
            {c: i for i, c in enumerate(f.categories)} if isinstance(f, CategoricalFeature) else {}
            for f in features
        ]
        self.network = traced
        self.task = task.name
        self.output = output_name(task)
        self.classes = [] if isinstance(task, Regression) else list(task.labels.classes)
        scale = task.scale if isinstance(task, Regression) else None
        self.target_mean = scale.mean if scale is not None else 0.0
        self.target_std = scale.std if scale is not None else 1.0

    def forward(
        self, numbers: dict[str, torch.Tensor], categories: dict[str, list[str]] | None = None
    ) -> torch.Tensor:
        """numbers: each numeric column [batch]; categories: each categorical column's text."""
        blocks: list[torch.Tensor] = []
        for i, name in enumerate(self.columns):
            if name in self.categorical:
                if categories is None or name not in categories:
                    raise ValueError("missing categorical column '" + name + "' in categories")
                known = self.codes[i]
                # [batch]; stripped as mlpkit's reader strips every cell
                codes = torch.tensor([known.get(v.strip(), -1) for v in categories[name]])
                hot = codes.unsqueeze(1) == torch.arange(len(known)).unsqueeze(0)
                blocks.append(hot.to(torch.float32))  # [batch, categories]; unknown: zeros
            else:
                if name not in numbers:
                    raise ValueError("missing numeric column '" + name + "' in numbers")
                column = numbers[name].to(torch.float64)  # [batch]
                scaled = (column - self.means[i]) / self.stds[i]
                blocks.append(scaled.to(torch.float32).unsqueeze(1))
        logits: torch.Tensor = self.network(torch.cat(blocks, dim=1))  # [batch, outputs]
        if self.task == "multiclass":
            return torch.softmax(logits.to(torch.float64), dim=1)
        first = logits[:, 0].to(torch.float64)  # [batch]
        if self.task == "binary":
            return torch.sigmoid(first)
        return first * self.target_std + self.target_mean


def torchscript_bytes(preprocessor: Preprocessor, model: nn.Module, task: Task) -> bytes:
    """The Pipeline scripted (text needs script), around the network traced (it is plain
    tensor code; MultiInput's buffer lookup by name is not scriptable)."""
    width = len(preprocessor.input_names)
    buffer = io.BytesIO()
    with _quiet_jit():
        traced = torch.jit.trace(model, torch.zeros(2, width))  # type: ignore[no-untyped-call]
        torch.jit.save(torch.jit.script(Pipeline(preprocessor, traced, task)), buffer)
    return buffer.getvalue()


def run_torchscript(data: bytes, preprocessor: Preprocessor, frame: pd.DataFrame) -> np.ndarray:
    """The serialized model's output on `frame`'s rows, loaded as a user would load it."""
    numbers: dict[str, torch.Tensor] = {}
    categories: dict[str, list[str]] = {}
    for name, values in raw_columns(preprocessor, frame).items():
        if values.dtype == object:
            categories[name] = [str(v) for v in values]
        else:
            numbers[name] = torch.tensor(values)  # a copy: pandas may hand out read-only arrays
    with _quiet_jit():
        loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")  # type: ignore[no-untyped-call]
    with torch.no_grad():
        return loaded(numbers, categories).numpy()  # type: ignore[no-any-return]


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """torch 2.13 deprecates torch.jit for torch.export, which cannot take text inputs; the
    TorchScript format is what this export is asked for, so that one warning is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning
        )
        yield


_FORMATS: dict[
    str,
    tuple[
        Callable[[Preprocessor, nn.Module, Task], bytes],
        Callable[[bytes, Preprocessor, pd.DataFrame], np.ndarray],
    ],
] = {"onnx": (onnx_bytes, run_onnx), "torchscript": (torchscript_bytes, run_torchscript)}
