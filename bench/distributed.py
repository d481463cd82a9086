"""Data-parallel training under torchrun (`mlpkit train --nproc N`), in one run. On demand:

    .venv/bin/python bench/distributed.py [--repeats 3] [--epochs 2] [--rows N] [--quick] [--wait S]

1. W3 (bench/configs/w3.yaml: N x 16 rows -> 256 relu -> 256 relu -> 1, Adam) with a global
   batch of 1024 (`training.batch_scope=global`, `training.batch_size=1024`), trained by
   `mlpkit train` two ways on the same cores: (a) one process with 2 threads
   (`training.threads=2`, OMP_NUM_THREADS=2), the peer, and (b) `--nproc 2` with one thread a
   process (`training.threads=1`, OMP_NUM_THREADS=1): 512 rows a process a step. Each process
   in turn within a repeat; medians of --repeats. The training phase is run.json's
   `training.seconds` (rank 0's epochs, checkpoints included); the whole process is the
   command's wall time (for (b): the launcher, both ranks' start-up and data loading).
2. The collective a direct-engine step makes: two gloo processes on loopback (one thread
   each, torch.multiprocessing spawn) time `dist.all_reduce` of a float32 buffer of P + 3
   numbers (the gradients, loss, rows and stop flag of train/distributed.py's Bucket) for W3's
   P = 70,401 and mpg's P = 529, and the whole `Bucket.reduce` (pack, scale, all-reduce,
   the host read of rows and stop, divide), in microseconds a step; and a one-float
   all-reduce, the floor that is latency alone.
3. The numbers derived from them: bytes a step (4 x (P + 3)), what a ring all-reduce sends a
   process (2 (N - 1) / N of that), and the bandwidth that keeps it within a tenth of W3's
   measured compute time a step.

On a 2-core machine (a) and (b) share the same 2 cores: the ratio measures what data
parallelism costs (the collective, a second process), not a speed-up. Before each trial the
bench waits up to --wait seconds (default 120) for the cores to be idle, and prints how busy
they were. W3's data is generated once into bench/.cache/ by bench/trial.py's make_w3.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
MLPKIT = [sys.executable, "-m", "mlpkit"]
GLOBAL_BATCH = 1024
# parameters of each network: W3 16 -> 256 -> 256 -> 1, mpg 7 -> 32 -> 8 -> 1
SIZES = {"W3": 16 * 256 + 256 + 256 * 256 + 256 + 256 + 1, "mpg": 7 * 32 + 32 + 32 * 8 + 8 + 8 + 1}
LAYERS = {"W3": (16, [256, 256, 1]), "mpg": (7, [32, 8, 1])}


# --- 1. W3 trained by mlpkit -------------------------------------------------------------------


def w3_data(rows: int) -> Path:
    """W3's Parquet of `rows` rows, made once by bench/trial.py's generator."""
    sys.path.insert(0, str(BENCH))
    from trial import make_w3

    return make_w3(rows)


def train(data: Path, epochs: int, nproc: int, runs: str) -> dict[str, Any]:
    """One `mlpkit train` process (a launcher and its ranks with nproc > 1): its wall time and
    run.json's training figures."""
    threads = 2 if nproc == 1 else 1
    command = [
        *MLPKIT,
        "train",
        str(BENCH / "configs" / "w3.yaml"),
        "-q",
        "--plots",
        "off",
        "--runs-dir",
        runs,
        "--set",
        f"data.path={data}",
        "--set",
        "training.batch_scope=global",
        "--set",
        f"training.batch_size={GLOBAL_BATCH}",
        "--set",
        f"training.epochs={epochs}",
        "--set",
        f"training.threads={threads}",
    ]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr}")
    run_dir = Path(done.stdout.strip().splitlines()[-1])
    info = json.loads((run_dir / "run.json").read_text())["training"]
    return {
        "wall": wall,
        "seconds": float(info["seconds"]),
        "steps": int(info["steps"]),
        "threads": info["threads"],
        "engine": info["engine"],
        "distributed": info.get("distributed"),
    }


def busy(seconds: float = 1.0) -> float:
    """The share of all cores busy over `seconds` (/proc/stat; 0 where there is none)."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except OSError:
        return 0.0
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def quiet(wait: float) -> float:
    """Wait up to `wait` seconds for the machine to be nearly idle (under a quarter of its
    cores busy) before a trial; the share busy when the trial started."""
    deadline = time.monotonic() + wait
    while True:
        share = busy()
        if share < 0.25 or time.monotonic() >= deadline:
            return share
        time.sleep(2)


# --- 2. the all-reduce -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def reduce_worker(rank: int, port: int, iterations: int, repeats: int, out: str) -> None:
    """One of two gloo ranks: us per all-reduce (and per Bucket.reduce) for each size."""
    import torch
    import torch.distributed as dist

    from mlpkit.config.schema import DenseLayer
    from mlpkit.train.distributed import Bucket, Group
    from mlpkit.train.model import build_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    group = Group(rank, 2, rank, 2, "bench", 0, 60.0)
    found: dict[str, dict[str, list[float]]] = {}
    warmup = max(20, iterations // 10)

    def timed(call: Any) -> float:
        for _ in range(warmup):
            call()
        dist.barrier()
        start = time.perf_counter()
        for _ in range(iterations):
            call()
        return (time.perf_counter() - start) / iterations * 1e6

    for name, count in SIZES.items():
        inputs, widths = LAYERS[name]
        layers = [DenseLayer(type="dense", units=w, activation="relu") for w in widths[:-1]]
        model = build_model([*layers, DenseLayer(type="dense", units=widths[-1])], inputs, seed=0)
        params = [p.detach() for p in model.parameters()]
        assert sum(p.numel() for p in params) == count, (name, count)
        flat = torch.zeros(count + 3)
        bucket = Bucket(group, params)
        grads = [torch.randn_like(p) for p in params]
        loss = torch.tensor(0.5)
        for _ in range(repeats):
            found.setdefault(name, {}).setdefault("all_reduce", []).append(
                timed(lambda flat=flat: dist.all_reduce(flat))
            )
            found[name].setdefault("bucket", []).append(
                timed(lambda b=bucket, g=grads, loss=loss: b.reduce((loss, g), 512))
            )
    one = torch.zeros(1)  # the floor: a collective's latency with next to no bytes
    found["1 float"] = {"all_reduce": [timed(lambda: dist.all_reduce(one)) for _ in range(repeats)]}
    dist.barrier()
    if rank == 0:
        Path(out).write_text(json.dumps(found))
    dist.destroy_process_group()


def all_reduce_costs(iterations: int, repeats: int) -> dict[str, dict[str, float]]:
    """Median us a step, rank 0's clock, for each size: the bare all-reduce and Bucket.reduce."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="mlpkit-bench-") as tmp:
        out = str(Path(tmp) / "reduce.json")
        mp.spawn(reduce_worker, args=(free_port(), iterations, repeats, out), nprocs=2)
        found = json.loads(Path(out).read_text())
    return {
        name: {what: statistics.median(values) for what, values in kinds.items()}
        for name, kinds in found.items()
    }


# --- 3. the report -----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=None, help="default 3; --quick: 1")
    parser.add_argument("--epochs", type=int, default=None, help="W3's epochs (default 2; quick 1)")
    parser.add_argument("--rows", type=int, default=None, help="W3's rows (default 1,000,000)")
    parser.add_argument("--iterations", type=int, default=None, help="all-reduces timed a repeat")
    parser.add_argument("--quick", action="store_true", help="1 repeat, 100,000 rows, 1 epoch")
    parser.add_argument(
        "--wait",
        type=float,
        default=120.0,
        help="seconds to wait before each trial for another load to pass (default 120)",
    )
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    epochs = args.epochs or (1 if args.quick else 2)
    rows = args.rows or (100_000 if args.quick else 1_000_000)
    iterations = args.iterations or (200 if args.quick else 2000)

    data = w3_data(rows)
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"load average at start {os.getloadavg()[0]:.2f}"
    )
    modes = {1: "1 process x 2 threads", 2: "--nproc 2 x 1 thread"}
    results: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="mlpkit-bench-") as runs:
        for _ in range(repeats):
            for nproc in modes:
                before = quiet(args.wait)
                results[nproc].append(train(data, epochs, nproc, runs) | {"busy": before})
    before = quiet(args.wait)
    costs = all_reduce_costs(iterations, repeats)
    load_end = os.getloadavg()[0]

    spread = results[2][0]["distributed"]
    samples = sum(spread["rows_per_process"])  # rows of the training split x epochs
    steps = results[1][0]["steps"]
    print(
        f"\nW3: {rows:,} x 16 -> 256 relu -> 256 relu -> 1, Adam, global batch {GLOBAL_BATCH}, "
        f"{epochs} epoch(s): {samples:,} samples, {steps} steps; median of {repeats}"
    )
    print(
        f"(b): {spread['processes']} processes, {spread['backend']}, "
        f"{spread['batch_per_process']} rows a process a step; engine {results[2][0]['engine']}"
    )
    header = (
        "| run | train s | samples/s | us/step | whole process s | train (b)/(a) | whole (b)/(a) |"
    )
    print(header)
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    base_train = statistics.median(r["seconds"] for r in results[1])
    base_wall = statistics.median(r["wall"] for r in results[1])
    per_step: dict[int, float] = {}
    for nproc, label in modes.items():
        seconds = statistics.median(r["seconds"] for r in results[nproc])
        wall = statistics.median(r["wall"] for r in results[nproc])
        per_step[nproc] = seconds / steps * 1e6
        peer = " (peer)" if nproc == 1 else " (mlpkit data-parallel)"
        print(
            f"| ({'a' if nproc == 1 else 'b'}) {label}{peer} | {seconds:.2f} | "
            f"{samples / seconds:,.0f} | {per_step[nproc]:,.0f} | {wall:.2f} | "
            f"{seconds / base_train:.2f} | {wall / base_wall:.2f} |"
        )
    for nproc, label in modes.items():
        runs_text = ", ".join(
            f"{r['seconds']:.2f}/{r['wall']:.2f} ({r['busy']:.0%})" for r in results[nproc]
        )
        print(f"  {label}: train/whole s of each repeat (cores busy before it): {runs_text}")
    extra = per_step[2] - per_step[1]
    print(f"(b) - (a): {extra:,.0f} us a step")

    print(
        f"\nall-reduce, 2 gloo processes on loopback, 1 thread each, {iterations} per repeat, "
        f"median of {repeats} (cores busy before: {before:.0%})"
    )
    print("| network | P | floats (P+3) | bytes per step | all_reduce us | Bucket.reduce us |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, count in SIZES.items():
        cost = costs[name]
        print(
            f"| {name} | {count:,} | {count + 3:,} | {4 * (count + 3):,} | "
            f"{cost['all_reduce']:,.0f} | {cost['bucket']:,.0f} |"
        )
    print(f"| 1 float (latency) | | 1 | 4 | {costs['1 float']['all_reduce']:,.0f} | |")

    w3_bytes = 4 * (SIZES["W3"] + 3)
    compute = per_step[1] / 1e6  # (a): a 1024-row step, no collective
    print(f"\non paper: W3, one bucket of {w3_bytes:,} bytes a step; compute a 1024-row step")
    print(f"  = {per_step[1]:,.0f} us on this machine ((a), 2 threads): {1 / compute:,.0f} steps/s")
    print("| processes N | ring sends a process a step | Gbit/s for <= 10% of compute |")
    print("| ---: | ---: | ---: |")
    for n in (2, 4, 8, 16, 64):
        sent = 2 * (n - 1) / n * w3_bytes
        print(f"| {n} | {sent:,.0f} B | {sent * 8 / (0.1 * compute) / 1e9:.2f} |")
    print(
        f"  latency: a ring all-reduce makes 2 (N - 1) hops a step; mpg's bucket is "
        f"{4 * (SIZES['mpg'] + 3):,} bytes, so its cost is the hops' latency, not bandwidth"
    )
    print(f"load average at end {load_end:.2f}")


if __name__ == "__main__":
    main()
