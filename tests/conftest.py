"""Shared fixtures: a tiny project on disk (config + generated CSV) and an in-process CLI runner."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from postgres import postgres  # noqa: F401  (the session's PostgreSQL server, tests/postgres.py)

from mlpkit.cli import run_cli
from mlpkit.train import interrupts

REPO = Path(__file__).resolve().parent.parent

TINY_CONFIG = """\
name: tiny
seed: 0
data:
  path: data.csv
  target: y
  features: [a, b, color]
  categorical: [color]
  split: {train: 0.6, val: 0.2, test: 0.2}
model:
  layers:
    - {type: dense, units: 8, activation: relu}
    - {type: dense, units: 1}
training:
  epochs: 3
  batch_size: 8
  optimizer: {name: adam, lr: 1e-2}
  loss: mse
"""


def tiny_csv(rows: int = 50, seed: int = 0) -> str:
    """y depends on a, b and color, with a little noise: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=rows), rng.uniform(0, 10, size=rows)
    colors = rng.choice(["red", "green", "blue"], size=rows)
    y = 3 * a - 0.5 * b + (colors == "red") * 2 + rng.normal(scale=0.1, size=rows)
    lines = ["a,b,color,y"] + [
        f"{x:.4f},{z:.4f},{c},{t:.4f}" for x, z, c, t in zip(a, b, colors, y, strict=True)
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class EpochListener:
    """A train flow listener that only hears the epochs: a test's hook into a running fit."""

    epoch: Callable[[dict[str, float]], None]

    def started(self, start: object) -> None:
        """Nothing to do at the start."""


@dataclass
class Project:
    """A tiny project in a folder: config.yaml, data.csv beside it, runs/ to train into."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def data(self) -> Path:
        return self.root / "data.csv"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def write_config(self, text: str) -> Path:
        self.config.write_text(text)
        return self.config

    def edit_config(self, old: str, new: str) -> Path:
        text = self.config.read_text()
        assert old in text, f"fixture config has no {old!r}"
        return self.write_config(text.replace(old, new, 1))

    def run_dirs(self) -> list[Path]:
        return sorted(self.runs.glob("*/*")) if self.runs.exists() else []

    def train(self, cli: Cli, *extra: str | Path, runs: Path | None = None) -> Path:
        """`mlpkit train CONFIG --runs-dir RUNS -q EXTRA...`, which must succeed: the run
        directory it printed. RUNS is the project's runs folder unless `runs` names another."""
        result = cli("train", self.config, "--runs-dir", runs or self.runs, "-q", *extra)
        assert result.code == 0, result.err
        return Path(result.last_line)


def pytest_configure(config: pytest.Config) -> None:
    """No run trained by the suite draws its plots unless a test asks (below): module-scoped
    fixtures train before any function-scoped fixture could say so, and a background child
    started in process would outlive its test."""
    os.environ["MLPKIT_PLOTS"] = "off"


@pytest.fixture(autouse=True)
def _plots_only_where_asked(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drawing a run's plots costs about a second of matplotlib per training, and the suite
    trains a few hundred runs: only tests marked `plots` draw them, before the command returns
    (test_plots.py, the complete-run file list); elsewhere `train` draws none. Tests of the
    background child pass --plots background themselves."""
    marked = request.node.get_closest_marker("plots") is not None
    monkeypatch.setenv("MLPKIT_PLOTS", "wait" if marked else "off")


@pytest.fixture
def project(tmp_path: Path) -> Project:
    p = Project(tmp_path)
    p.write_config(TINY_CONFIG)
    p.data.write_text(tiny_csv())
    return p


@dataclass(frozen=True)
class Result:
    """What one command did: its exit code and everything it printed."""

    code: int
    out: str
    err: str

    @property
    def last_line(self) -> str:
        return self.out.strip().splitlines()[-1]


@dataclass(frozen=True)
class Cli:
    """`mlpkit ARGS...` run in this process, as a user's shell would run it, output captured."""

    capsys: pytest.CaptureFixture[str]

    def __call__(self, *args: str | Path) -> Result:
        code = run_cli([str(a) for a in args])
        captured = self.capsys.readouterr()
        return Result(code, captured.out, captured.err)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys)


def stop_at_poll(monkeypatch: pytest.MonkeyPatch, poll: int, number: int = signal.SIGINT) -> None:
    """Act as if `number` arrived just before the loop's `poll`-th check (one per step and one
    per epoch end), the deterministic stand-in for a signal at that moment."""
    polls = 0

    def requested(self: interrupts.StopSignals) -> bool:
        nonlocal polls
        polls += 1
        if polls >= poll and self.received is None:
            self.received = number
        return self.received is not None

    monkeypatch.setattr(interrupts.StopSignals, "requested", requested)
