"""Fit preprocessing on the training rows, apply it anywhere, and keep it as plain JSON.

Numeric features are standardized with the training rows' mean and standard deviation (a
constant column keeps scale 1, so it becomes all zeros instead of NaN). Categorical features are
one-hot encoded with the categories seen in training; a category never seen there encodes as all
zeros (the rule scikit-learn calls handle_unknown="ignore"). The target is optionally standardized
for training; predictions and metrics are always in its original units.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from mlpkit.config import DataConfig


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
    name: str
    mean: float = 0.0
    std: float = Field(1.0, gt=0)


class Preprocessor(_Frozen):
    """Fitted state: everything needed to turn raw rows into model inputs, and back for targets."""

    format: Literal["mlpkit.preprocessing/1"] = "mlpkit.preprocessing/1"
    features: list[Feature] = Field(min_length=1)
    target: TargetScale

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

    def scale_target(self, values: np.ndarray) -> np.ndarray:
        return ((values - self.target.mean) / self.target.std).astype(np.float32)

    def unscale_target(self, values: np.ndarray) -> np.ndarray:
        return values.astype(np.float64) * self.target.std + self.target.mean


def fit_preprocessor(train: pd.DataFrame, data: DataConfig) -> Preprocessor:
    """Learn scaling and categories from the training rows only."""
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
    target = TargetScale(name=data.target)
    if data.scale_target:
        mean, std = _mean_std(train[data.target])
        target = TargetScale(name=data.target, mean=mean, std=std)
    return Preprocessor(features=features, target=target)


def _mean_std(column: pd.Series) -> tuple[float, float]:
    values = column.to_numpy(dtype=np.float64)
    std = float(values.std())
    return float(values.mean()), std if std > 0 else 1.0
