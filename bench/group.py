"""--seeds and --folds on the stacked engine (issue 16), side by side in one run. On demand:

    .venv/bin/python bench/group.py [--repeats 3] [--members 1,8,32]

1. Training phase: `mlpkit train configs/mpg.yaml --seeds K` for each K of --members, and K
   seeds trained one after another (each an ordinary run, the direct engine) for K <= 8. The
   training phase is run.json's `training.seconds` (the epochs: steps, validation, per-epoch
   bookkeeping; a stacked group's members share one figure), summed over the runs for the
   sequential one. Ratios are to one seed's.
2. Whole process: `mlpkit train configs/mpg.yaml --seeds 5 --quiet` and `--folds 5 --quiet`
   beside `python bench/hand_mpg.py --seeds 5` / `--folds 5` (the same job as one torch script,
   no files written), each process in turn, medians of --repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MLPKIT = [sys.executable, "-m", "mlpkit"]


def run(command: list[str]) -> tuple[float, str]:
    """(seconds, stdout) of one process, run to completion; then its background plots child
    (flows/plotting.py) is waited for, so no process is measured beside one."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr}")
    while plotting():
        time.sleep(0.05)
    return seconds, done.stdout


def plotting() -> bool:
    """Whether a `mlpkit plot --background` child is still drawing."""
    for status in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            words = status.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"plot" in words and b"--background" in words:
            return True
    return False


def training_seconds(stdout: str) -> tuple[float, str]:
    """The training phase of a --seeds run (from its summary file's runs) and its engine."""
    summary = json.loads(Path(stdout.splitlines()[-1]).read_text())
    infos = [json.loads((Path(r) / "run.json").read_text())["training"] for r in summary["runs"]]
    if infos[0]["engine"] == "stacked":
        return infos[0]["seconds"], "stacked"
    return sum(info["seconds"] for info in infos), infos[0]["engine"]


def one_seed(runs: str, seed: int) -> float:
    _, out = run(
        [*MLPKIT, "train", "configs/mpg.yaml", "-q", "--runs-dir", runs, "--set", f"seed={seed}"]
    )
    info = json.loads((Path(out.splitlines()[-1]) / "run.json").read_text())
    return float(info["training"]["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--members", default="1,8,32")
    args = parser.parse_args()
    members = [int(k) for k in args.members.split(",")]
    phase: dict[str, list[float]] = {}
    whole: dict[str, list[float]] = {}
    processes = {
        "mlpkit train configs/mpg.yaml --seeds 5 -q": ["--seeds", "5"],
        "mlpkit train configs/mpg.yaml --folds 5 -q": ["--folds", "5"],
    }
    with tempfile.TemporaryDirectory() as runs:
        for _ in range(args.repeats):
            for k in members:
                if k == 1:
                    phase.setdefault("1 seed (direct engine)", []).append(one_seed(runs, 1))
                    continue
                _, out = run(
                    [
                        *MLPKIT,
                        "train",
                        "configs/mpg.yaml",
                        "-q",
                        "--runs-dir",
                        runs,
                        "--seeds",
                        str(k),
                    ]
                )
                seconds, engine = training_seconds(out)
                phase.setdefault(f"--seeds {k} ({engine})", []).append(seconds)
                if k <= 8:
                    alone = sum(one_seed(runs, seed) for seed in range(1, k + 1))
                    phase.setdefault(f"{k} seeds one after another", []).append(alone)
            for name, extra in processes.items():
                seconds, _ = run(
                    [*MLPKIT, "train", "configs/mpg.yaml", "-q", "--runs-dir", runs, *extra]
                )
                whole.setdefault(name, []).append(seconds)
                hand = f"python bench/hand_mpg.py {' '.join(extra)}"
                seconds, _ = run([sys.executable, "bench/hand_mpg.py", *extra])
                whole.setdefault(hand, []).append(seconds)
    print(f"training phase (run.json training.seconds), median of {args.repeats}; ratio to 1 seed")
    base = statistics.median(phase["1 seed (direct engine)"]) if 1 in members else None
    for name, values in phase.items():
        median = statistics.median(values)
        ratio = f"x{median / base:.2f}" if base else ""
        print(f"  {name:36} {median:6.2f} s  {ratio}")
    print(f"whole process, median of {args.repeats}, each process in turn")
    names = list(whole)
    for mine, hand in zip(names[::2], names[1::2], strict=True):
        a, b = statistics.median(whole[mine]), statistics.median(whole[hand])
        print(f"  {mine:44} {a:6.2f} s  x{a / b:.2f} of the script")
        print(f"  {hand:44} {b:6.2f} s")
    print(f"(cpu count {os.cpu_count()})")


if __name__ == "__main__":
    main()
