"""Stacked members beside the same members trained one after another (issue 16), in one run:

    .venv/bin/python bench/stacked.py [--steps 2000] [--repeats 3]

The mpg network (7 -> 32 relu -> 8 relu -> 1), batch 1, MSE, Adam, one thread. For K = 1, 5,
8 and 32: microseconds a step of train/stacked.py's K members together, and of K networks each
stepped by the direct engine (what `train --seeds K` does today), per member-step and in all.
Median of --repeats; the data is random (speed only).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from mlpkit.config.schema import DenseLayer, Layer
from mlpkit.train.direct import DirectStep
from mlpkit.train.model import build_model
from mlpkit.train.stacked import AdamSettings, StackedAdam, StackedNetwork

LAYERS: list[Layer] = [
    DenseLayer(type="dense", units=32, activation="relu"),
    DenseLayer(type="dense", units=8, activation="relu"),
    DenseLayer(type="dense", units=1),
]
WARMUP = 200


def stacked_us(k: int, steps: int) -> float:
    network = StackedNetwork([build_model(LAYERS, 7, seed=i) for i in range(k)], nn.MSELoss())
    optimizer = StackedAdam(network, [AdamSettings(lr=1e-3)] * k)
    x, y = torch.randn(steps + WARMUP, k, 1, 7), torch.randn(steps + WARMUP, k, 1, 1)
    for i in range(WARMUP):
        network.loss_and_gradients(x[i], y[i])
        optimizer.step()
    start = time.perf_counter()
    for i in range(WARMUP, WARMUP + steps):
        network.loss_and_gradients(x[i], y[i])
        optimizer.step()
    return (time.perf_counter() - start) / steps * 1e6


def sequential_us(k: int, steps: int) -> float:
    """K direct-engine networks, each taking `steps` steps: time per round of K steps."""
    total = 0.0
    for member in range(k):
        model = build_model(LAYERS, 7, seed=member)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        step = DirectStep(model, nn.MSELoss(), optimizer)
        x, y = torch.randn(steps + WARMUP, 1, 7), torch.randn(steps + WARMUP, 1, 1)
        for i in range(WARMUP):
            step(x[i], y[i])
        start = time.perf_counter()
        for i in range(WARMUP, WARMUP + steps):
            step(x[i], y[i])
        total += time.perf_counter() - start
    return total / steps * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"us per step of all K members (median of {args.repeats}); batch 1, one thread")
    base = None
    for k in (1, 5, 8, 32):
        stacked = statistics.median(stacked_us(k, args.steps) for _ in range(args.repeats))
        sequential = statistics.median(sequential_us(k, args.steps) for _ in range(args.repeats))
        base = base or stacked
        print(
            f"K={k:3}  stacked {stacked:7.0f} (x{stacked / base:.2f} of K=1)   "
            f"sequential {sequential:7.0f}   sequential / stacked {sequential / stacked:.2f}"
        )


if __name__ == "__main__":
    main()
