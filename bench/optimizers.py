"""Fused, for-each and single-tensor optimizer kernels on W1 (mpg, batch 1), through autograd.

    .venv/bin/python bench/optimizers.py [--epochs 5] [--repeats 5]

mlpkit builds sgd, adam and adamw with fused=True; this is the measurement behind that choice.
The hand-written loop of bench/trial.py (one thread, batches split from a permutation) with each
kernel choice, alternating, median microseconds per step. Compare within one run only.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from mlpkit.config.load import load_config
from mlpkit.train.prepare import prepare

ROOT = Path(__file__).resolve().parent.parent
KERNELS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "single": {"foreach": False}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    prepared = prepare(load_config(ROOT / "configs/mpg.yaml", []))
    train = prepared.tensors(prepared.split.train, torch.device("cpu"))
    torch.set_num_threads(1)
    rows = train.x.shape[0]

    def per_step_us(optimizer_name: str, options: dict[str, bool]) -> float:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(train.x.shape[1], 32), nn.ReLU(), nn.Linear(32, 8))
        model.extend([nn.ReLU(), nn.Linear(8, 1)])
        make = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
        optimizer = make[optimizer_name](model.parameters(), lr=1e-3, **options)
        loss_fn, generator = nn.MSELoss(), torch.Generator().manual_seed(0)
        started = time.perf_counter()
        for _ in range(args.epochs):
            order = torch.randperm(rows, generator=generator)
            for xb, yb in zip(train.x[order].split(1), train.y[order].split(1), strict=True):
                loss = loss_fn(model(xb), yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return (time.perf_counter() - started) / (args.epochs * rows) * 1e6

    print(f"{'optimizer':>9} " + " ".join(f"{kernel + ' us':>11}" for kernel in KERNELS))
    for optimizer_name in ("adam", "adamw", "sgd"):
        times: dict[str, list[float]] = {kernel: [] for kernel in KERNELS}
        for _ in range(args.repeats):  # alternate, so drift hits every kernel alike
            for kernel, options in KERNELS.items():
                times[kernel].append(per_step_us(optimizer_name, options))
        medians = " ".join(f"{statistics.median(t):>11.0f}" for t in times.values())
        print(f"{optimizer_name:>9} {medians}")


if __name__ == "__main__":
    main()
