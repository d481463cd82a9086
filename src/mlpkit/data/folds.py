"""k-fold cross-validation's cut of a table's rows: the held-out test rows, then K folds.

The seed shuffles each class's rows (all rows as one class for regression), as split_rows does;
the last `test` fraction of each class is held out for testing, in no fold. The rest are dealt
to the folds in turn, class after class, so each fold holds every class in nearly the same
share (counts differ by at most one per class) and the folds' sizes differ by at most one.
Fold i validates on its part and trains on the other parts. The cut depends on the seed, the
rows, the labels, `test` and K only, never on which fold is asked for: the K fold runs of one
cross-validation share it, and each can derive it again from its own config (eval, resume).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Folds:
    """Where each row went: the test rows, and each other row's fold (0-based)."""

    test: np.ndarray  # row positions held out, in no fold
    order: np.ndarray  # the other rows, in the seeded order every fold trains in
    fold_of: np.ndarray  # per row of the table: its fold, or -1 for a test row
    count: int  # K

    def part(self, fold: int) -> np.ndarray:
        """The rows fold `fold` (from 1) validates on, in the seeded order."""
        in_fold: np.ndarray = self.order[self.fold_of[self.order] == fold - 1]
        return in_fold

    def rest(self, fold: int) -> np.ndarray:
        """The rows fold `fold` (from 1) trains on: every other fold's part."""
        others: np.ndarray = self.order[self.fold_of[self.order] != fold - 1]
        return others


def cut_folds(
    n_rows: int, test: float, folds: int, seed: int, labels: np.ndarray | None = None
) -> Folds:
    """Hold out `test` of the rows (of each class, with `labels`), deal the rest into `folds`.

    A part may be empty when there are fewer rows than folds: table.check_split says so.
    """
    rng = np.random.default_rng(seed)
    if labels is None:
        groups = [np.arange(n_rows)]
    else:
        groups = [np.flatnonzero(labels == label) for label in sorted(set(labels.tolist()))]
    kept, held = [], []
    for rows in groups:
        shuffled = rng.permutation(rows)
        n_kept = math.floor((1 - test) * len(shuffled) + 1e-9)  # (1 - 0.9) x 10 is 0.99...98
        kept.append(shuffled[:n_kept])
        held.append(shuffled[n_kept:])
    dealt = np.concatenate(kept)  # class after class: dealing in turn spreads each class
    fold_of = np.full(n_rows, -1, dtype=np.int64)
    fold_of[dealt] = np.arange(len(dealt)) % folds
    return Folds(
        test=rng.permutation(np.concatenate(held)),
        order=rng.permutation(dealt),
        fold_of=fold_of,
        count=folds,
    )
