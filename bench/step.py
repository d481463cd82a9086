"""W1's training step alone: mlpkit's direct and autograd engines beside the hand-written loop.

    .venv/bin/python bench/step.py [--epochs 10] [--repeats 5]

bench/run.py times mlpkit's whole training phase, which also writes a checkpoint and scores
the validation rows after every epoch. This times the steps alone: loop.fit with no hooks and
no validation rows, on configs/mpg.yaml's training tensors (313 rows, batch 1), one thread,
fused Adam, from the same initial weights; the hand-written loop is bench/trial.py's. Runs
alternate; medians of microseconds per step. Compare within one run only.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mlpkit.config.load import load_config
from mlpkit.train.build import make_optimizer
from mlpkit.train.direct import DirectStep
from mlpkit.train.loop import fit
from mlpkit.train.model import build_model
from mlpkit.train.prepare import prepare

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    loaded = load_config(ROOT / "configs/mpg.yaml", [])
    prepared = prepare(loaded)
    cfg = prepared.config
    cpu = torch.device("cpu")
    train = prepared.tensors(prepared.split.train, cpu)
    steps = args.epochs * train.x.shape[0]
    torch.set_num_threads(1)

    def fresh() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.nn.Module]:
        model = build_model(cfg.model.layers, train.x.shape[1], cfg.seed)
        return model, make_optimizer(model, loaded.config), prepared.task.loss(cpu)

    def mlpkit(direct: bool) -> float:
        model, optimizer, loss_fn = fresh()
        step = DirectStep(model, loss_fn, optimizer) if direct else None
        started = time.perf_counter()
        fit(
            model, loss_fn, optimizer, train, None, epochs=args.epochs, batch_size=1,
            shuffle=True, seed=0, step=step,
        )  # fmt: skip
        return time.perf_counter() - started

    def hand() -> float:
        model, optimizer, loss_fn = fresh()
        generator = torch.Generator().manual_seed(0)
        started = time.perf_counter()
        for _ in range(args.epochs):
            order = torch.randperm(train.x.shape[0], generator=generator)
            x, y = train.x[order], train.y[order]
            for start in range(x.shape[0]):
                loss = loss_fn(model(x[start : start + 1]), y[start : start + 1])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return time.perf_counter() - started

    runs: dict[str, Callable[[], float]] = {
        "mlpkit direct": lambda: mlpkit(True),
        "mlpkit autograd": lambda: mlpkit(False),
        "hand-written": hand,
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            times[name].append(run())
    hand_median = statistics.median(times["hand-written"])
    print(f"{steps:,} steps a run, median of {args.repeats}")
    print(f"{'':>16} {'us/step':>8} {'hand / this':>12}")
    for name, seconds in times.items():
        median = statistics.median(seconds)
        print(f"{name:>16} {median / steps * 1e6:>8.0f} {hand_median / median:>12.2f}")


if __name__ == "__main__":
    main()
