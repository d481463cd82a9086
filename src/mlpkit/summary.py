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

from mlpkit.config import BatchNormLayer, DenseLayer, DropoutLayer, Layer

BYTES_PER_PARAMETER = 4  # float32


@dataclass(frozen=True)
class Row:
    name: str
    op: str
    parent: str
    input_shape: tuple[int | None, ...]
    output_shape: tuple[int | None, ...]
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

    @property
    def total_parameters(self) -> int:
        return sum(row.count for row in self.rows)

    @property
    def parameter_bytes(self) -> int:
        return self.total_parameters * BYTES_PER_PARAMETER


def summarize(layers: list[Layer], in_features: int) -> Summary:
    """One row per graph node, as Axon lists them: input, dense, its activation, and so on."""
    rows = [Row("input", "input", "", (), (None, in_features), f"shape: (None, {in_features})", {})]
    counts: dict[str, int] = {}

    def add(op: str, width_out: int, options: str, parameters: dict[str, tuple[int, ...]]) -> None:
        index = counts.get(op, 0)
        counts[op] = index + 1
        previous = rows[-1]
        rows.append(
            Row(
                f"{op}_{index}",
                op,
                previous.name,
                previous.output_shape,
                (None, width_out),
                options,
                parameters,
            )
        )

    width = in_features
    for layer in layers:
        if isinstance(layer, DenseLayer):
            parameters: dict[str, tuple[int, ...]] = {"weight": (layer.units, width)}
            if layer.bias:
                parameters["bias"] = (layer.units,)
            add(
                "dense",
                layer.units,
                f"units: {layer.units}, bias: {str(layer.bias).lower()}",
                parameters,
            )
            width = layer.units
            if layer.activation != "linear":
                add(layer.activation, width, "", {})
        elif isinstance(layer, DropoutLayer):
            add("dropout", width, f"rate: {layer.rate:g}", {})
        elif isinstance(layer, BatchNormLayer):
            add(
                "batch_norm",
                width,
                f"momentum: {layer.momentum:g}, eps: {layer.eps:g}",
                {"weight": (width,), "bias": (width,)},
            )
    return Summary(rows)


def render_table(summary: Summary) -> Group:
    """The layer table followed by the totals, as Axon prints them."""
    table = Table(box=box.SQUARE)
    for header in ("Layer", "Input shape", "Output shape"):
        table.add_column(header, no_wrap=True)
    table.add_column("Options")
    table.add_column("Parameters")
    for row in summary.rows:
        label = (
            f'{row.name} ( {row.op}["{row.parent}"] )' if row.parent else f"{row.name} ( input )"
        )
        table.add_row(
            label, _shape(row.input_shape), _shape(row.output_shape), row.options, _parameters(row)
        )
    totals = Text(
        f"Total parameters: {summary.total_parameters:,}\n"
        f"Parameter memory: {summary.parameter_bytes:,} bytes"
    )
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
