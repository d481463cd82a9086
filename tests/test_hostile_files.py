"""Issue 14, hostile files: every input is read bounded (reading.py), names what it is when it
is no text, and a `~` in a path means the home folder.

The issue's examples run through tests/bounded.py (a child under a memory cap: one error line,
under 2 s and 600 MB; each also proves the command ends instead of growing or blocking); the
rest run in process, under `no_hang` where a regression would block.
"""

from __future__ import annotations

import gzip
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from bounded import assert_contract, run_bounded
from conftest import Cli, Project

from mlpkit.config.load import home_uri, load_config
from mlpkit.data.table import read_table
from mlpkit.errors import ConfigError, DataError
from mlpkit.flows.predict import predict_run

# --- the examples, each in a capped child ------------------------------------------


def test_data_path_dev_zero_is_one_line_not_10_gb(project: Project) -> None:
    project.edit_config("path: data.csv", "path: /dev/zero")
    result = run_bounded("train", project.config, "--runs-dir", project.runs, cwd=project.root)
    assert_contract(
        result,
        2,
        f"Error: {project.config}:4: data.path: is a character device, not a regular file: "
        "/dev/zero",
    )
    assert not project.runs.exists()


def test_config_path_dev_zero_is_one_line(project: Project) -> None:
    result = run_bounded("train", "/dev/zero", "--runs-dir", project.runs, cwd=project.root)
    assert_contract(result, 2, "Error: /dev/zero: is a character device, not a regular file")


def test_weights_linked_to_dev_zero_are_refused(cli: Cli, project: Project) -> None:
    run = project.train(cli)
    weights = run / "model.safetensors"
    weights.unlink()
    weights.symlink_to("/dev/zero")
    result = run_bounded("eval", run, cwd=project.root)
    assert_contract(
        result, 2, f"Error: {weights}: is a link to /dev/zero, outside the run directory"
    )


def test_a_fifo_as_data_path_never_blocks(project: Project) -> None:
    project.data.unlink()
    os.mkfifo(project.data)
    result = run_bounded("check", project.config, cwd=project.root, timeout=30)
    assert_contract(
        result, 2, "data.path: is a FIFO (named pipe), not a regular file: ", str(project.data)
    )


def test_a_gzip_csv_says_so_instead_of_blaming_the_encoding(project: Project) -> None:
    project.data.write_bytes(gzip.compress(project.data.read_bytes()))
    result = run_bounded("check", project.config, cwd=project.root)
    assert_contract(
        result, 2, f"Error: {project.data}: looks like a gzip file, not CSV text; decompress it"
    )


# --- the rest, in process -------------------------------------------------------------------


@contextmanager
def no_hang(seconds: float = 10) -> Iterator[None]:
    """Fail the test, rather than hang the suite, if the block blocks (on a FIFO)."""

    def expired(signum: int, frame: object) -> None:
        raise AssertionError(f"blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_following_the_encoding_hint_gives_the_same_answer(cli: Cli, project: Project) -> None:
    project.data.write_bytes(gzip.compress(project.data.read_bytes()))
    for encoding in ("utf-8", "latin-1", "utf-16"):
        result = cli("check", project.config, "--set", f"data.encoding={encoding}")
        assert result.code == 2
        assert "looks like a gzip file, not CSV text" in result.err, (encoding, result.err)


def test_a_fifo_or_folder_as_config_is_one_line(cli: Cli, project: Project) -> None:
    fifo = project.root / "fifo.yaml"
    os.mkfifo(fifo)
    with no_hang():
        result = cli("check", fifo)
    assert (result.code, result.err) == (
        2,
        f"Error: {fifo}: is a FIFO (named pipe), not a regular file\n",
    )
    assert cli("check", project.root).err == (
        f"Error: {project.root}: is a directory, not a config file\n"
    )


def test_a_config_over_the_limit_is_refused_unread(cli: Cli, project: Project) -> None:
    with project.config.open("r+b") as file:
        file.truncate(5 * 1024 * 1024)  # sparse: nothing is written
    result = cli("check", project.config)
    assert result.err == (
        f"Error: {project.config}: is 5.0 MB; a config file may be at most 4.0 MB\n"
    )


def test_a_compressed_config_says_what_it_is(cli: Cli, project: Project) -> None:
    project.config.write_bytes(gzip.compress(project.config.read_bytes()))
    result = cli("check", project.config)
    assert result.err == (
        f"Error: {project.config}: looks like a gzip file, not YAML text; "
        "decompress it first (gunzip)\n"
    )


def test_predict_and_init_refuse_a_fifo(cli: Cli, project: Project) -> None:
    run = project.train(cli)
    fifo = project.root / "new.csv"
    os.mkfifo(fifo)
    with no_hang(), pytest.raises(DataError) as caught:
        predict_run(run, fifo)
    assert caught.value.render() == f"Error: {fifo}: is a FIFO (named pipe), not a regular file"
    parquet = project.root / "new.parquet"
    os.mkfifo(parquet)
    with no_hang():
        for path in (fifo, parquet):
            result = cli("init", path, "--target", "y", "--out", project.root / "s.yaml")
            assert result.err == f"Error: {path}: is a FIFO (named pipe), not a regular file\n"


# --- ~ is the home folder -------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("HOME", str(folder))
    return folder


def test_a_tilde_in_data_path_is_the_home_folder(project: Project, home: Path) -> None:
    (home / "x.csv").write_text(project.data.read_text())
    loaded = load_config(project.config, ["data.path=~/x.csv"])
    assert loaded.data_path == home / "x.csv"
    project.edit_config("path: data.csv", "path: ~/missing.csv")
    loaded = load_config(project.config)
    with pytest.raises(DataError) as caught:
        read_table(loaded.data_path, loaded.config.data, loaded)
    assert caught.value.render() == (
        f"Error: {project.config}:4: data.path: data file not found: {home}/missing.csv"
    )


def test_a_tilde_in_a_local_tracking_uri_is_the_home_folder(home: Path) -> None:
    assert home_uri("~/mlruns") == f"{home}/mlruns"
    assert home_uri("file:~/mlruns") == f"file:{home}/mlruns"
    assert home_uri("sqlite:///~/mlflow.db") == f"sqlite:///{home}/mlflow.db"  # 4 slashes
    for uri in ("http://host:5000/~me", "sqlite:///mlflow.db", "databricks"):
        assert home_uri(uri) == uri


def test_runs_dir_with_equals_tilde_goes_home(
    cli: Cli, project: Project, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project.root)
    result = cli("train", "config.yaml", "--runs-dir=~/runs", "-q")
    assert result.code == 0, result.err
    assert Path(result.last_line).parent.parent == home / "runs"
    assert not (project.root / "~").exists()
    assert cli("runs", "~/runs").code == 0
    assert cli("eval", f"~/runs/tiny/{Path(result.last_line).name}").code == 0


def test_every_cli_path_expands_a_tilde(cli: Cli, home: Path) -> None:
    missing = {
        ("check", "~/c.yaml"): f"Error: {home}/c.yaml: config file not found",
        ("summary", "~/c.yaml"): f"Error: {home}/c.yaml: config file not found",
        ("train", "--resume", "~/r"): f"Error: {home}/r: does not exist; expected a run",
        ("eval", "~/r"): f"Error: {home}/r: does not exist; expected a run",
        ("predict", "~/r", "--data", "~/d.csv"): f"Error: {home}/r: does not exist",
        ("compare", "~/a", "~/b"): f"Error: {home}/a: does not exist",
        ("runs", "~/runs"): f"Error: {home}/runs: does not exist",
        ("init", "~/d.csv", "--target", "y", "--out", "~/s.yaml"): (
            f"Error: {home}/d.csv: data file not found"
        ),
    }
    for args, expected in missing.items():
        assert cli(*args).err.startswith(expected), args


def test_a_missing_config_in_a_missing_folder_is_not_found(cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "data.csv" / "config.yaml"
    (tmp_path / "data.csv").write_text("a\n")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(missing)
