"""Data-parallel training under torchrun: real launchers, two CPU processes, gloo on loopback.

Each test starts real processes (torchrun, or `mlpkit train --nproc 2`, which starts the same
launcher) and checks what a user would: the run directory they leave, its weights against a
single process trained on the same global batches, and how a stop, a killed rank and a
restart end.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from conftest import TINY_CONFIG, Cli, Project, tiny_csv
from safetensors.torch import load_file

from mlpkit.data import filestream
from mlpkit.flows.evaluate import evaluate_run
from mlpkit.reading import available_memory
from mlpkit.rundir import runs
from mlpkit.train.prepare import prepare

pytestmark = pytest.mark.slow  # every test starts processes that import torch

MLPKIT = [sys.executable, "-m", "mlpkit"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def run(command: Sequence[object], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=timeout
    )


def start(command: Sequence[object]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(part) for part in command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def on_two(config: Path, runs_dir: Path, *extra: object) -> list[object]:
    """`mlpkit train CONFIG --runs-dir RUNS --nproc 2 -q EXTRA...`"""
    return [*MLPKIT, "train", config, "--runs-dir", runs_dir, "--nproc", 2, "-q", *extra]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / runs.WEIGHTS)


def largest_difference(a: Path, b: Path) -> float:
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys()
    return max(float((first[k] - second[k]).abs().max()) for k in first)


def info(run_dir: Path) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((run_dir / runs.RUN_INFO).read_text())
    return loaded


def only_run(folder: Path) -> Path:
    found = sorted(folder.glob("*/*"))
    assert len(found) == 1, found
    return found[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def rank_pid(launcher: int, rank: int, timeout: float = 60) -> int:
    """The pid of the launcher's worker process of `rank` (its environment says RANK=rank)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
        for pid in children:
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ:
                return int(pid)
        time.sleep(0.05)
    raise AssertionError(f"no rank {rank} under {launcher}")


def wait_for_checkpoint(runs_dir: Path, timeout: float = 60) -> Path:
    """The run directory, once its first checkpoint is written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(runs_dir.glob(f"*/*/{runs.CHECKPOINTS}/ckpt-*"))
        if found:
            return found[0].parent.parent
        time.sleep(0.05)
    raise AssertionError("no checkpoint was written")


def lengthen(project: Project) -> Project:
    """The tiny project with more rows and epochs: long enough to be stopped midway."""
    project.data.write_text(tiny_csv(rows=400))
    project.edit_config("epochs: 3", "epochs: 60\n  checkpoint_every_steps: 10")
    return project


def kill_rank_1_after_a_checkpoint(launcher: subprocess.Popen[str], runs_dir: Path) -> Path:
    """SIGKILL to rank 1 of `launcher` once the run has a checkpoint; the run directory."""
    run_dir = wait_for_checkpoint(runs_dir)
    os.kill(rank_pid(launcher.pid, 1), signal.SIGKILL)
    return run_dir


@pytest.fixture
def longer(project: Project) -> Project:
    return lengthen(project)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The longer project trained on two processes from start to end: what a stopped and
    resumed run must end as."""
    project = Project(tmp_path_factory.mktemp("uninterrupted"))
    project.write_config(TINY_CONFIG)
    lengthen(project)
    done = run(on_two(project.config, project.runs))
    assert done.returncode == 0, done.stderr
    return only_run(project.runs)


def test_torchrun_two_processes_train_what_one_process_trains_on_the_global_batch(
    project: Project, cli: Cli
) -> None:
    """torchrun --nproc-per-node 2 with batch 8 takes the same steps as one process with
    batch 16 (each rank its half of every global batch): the same weights within 1e-6, and
    `mlpkit eval` reproduces the run's metrics.json."""
    torchrun = [*TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "mlpkit", "train"]
    done = run([*torchrun, project.config, "--runs-dir", project.root / "two", "-q"])
    assert done.returncode == 0, done.stderr
    spread = only_run(project.root / "two")
    assert done.stdout.strip().splitlines() == [str(spread)]  # rank 0 alone prints
    one = project.train(cli, "--set", "training.batch_size=16", runs=project.root / "one")
    assert largest_difference(spread, one) < 1e-6
    metrics = json.loads((spread / runs.METRICS).read_text())
    assert evaluate_run(spread).scores == metrics["test"]
    training = info(spread)["training"]
    assert isinstance(training, dict)
    assert training["distributed"] == {
        "processes": 2,
        "backend": "gloo",
        "batch_per_process": 8,
        "effective_batch": 16,
        "launch": training["distributed"]["launch"],
        "rows_per_process": [48, 42],  # 30 training rows x 3 epochs: 16 a step, the last 14
    }
    # one writer: the files of a single process's run, no more
    assert {p.name for p in spread.iterdir()} == {p.name for p in one.iterdir()}


def test_nproc_with_a_global_batch_matches_one_process_on_both_engines(
    project: Project, cli: Cli
) -> None:
    """`train --nproc 2` with batch_scope: global splits batch_size between the processes, so
    the same config trains the same weights on one process or two; autograd's path
    (DistributedDataParallel) as well as the direct engine's bucket, early stopping on rank
    0's validation included. The first line says the effective batch."""
    project.edit_config("epochs: 3", "epochs: 12")
    stopping = "training.early_stopping={monitor: val_loss, patience: 1, min_delta: 1.0}"
    for engine in ("direct", "autograd"):
        settings = ["--set", "training.batch_scope=global", "--set", f"training.engine={engine}"]
        settings += ["--set", stopping]
        two = project.root / f"two-{engine}"
        done = run([*MLPKIT, "train", project.config, "--runs-dir", two, "--nproc", 2, *settings])
        assert done.returncode == 0, done.stderr
        headline = done.stdout.splitlines()[0]
        assert "2 processes (gloo) x batch 4 = 8 rows a step" in headline
        one = project.train(cli, *settings, runs=project.root / f"one-{engine}")
        assert largest_difference(only_run(two), one) < 1e-6
        assert info(only_run(two))["training"]["engine"] == engine  # type: ignore[index]
        stopped = json.loads((only_run(two) / runs.METRICS).read_text())["early_stopping"]
        assert stopped["stopped_epoch"] is not None  # it stopped early, as one process does:
        assert stopped == json.loads((one / runs.METRICS).read_text())["early_stopping"] | {
            "best_value": pytest.approx(stopped["best_value"], rel=1e-6)
        }


def test_a_streamed_file_gives_each_rank_its_own_blocks(project: Project, cli: Cli) -> None:
    """Streamed (data.stream) in blocks of 25 lines, each rank reads every other block of the
    epoch's order: the rows each trained are those of its own blocks, and together every
    training row once."""
    project.data.write_text(tiny_csv(rows=300))
    project.edit_config("epochs: 3", "epochs: 1")
    project.edit_config("  target: y", "  target: y\n  stream: true\n  chunk_rows: 25")
    done = run(on_two(project.config, project.runs))
    assert done.returncode == 0, done.stderr
    rows = info(only_run(project.runs))["training"]["distributed"]["rows_per_process"]  # type: ignore[index]
    from mlpkit.config.load import load_config

    prepared = prepare(load_config(project.config))
    assert prepared.scan is not None
    blocks = filestream.TrainingBlocks(
        prepared.scan, prepared.preprocessor, prepared.task.targets,
        prepared.config.data.split, 0, 8, True, False, rank=0, world=2,
    )  # fmt: skip
    per_block = prepared.scan.block_train_rows
    expected = [sum(per_block[i] for i in blocks.rank_blocks(1, rank)) for rank in (0, 1)]
    assert len(per_block) == 12 and rows == expected
    assert sum(rows) == prepared.scan.counts["train"] and min(rows) > 0


def test_two_launchers_with_nnodes_2_train_one_run(project: Project, cli: Cli) -> None:
    """Two torchrun launchers, a node each, meet at a c10d rendezvous on loopback: one run
    directory, trained as two processes on one machine train it."""
    endpoint = f"127.0.0.1:{free_port()}"
    node: list[object] = [
        *TORCHRUN,
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
        "--rdzv-backend",
        "c10d",
    ]
    node += ["--rdzv-endpoint", endpoint, "--rdzv-id", "two-nodes", "-m", "mlpkit", "train"]
    node += [project.config, "--runs-dir", project.root / "nodes", "-q"]
    launchers = [start(node), start(node)]
    outputs = [launcher.communicate(timeout=120) for launcher in launchers]
    assert [launcher.returncode for launcher in launchers] == [0, 0], outputs
    spread = only_run(project.root / "nodes")
    reference = run(on_two(project.config, project.root / "ref"))
    assert reference.returncode == 0, reference.stderr
    assert largest_difference(spread, only_run(project.root / "ref")) == 0.0


def test_a_killed_rank_ends_the_group_and_the_run_resumes_to_the_same_weights(
    longer: Project, cli: Cli, uninterrupted: Path
) -> None:
    """SIGKILL of rank 1 mid-run: rank 0's next all-reduce fails at once, the launcher exits
    well within 60 s and the run is marked interrupted; `train --resume RUN --nproc 2` then
    ends with the weights of an uninterrupted two-process run."""
    launcher = start(on_two(longer.config, longer.runs))
    run_dir = kill_rank_1_after_a_checkpoint(launcher, longer.runs)
    killed = time.monotonic()
    _, err = launcher.communicate(timeout=60)
    assert time.monotonic() - killed < 60
    lines = err.strip().splitlines()
    assert launcher.returncode == 4 and len(lines) == 2, err  # rank 0's code, and a line each
    assert "another process of the group died" in lines[0]
    assert "resume with: mlpkit train --resume" in lines[0]
    assert lines[1].startswith("Error: rank 1 (pid ") and "killed by SIGKILL" in lines[1]
    assert info(run_dir)["status"] == "interrupted"
    assert "another process of the group died" in str(info(run_dir)["error"])
    alone = cli("train", "--resume", run_dir)
    assert alone.code == 2 and "trained on 2 processes" in alone.err and "--nproc 2" in alone.err
    resumed = run([*MLPKIT, "train", "--resume", run_dir, "--nproc", "2", "-q"])
    assert resumed.returncode == 0, resumed.stderr
    assert info(run_dir)["status"] == "complete" and info(run_dir)["resumed"]
    assert largest_difference(run_dir, uninterrupted) < 1e-6


def test_sigterm_to_the_launcher_stops_every_rank_at_one_step_with_a_checkpoint(
    longer: Project,
) -> None:
    """SIGTERM to `train --nproc 2` reaches every rank; they agree on the step to stop at, rank
    0 saves there, and the command exits 143 with the run interrupted and resumable."""
    launcher = start(on_two(longer.config, longer.runs))
    run_dir = wait_for_checkpoint(longer.runs)
    launcher.send_signal(signal.SIGTERM)
    _, err = launcher.communicate(timeout=60)
    assert launcher.returncode == 143, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "stopped by SIGTERM, a checkpoint was saved" in lines[0]
    assert lines[0].endswith(f"resume with: mlpkit train --resume {run_dir} --nproc 2")
    assert info(run_dir)["status"] == "interrupted"
    resumed = run([*MLPKIT, "train", "--resume", run_dir, "--nproc", "2", "-q"])
    assert resumed.returncode == 0, resumed.stderr


def test_max_restarts_resumes_the_run_from_its_last_checkpoint(
    longer: Project, uninterrupted: Path
) -> None:
    """With --max-restarts 1, a killed rank makes torchrun restart both; rank 0 finds the run
    its launch began and carries it on: one run directory, complete, resumed once, with the
    weights of a run never stopped."""
    launcher = start(on_two(longer.config, longer.runs, "--max-restarts", 1))
    run_dir = kill_rank_1_after_a_checkpoint(launcher, longer.runs)
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 0, err
    assert only_run(longer.runs) == run_dir and out.strip().splitlines()[-1] == str(run_dir)
    assert info(run_dir)["status"] == "complete" and len(info(run_dir)["resumed"]) == 1  # type: ignore[arg-type]
    assert largest_difference(run_dir, uninterrupted) < 1e-6


def test_refusals_under_torchrun_are_one_line_from_rank_0_and_leave_nothing(
    project: Project,
) -> None:
    """What cannot train over processes is refused once, before any run exists: a global
    batch the processes cannot share, an ensemble, --seeds, a file of fewer blocks than
    processes, a config mistake."""
    cases = [
        (["--set", "training.batch_scope=global", "--set", "training.batch_size=7"],
         "training.batch_size: is the global batch"),
        (["--set", "model.ensemble=3"], "model.ensemble: an ensemble trains its members"),
        (["--seeds", "3"], "--seeds: trains several networks"),
        (["--set", "data.stream=true", "--set", "data.chunk_rows=1000"],
         "data.chunk_rows: makes 1 blocks of the file, fewer than the 2 processes"),
        (["--set", "training.epochs=0"], "training.epochs"),
    ]  # fmt: skip
    for extra, expected in cases:
        done = run(
            [*MLPKIT, "train", project.config, "--runs-dir", project.runs, "--nproc", 2, *extra]
        )
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and expected in lines[0], done.stderr
    assert not list(project.runs.glob("*/*"))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nccl_one_process_per_gpu_trains_what_one_process_trains(
    project: Project, cli: Cli
) -> None:
    """On CUDA the group is NCCL's, a device per process: with one process (all this machine
    may have) its run equals a plain CUDA run's within float tolerance."""
    nccl = [*MLPKIT, "train", project.config, "--runs-dir", project.root / "nccl", "--nproc", 1]
    done = run([*nccl, "--device", "cuda", "-q"])
    assert done.returncode == 0, done.stderr
    spread = only_run(project.root / "nccl")
    assert info(spread)["training"]["distributed"]["backend"] == "nccl"  # type: ignore[index]
    one = project.train(cli, "--device", "cuda", runs=project.root / "one")
    assert largest_difference(spread, one) < 1e-5


def test_processes_that_would_not_fit_in_memory_together_are_refused_before_allocating(
    project: Project,
) -> None:
    """A network one process could train (its weights, gradients and Adam's two moments about
    0.7 of the memory available) on two processes of this machine would need 1.4 of it:
    refused by every rank together, one line from rank 0, before either builds the network."""
    units = int(math.sqrt(0.7 * available_memory() / (4 * 4)))
    wide = f"    - {{type: dense, units: {units}, activation: relu}}"
    project.edit_config("    - {type: dense, units: 8, activation: relu}", f"{wide}\n{wide}")
    done = run(on_two(project.config, project.runs))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "torchrun: the 2 processes on rank 0's machine need about" in lines[0]
    assert not list(project.runs.glob("*/*"))


def test_too_many_processes_and_under_torchrun_sweeps_and_a_second_launch_are_refused(
    project: Project, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More processes than cores are refused; and in a process torchrun started (its
    environment names a rank), `sweep` and `train --nproc` say why not in one line, before
    joining any group."""
    many = cli("train", project.config, "--runs-dir", project.runs, "--nproc", "100000")
    assert many.code == 2 and many.err.startswith("Error: --nproc: is 100,000, and this machine")
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1")):
        monkeypatch.setenv(name, value)
    swept = cli("sweep", project.config, "--runs-dir", project.runs)
    assert swept.code == 2 and swept.err.startswith("Error: sweep: runs its trials as runs")
    twice = cli("train", project.config, "--runs-dir", project.runs, "--nproc", "2")
    assert twice.code == 2 and twice.err.startswith("Error: --nproc: under torchrun already")
    assert not project.runs.exists()
