"""Peak memory of `mlpkit train` on a streamed CSV as the file grows, beside reading it whole.

    .venv/bin/python bench/stream_memory.py [--rows 100000 10000000] [--whole 100000 1000000]

Writes regression CSVs (4 numeric features and y; cached in --dir), then trains one epoch on
each as a separate process: `data.stream: true` (blocks of 65,536 lines, one DataLoader worker)
for every --rows size, and the same config read whole (`stream: false`) for every --whole size.
Peak memory is the largest sum of proportional resident memory (PSS) over the process and its
DataLoader workers, sampled every 20 ms from /proc. Run on demand, never in CI.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

CONFIG = """\
name: stream-memory
seed: {seed}
data:
  path: {path}
  stream: {stream}
  target: y
  features: [x1, x2, x3, x4]
model:
  layers:
    - {{type: dense, units: 32, activation: relu}}
    - {{type: dense, units: 1}}
training:
  epochs: 1
  batch_size: 1024
  optimizer: {{name: adam, lr: 0.001}}
"""
WRITE_ROWS = 1_000_000  # rows generated and written at a time


def make_csv(path: Path, rows: int) -> None:
    """y = a fixed linear function of x1..x4 plus noise; written in pieces to bound memory."""
    rng = np.random.default_rng(0)
    weights = np.array([1.5, -2.0, 0.5, 3.0])
    with path.open("w") as file:
        file.write("x1,x2,x3,x4,y\n")
        for start in range(0, rows, WRITE_ROWS):
            x = rng.normal(size=(min(WRITE_ROWS, rows - start), 4))
            frame = pd.DataFrame(x, columns=["x1", "x2", "x3", "x4"])
            frame["y"] = x @ weights + rng.normal(scale=0.1, size=len(x))
            frame.to_csv(file, header=False, index=False, float_format="%.5f")


def tree_pss(pid: int) -> int:
    """Proportional resident bytes of `pid` and its descendants (DataLoader workers): pages a
    forked worker shares with its parent are counted once, split between them."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/smaps_rollup").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) * 1024
        pending += [int(child) for child in children]
    return total


def measure(config: Path, runs: Path) -> tuple[float, int, str]:
    """Seconds, peak tree PSS in bytes, and the test R2 line of one `mlpkit train`."""
    mlpkit = Path(sys.executable).with_name("mlpkit")
    started = time.perf_counter()
    process = subprocess.Popen(
        [str(mlpkit), "train", str(config), "--runs-dir", str(runs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_pss(process.pid))
        time.sleep(0.02)
    output = process.stdout.read() if process.stdout else ""
    if process.returncode != 0:
        raise SystemExit(f"mlpkit train {config} failed:\n{output}")
    r2 = next((line for line in output.splitlines() if line.startswith("│ r2")), "")
    return time.perf_counter() - started, peak, r2.split("│")[4].strip() if r2 else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 10_000_000])
    parser.add_argument("--whole", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "mlpkit-bench")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    cases = [(rows, True) for rows in args.rows] + [(rows, False) for rows in args.whole]
    print("| rows | file MB | read | seconds | peak PSS MB | test R2 |")
    print("| ---: | ---: | --- | ---: | ---: | ---: |")
    peaks: dict[tuple[int, bool], int] = {}
    for rows, stream in cases:
        data = args.dir / f"regression-{rows}.csv"
        if not data.exists():
            make_csv(data, rows)
        config = args.dir / f"config-{rows}-{stream}.yaml"
        config.write_text(CONFIG.format(seed=0, path=data, stream=str(stream).lower()))
        seconds, peak, r2 = measure(config, args.dir / "runs")
        peaks[(rows, stream)] = peak
        mode = "streamed" if stream else "whole"
        size = data.stat().st_size / 2**20
        print(f"| {rows:,} | {size:,.0f} | {mode} | {seconds:.1f} | {peak / 2**20:,.0f} | {r2} |")
    streamed = sorted(rows for rows, stream in peaks if stream)
    if len(streamed) > 1:
        small, large = peaks[(streamed[0], True)], peaks[(streamed[-1], True)]
        print(
            f"\nstreamed peak at {streamed[-1]:,} rows / at {streamed[0]:,} rows: "
            f"{large / small:.3f}"
        )


if __name__ == "__main__":
    main()
