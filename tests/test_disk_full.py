"""A full disk, for real: a 2 MB tmpfs holds the runs folder (needs root to mount; skipped
otherwise). Exit 4 naming the path, the previous checkpoint intact, no temporary files left,
and the run resumes to the very weights of an uninterrupted run once space is back."""

from __future__ import annotations

import errno
import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Cli, EpochListener, Project

from mlpkit.config.load import load_config
from mlpkit.errors import EnvironmentFault
from mlpkit.flows.train import train
from mlpkit.rundir import catalog, checkpoints
from mlpkit.train.loop import EpochRecord


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(disk: Path) -> Path:
    """Write until the disk is full; returns the filler file (delete it to free the space)."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as out:  # unbuffered: close has nothing left to write
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_disk_full_mid_training_exits_4_and_resumes_exactly(
    cli: Cli, project: Project, small_disk: Path
) -> None:
    project.edit_config("epochs: 3", "epochs: 5")
    reference = project.train(cli)
    filler: list[Path] = []

    def full_after_epoch_2(record: EpochRecord) -> None:
        if record["epoch"] == 2:
            filler.append(fill(small_disk))

    runs = small_disk / "runs"
    with pytest.raises(EnvironmentFault) as caught:
        train(load_config(project.config), runs, listener=EpochListener(full_after_epoch_2))
    assert caught.value.exit_code == 4
    (run,) = runs.glob("*/*")
    assert caught.value.render() == (
        f"Error: {run}/checkpoints/ckpt-000000000012-000004: cannot write: No space left on device"
    )
    assert not list(run.rglob(".partial-*")) and not list(run.rglob("*.tmp"))
    kept, _ = checkpoints.latest(run)
    assert kept.position.epoch == 3  # epoch 2's checkpoint, whole
    assert catalog.read_row(run).status in ("failed", "interrupted")
    filler[0].unlink()
    resumed = cli("train", "--resume", run, "-q")
    assert resumed.code == 0, resumed.err
    assert sha(run / "model.safetensors") == sha(reference / "model.safetensors")


def test_a_full_disk_before_training_is_exit_4_naming_the_path(
    cli: Cli, project: Project, small_disk: Path
) -> None:
    runs = small_disk / "runs"
    (runs / "tiny").mkdir(parents=True)
    fill(small_disk)
    result = cli("train", project.config, "--runs-dir", runs)
    assert result.code == 4
    (line,) = result.err.splitlines()
    assert line.startswith(f"Error: {runs}/tiny/") and "No space left on device" in line
