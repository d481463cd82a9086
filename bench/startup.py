"""Whole-process time and peak memory of mlpkit's everyday commands beside the hand-written
script doing the same job (issue 16), measured side by side in one run. On demand:

    .venv/bin/python bench/startup.py [--repeats 3]

Each repeat runs every process once, in turn (so drift on a shared machine hits them alike):
`mlpkit train configs/mpg.yaml --quiet`, `mlpkit check configs/mpg.yaml`, `mlpkit --help` and
`python bench/hand_mpg.py` (the same experiment as one torch + pandas script). Prints each
process's median seconds and peak resident memory (its own ru_maxrss, from os.wait4), and the
ratios to the hand-written script.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MLPKIT = [sys.executable, "-m", "mlpkit"]


def timed(command: list[str]) -> tuple[float, float]:
    """(seconds, peak resident MiB) of one process, run to completion."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(command)}")
    return seconds, usage.ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as runs:
        processes = {
            "mlpkit train configs/mpg.yaml --quiet": [
                *MLPKIT, "train", "configs/mpg.yaml", "--quiet", "--runs-dir", runs
            ],
            "mlpkit check configs/mpg.yaml": [*MLPKIT, "check", "configs/mpg.yaml"],
            "mlpkit --help": [*MLPKIT, "--help"],
            "python bench/hand_mpg.py": [sys.executable, "bench/hand_mpg.py"],
        }  # fmt: skip
        found: dict[str, list[tuple[float, float]]] = {name: [] for name in processes}
        for _ in range(args.repeats):
            for name, command in processes.items():
                found[name].append(timed(command))
    hand_s = statistics.median(s for s, _ in found["python bench/hand_mpg.py"])
    hand_mb = statistics.median(m for _, m in found["python bench/hand_mpg.py"])
    print(f"median of {args.repeats}, each process in turn; ratios to the hand-written script")
    for name, results in found.items():
        seconds = statistics.median(s for s, _ in results)
        peak = statistics.median(m for _, m in results)
        runs_s = " ".join(f"{s:.2f}" for s, _ in results)
        print(
            f"{name:40} {seconds:6.2f} s ({runs_s})  x{seconds / hand_s:.2f}   "
            f"{peak:6.0f} MiB  x{peak / hand_mb:.2f}"
        )


if __name__ == "__main__":
    main()
