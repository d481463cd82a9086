"""Synthetic data sources: seeded generators of endless batches, for examples, tests, benchmarks.

A source names its columns (x1..xN and the target y) and draws rows from a fixed distribution:
the "world" (regression weights, class centres) comes from a generator seeded by the source's
own settings, the rows from the run's seed. Training reads an IterableDataset drawn afresh
each epoch from (seed, epoch); validation and test rows are drawn once, from seeds derived
from the run's seed, so `mlpkit eval` draws exactly the same ones again.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch
from torch.utils.data import IterableDataset

from mlpkit.config.schema import ClassificationSource, RegressionSource, Source, XorSource

TARGET = "y"


def columns(source: Source) -> list[str]:
    """The feature columns a source generates (the target is always y)."""
    width = 2 if isinstance(source, XorSource) else source.features
    return [f"x{i}" for i in range(1, width + 1)]


def classes(source: Source) -> list[str] | None:
    """The labels of a classification source, None for a regression one."""
    if isinstance(source, XorSource):
        return ["0", "1"]
    if isinstance(source, ClassificationSource):
        return [str(i) for i in range(source.classes)]
    return None


def draw(
    source: Source, rows: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """`rows` rows: features [rows, width] as float32, and the target: float64 values for a
    regression source, class indices (int64, into `classes(source)`) for the others."""
    if isinstance(source, XorSource):
        x = torch.randint(0, 2, (rows, 2), generator=generator).float()
        return x, (x[:, 0] != x[:, 1]).long()
    world = torch.Generator().manual_seed(source.features)  # the same world for every run
    if isinstance(source, RegressionSource):
        weights = torch.randn(source.features, generator=world)
        x = torch.randn(rows, source.features, generator=generator)
        noise = source.noise * torch.randn(rows, generator=generator)
        return x, (x @ weights + noise).double()
    centres = 2 * torch.randn(source.classes, source.features, generator=world)
    labels = torch.randint(0, source.classes, (rows,), generator=generator)
    x = centres[labels] + torch.randn(rows, source.features, generator=generator)
    return x, labels


def table(source: Source, rows: int, seed: int) -> pd.DataFrame:
    """A finite table of `rows` rows, as read_table would give it (features, then y)."""
    x, y = draw(source, rows, torch.Generator().manual_seed(seed))
    frame = pd.DataFrame(x.double().numpy(), columns=columns(source))
    labels = classes(source)
    frame[TARGET] = y.numpy() if labels is None else np.asarray(labels)[y.numpy()]
    return frame


class SyntheticBatches(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    """Endless batches of raw rows: (features [batch, width], targets as `draw` gives them)."""

    def __init__(self, source: Source, batch_size: int, seed: int) -> None:
        super().__init__()
        self.source, self.batch_size, self.seed = source, batch_size, seed

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed)
        while True:
            yield draw(self.source, self.batch_size, generator)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch's training rows: each epoch is drawn afresh from (seed, epoch), so
    a resumed run draws the same rows without replaying the epochs before. Under torchrun each
    rank other than 0 draws its own stream (rank 0's is a single process's)."""
    entropy = [seed, 2, epoch] + ([rank] if rank else [])
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def batches(
    source: Source, batch_size: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The stream's batches, read in this process: a DataLoader without workers would add its
    per-batch overhead (a third of a small model's step) and draw the very same rows."""
    return iter(SyntheticBatches(source, batch_size, seed))
