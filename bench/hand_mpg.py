"""configs/mpg.yaml's experiment as one hand-written script, for whole-process timings.

    python bench/hand_mpg.py [--epochs 40] [--seed 1]

Only torch, numpy and pandas: reads data/mpg.csv, splits it as mlpkit does (a seeded numpy
permutation cut 80/10/10), standardizes the features with the training rows' mean and std,
trains 7 -> 32 relu -> 8 relu -> 1 with fused Adam (lr 1e-3), MSE, batch 1 on one thread, and
prints the test R2. bench/run.py times this process beside `mlpkit train configs/mpg.yaml`.
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
    args = parser.parse_args()
    torch.set_num_threads(1)

    frame = pd.read_csv(DATA)
    x_all = frame[FEATURES].to_numpy(dtype=np.float64)
    y_all = frame["mpg"].to_numpy(dtype=np.float64)
    order = np.random.default_rng(args.seed).permutation(len(frame))
    n_train, n_val = int(0.8 * len(order)), int(0.1 * len(order))
    train, test = order[:n_train], order[n_train + n_val :]
    mean, std = x_all[train].mean(axis=0), x_all[train].std(axis=0)

    def tensors(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(((x_all[rows] - mean) / std).astype(np.float32))
        return x, torch.from_numpy(y_all[rows].astype(np.float32))[:, None]

    x, y = tensors(train)
    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Linear(7, 32), nn.ReLU(), nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    loss_fn = nn.MSELoss()
    generator = torch.Generator().manual_seed(args.seed)
    started = time.perf_counter()
    for _ in range(args.epochs):
        shuffled = torch.randperm(len(x), generator=generator)
        xs, ys = x[shuffled], y[shuffled]
        for row in range(len(xs)):
            loss = loss_fn(model(xs[row : row + 1]), ys[row : row + 1])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - started

    x_test, y_test = tensors(test)
    with torch.no_grad():
        predicted = model(x_test)[:, 0].double()
    truth = y_test[:, 0].double()
    r2 = 1 - float(((truth - predicted) ** 2).sum() / ((truth - truth.mean()) ** 2).sum())
    print(f"test r2 {r2:.4f}; {len(train)} train rows, {args.epochs} epochs in {seconds:.2f} s")


if __name__ == "__main__":
    main()
