"""configs/mpg.yaml's experiment as one hand-written script, for whole-process timings.

    python bench/hand_mpg.py [--epochs 40] [--seed 1] [--seeds N | --folds K]

Only torch, numpy and pandas: reads data/mpg.csv, splits it as mlpkit does (a seeded numpy
permutation cut 80/10/10), standardizes the features with the training rows' mean and std,
trains 7 -> 32 relu -> 8 relu -> 1 with fused Adam (lr 1e-3), MSE, batch 1 on one thread, and
prints the test R2. `--seeds N` does it for seeds seed .. seed + N - 1, one after another in
this process (what `mlpkit train --seeds N` does); `--folds K` cuts the non-test rows into K
folds and trains K networks, each on the other folds, scoring its own fold (what `mlpkit train
--folds K` does, less its files). bench/startup.py and bench/group.py time this process beside
mlpkit's.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

FEATURES = ["cylinders", "displacement", "horsepower", "weight", "acceleration", "model_year"]
FEATURES += ["origin"]
DATA = Path(__file__).resolve().parent.parent / "data" / "mpg.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--folds", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    frame = pd.read_csv(DATA)
    x_all = frame[FEATURES].to_numpy(dtype=np.float64)
    y_all = frame["mpg"].to_numpy(dtype=np.float64)
    started = time.perf_counter()
    if args.folds:
        order = np.random.default_rng(args.seed).permutation(len(frame))
        rest = order[: len(order) - int(0.1 * len(order))]
        parts = np.array_split(rest, args.folds)
        for fold, held in enumerate(parts):
            train = np.concatenate([part for i, part in enumerate(parts) if i != fold])
            r2 = fit_and_score(x_all, y_all, train, held, args.seed, args.epochs)
            print(f"fold {fold + 1}: r2 {r2:.4f}")
    for seed in range(args.seed, args.seed + (0 if args.folds else args.seeds)):
        order = np.random.default_rng(seed).permutation(len(frame))
        n_train, n_val = int(0.8 * len(order)), int(0.1 * len(order))
        train, test = order[:n_train], order[n_train + n_val :]
        r2 = fit_and_score(x_all, y_all, train, test, seed, args.epochs)
        print(f"seed {seed}: test r2 {r2:.4f}; {len(train)} train rows, {args.epochs} epochs")
    print(f"{time.perf_counter() - started:.2f} s")


def fit_and_score(
    x_all: np.ndarray,
    y_all: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    seed: int,
    epochs: int,
) -> float:
    """Train on the `train` rows (features standardized on them), return R2 on `test`."""
    mean, std = x_all[train].mean(axis=0), x_all[train].std(axis=0)

    def tensors(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(((x_all[rows] - mean) / std).astype(np.float32))
        return x, torch.from_numpy(y_all[rows].astype(np.float32))[:, None]

    x, y = tensors(train)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(7, 32), nn.ReLU(), nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    loss_fn = nn.MSELoss()
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        shuffled = torch.randperm(len(x), generator=generator)
        xs, ys = x[shuffled], y[shuffled]
        for row in range(len(xs)):
            loss = loss_fn(model(xs[row : row + 1]), ys[row : row + 1])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    x_test, y_test = tensors(test)
    with torch.no_grad():
        predicted = model(x_test)[:, 0].double()
    truth = y_test[:, 0].double()
    return 1 - float(((truth - predicted) ** 2).sum() / ((truth - truth.mean()) ** 2).sum())


if __name__ == "__main__":
    main()
