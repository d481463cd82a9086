import errno
import json
import os
import shutil
from datetime import datetime
from pathlib import Path

import pytest
import torch
from conftest import TINY_CONFIG, Project, tiny_csv

from mlpkit.errors import EnvironmentFault, RunDirError
from mlpkit.flows.evaluate import evaluate_run
from mlpkit.reading import size_text
from mlpkit.rundir import catalog, lock, runs

NOW = datetime(2026, 11, 21, 10, 15, 0)


def test_run_directories_are_exclusive_even_at_the_same_second(tmp_path: Path) -> None:
    first = runs.create_run_dir(tmp_path, "mpg", NOW)
    second = runs.create_run_dir(tmp_path, "mpg", NOW)
    assert first != second
    assert (
        first.name.startswith("20261121-101500-") and len(first.name) == len("20261121-101500-") + 6
    )


def test_an_id_collision_takes_another_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = iter(["aaaaaa", "aaaaaa", "bbbbbb"])
    monkeypatch.setattr("mlpkit.rundir.runs.secrets.token_hex", lambda n: next(ids))
    assert runs.create_run_dir(tmp_path, "x", NOW).name == "20261121-101500-aaaaaa"
    assert runs.create_run_dir(tmp_path, "x", NOW).name == "20261121-101500-bbbbbb"


def test_writes_are_atomic_and_strict(tmp_path: Path) -> None:
    runs.write_json(tmp_path / "m.json", {"r2": 0.5})
    assert json.loads((tmp_path / "m.json").read_text()) == {"r2": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
    with pytest.raises(ValueError):
        runs.write_json(tmp_path / "bad.json", {"r2": float("nan")})  # never a NaN literal


def test_a_full_disk_is_exit_4_and_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "m.json").write_text('{"old": true}')

    def disk_full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("mlpkit.rundir.runs.os.replace", disk_full)
    with pytest.raises(EnvironmentFault) as caught:
        runs.write_json(tmp_path / "m.json", {"new": True})
    assert caught.value.exit_code == 4
    assert (
        caught.value.render()
        == f"Error: {tmp_path / 'm.json'}: cannot write: No space left on device"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
    assert json.loads((tmp_path / "m.json").read_text()) == {"old": True}  # previous file intact


# --- reading a run: bounded, never through a link outside it --------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One complete tiny run, copied by `run` for each test that damages it."""
    from mlpkit.cli import run_cli

    root = tmp_path_factory.mktemp("trained")
    project = Project(root)
    project.write_config(TINY_CONFIG)
    project.data.write_text(tiny_csv())
    assert run_cli(["train", str(project.config), "--runs-dir", str(project.runs), "-q"]) == 0
    (found,) = project.run_dirs()
    return found


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def refusal(run_dir: Path) -> str:
    with pytest.raises(RunDirError) as caught:
        runs.open_run(run_dir).load_weights(torch.nn.Linear(1, 1))
    return caught.value.render()


@pytest.mark.parametrize("name", ["config.yaml", "run.json", "model.safetensors", "checkpoints"])
def test_an_entry_linked_outside_the_run_is_refused(run: Path, tmp_path: Path, name: str) -> None:
    outside = tmp_path / "elsewhere"
    (run / name).rename(outside)
    (run / name).symlink_to(outside)
    assert refusal(run) == (
        f"Error: {run / name}: is a link to {outside}, outside the run directory; "
        "copy the file into the run"
    )


def test_a_link_inside_the_run_is_fine(run: Path) -> None:
    (run / "model.safetensors").rename(run / "weights.bin")
    (run / "model.safetensors").symlink_to("weights.bin")
    stored = json.loads((run / "metrics.json").read_text())["test"]
    assert evaluate_run(run).scores == stored


def test_a_run_file_that_is_no_file_is_one_line(run: Path) -> None:
    (run / "metrics.json").unlink()
    os.mkfifo(run / "metrics.json")
    assert (
        refusal(run) == f"Error: {run / 'metrics.json'}: is a FIFO (named pipe), not a regular file"
    )


def test_run_files_and_weights_have_a_size_limit(
    run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = (run / "run.json").read_bytes()
    with (run / "run.json").open("r+b") as file:
        file.truncate(300 * 1024 * 1024)  # sparse: nothing is written, nothing read
    assert refusal(run) == (
        f"Error: {run / 'run.json'}: is 300.0 MB; mlpkit reads at most 256.0 MB here; "
        "a run file written by mlpkit is far smaller; is it the right file?"
    )
    (run / "run.json").write_bytes(info)
    weights = run / "model.safetensors"
    size = weights.stat().st_size
    monkeypatch.setattr("mlpkit.reading.available_memory", lambda: size)  # half is too little
    assert refusal(run) == (
        f"Error: {weights}: is {size_text(size)}; mlpkit reads at most {size_text(size // 2)} "
        "here; that is half the memory available, as loading weights holds the file and its "
        "tensors; free some memory"
    )


# --- the forgiving readers: junk, never a hang or a crash -----------------------------------


def test_runs_lists_a_run_whose_files_are_junk(run: Path) -> None:
    (run / "history.csv").write_bytes("epoch,loss\n1,caf\xe9\n".encode("latin-1"))
    assert catalog.read_row(run).epochs == "?/3"  # was a UnicodeDecodeError crash
    for name in ("metrics.json", "config.yaml"):
        (run / name).unlink()
    os.mkfifo(run / "metrics.json")
    (run / "config.yaml").symlink_to("/dev/zero")
    (run / "history.csv").unlink()
    (run / "history.csv").symlink_to("/dev/zero")
    row = catalog.read_row(run)  # would block on the FIFO, or read /dev/zero forever
    assert (row.status, row.epochs, row.metrics) == ("complete", "?/?", {})


def test_a_run_json_that_is_no_file_is_unreadable_not_a_hang(run: Path) -> None:
    (run / "run.json").unlink()
    os.mkfifo(run / "run.json")
    row = catalog.read_row(run)
    assert (row.status, row.note) == (
        "unreadable",
        "run.json: is a FIFO (named pipe), not a regular file",
    )
    assert catalog.list_runs(run.parent) == []  # a FIFO is no run.json to list


def test_the_lock_never_follows_a_link_nor_waits_on_a_fifo(run: Path, tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    (run / ".lock").unlink()  # the lock training left, free
    (run / ".lock").symlink_to(precious)
    with pytest.raises(RunDirError) as caught, lock.hold(run):
        pass
    assert caught.value.render() == (
        f"Error: {run / '.lock'}: is a link, not the regular file mlpkit locks; "
        "remove it; mlpkit creates the lock itself"
    )
    assert precious.read_text() == "keep me"  # never truncated through the link
    assert not lock.is_held(run)
    (run / ".lock").unlink()
    os.mkfifo(run / ".lock")
    assert not lock.is_held(run)  # returns at once
    fifo = r"is a FIFO \(named pipe\), not the regular"
    with pytest.raises(RunDirError, match=fifo), lock.hold(run):
        pass


def test_run_yaml_reads_back_as_written_under_yaml_1_2(tmp_path: Path) -> None:
    """config.yaml must load again on resume: texts that look like numbers stay texts."""
    from mlpkit.config.yamlfile import parse_yaml

    value = {"name": "010", "a": "1e3", "b": "no", "c": "-.5", "d": ["08", "yes", 10, 0.5, True]}
    runs.write_yaml(tmp_path / "config.yaml", value)
    assert parse_yaml((tmp_path / "config.yaml").read_text(), "config.yaml").data == value
