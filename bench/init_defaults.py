"""How `mlpkit init`'s starter config does on tables it was not built on, beside the linear
baselines every run reports (issue 15). On demand:

    .venv/bin/python bench/init_defaults.py [--seeds 5] [--set KEY=VALUE ...] [--tables ...]

For each table (scikit-learn's bundled diabetes, iris, wine, breast cancer, digits and
linnerud; the shipped penguins, auto-mpg with its missing cells and without them): `mlpkit
init` then `mlpkit train --seeds N`, and a line with the mean test metric (R2 or accuracy)
and its sample std, the baseline's mean, and on how many seeds the network beat, tied or lost
to the baseline. `--set` passes overrides to every train, to try another default side by side.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import datasets

REPO = Path(__file__).resolve().parent.parent
MLPKIT = [sys.executable, "-m", "mlpkit"]


def sklearn_tables(folder: Path) -> list[tuple[Path, str]]:
    tables = []
    for name, load in [
        ("diabetes", datasets.load_diabetes),
        ("iris", datasets.load_iris),
        ("wine", datasets.load_wine),
        ("breast_cancer", datasets.load_breast_cancer),
        ("digits", datasets.load_digits),
    ]:
        bunch = load(as_frame=True)
        frame = bunch.frame.rename(columns=lambda c: str(c).replace(" ", "_"))
        path = folder / f"{name}.csv"
        frame.to_csv(path, index=False)
        tables.append((path, "target"))
    linnerud = datasets.load_linnerud(as_frame=True)
    frame = pd.concat([linnerud.data, linnerud.target["Weight"]], axis=1)
    frame.to_csv(folder / "linnerud.csv", index=False)
    tables.append((folder / "linnerud.csv", "Weight"))
    return tables


def measure(table: Path, target: str, seeds: int, overrides: list[str], folder: Path) -> str:
    config = folder / f"{table.stem}.yaml"
    subprocess.run([*MLPKIT, "init", table, "--target", target, "--out", config, "--force"],
                   check=True, capture_output=True)  # fmt: skip
    sets = [arg for item in overrides for arg in ("--set", item)]
    done = subprocess.run(
        [*MLPKIT, "train", config, "--seeds", str(seeds), "--runs-dir", folder / "runs", "-q",
         *sets],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    summary = json.loads(Path(done.stdout.strip().splitlines()[-1]).read_text())
    metric = "r2" if "r2" in summary["test"] else "accuracy"
    baseline = "linear_regression" if metric == "r2" else "logistic_regression"
    mine = np.asarray(summary["test"][metric]["values"])
    theirs = np.asarray(summary["baselines"][baseline][metric]["values"])
    won, tied = int((mine > theirs + 1e-9).sum()), int((abs(mine - theirs) <= 1e-9).sum())
    return (
        f"{table.stem:14} {metric:8} {mine.mean():.3f} ± {mine.std(ddof=1):.3f}   "
        f"{baseline} {theirs.mean():.3f}   won {won}, tied {tied}, lost {len(mine) - won - tied}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--tables", nargs="*", help="only these (file stems), e.g. diabetes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        tables = [
            *sklearn_tables(folder),
            (REPO / "data" / "penguins.csv", "species"),
            (REPO / "data" / "mpg-missing.csv", "mpg"),
            (REPO / "data" / "mpg.csv", "mpg"),
        ]
        print(f"init defaults, test metric over seeds 0-{args.seeds - 1}; overrides: "
              f"{args.overrides or 'none'}")  # fmt: skip
        for table, target in tables:
            if args.tables and table.stem not in args.tables:
                continue
            print(measure(table, target, args.seeds, args.overrides, folder), flush=True)


if __name__ == "__main__":
    main()
