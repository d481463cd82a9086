"""A trained network with its preprocessing as one ONNX graph, written node by node.

The graph takes the raw feature columns and gives predict's numbers (the contract is in
flows/export.py): an input per column, float64 or text [batch]; standardizing in float64 rounded
to float32 and one-hot by RegexFullMatch, as preprocessing.transform computes them; the
network's modules as nodes; predict's output in float64. Its metadata names the output, the
target and the classes. `output_name` and `raw_columns`, the names and columns both formats
share, live here; torchscript.py imports them.

The graph is written from the modules train/model.py builds (_layer) rather than by
torch.onnx.export: that exporter takes seconds and raises warnings on every call (measured:
4.8 s for the first model, 1.6 s after, on torch 2.13), its predecessor is deprecated, and
neither takes text inputs. The export's parity check is what keeps the two descriptions of a
layer equal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import nn

import mlpkit
from mlpkit.data.dates import date_parts
from mlpkit.data.preprocessing import CategoricalFeature, DateFeature, Preprocessor
from mlpkit.errors import MlpkitError, Problem
from mlpkit.train.model import Ensemble, MultiInput
from mlpkit.train.tasks import Binary, Multiclass, Regression, Task

if TYPE_CHECKING:
    import onnx

OPSET = 20  # RegexFullMatch and Gelu are operators from opset 20
IR_VERSION = 9  # the IR that came with opset 20 (ONNX 1.15), for older runtimes


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


class _Values:
    """A float64 value of the graph that +, -, *, / and // with numbers turn into nodes, so
    data/dates.py's date_parts writes its arithmetic into the graph as it computes numpy's."""

    def __init__(self, g: _Graph, name: str) -> None:
        self.g, self.name = g, name

    def _other(self, other: _Values | float) -> str:
        if isinstance(other, _Values):
            return other.name
        return self.g.const(np.asarray(other, dtype=np.float64))

    def _op(self, kind: str, a: str, b: str) -> _Values:
        return _Values(self.g, self.g.op(kind, a, b))

    def __add__(self, other: _Values | float) -> _Values:
        return self._op("Add", self.name, self._other(other))

    def __radd__(self, other: float) -> _Values:
        return self._op("Add", self._other(other), self.name)

    def __sub__(self, other: _Values | float) -> _Values:
        return self._op("Sub", self.name, self._other(other))

    def __rsub__(self, other: float) -> _Values:
        return self._op("Sub", self._other(other), self.name)

    def __mul__(self, other: _Values | float) -> _Values:
        return self._op("Mul", self.name, self._other(other))

    def __rmul__(self, other: float) -> _Values:
        return self._op("Mul", self._other(other), self.name)

    def __truediv__(self, other: _Values | float) -> _Values:
        return self._op("Div", self.name, self._other(other))

    def __floordiv__(self, other: _Values | float) -> _Values:
        quotient = self.g.op("Div", self.name, self._other(other))
        return _Values(self.g, self.g.op("Floor", quotient))


def onnx_model(preprocessor: Preprocessor, model: nn.Module, task: Task) -> onnx.ModelProto:
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
    them: a missing cell filled (IsNaN or a marker's match, then Where), (x - mean) / std in
    float64 rounded to float32; one-hot by matching the known categories, spaces around the
    text aside as mlpkit's reader strips them (all zeros for any other value); the is-missing
    inputs."""
    from onnx import TensorProto

    axis = g.const(np.asarray([1], dtype=np.int64))
    blocks = []
    for feature in preprocessor.features:
        column = g.op("Unsqueeze", feature.name, axis)  # [batch, 1]
        if isinstance(feature, CategoricalFeature):
            # a missing cell: blank, or (once filled) a marker in any case, spaces around
            markers = feature.markers if feature.fill is not None else [""]
            alternatives = "|".join(_re2_literal(marker) for marker in markers)
            missing = g.op("RegexFullMatch", column, pattern=rf"(?i)\s*(?:{alternatives})\s*")
            if feature.fill is not None:
                fill = g.const(np.asarray([[feature.fill]], dtype=object))
                column = g.op("Where", missing, fill, column)
            # one [batch, 1] match per category: Equal cannot strip, a full match can
            matches = [
                g.op("RegexFullMatch", column, pattern=rf"\s*{_re2_literal(category)}\s*")
                for category in feature.categories
            ]
            hot = g.op("Concat", *matches, axis=1) if len(matches) > 1 else matches[0]
            blocks.append(g.op("Cast", hot, to=TensorProto.FLOAT))  # [batch, categories]
        else:
            missing = g.op("IsNaN", column)
            if feature.fill is not None:
                fill = g.const(np.asarray(feature.fill, dtype=np.float64))
                column = g.op("Where", missing, fill, column)
            if isinstance(feature, DateFeature):
                parts = date_parts(_Values(g, column))  # [batch, 1] each
                values = [parts[part].name for part in feature.parts]
                column = g.op("Concat", *values, axis=1) if len(values) > 1 else values[0]
                mean, std = np.asarray([feature.means]), np.asarray([feature.stds])
            else:
                mean, std = np.asarray(feature.mean), np.asarray(feature.std)
            centred = g.op("Sub", column, g.const(mean.astype(np.float64)))
            scaled = g.op("Div", centred, g.const(std.astype(np.float64)))
            blocks.append(g.op("Cast", scaled, to=TensorProto.FLOAT))
        if feature.indicator:
            blocks.append(g.op("Cast", missing, to=TensorProto.FLOAT))  # [batch, 1]
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
    """Nodes computing `module` in eval mode on x, for every module train/model.py builds.

    Raises:
        TypeError: a module this function does not know (a bug: train/model.py grew a layer).
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
    if isinstance(module, Ensemble):
        return _ensemble(g, module, x)
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


def _ensemble(g: _Graph, module: Ensemble, x: str) -> str:
    """The members' outputs combined as Ensemble.forward combines them: their Mean, or a
    log-sum-exp over the members (stacked on a new first axis) of their log-probabilities.
    log sigmoid(z) is -Softplus(-z): ONNX has no LogSigmoid."""
    outputs = [_layer(g, member, x) for member in module.members]  # each [batch, outputs]
    if module.combine == "mean":
        return g.op("Mean", *outputs)
    first = g.const(np.asarray([0], dtype=np.int64))

    def logsumexp(values: list[str]) -> str:  # over the members: [batch, outputs]
        stacked = g.op("Concat", *(g.op("Unsqueeze", v, first) for v in values), axis=0)
        return g.op("ReduceLogSumExp", stacked, first, keepdims=0)

    if module.combine == "softmax":
        summed = logsumexp([g.op("LogSoftmax", z, axis=1) for z in outputs])
        count = np.asarray(math.log(len(outputs)), dtype=np.float32)
        return g.op("Sub", summed, g.const(count))
    positive = logsumexp([g.op("Neg", g.op("Softplus", g.op("Neg", z))) for z in outputs])
    negative = logsumexp([g.op("Neg", g.op("Softplus", z)) for z in outputs])
    return g.op("Sub", positive, negative)


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def _output(g: _Graph, logits: str, task: Task, name: str) -> None:
    """Predict's numbers from the network's outputs, in float64 as train/tasks.py computes
    them."""
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
