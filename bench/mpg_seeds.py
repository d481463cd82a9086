"""How much of the MPG test score is the model and how much the split: train configs/mpg.yaml
over several seeds (each seed changes the split, the initial weights and the batch order).

    .venv/bin/python bench/mpg_seeds.py [--seeds 0 1 2 3 4 5] [--set data.split=...]

Prints a Markdown table of test R2 and MAE for the network and linear regression per seed,
with the mean. About 15 s per seed on 2 CPU cores. Run on demand, never in CI.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from mlpkit.config.load import load_config
from mlpkit.flows.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/mpg.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    print(f"{args.config} {' '.join('--set ' + o for o in args.overrides)}".strip())
    print("| seed | test R2 | test MAE | linear regression R2 | linear regression MAE |")
    print("| --- | --- | --- | --- | --- |")
    rows = []
    with tempfile.TemporaryDirectory() as runs_dir:
        for seed in args.seeds:
            loaded = load_config(args.config, [*args.overrides, f"seed={seed}"])
            result = train(loaded, Path(runs_dir))
            test, linear = result.metrics["test"], result.metrics["baselines"]["linear_regression"]
            rows.append((test["r2"], test["mae"], linear["r2"], linear["mae"]))
            print(
                f"| {seed} | {test['r2']:.3f} | {test['mae']:.3f} | {linear['r2']:.3f} | "
                f"{linear['mae']:.3f} |",
                flush=True,
            )
    means = [statistics.mean(column) for column in zip(*rows, strict=True)]
    print("| mean | " + " | ".join(f"{m:.3f}" for m in means) + " |")


if __name__ == "__main__":
    main()
