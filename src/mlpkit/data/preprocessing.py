"""Preprocessing's fitted state: apply it anywhere, and keep it as plain JSON (data/fitting.py
learns it from the training rows).

Numeric features are standardized with the training rows' mean and standard deviation (a
constant column keeps scale 1, so it becomes all zeros instead of NaN). Categorical features are
one-hot encoded with the categories seen in training; a category never seen there encodes as all
zeros (the rule scikit-learn calls handle_unknown="ignore"). The target is optionally standardized
for training; predictions and metrics are always in its original units. Date features become
their standardized parts; a missing cell takes its column's fill (data.missing).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mlpkit.config.schema import DatePart
from mlpkit.data.dates import date_parts

if TYPE_CHECKING:
    import pandas as pd  # frames come from the callers that read tables


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class NumericFeature(_Frozen):
    name: str
    kind: Literal["numeric"] = "numeric"
    mean: float
    std: float = Field(gt=0)
    fill: float | None = None  # what a missing cell (NaN) becomes; None: none is expected
    indicator: bool = False  # an is-missing input (0/1) follows the column

    @property
    def width(self) -> int:
        return 1 + self.indicator

    def encode(self, values: np.ndarray) -> list[np.ndarray]:
        """float64 values (NaN: missing) -> the model's columns for them, [rows, 1] each."""
        missing = np.isnan(values)
        if self.fill is not None:
            values = np.where(missing, self.fill, values)
        blocks = [((values - self.mean) / self.std)[:, None]]
        return [*blocks, missing[:, None]] if self.indicator else blocks


class CategoricalFeature(_Frozen):
    name: str
    kind: Literal["categorical"] = "categorical"
    categories: list[str] = Field(min_length=1)
    fill: str | None = None  # what a missing cell ("" once read) becomes; None: not expected
    indicator: bool = False
    # text an exported model also takes as missing (lowercase, stripped); mlpkit's own reader
    # turns these into "" before preprocessing
    markers: list[str] = Field(default_factory=list)

    @property
    def width(self) -> int:
        return len(self.categories) + self.indicator

    def encode(self, values: np.ndarray) -> list[np.ndarray]:
        """Text values ("": missing) -> one-hot columns [rows, categories] (then is-missing)."""
        missing = values == ""
        if self.fill is not None:
            values = np.where(missing, self.fill, values)
        blocks = [values[:, None] == np.asarray(self.categories)[None, :]]
        return [*blocks, missing[:, None]] if self.indicator else blocks


class DateFeature(_Frozen):
    """A date column (seconds since 1970-01-01 UTC once read) as its standardized parts."""

    name: str
    kind: Literal["date"] = "date"
    parts: list[DatePart] = Field(min_length=1)
    means: list[float]  # per part, of the training rows (after filling)
    stds: list[Annotated[float, Field(gt=0)]]
    fill: float | None = None  # seconds a missing cell (NaN) becomes; None: none is expected
    indicator: bool = False

    @property
    def width(self) -> int:
        return len(self.parts) + self.indicator

    def encode(self, values: np.ndarray) -> list[np.ndarray]:
        """Seconds (NaN: missing) -> the parts' columns [rows, parts] (then is-missing)."""
        missing = np.isnan(values)
        if self.fill is not None:
            values = np.where(missing, self.fill, values)
        found = date_parts(values)
        columns = np.stack([found[part] for part in self.parts], axis=1)
        blocks = [(columns - np.asarray(self.means)) / np.asarray(self.stds)]
        return [*blocks, missing[:, None]] if self.indicator else blocks


Feature = Annotated[NumericFeature | CategoricalFeature | DateFeature, Field(discriminator="kind")]


class TargetScale(_Frozen):
    """A regression target: trained as (y - mean) / std, reported in its own units."""

    kind: Literal["scale"] = "scale"
    name: str
    mean: float = 0.0
    std: float = Field(1.0, gt=0)

    def scale(self, values: np.ndarray) -> np.ndarray:
        """Target values as the model trains on them, float32."""
        return ((values - self.mean) / self.std).astype(np.float32)

    def unscale(self, values: np.ndarray) -> np.ndarray:
        """Model outputs back in the target's own units, float64."""
        return values.astype(np.float64) * self.std + self.mean


class ClassLabels(_Frozen):
    """A classification target: its labels as text, in the order of the model's outputs."""

    kind: Literal["classes"] = "classes"
    name: str
    classes: list[str] = Field(min_length=2)

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Class index per value; -1 for a label this run never saw."""
        index = {label: i for i, label in enumerate(self.classes)}
        return np.asarray([index.get(canonical_label(v), -1) for v in values], dtype=np.int64)


def canonical_label(value: object) -> str:
    """A label as text, one spelling per number: 1, 1.0 and 01 are all "1"; text stays as is."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number):
        return text
    return str(int(number)) if number.is_integer() and abs(number) < 2**53 else repr(number)


def sorted_labels(values: np.ndarray) -> list[str]:
    """Distinct labels, in numeric order when they are all numbers (2 before 10), else text."""
    labels = sorted({canonical_label(v) for v in values})
    try:
        return sorted(labels, key=float)
    except ValueError:
        return labels


Target = Annotated[TargetScale | ClassLabels, Field(discriminator="kind")]


class Preprocessor(_Frozen):
    """Fitted state: everything needed to turn raw rows into model inputs, and back for targets."""

    format: Literal["mlpkit.preprocessing/1"] = "mlpkit.preprocessing/1"
    features: list[Feature] = Field(min_length=1)
    target: Target

    @property
    def input_names(self) -> list[str]:
        """Model input columns in order: one-hot columns named `column=category`, date parts
        `column:year`, an is-missing input `column:missing`."""
        names: list[str] = []
        for feature in self.features:
            if isinstance(feature, CategoricalFeature):
                names += [f"{feature.name}={c}" for c in feature.categories]
            elif isinstance(feature, DateFeature):
                names += [f"{feature.name}:{part}" for part in feature.parts]
            else:
                names.append(feature.name)
            if feature.indicator:
                names.append(f"{feature.name}:missing")
        return names

    def positions(self, feature_names: list[str]) -> list[int]:
        """Where these features' encoded columns sit among input_names, in the order given."""
        spans: dict[str, range] = {}
        start = 0
        for feature in self.features:
            spans[feature.name] = range(start, start + feature.width)
            start += feature.width
        return [position for name in feature_names for position in spans[name]]

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Model inputs as float32, shape [rows, len(input_names)]: missing cells filled."""
        blocks = []
        for feature in self.features:
            column = frame[feature.name]
            if isinstance(feature, CategoricalFeature):
                blocks += feature.encode(column.astype(str).to_numpy())
            else:
                blocks += feature.encode(column.to_numpy(dtype=np.float64))
        return np.concatenate(blocks, axis=1).astype(np.float32)
