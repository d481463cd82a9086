import errno
import json
import os
from datetime import datetime
from pathlib import Path

import pytest

from mlpkit.errors import EnvironmentFault
from mlpkit.rundir import runs

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
