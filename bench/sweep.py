"""A 32-trial learning-rate x weight-decay sweep of the mpg network (issue 17), three ways,
side by side in one run. On demand:

    .venv/bin/python bench/sweep.py [--trials 32]

1. `mlpkit sweep bench/configs/mpg-sweep.yaml`: trials in batches of 8 trained stacked.
2. the same with `--set sweep.stack=false`: one trial at a time, each on the direct engine.
3. the same search written by hand: Optuna's study.optimize (TPE, seed 0) around a plain torch
   loop (bench/hand_mpg.py's: fused AdamW, MSE, batch 1, 40 epochs, one thread), scoring the
   validation loss; no files.
Wall time of each whole process. Then the best trial of (1) trained with seeds 0-4 (`mlpkit
train best.yaml --set seed=0 --seeds 5`): its mean test R2, against configs/mpg.yaml's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MLPKIT = [sys.executable, "-m", "mlpkit"]
CONFIG = "bench/configs/mpg-sweep.yaml"

HAND = r"""
import sys, numpy as np, pandas as pd, torch, optuna
from torch import nn
optuna.logging.set_verbosity(optuna.logging.WARNING)
torch.set_num_threads(1)
trials = int(sys.argv[1])
features = ["cylinders", "displacement", "horsepower", "weight", "acceleration", "model_year"]
features += ["origin"]
frame = pd.read_csv("data/mpg.csv")
x_all, y_all = frame[features].to_numpy(np.float64), frame["mpg"].to_numpy(np.float64)
order = np.random.default_rng(1).permutation(len(frame))
n_train, n_val = int(0.8 * len(order)), int(0.1 * len(order))
train, val = order[:n_train], order[n_train:n_train + n_val]
mean, std = x_all[train].mean(0), x_all[train].std(0)
def tensors(rows):
    return (torch.from_numpy(((x_all[rows] - mean) / std).astype(np.float32)),
            torch.from_numpy(y_all[rows].astype(np.float32))[:, None])
x, y = tensors(train)
xv, yv = tensors(val)
def objective(trial):
    lr = trial.suggest_float("lr", 1e-4, 3e-2, log=True)
    decay = trial.suggest_float("weight_decay", 0.0, 0.1)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(7, 32), nn.ReLU(), nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=decay, fused=True)
    generator = torch.Generator().manual_seed(1)
    for _ in range(40):
        shuffled = torch.randperm(len(x), generator=generator)
        xs, ys = x[shuffled], y[shuffled]
        for row in range(len(xs)):
            loss = nn.functional.mse_loss(model(xs[row:row + 1]), ys[row:row + 1])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return float(nn.functional.mse_loss(model(xv), yv))
study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
study.optimize(objective, n_trials=trials)
print(f"best val_loss {study.best_value:.4f} {study.best_params}")
"""


def timed(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr}")
    return time.perf_counter() - start, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=32)
    args = parser.parse_args()
    trials = str(args.trials)
    with tempfile.TemporaryDirectory() as runs:
        base = [*MLPKIT, "sweep", CONFIG, "--trials", trials, "--runs-dir", runs]
        stacked, out = timed([*base, "-q"])
        folder = Path(out.splitlines()[-1])
        alone, _ = timed([*base, "-q", "--set", "sweep.stack=false"])
        hand, hand_out = timed([sys.executable, "-c", HAND, trials])
        best = json.loads((folder / "sweep.json").read_text())["best"]
        command = [*MLPKIT, "train", str(folder / "best.yaml"), "--runs-dir", runs, "-q"]
        _, seeds_out = timed([*command, "--plots", "off", "--set", "seed=0", "--seeds", "5"])
        summary = json.loads(Path(seeds_out.splitlines()[-1]).read_text())
    print(f"{args.trials} trials, lr x weight decay, configs/mpg.yaml's network, whole processes")
    print(f"  mlpkit sweep (stacked batches of 8)   {stacked:7.1f} s  x{stacked / hand:.2f}")
    print(f"  mlpkit sweep, one trial at a time     {alone:7.1f} s  x{alone / hand:.2f}")
    print(f"  hand-written Optuna + torch loop      {hand:7.1f} s  x1.00   {hand_out.strip()}")
    print(f"best trial: {best['params']}, val_loss {best['value']:.4f}")
    r2 = summary["test"]["r2"]
    print(
        f"its test R2 over seeds 0-4: {r2['mean']:.3f} +- {r2['std']:.3f} (configs/mpg.yaml: 0.854)"
    )


if __name__ == "__main__":
    main()
