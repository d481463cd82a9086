"""W5's hand-written peer: train on a CSV larger than memory with pandas read_csv(chunksize).

    python bench/stream_hand.py CSV [--seed 0] [--chunk-rows 65536] [--batch 1024]

The CSV is bench/stream_memory.py's (x1..x4, y). Like `mlpkit train` with data.stream: true it
makes two passes: the first fits the features' mean and std on the training rows and keeps a
test sample (the first 10,000 test rows), the second (timed) trains one epoch: each chunk's
training rows standardized and shuffled, batches of 1024 cut across chunk boundaries, the model
4 -> 32 relu -> 1 with fused Adam (lr 1e-3), MSE, one thread. Each row's part (80% train, 10%
val, 10% test) is drawn from a generator seeded by (seed, chunk number): the same in both
passes. Chunks are read in file order (mlpkit shuffles its blocks' order). Prints one JSON line:
seconds (the training pass), steps, r2 (on the test sample), threads, notes.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

FEATURES = ["x1", "x2", "x3", "x4"]
TEST_ROWS = 10_000


def chunks(path: Path, chunk_rows: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(chunk [rows, 5] float32 with y last, part per row: 0 train, 1 val, 2 test)."""
    reader = pd.read_csv(path, chunksize=chunk_rows, dtype=np.float32)
    for number, frame in enumerate(reader):
        values = frame[[*FEATURES, "y"]].to_numpy()
        u = np.random.default_rng([seed, number]).random(len(values))
        yield values, np.digitize(u, [0.8, 0.9])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk-rows", type=int, default=65_536)
    parser.add_argument("--batch", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(1)

    # Pass 1: mean and std of the training rows, and the test sample.
    total = np.zeros(len(FEATURES))
    squares = np.zeros(len(FEATURES))
    count = 0
    test: list[np.ndarray] = []
    kept = 0
    for values, part in chunks(args.csv, args.chunk_rows, args.seed):
        train = values[part == 0, :-1].astype(np.float64)
        total += train.sum(axis=0)
        squares += (train**2).sum(axis=0)
        count += len(train)
        if kept < TEST_ROWS:
            test.append(values[part == 2][: TEST_ROWS - kept])
            kept += len(test[-1])
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0))
    std = np.where(std > 0, std, 1.0)  # a constant column standardizes to zeros
    mean_t = torch.tensor(mean, dtype=torch.float32)
    std_t = torch.tensor(std, dtype=torch.float32)

    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Linear(len(FEATURES), 32), nn.ReLU(), nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    loss_fn = nn.MSELoss()
    generator = torch.Generator().manual_seed(args.seed)
    steps = 0

    def step(rows: torch.Tensor) -> None:
        nonlocal steps
        loss = loss_fn(model(rows[:, :-1]), rows[:, -1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1

    # Pass 2 (timed): one epoch.
    started = time.perf_counter()
    leftover = torch.empty(0, len(FEATURES) + 1)
    for values, part in chunks(args.csv, args.chunk_rows, args.seed):
        rows = torch.from_numpy(values[part == 0])
        rows[:, :-1] = (rows[:, :-1] - mean_t) / std_t
        rows = torch.cat([leftover, rows[torch.randperm(len(rows), generator=generator)]])
        whole = len(rows) - len(rows) % args.batch
        for start in range(0, whole, args.batch):
            step(rows[start : start + args.batch])
        leftover = rows[whole:]
    if len(leftover):
        step(leftover)
    seconds = time.perf_counter() - started

    sample = torch.from_numpy(np.concatenate(test))
    with torch.no_grad():
        predicted = model((sample[:, :-1] - mean_t) / std_t)[:, 0].double()
    truth = sample[:, -1].double()
    r2 = 1 - float(((truth - predicted) ** 2).sum() / ((truth - truth.mean()) ** 2).sum())
    notes = f"pandas {pd.__version__} read_csv(chunksize={args.chunk_rows}), fused Adam"
    print(json.dumps({"seconds": seconds, "steps": steps, "r2": r2, "threads": 1, "notes": notes}))


if __name__ == "__main__":
    main()
