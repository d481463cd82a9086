"""Fit preprocessing on the training rows, apply it anywhere, and keep it as plain JSON.

Numeric features are standardized with the training rows' mean and standard deviation (a
constant column keeps scale 1, so it becomes all zeros instead of NaN). Categorical features are
one-hot encoded with the categories seen in training; a category never seen there encodes as all
zeros (the rule scikit-learn calls handle_unknown="ignore"). The target is optionally standardized
for training; predictions and metrics are always in its original units.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from mlpkit.schema import DataConfig


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class NumericFeature(_Frozen):
    name: str
    kind: Literal["numeric"] = "numeric"
    mean: float
    std: float = Field(gt=0)


class CategoricalFeature(_Frozen):
    name: str
    kind: Literal["categorical"] = "categorical"
    categories: list[str] = Field(min_length=1)


Feature = Annotated[NumericFeature | CategoricalFeature, Field(discriminator="kind")]


class TargetScale(_Frozen):
    """A regression target: trained as (y - mean) / std, reported in its own units."""

    kind: Literal["scale"] = "scale"
    name: str
    mean: float = 0.0
    std: float = Field(1.0, gt=0)

    def scale(self, values: np.ndarray) -> np.ndarray:
        return ((values - self.mean) / self.std).astype(np.float32)

    def unscale(self, values: np.ndarray) -> np.ndarray:
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
        """Model input columns in order, one-hot columns named `column=category`."""
        names: list[str] = []
        for feature in self.features:
            if isinstance(feature, CategoricalFeature):
                names += [f"{feature.name}={c}" for c in feature.categories]
            else:
                names.append(feature.name)
        return names

    def positions(self, feature_names: list[str]) -> list[int]:
        """Where these features' encoded columns sit among input_names, in the order given."""
        spans: dict[str, range] = {}
        start = 0
        for feature in self.features:
            width = len(feature.categories) if isinstance(feature, CategoricalFeature) else 1
            spans[feature.name] = range(start, start + width)
            start += width
        return [position for name in feature_names for position in spans[name]]

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Model inputs as float32, shape [rows, len(input_names)]."""
        blocks = []
        for feature in self.features:
            column = frame[feature.name]
            if isinstance(feature, CategoricalFeature):
                values = column.astype(str).to_numpy()
                blocks.append(values[:, None] == np.asarray(feature.categories)[None, :])
            else:
                values = column.to_numpy(dtype=np.float64)
                blocks.append(((values - feature.mean) / feature.std)[:, None])
        return np.concatenate(blocks, axis=1).astype(np.float32)


def fit_preprocessor(
    train: pd.DataFrame, data: DataConfig, classes: list[str] | None = None
) -> Preprocessor:
    """Learn scaling and categories from the training rows only.

    `classes` are a classification target's labels, taken from every row by the caller so a
    label seen only outside training still has its place among the model's outputs.
    """
    features: list[Feature] = []
    for name in data.features:
        if name in data.categorical:
            categories = sorted(set(train[name].astype(str)))
            features.append(CategoricalFeature(name=name, categories=categories))
        elif data.standardize:
            mean, std = _mean_std(train[name])
            features.append(NumericFeature(name=name, mean=mean, std=std))
        else:
            features.append(NumericFeature(name=name, mean=0.0, std=1.0))
    target: TargetScale | ClassLabels = TargetScale(name=data.target)
    if classes is not None:
        target = ClassLabels(name=data.target, classes=classes)
    elif data.scale_target:
        mean, std = _mean_std(train[data.target])
        target = TargetScale(name=data.target, mean=mean, std=std)
    return Preprocessor(features=features, target=target)


def _mean_std(column: pd.Series) -> tuple[float, float]:
    values = column.to_numpy(dtype=np.float64)
    std = float(values.std())
    return float(values.mean()), std if std > 0 else 1.0
