"""The benchmark's workloads and the thread choice of each implementation.

Imported by bench/run.py (which may run without torch) and bench/trial.py, so nothing heavy here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CACHE = BENCH / ".cache"

IMPLS = ["mlpkit", "hand", "hand_eager", "dataloader", "sklearn", "skorch", "lightning", "keras"]
W5_IMPLS = {"mlpkit", "hand"}  # W5 (a streamed file) has a hand-written pandas peer only
W5_NA = "n/a: W5 streams a file larger than memory; only a hand-written pandas peer does that"


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    config: Path
    overrides: list[str] = field(default_factory=list)
    small_model: bool = True  # hand: torch.set_num_threads(1)


W3_ROWS, W3_QUICK_ROWS = 1_000_000, 100_000
W5_ROWS, W5_QUICK_ROWS = [100_000, 10_000_000], [100_000, 1_000_000]


def w3_path(rows: int) -> Path:
    return CACHE / ("w3.parquet" if rows == W3_ROWS else f"w3-{rows}.parquet")


def workload(name: str, quick: bool) -> Workload:
    """The workload `name` (W1..W4; W5 is handled apart), with fewer epochs/rows when quick."""
    configs = ROOT / "configs"
    if name == "W1":
        epochs = 4 if quick else 40
        return Workload(
            name,
            f"mpg.yaml: 7 -> 32 relu -> 8 relu -> 1, Adam, batch 1, {epochs} epochs",
            configs / "mpg.yaml",
            [f"training.epochs={epochs}"],
        )
    if name == "W2":
        epochs = 10 if quick else 30
        return Workload(
            name,
            f"mpg-tiny.yaml: 7 -> 1 relu -> 1, Adam, batch 4, {epochs} epochs, scaled target",
            configs / "mpg-tiny.yaml",
            ["training.batch_size=4", f"training.epochs={epochs}"],
        )
    if name == "W3":
        rows = W3_QUICK_ROWS if quick else W3_ROWS
        overrides = [] if rows == W3_ROWS else [f"data.path={w3_path(rows)}"]
        return Workload(
            name,
            f"{rows:,} x 16 Parquet: 16 -> 256 relu -> 256 relu -> 1, Adam, batch 1024, 2 epochs",
            BENCH / "configs" / "w3.yaml",
            overrides,
            small_model=False,
        )
    if name == "W4":
        epochs, steps = (2, 200) if quick else (10, 1000)
        return Workload(
            name,
            f"xor.yaml: 2 named inputs -> 8 tanh -> 1 (logits, BCE), SGD 0.01, "
            f"{epochs} x {steps} batches of 32, endless random data",
            configs / "xor.yaml",
            [f"training.epochs={epochs}", f"training.iterations_per_epoch={steps}"],
        )
    raise ValueError(f"unknown workload {name}")


def threads_for(name: str, impl: str) -> int | None:
    """The thread count an implementation sets for a workload (None: torch's default).

    `hand` uses one thread for the small models (W1, W2, W4, W5); the rest keep the default,
    and mlpkit chooses for itself."""
    if impl == "hand" and name in ("W1", "W2", "W4", "W5"):
        return 1
    return None
