"""Stacked members beside the same members trained one after another (issue 16), in one run:

    .venv/bin/python bench/stacked.py [--steps 2000] [--repeats 3] [--shapes W1,W2,W3]

For each shape and K = 1, 5, 8 and 32: microseconds a step of train/stacked.py's K members
together (one stacked forward/backward, the finiteness read, one fused Adam call: what
train/group.py runs a step), and of K networks each stepped by the direct engine (the
members one after another), MSE, Adam, one thread. Shapes: W1 the mpg network (7 -> 32 relu ->
8 relu -> 1, batch 1), W2 mpg-tiny's (7 -> 1 relu -> 1, batch 4), W3 a wider W3-like one
(16 -> 256 relu -> 256 relu -> 1, batch 64; W3 itself trains at batch 1024, where a step is
arithmetic, not overhead). Median of --repeats; the data is random (speed only).
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
from mlpkit.train.stacked import OptimizerSettings, StackedNetwork, StackedOptimizer


def dense(units: int, activation: str | None = "relu") -> DenseLayer:
    if activation is None:
        return DenseLayer(type="dense", units=units)
    return DenseLayer(type="dense", units=units, activation=activation)


# name -> (inputs, layers, batch, share of --steps)
SHAPES: dict[str, tuple[int, list[Layer], int, float]] = {
    "W1": (7, [dense(32), dense(8), dense(1, None)], 1, 1.0),
    "W2": (7, [dense(1), dense(1, None)], 4, 1.0),
    "W3": (16, [dense(256), dense(256), dense(1, None)], 64, 0.1),
}
WARMUP = 50


def stacked_us(shape: str, k: int, steps: int) -> float:
    inputs, layers, batch, _ = SHAPES[shape]
    models = [build_model(layers, inputs, seed=i) for i in range(k)]
    network = StackedNetwork(models, nn.MSELoss())
    optimizer = StackedOptimizer(network, [OptimizerSettings(lr=1e-3)] * k)
    x = torch.randn(steps + WARMUP, k, batch, inputs)
    y = torch.randn(steps + WARMUP, k, batch, 1)
    start = 0.0
    for i in range(WARMUP + steps):
        if i == WARMUP:
            start = time.perf_counter()
        network.loss_and_gradients(x[i], y[i])
        if not bool(network.grad.sum().isfinite()):
            raise SystemExit("diverged")
        optimizer.step()
    return (time.perf_counter() - start) / steps * 1e6


def sequential_us(shape: str, k: int, steps: int) -> float:
    """K direct-engine networks, each taking `steps` steps: time per round of K steps."""
    inputs, layers, batch, _ = SHAPES[shape]
    total = 0.0
    for member in range(k):
        model = build_model(layers, inputs, seed=member)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        step = DirectStep(model, nn.MSELoss(), optimizer)
        x, y = torch.randn(steps + WARMUP, batch, inputs), torch.randn(steps + WARMUP, batch, 1)
        for i in range(WARMUP):
            step(x[i], y[i])
        start = time.perf_counter()
        for i in range(WARMUP, WARMUP + steps):
            step(x[i], y[i])
        step.settle()
        total += time.perf_counter() - start
    return total / steps * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shapes", default="W1,W2,W3")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"us per step of all K members (median of {args.repeats}); one thread")
    for shape in args.shapes.split(","):
        inputs, layers, batch, share = SHAPES[shape]
        steps = max(20, int(args.steps * share))
        widths = " -> ".join(str(layer.units) for layer in layers)  # type: ignore[union-attr]
        print(f"{shape}: {inputs} -> {widths}, batch {batch}, {steps} steps")
        base = None
        for k in (1, 5, 8, 32):
            stacked = statistics.median(stacked_us(shape, k, steps) for _ in range(args.repeats))
            alone = statistics.median(sequential_us(shape, k, steps) for _ in range(args.repeats))
            base = base or alone
            print(
                f"  K={k:3}  stacked {stacked:8.0f} (x{stacked / base:.2f} of one network)   "
                f"one after another {alone:8.0f}   ratio {alone / stacked:.2f}"
            )


if __name__ == "__main__":
    main()
