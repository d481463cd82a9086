"""Kill `mlpkit train` at random moments, resume it, and compare with an uninterrupted run.

Each trial starts a real `mlpkit train` process on a small config that writes a checkpoint after
every step (so most moments fall inside a checkpoint write), waits a random time after its
first checkpoint, sends the signal, checks how the run was left, resumes it with
`mlpkit train --resume`, and compares the final model.safetensors byte for byte with the
uninterrupted run's, and the history for one row per epoch.

    python tests/kill_harness.py --trials 20 --signal KILL INT TERM   # prints a table per signal
    python tests/kill_harness.py --engine direct   # the same config without dropout: direct engine

tests/test_signals.py runs a few trials of each signal; this script runs as many as asked.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mlpkit.rundir import catalog

CONFIG = """\
name: killed
seed: 0
data:
  path: data.csv
  target: y
  features: [a, b, color]
  categorical: [color]
  split: {train: 0.6, val: 0.2, test: 0.2}
model:
  layers:
    - {type: dense, units: 16, activation: relu}
    - {type: dropout, rate: 0.2}
    - {type: dense, units: 1}
training:
  epochs: 30
  batch_size: 2
  optimizer: {name: adam, lr: 1e-2}
  loss: mse
  checkpoint_every_steps: 1
"""
EXIT = {"KILL": -signal.SIGKILL, "INT": 130, "TERM": 143}
WAIT_SECONDS = 120


@dataclass(frozen=True)
class Trial:
    signal: str
    delay: float  # seconds after the first checkpoint appeared
    code: int  # the killed process's exit code (negative: killed by that signal)
    status: str  # the run's status as `mlpkit runs` shows it after the signal
    partial: bool  # a half-written checkpoint was left behind: the kill landed inside a write
    checkpoints: int  # whole checkpoints found after the signal
    resumed: int  # exit code of `mlpkit train --resume`
    identical: bool  # final weights byte-identical to the uninterrupted run
    history_ok: bool  # history.csv has epochs 1..N once each
    stderr: str  # what the signalled process said


def write_project(root: Path, dropout: bool = True) -> Path:
    """The config and a 60-row CSV (the same generator as the tests' tiny project). With
    dropout the run trains through autograd (and draws from the global generator); without,
    through the direct engine."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conftest import tiny_csv

    root.mkdir(parents=True, exist_ok=True)
    (root / "data.csv").write_text(tiny_csv(rows=60))
    config = root / "config.yaml"
    config.write_text(
        CONFIG if dropout else CONFIG.replace("    - {type: dropout, rate: 0.2}\n", "")
    )
    return config


def mlpkit(*args: object) -> list[str]:
    return [sys.executable, "-m", "mlpkit", *(str(a) for a in args)]


def weights(run: Path) -> str:
    return hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()


def history_epochs(run: Path) -> list[int]:
    with open(run / "history.csv") as rows:
        return [int(row["epoch"]) for row in csv.DictReader(rows)]


def start(config: Path, runs: Path) -> subprocess.Popen[bytes]:
    """`mlpkit train` in its own process, returned once its first checkpoint exists."""
    process = subprocess.Popen(
        mlpkit("train", config, "--runs-dir", runs, "-q"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + WAIT_SECONDS
    while not list(runs.glob("*/*/checkpoints/ckpt-*")):
        assert process.poll() is None, "training ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    return process


def reference(config: Path) -> tuple[Path, float]:
    """The uninterrupted run, and how long it trained after its first checkpoint (until it
    began writing its final files)."""
    process = start(config, config.parent / "reference")
    began = time.monotonic()
    (run,) = (config.parent / "reference").glob("*/*")
    while not (run / "history.csv").exists() and process.poll() is None:
        time.sleep(0.005)
    span = time.monotonic() - began
    process.communicate(timeout=WAIT_SECONDS)
    assert process.returncode == 0
    return run, span


def trial(config: Path, runs: Path, name: str, delay: float, expected: Path) -> Trial:
    """One start, signal, inspection and resume."""
    process = start(config, runs)
    time.sleep(delay)
    process.send_signal(getattr(signal, f"SIG{name}"))
    _, err = process.communicate(timeout=WAIT_SECONDS)
    code = process.returncode
    (run,) = runs.glob("*/*")
    row = catalog.read_row(run)
    partial = any((run / "checkpoints").glob(".partial-*"))
    whole = len(list((run / "checkpoints").glob("ckpt-*")))
    resumed = 0
    if row.status != "complete":  # a late signal may land after the run completed
        resume = subprocess.run(mlpkit("train", "--resume", run, "-q"), capture_output=True)
        resumed = resume.returncode
    done = (run / "model.safetensors").exists()
    return Trial(
        signal=name,
        delay=delay,
        code=code,
        status=row.status + (f" ({row.note})" if row.note == "process died" else ""),
        partial=partial,
        checkpoints=whole,
        resumed=resumed,
        identical=done and weights(run) == weights(expected),
        history_ok=done and history_epochs(run) == history_epochs(expected),
        stderr=err.decode(),
    )


def run_trials(
    root: Path, name: str, trials: int, seed: int = 0, dropout: bool = True
) -> list[Trial]:
    """`trials` signals at moments spread at random over the training phase."""
    config = write_project(root, dropout)
    expected, span = reference(config)
    rng = random.Random(seed)
    delays = sorted(rng.uniform(0, 0.7 * span) for _ in range(trials))  # mostly mid-training
    return [
        trial(config, root / f"runs-{index}", name, delay, expected)
        for index, delay in enumerate(delays)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--signal", nargs="+", default=["KILL", "INT", "TERM"], choices=EXIT)
    parser.add_argument("--dir", type=Path, help="an empty or new folder (default: a new temp one)")
    parser.add_argument(
        "--engine", choices=["autograd", "direct"], default="autograd",
        help="autograd: the config has dropout (the default); direct: the same without it",
    )  # fmt: skip
    args = parser.parse_args()
    # A used folder would hold earlier runs, which the globs below would take for this run's.
    if args.dir is not None and args.dir.exists() and any(args.dir.iterdir()):
        parser.error(f"{args.dir} is not empty")
    root = args.dir or Path(tempfile.mkdtemp(prefix="mlpkit-kill-harness-"))
    print(f"working in {root}")
    failures = 0
    for name in args.signal:
        results = run_trials(root / name, name, args.trials, dropout=args.engine == "autograd")
        print(f"\nSIG{name}: {args.trials} trials")
        print("delay s  exit  status after signal            partial  ckpts  resume  identical")
        for t in results:
            print(
                f"{t.delay:7.3f}  {t.code:4d}  {t.status:32s}  {t.partial!s:7s}  "
                f"{t.checkpoints:5d}  {t.resumed:6d}  {t.identical and t.history_ok}"
            )
            failures += not (t.identical and t.history_ok and t.resumed == 0)
        inside = sum(t.partial for t in results)
        same = sum(t.identical and t.history_ok for t in results)
        print(f"identical {same}/{len(results)}; {inside} landed inside a checkpoint write")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
