"""The rules on the model section, against the data and the task: named inputs share out
data.features, and the model ends with a dense output layer whose units and activation suit
the task. rules.py calls them with the other cross-field rules.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from mlpkit.config import registries
from mlpkit.config.locate import ALIKE
from mlpkit.config.schema import DenseLayer, InputConfig, Layer, task_of
from mlpkit.errors import Problem, clip, listed

if TYPE_CHECKING:  # load.py imports this module, so the class is only named here, not imported
    from mlpkit.config.load import LoadedConfig


_OUT = "leave data.features out"
_INPUT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Names the summary gives its own rows (op_N), and Mermaid's keyword: an input cannot take them.
_RESERVED = re.compile(
    r"input|end|(?:dense|dropout|batch_norm|concatenate|"
    + "|".join(registries.ACTIVATIONS)
    + r")_\d+"
)


def input_problems(loaded: LoadedConfig) -> list[Problem]:
    """Named inputs split data.features: each feature feeds exactly one input."""
    inputs = loaded.config.model.inputs
    if inputs is None:
        return []
    problems = []
    features = loaded.config.data.features
    known = set(features)
    owner: dict[str, str] = {}
    for name, spec in inputs.items():
        if not _INPUT_NAME.fullmatch(name) or _RESERVED.fullmatch(name):
            problems.append(
                loaded.problem(
                    ("model", "inputs", name),
                    f"'{clip(name)}' cannot name an input",
                    "use letters, digits and '_', not a layer name such as dense_0; e.g. x1",
                )
            )
        shape_problem = _shape_problem(loaded, name, spec)
        if shape_problem is not None:
            problems.append(shape_problem)
        problems += _column_problems(loaded, name, spec, owner, known)
    unused = [f for f in features if f not in owner]
    if unused:
        problems.append(
            loaded.problem(
                ("data", "features"),
                f"{listed(unused)} feed no input in model.inputs",
                "add them to an input's columns or drop them",
            )
        )
    return problems


def _column_problems(
    loaded: LoadedConfig, name: str, spec: InputConfig, owner: dict[str, str], known: set[str]
) -> list[Problem]:
    """Each of an input's columns is a feature (in `known`) no earlier input took; `owner`
    records them. More than ALIKE columns wrong in one way are one problem."""
    where = ("model", "inputs", name, "columns")
    taken, absent = [], []
    for column in spec.columns:
        if column in owner:
            taken.append(f"'{clip(column)}' already feeds input '{clip(owner[column])}'")
        elif column not in known:
            absent.append(f"'{clip(column)}'")
        owner.setdefault(column, name)
    if len(taken) > ALIKE:
        taken = [f"{len(taken):,} columns feed an earlier input: {listed(taken, 5)}"]
    problems = [loaded.problem(where, message) for message in taken]
    if len(absent) > ALIKE:
        message = f"{len(absent):,} columns are not in data.features: {listed(absent, 10)}"
        return [*problems, loaded.problem(where, message, "list them there too, or " + _OUT)]
    hint = "list it there too, or " + _OUT
    return problems + [loaded.problem(where, f"{c} is not in data.features", hint) for c in absent]


def _shape_problem(loaded: LoadedConfig, name: str, spec: InputConfig) -> Problem | None:
    """An input names columns, or (a synthetic source's) a shape its columns then match."""
    key = ("model", "inputs", name)
    source = loaded.config.data.source
    if spec.shape is None:
        if spec.columns:
            return None
        return loaded.problem(key, "has no columns", "e.g. columns: [x1], or shape: 1 for a source")
    if source is None:
        return loaded.problem(
            (*key, "shape"),
            "a shape applies to a synthetic data.source's columns",
            "for a file, list the input's columns",
        )
    if len(spec.columns) != spec.shape:
        return loaded.problem(
            (*key, "shape"),
            f"{spec.shape} columns, but the input has {len(spec.columns)}",
            f"shapes take the {source.name} source's columns x1, x2, ... in order",
        )
    return None


def output_layer(layers: list[Layer]) -> tuple[int, DenseLayer] | None:
    """The last dense layer and its position: the one that produces the model's output."""
    for index in range(len(layers) - 1, -1, -1):
        layer = layers[index]
        if isinstance(layer, DenseLayer):
            return index, layer
    return None


def head_problems(loaded: LoadedConfig) -> list[Problem]:
    """The model ends with a dense output layer whose units and activation suit the task."""
    layers = loaded.config.model.layers
    last = len(layers) - 1
    found = output_layer(layers)
    if found is None:
        return [
            loaded.problem(
                ("model", "layers"), "has no dense layer", "end with e.g. {type: dense, units: 1}"
            )
        ]
    index, head = found
    problems = []
    if index != last:
        problems.append(
            loaded.problem(
                ("model", "layers", last),
                f"the model ends with {layers[last].type}, not dense",
                "end with the dense output layer",
            )
        )
    return problems + _head_fit_problems(loaded, index, head)


def _head_fit_problems(loaded: LoadedConfig, index: int, head: DenseLayer) -> list[Problem]:
    """The output layer (at `index`) has the units and activation the task reads."""
    task = task_of(loaded.config)
    where = ("model", "layers", index)
    if task == "multiclass":
        if head.activation in ("softmax", "linear"):
            return []
        return [
            loaded.problem(
                (*where, "activation"),
                f"a multiclass output needs softmax (or linear logits), not {head.activation}",
                "set activation: softmax",
            )
        ]
    problems = []
    if task == "binary" and head.activation not in ("sigmoid", "linear"):
        problems.append(
            loaded.problem(
                (*where, "activation"),
                f"a binary output needs sigmoid (or linear logits), not {head.activation}",
                "set activation: sigmoid",
            )
        )
    if head.units != 1:
        one = "a regression on one target" if task == "regression" else "a binary task"
        problems.append(
            loaded.problem(
                (*where, "units"),
                f"the output layer has {head.units} units; {one} needs 1",
                "set units: 1",
            )
        )
    elif head.activation == "softmax":
        problems.append(
            loaded.problem(
                (*where, "activation"),
                "softmax over one unit always outputs 1",
                "use linear for regression",
            )
        )
    return problems
