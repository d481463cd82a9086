"""Whole-process time and peak memory of mlpkit's everyday commands beside the hand-written
script doing the same job (issue 16), measured side by side in one run. On demand:

    .venv/bin/python bench/startup.py [--repeats 3]

Each repeat runs every process once, in turn (so drift on a shared machine hits them alike):
`mlpkit train configs/mpg.yaml --quiet`, `mlpkit check configs/mpg.yaml`, `mlpkit --help` and
`python bench/hand_mpg.py` (the same experiment as one torch + pandas script). Prints each
process's median seconds and peak resident memory (its own ru_maxrss, from os.wait4), and the
ratios to the hand-written script.

train returns before its plots: a detached child draws them (flows/plotting.py). The bench
waits for that child to finish before the next process starts, so it never runs beside one,
and prints a second line for train: seconds from its start until the PNGs are drawn (the
child's memory is its own, not in train's peak).
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

PLOTS = {"learning_curves.png", "predicted_vs_actual.png", "residuals.png"}  # mpg: regression

REPO = Path(__file__).resolve().parent.parent
MLPKIT = [sys.executable, "-m", "mlpkit"]


def timed(command: list[str]) -> tuple[float, float, float]:
    """(seconds, peak resident MiB, seconds until its plots are drawn) of one process, run to
    completion; the last is 0 for a process that prints no run directory."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE)
    out = process.stdout.read() if process.stdout is not None else b""
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(command)}")
    peak = usage.ru_maxrss / 1024  # KiB on Linux
    if command[3:4] != ["train"]:
        return seconds, peak, 0.0
    run = Path(out.decode().strip().splitlines()[-1])
    while not _drawn(REPO / run):
        time.sleep(0.01)
    return seconds, peak, time.perf_counter() - start


def _drawn(run: Path) -> bool:
    """Every PNG in place and no process left whose command line names the run."""
    folder = run / "plots"
    if not folder.exists() or {p.name for p in folder.iterdir()} != PLOTS:
        return False
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(run).encode() in cmdline.read_bytes().split(b"\0"):
                return False
        except OSError:  # gone meanwhile
            continue
    return True


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
        found: dict[str, list[tuple[float, float, float]]] = {name: [] for name in processes}
        for _ in range(args.repeats):
            for name, command in processes.items():
                found[name].append(timed(command))
    hand_s = statistics.median(s for s, _, _ in found["python bench/hand_mpg.py"])
    hand_mb = statistics.median(m for _, m, _ in found["python bench/hand_mpg.py"])
    print(f"median of {args.repeats}, each process in turn; ratios to the hand-written script")
    for name, results in found.items():
        seconds = statistics.median(s for s, _, _ in results)
        peak = statistics.median(m for _, m, _ in results)
        runs_s = " ".join(f"{s:.2f}" for s, _, _ in results)
        print(
            f"{name:40} {seconds:6.2f} s ({runs_s})  x{seconds / hand_s:.2f}   "
            f"{peak:6.0f} MiB  x{peak / hand_mb:.2f}"
        )
        if any(drawn for _, _, drawn in results):
            drawn = statistics.median(d for _, _, d in results)
            runs_d = " ".join(f"{d:.2f}" for _, _, d in results)
            label = "  ... until its plots are drawn"
            print(f"{label:40} {drawn:6.2f} s ({runs_d})  x{drawn / hand_s:.2f}")


if __name__ == "__main__":
    main()
