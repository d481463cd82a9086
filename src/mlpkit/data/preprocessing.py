"""Fit preprocessing on the training rows, apply it anywhere, and keep it as plain JSON.

Numeric features are standardized with the training rows' mean and standard deviation (a
constant column keeps scale 1, so it becomes all zeros instead of NaN). Categorical features are
one-hot encoded with the categories seen in training; a category never seen there encodes as all
zeros (the rule scikit-learn calls handle_unknown="ignore"). The target is optionally standardized
for training; predictions and metrics are always in its original units.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from mlpkit.config.schema import DataConfig


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
    """Learn scaling and categories from the training rows only (all of them at once).

    `classes` are a classification target's labels, taken from every row by the caller so a
    label seen only outside training still has its place among the model's outputs.
    """
    fit = TrainingRows(data, classification=classes is not None)
    fit.add(train)
    return fit.preprocessor(classes)


@dataclass
class _Moments:
    """Count, mean and sum of squared deviations, merged chunk by chunk (Chan et al.), so a
    column streamed in pieces gets the mean and std that one pass over all of it would give."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values: np.ndarray) -> None:
        if len(values) == 0:
            return
        mean = float(values.mean())
        m2 = float(((values - mean) ** 2).sum())
        if self.n == 0:  # the first chunk as numpy computes it: one chunk == numpy's std
            self.n, self.mean, self.m2 = len(values), mean, m2
            return
        n = self.n + len(values)
        delta = mean - self.mean
        self.mean += delta * len(values) / n
        self.m2 += m2 + delta * delta * self.n * len(values) / n
        self.n = n

    def mean_std(self) -> tuple[float, float]:
        std = math.sqrt(self.m2 / self.n) if self.n else 0.0
        return self.mean, std if std > 0 else 1.0


class TrainingRows:
    """What preprocessing and the task learn from the training rows, added in any number of
    chunks: feature moments and categories, the target's moments and range, class counts."""

    def __init__(self, data: DataConfig, classification: bool) -> None:
        self.data, self.classification = data, classification
        self.rows = 0
        self.moments = {name: _Moments() for name in [*data.features, data.target]}
        self.categories: dict[str, set[str]] = {name: set() for name in data.categorical}
        self.label_counts: Counter[str] = Counter()  # classification: canonical label -> rows
        self.target_range = (math.inf, -math.inf)  # regression: the target's min and max

    def add(self, train: pd.DataFrame) -> None:
        """Take in one more chunk of training rows."""
        self.rows += len(train)
        for name in self.data.features:
            if name in self.data.categorical:
                self.categories[name].update(train[name].astype(str).unique().tolist())
            elif self.data.standardize:
                self.moments[name].add(train[name].to_numpy(dtype=np.float64))
        target = train[self.data.target]
        if self.classification:
            for label, count in target.value_counts(sort=False).items():
                self.label_counts[canonical_label(label)] += int(count)
        elif len(target):
            values = target.to_numpy(dtype=np.float64)
            low, high = self.target_range
            self.target_range = (min(low, float(values.min())), max(high, float(values.max())))
            if self.data.scale_target:
                self.moments[self.data.target].add(values)

    def preprocessor(self, classes: list[str] | None = None) -> Preprocessor:
        """The fitted state of the rows added so far; `classes`: a classification target's
        labels (from every row, see fit_preprocessor), else the target is scaled or kept."""
        data = self.data
        features: list[Feature] = []
        for name in data.features:
            if name in data.categorical:
                categories = sorted(self.categories[name])
                features.append(CategoricalFeature(name=name, categories=categories))
            elif data.standardize:
                mean, std = self.moments[name].mean_std()
                features.append(NumericFeature(name=name, mean=mean, std=std))
            else:
                features.append(NumericFeature(name=name, mean=0.0, std=1.0))
        target: TargetScale | ClassLabels = TargetScale(name=data.target)
        if classes is not None:
            target = ClassLabels(name=data.target, classes=classes)
        elif data.scale_target:
            mean, std = self.moments[data.target].mean_std()
            target = TargetScale(name=data.target, mean=mean, std=std)
        return Preprocessor(features=features, target=target)

    def class_counts(self, classes: list[str]) -> np.ndarray:
        """Training rows per class, in the order of `classes`."""
        return np.asarray([self.label_counts[label] for label in classes], dtype=np.int64)
