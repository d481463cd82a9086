"""An ensemble against its own members: configs/mpg.yaml with model.ensemble K over several
seeds (each seed changes the split, and every member's initial weights and batch order).

    .venv/bin/python bench/ensemble.py [--members 8] [--seeds 0 1 2 3 4] [--set KEY=VALUE]

Prints a Markdown table per seed: the ensemble's test R2 beside each member's, the members'
mean and best, and whether the ensemble is at or above their mean; then the means over the
seeds. Member 0 is the network a run without the ensemble trains, so its column is the single
model's figure. The members train one after another (train/ensemble.py), about K x a single
run's time: some 2 s a member on 2 CPU cores. Run on demand, never in CI.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from mlpkit.config.load import load_config
from mlpkit.flows.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/mpg.yaml"))
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    overrides = [*args.overrides, f"model.ensemble={args.members}"]
    print(f"{args.config} {' '.join('--set ' + o for o in overrides)}")
    members = " | ".join(f"member {k}" for k in range(args.members))
    last = "members' mean | best member | at or above mean | seconds"
    print(f"| seed | ensemble R2 | {members} | {last} |")
    print("| --- " * (args.members + 6) + "|")
    rows = []
    with tempfile.TemporaryDirectory() as runs_dir:
        for seed in args.seeds:
            started = time.perf_counter()
            result = train(load_config(args.config, [*overrides, f"seed={seed}"]), Path(runs_dir))
            ensemble = result.metrics["test"]["r2"]
            each = [member["test"]["r2"] for member in result.metrics["members"]]
            mean = statistics.mean(each)
            rows.append((ensemble, each[0], mean, max(each)))
            cells = " | ".join(f"{r2:.3f}" for r2 in each)
            print(
                f"| {seed} | {ensemble:.3f} | {cells} | {mean:.3f} | {max(each):.3f} | "
                f"{'yes' if ensemble >= mean else 'NO'} | {time.perf_counter() - started:.0f} |",
                flush=True,
            )
    ensemble, first, mean, best = (statistics.mean(c) for c in zip(*rows, strict=True))
    print(
        f"\nover seeds {' '.join(map(str, args.seeds))}: ensemble R2 {ensemble:.3f}; member 0 "
        f"(the single model) {first:.3f}; members' mean {mean:.3f}; best member {best:.3f}"
    )


if __name__ == "__main__":
    main()
