"""A trained network with its preprocessing as one TorchScript module: the Pipeline.

The module takes the raw feature columns and gives predict's numbers (the contract is in
flows/export.py): forward(numbers: Dict[str, Tensor], categories: Dict[str, List[str]]), each
numeric column float64 [batch] and each categorical column its text; inside, as
preprocessing.transform computes them: missing cells filled as data.missing says (NaN in a
numeric column; empty text or a marker such as NA in a categorical one) with their is-missing
inputs, standardizing in float64 rounded to float32 and one-hot (a category not seen in
training is all zeros); the network, traced, in float32; predict's output in float64. Its
attributes say how to call it and read it.
"""

# No `from __future__ import annotations`: TorchScript reads Pipeline's annotations as types,
# and would find strings.
import contextlib
import io
import warnings
from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn

from mlpkit.data.dates import date_parts
from mlpkit.data.preprocessing import (
    CategoricalFeature,
    DateFeature,
    NumericFeature,
    Preprocessor,
)
from mlpkit.report.onnx_graph import output_name, raw_columns
from mlpkit.train.tasks import Regression, Task


class Pipeline(nn.Module):
    """The TorchScript model: raw columns in, predict's numbers out (see the module docstring).

    Its attributes say how to call it and read it: `columns`, `categorical` (the text
    columns), `output` (its name for what it returns) and `classes`.
    """

    columns: list[str]
    categorical: list[str]
    output: str
    classes: list[str]
    means: list[float]  # per column; categorical and date columns 0
    stds: list[float]  # per column; categorical and date columns 1
    parts: list[list[str]]  # date columns: the parts, in order; other columns []
    part_means: list[list[float]]  # date columns: per part
    part_stds: list[list[float]]
    codes: list[dict[str, int]]  # per column: category -> its one-hot position; numeric {}
    fills: list[bool]  # per column: whether a missing cell is filled (data.missing)
    number_fills: list[float]  # numeric columns: a missing cell (NaN) becomes this
    text_fills: list[str]  # categorical columns: a missing cell (a marker) becomes this
    markers: list[list[str]]  # categorical columns: text that is missing (lowercase)
    indicators: list[bool]  # per column: an is-missing input follows it
    target_mean: float  # regression: predictions are outputs * target_std + target_mean
    target_std: float

    def __init__(self, preprocessor: Preprocessor, traced: nn.Module, task: Task) -> None:
        super().__init__()
        features = preprocessor.features
        self.columns = [feature.name for feature in features]
        self.categorical = [f.name for f in features if isinstance(f, CategoricalFeature)]
        self.means = [f.mean if isinstance(f, NumericFeature) else 0.0 for f in features]
        self.stds = [f.std if isinstance(f, NumericFeature) else 1.0 for f in features]
        dates = [f if isinstance(f, DateFeature) else None for f in features]
        self.parts = [list(f.parts) if f is not None else [] for f in dates]
        self.part_means = [list(f.means) if f is not None else [] for f in dates]
        self.part_stds = [list(f.stds) if f is not None else [] for f in dates]
        self.codes = [
            {c: i for i, c in enumerate(f.categories)} if isinstance(f, CategoricalFeature) else {}
            for f in features
        ]
        self.fills = [f.fill is not None for f in features]
        self.number_fills = [
            f.fill if not isinstance(f, CategoricalFeature) and f.fill is not None else 0.0
            for f in features
        ]
        self.text_fills = [
            f.fill if isinstance(f, CategoricalFeature) and f.fill is not None else ""
            for f in features
        ]
        self.markers = [f.markers if isinstance(f, CategoricalFeature) else [] for f in features]
        self.indicators = [f.indicator for f in features]
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
                # stripped as mlpkit's reader strips every cell; a missing one filled
                texts = [v.strip() for v in categories[name]]
                absent = [
                    (v.lower() in self.markers[i]) if self.fills[i] else v == "" for v in texts
                ]
                if self.fills[i]:
                    texts = [self.text_fills[i] if absent[j] else v for j, v in enumerate(texts)]
                codes = torch.tensor([known.get(v, -1) for v in texts])  # [batch]
                hot = codes.unsqueeze(1) == torch.arange(len(known)).unsqueeze(0)
                blocks.append(hot.to(torch.float32))  # [batch, categories]; unknown: zeros
                missing = torch.tensor(absent, dtype=torch.bool)
            else:
                if name not in numbers:
                    raise ValueError("missing numeric column '" + name + "' in numbers")
                column = numbers[name].to(torch.float64)  # [batch]
                missing = torch.isnan(column)
                if self.fills[i]:
                    column = torch.where(missing, self.number_fills[i], column)
                if len(self.parts[i]) > 0:  # a date: seconds since 1970 -> its parts
                    found = date_parts(column)
                    for k, part in enumerate(self.parts[i]):
                        scaled = (found[part] - self.part_means[i][k]) / self.part_stds[i][k]
                        blocks.append(scaled.to(torch.float32).unsqueeze(1))
                else:
                    scaled = (column - self.means[i]) / self.stds[i]
                    blocks.append(scaled.to(torch.float32).unsqueeze(1))
            if self.indicators[i]:
                blocks.append(missing.to(torch.float32).unsqueeze(1))  # [batch, 1]
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
