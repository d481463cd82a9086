"""Axon-style model summary: layer rows computed from shapes alone, then rendered.

Nothing here builds a network, so `mlpkit summary` costs no weights; tests check the counts
against the parameters of the model that model.py builds.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from mlpkit.config.schema import BatchNormLayer, Config, DenseLayer, DropoutLayer, Layer
from mlpkit.data.preprocessing import Preprocessor

BYTES_PER_PARAMETER = 4  # float32


Shape = tuple[int | None, ...]


@dataclass(frozen=True)
class Row:
    name: str
    op: str
    parents: tuple[str, ...]
    input_shapes: tuple[Shape, ...]
    output_shape: Shape
    options: str
    parameters: dict[str, tuple[int, ...]]

    @property
    def count(self) -> int:
        total = 0
        for shape in self.parameters.values():
            size = 1
            for dim in shape:
                size *= dim
            total += size
        return total


@dataclass(frozen=True)
class Summary:
    rows: list[Row]
    members: int = 1  # model.ensemble: the rows are one member's, and there are this many

    @property
    def member_parameters(self) -> int:
        return sum(row.count for row in self.rows)

    @property
    def total_parameters(self) -> int:
        return self.members * self.member_parameters

    @property
    def parameter_bytes(self) -> int:
        return self.total_parameters * BYTES_PER_PARAMETER


class _Graph:
    """Rows being laid out, with Axon's op_N names counted across the whole model."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.counts: dict[str, int] = {}

    def input(self, name: str, width: int) -> Row:
        row = Row(name, "input", (), (), (None, width), f"shape: (None, {width})", {})
        self.rows.append(row)
        return row

    def add(
        self,
        op: str,
        parents: list[Row],
        width: int,
        options: str = "",
        parameters: dict[str, tuple[int, ...]] | None = None,
    ) -> Row:
        index = self.counts.get(op, 0)
        self.counts[op] = index + 1
        row = Row(
            f"{op}_{index}",
            op,
            tuple(p.name for p in parents),
            tuple(p.output_shape for p in parents),
            (None, width),
            options,
            parameters or {},
        )
        self.rows.append(row)
        return row

    def stack(self, layers: list[Layer], row: Row) -> Row:
        """Rows for a layer list fed by `row`; returns the last one."""
        for layer in layers:
            width = row.output_shape[-1] or 0
            if isinstance(layer, DenseLayer):
                parameters: dict[str, tuple[int, ...]] = {"weight": (layer.units, width)}
                if layer.bias:
                    parameters["bias"] = (layer.units,)
                options = f"units: {layer.units}, bias: {str(layer.bias).lower()}"
                row = self.add("dense", [row], layer.units, options, parameters)
                if layer.activation != "linear":
                    row = self.add(layer.activation, [row], layer.units)
            elif isinstance(layer, DropoutLayer):
                row = self.add("dropout", [row], width, f"rate: {layer.rate:g}")
            elif isinstance(layer, BatchNormLayer):
                options = f"momentum: {layer.momentum:g}, eps: {layer.eps:g}"
                row = self.add(
                    "batch_norm", [row], width, options, {"weight": (width,), "bias": (width,)}
                )
        return row


def summarize_network(config: Config, preprocessor: Preprocessor) -> Summary:
    """The layer table of the configured network, with its named inputs if it has them: the
    input width comes from the fitted preprocessing (one-hot columns depend on the data)."""
    named = config.model.inputs
    inputs = None
    if named is not None:
        inputs = [
            (name, len(preprocessor.positions(spec.columns)), spec.layers)
            for name, spec in named.items()
        ]
    width = len(preprocessor.input_names)
    return summarize(config.model.layers, width, inputs, config.model.ensemble)


def summarize(
    layers: list[Layer],
    in_features: int,
    inputs: list[tuple[str, int, list[Layer]]] | None = None,
    members: int = 1,
) -> Summary:
    """One row per graph node, as Axon lists them: inputs, their branches, the concatenation,
    then each layer and its activation. `inputs` are (name, width, branch layers); `members`,
    an ensemble's count of networks of these rows."""
    graph = _Graph()
    if inputs is None:
        graph.stack(layers, graph.input("input", in_features))
        return Summary(graph.rows, members)
    ends = [graph.stack(branch, graph.input(name, width)) for name, width, branch in inputs]
    joined = graph.add(
        "concatenate", ends, sum(end.output_shape[-1] or 0 for end in ends), "axis: -1"
    )
    graph.stack(layers, joined)
    return Summary(graph.rows, members)


def render_table(summary: Summary) -> Group:
    """The layer table followed by the totals, as Axon prints them; an ensemble's table is a
    member's, titled with how many there are, and its totals count every member."""
    title = None
    if summary.members > 1:
        title = f"{summary.members} x this network (model.ensemble: {summary.members})"
    table = Table(box=box.SQUARE, title=title)
    for header in ("Layer", "Input shape", "Output shape"):
        table.add_column(header, no_wrap=True)
    table.add_column("Options")
    table.add_column("Parameters")
    for row in summary.rows:
        parents = ", ".join(f'"{parent}"' for parent in row.parents)
        label = f"{row.name} ( {row.op}[{parents}] )" if row.parents else f"{row.name} ( input )"
        table.add_row(
            label,
            ", ".join(_shape(shape) for shape in row.input_shapes),
            _shape(row.output_shape),
            row.options,
            _parameters(row),
        )
    total = f"{summary.total_parameters:,}"
    if summary.members > 1:
        total = f"{summary.members} x {summary.member_parameters:,} = {total}"
    totals = Text(f"Total parameters: {total}\nParameter memory: {summary.parameter_bytes:,} bytes")
    return Group(table, totals)


def render_text(summary: Summary, width: int = 120) -> str:
    """The table as plain text (no colour), as written to summary.txt."""
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    console.print(render_table(summary))
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


def _parameters(row: Row) -> str:
    """`264 = weight f32[8,32] + bias f32[8]`: the count and where it comes from."""
    if not row.parameters:
        return ""
    parts = " + ".join(
        f"{name} f32[{','.join(map(str, shape))}]" for name, shape in row.parameters.items()
    )
    return f"{row.count:,} = {parts}"


def _shape(shape: tuple[int | None, ...]) -> str:
    return (
        "" if not shape else "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"
    )


def render_mermaid(summary: Summary) -> str:
    """The model as a Mermaid flowchart, as Axon's as_graph draws it: one node per row."""
    lines = ["flowchart TD"]
    if summary.members > 1:  # a Mermaid comment: the chart is one member's
        lines.append(f"    %% one of the {summary.members} networks of model.ensemble")
    for row in summary.rows:
        detail = f"{row.op} {_shape(row.output_shape)}"
        if row.count:
            detail += f" · {row.count:,} params"
        lines.append(f'    {row.name}["{row.name}<br/>{detail}"]')
    for row in summary.rows:
        lines += [f"    {parent} --> {row.name}" for parent in row.parents]
    return "\n".join(lines) + "\n"
