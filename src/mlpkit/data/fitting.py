"""Fit preprocessing on the training rows, in any number of chunks (a file read whole is one):
the statistics data/preprocessing.py's fitted state keeps. Numeric features: moments merged
chunk by chunk; categorical ones: counts; median-filled columns: a bounded uniform sample;
date features: the moments of each part; the target: moments, range or class counts.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlpkit.config.missing_rules import column_strategy
from mlpkit.config.schema import DataConfig
from mlpkit.data.dates import EXPECTED as DATE_EXPECTED
from mlpkit.data.dates import date_parts, parse_dates
from mlpkit.data.preprocessing import (
    CategoricalFeature,
    ClassLabels,
    DateFeature,
    Feature,
    NumericFeature,
    Preprocessor,
    TargetScale,
    canonical_label,
)
from mlpkit.errors import DataError, Problem, clip


def _most_frequent(counts: Counter[str | float]) -> str | float:
    """The most frequent value; among ties the smallest (scikit-learn's SimpleImputer's rule)."""
    top = max(counts.values())
    return min(value for value, count in counts.items() if count == top)


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

    def merged(self, other: _Moments) -> _Moments:
        """The moments of both sets of values together (this one is left as it is)."""
        both = _Moments(self.n, self.mean, self.m2)
        if other.n == 0:
            return both
        if both.n == 0:
            return _Moments(other.n, other.mean, other.m2)
        n = both.n + other.n
        delta = other.mean - both.mean
        both.mean += delta * other.n / n
        both.m2 += other.m2 + delta * delta * both.n * other.n / n
        both.n = n
        return both

    def mean_std(self) -> tuple[float, float]:
        std = math.sqrt(self.m2 / self.n) if self.n else 0.0
        return self.mean, std if std > 0 else 1.0


class _Reservoir:
    """Up to CAPACITY values drawn uniformly from all those added (every one while they fit):
    the median of a column streamed in chunks without holding the whole column. Seeded, so a
    run is reproducible."""

    CAPACITY = 1 << 20

    def __init__(self) -> None:
        self.seen = 0
        self.held = np.empty(0, dtype=np.float64)
        self.rng = np.random.default_rng(0)

    def add(self, values: np.ndarray) -> None:
        room = max(self.CAPACITY - len(self.held), 0)
        if room:
            self.held = np.concatenate([self.held, values[:room]])
        rest = values[room:]
        if len(rest):  # Algorithm R: value i replaces a held one with probability CAPACITY / i
            seen = self.seen + room + np.arange(1, len(rest) + 1)
            slots = self.rng.integers(0, seen)
            kept = slots < self.CAPACITY
            self.held[slots[kept]] = rest[kept]
        self.seen += len(values)

    def median(self) -> float:
        return float(np.median(self.held))


class TrainingRows:
    """What preprocessing and the task learn from the training rows, added in any number of
    chunks: feature moments, categories and the statistics missing cells are filled with, the
    target's moments and range, class counts."""

    def __init__(self, data: DataConfig, classification: bool) -> None:
        self.data, self.classification = data, classification
        self.rows = 0
        # numeric features: moments of the present values; the target's when it is scaled
        self.moments = {name: _Moments() for name in [*data.features, data.target]}
        self.missing: Counter[str] = Counter()  # feature -> missing cells seen
        self.counts: dict[str, Counter[str | float]] = {}  # categories, or most_frequent values
        self.samples: dict[str, _Reservoir] = {}  # median-filled columns
        for name in data.features:
            strategy = column_strategy(data, name)
            if name in data.categorical or strategy == "most_frequent":
                self.counts[name] = Counter()
            if strategy == "median":
                self.samples[name] = _Reservoir()
        # date features: moments of each part over the present values
        self.part_moments = {
            name: {part: _Moments() for part in parts} for name, parts in data.dates.items()
        }
        self.label_counts: Counter[str] = Counter()  # classification: canonical label -> rows
        self.target_range = (math.inf, -math.inf)  # regression: the target's min and max

    def add(self, train: pd.DataFrame) -> None:
        """Take in one more chunk of training rows."""
        self.rows += len(train)
        for name in self.data.features:
            if name in self.data.categorical:
                text = train[name].astype(str)
                present = text[text != ""]
                self.missing[name] += len(text) - len(present)
                self.counts[name].update(present.tolist())
                continue
            values = train[name].to_numpy(dtype=np.float64)
            present = values[~np.isnan(values)]
            self.missing[name] += len(values) - len(present)
            self.moments[name].add(present)
            if name in self.counts:
                found, times = np.unique(present, return_counts=True)
                self.counts[name].update(dict(zip(found.tolist(), times.tolist(), strict=True)))
            if name in self.samples:
                self.samples[name].add(present)
            if name in self.part_moments:
                parts = date_parts(present)
                for part, moments in self.part_moments[name].items():
                    moments.add(parts[part])
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
        labels (from every row, see fit_preprocessor), else the target is scaled or kept.

        Raises:
            DataError: a column to fill has no value in the training rows to fill it with.
        """
        data = self.data
        features: list[Feature] = [
            self._categorical(name)
            if name in data.categorical
            else self._date(name)
            if name in data.dates
            else self._numeric(name)
            for name in data.features
        ]
        target: TargetScale | ClassLabels = TargetScale(name=data.target)
        if classes is not None:
            target = ClassLabels(name=data.target, classes=classes)
        elif data.scale_target:
            mean, std = self.moments[data.target].mean_std()
            target = TargetScale(name=data.target, mean=mean, std=std)
        return Preprocessor(features=features, target=target)

    def _numeric(self, name: str) -> NumericFeature:
        """Scaling as it will see the column: missing cells at the fill value (impute, then
        standardize, as scikit-learn's pipeline of the two would)."""
        fill = self._numeric_fill(name)
        if not self.data.standardize:
            return NumericFeature(
                name=name, mean=0.0, std=1.0, fill=fill, indicator=self._flag(name)
            )
        moments = self.moments[name]
        if fill is not None and self.missing[name]:
            moments = moments.merged(_Moments(self.missing[name], fill, 0.0))
        mean, std = moments.mean_std()
        return NumericFeature(name=name, mean=mean, std=std, fill=fill, indicator=self._flag(name))

    def _date(self, name: str) -> DateFeature:
        """Each part's scaling as it will see the column: missing cells at the fill date."""
        fill = self._numeric_fill(name)
        parts = self.data.dates[name]
        means, stds = [0.0] * len(parts), [1.0] * len(parts)
        if self.data.standardize:
            filled = date_parts(np.asarray([fill if fill is not None else 0.0]))
            for i, part in enumerate(parts):
                moments = self.part_moments[name][part]
                if fill is not None and self.missing[name]:
                    at_fill = _Moments(self.missing[name], float(filled[part][0]), 0.0)
                    moments = moments.merged(at_fill)
                means[i], stds[i] = moments.mean_std()
        return DateFeature(
            name=name,
            parts=parts,
            means=means,
            stds=stds,
            fill=fill,
            indicator=self._flag(name),
        )

    def _numeric_fill(self, name: str) -> float | None:
        strategy = column_strategy(self.data, name)
        if strategy == "error":
            return None
        if strategy == "constant":
            value = self._constant(name)
            if name in self.data.dates:
                return self._constant_date(name, str(value))
            return float(value)
        if self.moments[name].n == 0:
            raise self._no_values(name, strategy)
        if strategy == "mean":
            return self.moments[name].mean
        if strategy == "median":
            return self.samples[name].median()
        return float(_most_frequent(self.counts[name]))

    def _categorical(self, name: str) -> CategoricalFeature:
        strategy = column_strategy(self.data, name)
        seen = self.counts[name]
        fill: str | None = None
        if strategy == "constant":
            fill = canonical_label(self._constant(name))
        elif strategy == "most_frequent":
            if not seen:
                raise self._no_values(name, strategy)
            fill = str(_most_frequent(seen))
        categories = {str(category) for category in seen}
        if fill is not None and self.missing[name]:
            categories.add(fill)
        if not categories:
            raise self._no_values(name, "one-hot encoding")
        markers = (
            sorted(self.data.missing.markers) if fill is not None and self.data.missing else []
        )
        return CategoricalFeature(
            name=name,
            categories=sorted(categories),
            fill=fill,
            indicator=self._flag(name),
            markers=[marker.strip().lower() for marker in markers],
        )

    def _constant(self, name: str) -> float | str:
        assert self.data.missing is not None
        value = self.data.missing.value_for(name)
        assert value is not None  # missing_rules refuses a constant without a value
        return value

    def _constant_date(self, name: str, value: str) -> float:
        seconds, bad = parse_dates(pd.Series([value.strip()]))
        if bad[0] or np.isnan(seconds[0]):
            raise DataError(
                Problem(
                    f"the constant '{clip(value, 40)}' for the date column '{name}' is not a date",
                    where="data.missing",
                    hint=DATE_EXPECTED,
                )
            )
        return float(seconds[0])

    def _flag(self, name: str) -> bool:
        missing = self.data.missing
        filled = column_strategy(self.data, name) != "error"
        return filled and missing is not None and missing.indicator_for(name)

    def _no_values(self, name: str, need: str) -> DataError:
        return DataError(
            Problem(
                f"no value in the {self.rows:,} training rows to take the {need} of",
                where=f"column '{name}'",
                hint="fill it with a constant (data.missing.columns), or leave it out",
            )
        )

    def class_counts(self, classes: list[str]) -> np.ndarray:
        """Training rows per class, in the order of `classes`."""
        return np.asarray([self.label_counts[label] for label in classes], dtype=np.int64)
