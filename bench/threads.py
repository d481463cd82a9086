"""One CPU thread against all of them, per model and batch size: where `threads: auto` switches.

    .venv/bin/python bench/threads.py [--steps 300]

Trains a [width relu, width relu, 1] MLP on 16 random features with mlpkit's direct step and
fused Adam, alternating 1 thread and all threads, and prints microseconds per step and the
multiply-adds per step (parameters x batch rows) that threads.SMALL_STEP is compared with.
Run on demand, never in CI; compare the two columns within one run only.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from mlpkit.train import threads
from mlpkit.train.direct import DirectStep


def per_step_us(width: int, batch: int, count: int, steps: int) -> float:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
    model.append(nn.Linear(width, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    step = DirectStep(model, nn.MSELoss(), optimizer)
    x, y = torch.randn(batch, 16), torch.randn(batch, 1)
    with threads.limited(count):
        for _ in range(10):
            step(x, y)
        started = time.perf_counter()
        for _ in range(steps):
            step(x, y)
        return (time.perf_counter() - started) / steps * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cores = torch.get_num_threads()
    print(f"{'width':>6} {'batch':>6} {'mult-adds':>12} {'1 thread us':>12} "
          f"{f'{cores} threads us':>13} {'faster':>8}")  # fmt: skip
    for width in (8, 32, 64, 128, 256):
        for batch in (1, 32, 256, 1024):
            one, all_ = [], []
            for _ in range(args.repeats):  # alternate, so drift hits both alike
                one.append(per_step_us(width, batch, 1, args.steps))
                all_.append(per_step_us(width, batch, cores, args.steps))
            params = 16 * width + width + width * width + width + width + 1
            a, b = statistics.median(one), statistics.median(all_)
            print(f"{width:>6} {batch:>6} {params * batch:>12,} {a:>12.0f} {b:>13.0f} "
                  f"{'1' if a < b else str(cores):>8}")  # fmt: skip
    print(f"threads.SMALL_STEP = {threads.SMALL_STEP:,}")


if __name__ == "__main__":
    main()
