"""mlpkit's training loop beside hand-written PyTorch loops, on the same tensors, same model.

    .venv/bin/python bench/loop_overhead.py [--config configs/mpg.yaml] [--epochs 40] [--repeats 3]

Each implementation trains from the same initial weights on the same split; runs alternate
(a, b, c, a, b, c, ...) so drifts in machine speed hit all of them alike. Prints median train
seconds, microseconds per step and the ratio to mlpkit. Run on demand, never in CI.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mlpkit.config import load_config
from mlpkit.experiment import make_optimizer
from mlpkit.loop import Tensors, fit
from mlpkit.model import build_model
from mlpkit.prepare import prepare

Trainer = Callable[[int], float]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/mpg.yaml"))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    loaded = load_config(args.config, [f"training.epochs={args.epochs}"])
    prepared = prepare(loaded)
    cfg = prepared.config
    device = torch.device("cpu")
    train = prepared.tensors(prepared.split.train, device)
    batch = cfg.training.batch_size
    steps = args.epochs * -(-train.x.shape[0] // batch)

    def fresh() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        model = build_model(cfg.model.layers, train.x.shape[1], cfg.seed, device)
        return model, make_optimizer(model, loaded)

    def mlpkit_fit(seed: int) -> float:
        model, optimizer = fresh()
        started = time.perf_counter()
        fit(
            model,
            prepared.task.loss(device),
            optimizer,
            train,
            None,
            epochs=args.epochs,
            batch_size=batch,
            shuffle=True,
            seed=seed,
        )
        return time.perf_counter() - started

    def hand_written(seed: int) -> float:
        # The loop people write first: index a batch from a permutation, step.
        model, optimizer = fresh()
        loss_fn = prepared.task.loss(device)
        generator = torch.Generator().manual_seed(seed)
        started = time.perf_counter()
        for _ in range(args.epochs):
            model.train()
            order = torch.randperm(train.x.shape[0], generator=generator)
            for start in range(0, len(order), batch):
                rows = order[start : start + batch]
                loss = loss_fn(model(train.x[rows]), train.y[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return time.perf_counter() - started

    def data_loader(seed: int) -> float:
        model, optimizer = fresh()
        loss_fn = prepared.task.loss(device)
        dataset = torch.utils.data.TensorDataset(train.x, train.y)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(seed)
        )
        started = time.perf_counter()
        for _ in range(args.epochs):
            model.train()
            for xb, yb in loader:
                loss = loss_fn(model(xb), yb)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return time.perf_counter() - started

    trainers: dict[str, Trainer] = {
        "mlpkit fit": mlpkit_fit,
        "hand-written loop": hand_written,
        "DataLoader(TensorDataset) loop": data_loader,
    }
    timings: dict[str, list[float]] = {name: [] for name in trainers}
    for repeat in range(args.repeats):
        for name, trainer in trainers.items():
            timings[name].append(trainer(repeat))
    report(timings, steps, args, Tensors(train.x, train.y))


def report(
    timings: dict[str, list[float]], steps: int, args: argparse.Namespace, train: Tensors
) -> None:
    reference = statistics.median(timings["mlpkit fit"])
    print(
        f"{args.config}: {train.x.shape[0]} rows, {args.epochs} epochs, {steps} steps, "
        f"median of {args.repeats}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print("| implementation | train seconds | us per step | ratio to mlpkit |")
    print("| --- | --- | --- | --- |")
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {median / steps * 1e6:,.0f} | {median / reference:.2f} |")


if __name__ == "__main__":
    main()
