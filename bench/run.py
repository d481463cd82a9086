"""mlpkit beside its peers (hand-written PyTorch, scikit-learn, skorch, Lightning, Keras).

    bench/.venv/bin/python bench/run.py [--quick] [--repeats 3] [--workloads W1,W2,W3,W4,W5,P]
        [--impls mlpkit,hand,...] [--python-peers bench/.venv/bin/python] [--timeout S]

Each trial is a fresh process (bench/trial.py WORKLOAD IMPL) that times only training. Within a
repeat the implementations alternate, so drifts in machine speed hit all of them alike; the
tables show the median of the repeats and the ratio impl seconds / mlpkit seconds. P is the
whole-process timings (`mlpkit train configs/mpg.yaml` beside bench/hand_mpg.py, and
`mlpkit --help`). Writes bench/RESULTS.md (--quick: bench/RESULTS-quick.md). Set up the peers'
environment first with bench/setup.sh (make bench-env). Run on demand, never in CI.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from workloads import (
    BENCH,
    IMPLS,
    ROOT,
    W5_IMPLS,
    W5_NA,
    W5_QUICK_ROWS,
    W5_ROWS,
    threads_for,
    workload,
)

ALL_WORKLOADS = ["W1", "W2", "W3", "W4", "W5", "P"]
QUICK_LABEL = "QUICK RUN: fewer epochs and rows, one repeat; a smoke test, not results"
Trial = dict[str, Any]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs/rows, 1 repeat")
    parser.add_argument("--repeats", type=int, help="trials per implementation (default 3)")
    parser.add_argument("--workloads", default=",".join(ALL_WORKLOADS))
    parser.add_argument("--impls", default=",".join(IMPLS))
    parser.add_argument("--python-peers", type=Path, help="default: bench/.venv/bin/python")
    parser.add_argument("--timeout", type=float, help="seconds per trial (default 1200; quick 300)")
    parser.add_argument(
        "--out", type=Path, help="where to write the tables (default bench/RESULTS.md; quick: "
        "bench/RESULTS-quick.md)"
    )  # fmt: skip
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    timeout = args.timeout or (300.0 if args.quick else 1200.0)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    unknown = [w for w in workloads if w not in ALL_WORKLOADS]
    unknown += [i for i in impls if i not in IMPLS]
    if unknown:
        parser.error(f"unknown workload or implementation: {', '.join(unknown)}")

    bench_python = BENCH / ".venv" / "bin" / "python"
    peers = args.python_peers or (bench_python if bench_python.exists() else None)
    peers = peers or ROOT / ".venv" / "bin" / "python"
    own = peers if imports(peers, "mlpkit") else ROOT / ".venv" / "bin" / "python"
    runner = Runner(own, peers, args.quick, timeout)

    started = datetime.datetime.now().astimezone()
    command = "python " + shlex.join(["bench/run.py", *sys.argv[1:]])
    sections = [header(command, started, own, peers, repeats, args.quick)]
    out = args.out or BENCH / ("RESULTS-quick.md" if args.quick else "RESULTS.md")
    print(sections[0])
    for name in workloads:
        if name == "P":
            section = process_times(runner, repeats)
        elif name == "W5":
            section = "\n\n".join(
                run_w5(runner, rows, impls, repeats)
                for rows in (W5_QUICK_ROWS if args.quick else W5_ROWS)
            )
        else:
            section = run_workload(runner, name, impls, repeats)
        print(f"\n{section}", flush=True)
        sections.append(section)
        out.write_text("\n\n".join([*sections, "(in progress)"]) + "\n")  # a cut-off run shows

    finished = datetime.datetime.now().astimezone()
    minutes = (finished - started).total_seconds() / 60
    sections.append(f"Finished {finished:%Y-%m-%d %H:%M %Z} ({minutes:.1f} minutes).")
    out.write_text("\n\n".join(sections) + "\n")
    print(f"\nwrote {out}")


class Runner:
    """Runs trial.py processes: mlpkit with its own Python, the peers with theirs."""

    def __init__(self, own: Path, peers: Path, quick: bool, timeout: float) -> None:
        self.own, self.peers, self.quick, self.timeout = own, peers, quick, timeout

    def python(self, impl: str) -> Path:
        return self.own if impl == "mlpkit" else self.peers

    def prepare(self, name: str, rows: int | None = None) -> None:
        """Generate a workload's cached data (once; untimed)."""
        command = [str(self.own), str(BENCH / "trial.py"), name, "prepare"]
        command += ["--quick"] * self.quick + ([f"--rows={rows}"] if rows else [])
        subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)

    def trial(self, name: str, impl: str, rows: int | None = None) -> Trial:
        """One trial's JSON line, or {"error": one line} when it failed or timed out."""
        command = [str(self.python(impl)), str(BENCH / "trial.py"), name, impl, "--json"]
        command += ["--quick"] * self.quick + ([f"--rows={rows}"] if rows else [])
        env = dict(os.environ)
        threads = threads_for(name, impl)
        if threads is not None:  # the same setting trial.py makes inside, for this process only
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
        try:  # its own session: a timeout ends the trial with the processes it started
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        except OSError as exc:
            return {"error": f"could not start {command[0]}: {exc}"}
        try:
            stdout, stderr = process.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return {"error": f"timed out after {self.timeout:.0f} s"}
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        if lines:
            found: Trial = json.loads(lines[-1])
            if process.returncode == 0 or "error" in found:
                return found
        text = [line for line in (stderr + stdout).splitlines() if line.strip()]
        return {"error": f"exit {process.returncode}: {text[-1][:200] if text else 'no output'}"}


def run_workload(runner: Runner, name: str, impls: list[str], repeats: int) -> str:
    work = workload(name, runner.quick)
    if name == "W3":
        runner.prepare(name)
    trials: dict[str, list[Trial]] = {impl: [] for impl in impls}
    for _ in range(repeats):
        for impl in impls:  # alternate: a, b, c, a, b, c, ...
            trials[impl].append(runner.trial(name, impl))
            print(f"  {name} {impl}: {brief(trials[impl][-1])}", file=sys.stderr, flush=True)
    per_step = "samples/s" if name == "W3" else "us/step"
    rows = [
        f"### {name}: {work.title}",
        "",
        f"| implementation | train s | {per_step} | ratio to mlpkit | quality "
        "| peak RSS MB | threads | notes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    reference = median_of(trials.get("mlpkit", []), "train_seconds")
    for impl in impls:
        good = [t for t in trials[impl] if "error" not in t]
        if not good:
            rows.append(f"| {impl} | failed: {trials[impl][0]['error']} | | | | | | |")
            continue
        seconds = median_of(good, "train_seconds")
        assert seconds is not None
        first = good[0]
        if name == "W3":
            speed = f"{first['samples'] / seconds:,.0f}"
        else:
            speed = f"{seconds / first['steps'] * 1e6:,.0f}"
        quality = f"{first['quality_name']} {median_of(good, 'quality'):.4f}"
        notes = first.get("notes", "")
        if len(good) < len(trials[impl]):
            notes += f"; {len(trials[impl]) - len(good)} of {len(trials[impl])} trials failed"
        rows.append(
            f"| {impl} | {seconds:.3f} | {speed} | {ratio(seconds, reference)} | {quality} "
            f"| {median_of(good, 'peak_rss_mb'):,.0f} | {first['threads']} | {notes} |"
        )
    hand = median_of([t for t in trials.get("hand", []) if "error" not in t], "train_seconds")
    if reference and hand:
        rows += ["", f"mlpkit / hand-written loop: {reference / hand:.3f} (the bar: 1.05 or less)"]
    steps = next((t["steps"] for t in trials.get("mlpkit", []) if "steps" in t), None)
    steps = steps or next((t["steps"] for ts in trials.values() for t in ts if "steps" in t), "?")
    rows += [
        "",
        f"{steps} steps; median of {repeats}; peak RSS is the trial process's ru_maxrss "
        "(imports and data included).",
    ]
    return "\n".join(rows)


def run_w5(runner: Runner, rows: int, impls: list[str], repeats: int) -> str:
    runner.prepare("W5", rows)
    active = [impl for impl in impls if impl in W5_IMPLS]
    trials: dict[str, list[Trial]] = {impl: [] for impl in active}
    for _ in range(repeats):
        for impl in active:
            trials[impl].append(runner.trial("W5", impl, rows))
            print(f"  W5 {rows} {impl}: {brief(trials[impl][-1])}", file=sys.stderr, flush=True)
    lines = [
        f"### W5: streamed CSV of {rows:,} rows x 4 features -> 32 relu -> 1, Adam, "
        "batch 1024, one epoch",
        "",
        "| implementation | train s | rows/s | process s | ratio to mlpkit | R2 | peak PSS MB "
        "| notes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    reference = median_of(trials.get("mlpkit", []), "train_seconds")
    for impl in active:
        good = [t for t in trials[impl] if "error" not in t]
        if not good:
            lines.append(f"| {impl} | failed: {trials[impl][0]['error']} | | | | | | |")
            continue
        seconds = median_of(good, "train_seconds")
        assert seconds is not None
        lines.append(
            f"| {impl} | {seconds:.2f} | {rows / seconds:,.0f} "
            f"| {median_of(good, 'process_seconds'):.1f} | {ratio(seconds, reference)} "
            f"| {median_of(good, 'quality'):.4f} | {median_of(good, 'peak_rss_mb'):,.0f} "
            f"| {good[0].get('notes', '')} |"
        )
    others = [impl for impl in impls if impl not in W5_IMPLS]
    if others:
        lines.append(f"| {', '.join(others)} | {W5_NA} | | | | | | |")
    lines += [
        "",
        f"rows/s: the file's rows per training second (every row is read; train rows are "
        f"~80%). Peak PSS: the largest sum over the process and its DataLoader workers, sampled "
        f"every 20 ms (bench/stream_memory.py). Median of {repeats}.",
    ]
    return "\n".join(lines)


def process_times(runner: Runner, repeats: int) -> str:
    """Whole processes: `mlpkit train configs/mpg.yaml` beside bench/hand_mpg.py, alternating,
    and `mlpkit --help` (median of 5)."""
    mlpkit = runner.own.parent / "mlpkit"
    epochs = ["--set", "training.epochs=4"] if runner.quick else []
    one_thread = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    timings: dict[str, list[float | str]] = {"train": [], "hand": [], "help": []}
    with tempfile.TemporaryDirectory(prefix="mlpkit-bench-runs-") as runs:
        train = [str(mlpkit), "train", "configs/mpg.yaml", "--quiet", "--runs-dir", runs, *epochs]
        hand = [str(runner.peers), "bench/hand_mpg.py"] + (["--epochs", "4"] * runner.quick)
        for _ in range(repeats):
            timings["train"].append(timed(train, runner.timeout))
            timings["hand"].append(timed(hand, runner.timeout, one_thread))
        for _ in range(5):
            timings["help"].append(timed([str(mlpkit), "--help"], runner.timeout))
    label = "4 epochs" if runner.quick else "40 epochs"
    names = {
        "train": f"`mlpkit train configs/mpg.yaml --quiet` ({label})",
        "hand": f"`python bench/hand_mpg.py` ({label}, torch + pandas only)",
        "help": "`mlpkit --help`",
    }
    reference = median_of([{"s": t} for t in timings["train"] if isinstance(t, float)], "s")
    lines = [
        "### P: whole-process times",
        "",
        "| process | median s | runs | ratio to mlpkit train |",
        "| --- | ---: | ---: | ---: |",
    ]
    for key, values in timings.items():
        good = [v for v in values if isinstance(v, float)]
        if not good:
            lines.append(f"| {names[key]} | failed: {values[0]} | {len(values)} | |")
            continue
        median = statistics.median(good)
        shown = ratio(median, reference) if key != "help" else ""
        lines.append(f"| {names[key]} | {median:.2f} | {len(good)} | {shown} |")
        print(f"  P {key}: {median:.2f} s", file=sys.stderr, flush=True)
    lines += [
        "",
        "Wall time of each process from start to exit, imports and data reading included.",
    ]
    return "\n".join(lines)


def timed(command: list[str], timeout: float, env: dict[str, str] | None = None) -> float | str:
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    except OSError as exc:
        return f"could not start: {exc}"
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        text = [line for line in done.stderr.decode(errors="replace").splitlines() if line]
        return f"exit {done.returncode}: {text[-1][:200] if text else ''}"
    return seconds


# --- helpers ----------------------------------------------------------------------------------


def median_of(trials: list[Trial], key: str) -> float | None:
    values = [t[key] for t in trials if "error" not in t and t.get(key) is not None]
    return statistics.median(values) if values else None


def ratio(seconds: float, reference: float | None) -> str:
    return f"{seconds / reference:.2f}" if reference else "-"


def brief(trial: Trial) -> str:
    if "error" in trial:
        return f"failed: {trial['error']}"
    return f"{trial['train_seconds']:.3f} s, {trial['quality_name']} {trial['quality']:.4f}"


def imports(python: Path, module: str) -> bool:
    try:
        done = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True)
    except OSError:
        return False
    return done.returncode == 0


VERSIONS = """
import importlib, json, os, platform
os.environ["KERAS_BACKEND"] = "torch"
found = {"python": platform.python_version()}
for name in ("mlpkit", "torch", "numpy", "pandas", "sklearn", "skorch", "lightning", "keras"):
    try:
        found[name] = importlib.import_module(name).__version__
    except Exception as exc:
        found[name] = "not installed" if isinstance(exc, ImportError) else type(exc).__name__
print(json.dumps(found))
"""


def versions(python: Path) -> dict[str, str]:
    try:
        done = subprocess.run([str(python), "-c", VERSIONS], capture_output=True, text=True)
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))
    except (OSError, ValueError, IndexError):
        return {"python": f"{python} did not run"}


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        kib = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        )
        memory = f"{kib / 2**20:.1f} GiB RAM"
    except (OSError, StopIteration):
        memory = "RAM unknown"
    system = platform.platform()
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                system = f"{line.split('=', 1)[1].strip(chr(34))} ({platform.release()})"
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {memory}, {system}"


def header(
    command: str, started: datetime.datetime, own: Path, peers: Path, repeats: int, quick: bool
) -> str:
    def shown(python: Path) -> str:
        found = versions(python)
        return ", ".join(f"{name} {version}" for name, version in found.items())

    lines = [
        "# mlpkit beside its peers" + (f" ({QUICK_LABEL})" if quick else ""),
        "",
        f"- command: `{command}`",
        f"- date: {started:%Y-%m-%d %H:%M %Z}",
        f"- machine: {machine()}",
        f"- mlpkit trials: {own} ({shown(own)})",
    ]
    if peers != own:
        lines.append(f"- peer trials: {peers} ({shown(peers)})")
    lines += [
        f"- {repeats} repeat(s), implementations alternating within each; medians shown. "
        "ratio to mlpkit = implementation train seconds / mlpkit train seconds (below 1: faster "
        "than mlpkit). Compare numbers within this run only.",
    ]
    if quick:
        lines += ["", f"**{QUICK_LABEL}.**"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
