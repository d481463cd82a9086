"""What a command imports before it answers: help and config mistakes must not import torch.

`import torch` alone takes seconds, so `mlpkit --help`, `mlpkit COMMAND --help` and a config
with a mistake (in `check`, `train` or `summary`) answer without it; `check` of a valid config
without it too (it reads the table and computes the budget and the layer table from shapes),
and `train` leaves matplotlib to the background child that draws the plots. Each case runs the
CLI in a fresh interpreter and reads sys.modules afterwards; timings belong in bench/, not here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from conftest import TINY_CONFIG, tiny_csv

from mlpkit.cli import app

# Runs one command line in-process, then reports its exit code and which heavy modules it loaded.
PROBE = """\
import json, sys
from mlpkit.cli import run_cli
code = run_cli(sys.argv[1:])
heavy = ["torch", "pandas", "numpy", "sklearn", "pyarrow", "matplotlib", "mlpkit.flows.train",
         "torch._dynamo"]
print(json.dumps({"code": code, "imported": [m for m in heavy if m in sys.modules]}))
"""

# every verb of the app: a new command is checked without being listed here
COMMANDS = list(typer.main.get_group(app).commands)


def probe(*args: object, cwd: Path | None = None) -> tuple[int, list[str], str, str]:
    """(exit code, heavy modules imported, stdout before the report, stderr) of one command."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *(str(a) for a in args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )
    *out, report = done.stdout.strip().splitlines()
    found = json.loads(report)
    return found["code"], found["imported"], "\n".join(out), done.stderr


@pytest.mark.parametrize("args", [["--help"], *([command, "--help"] for command in COMMANDS)])
def test_help_imports_neither_torch_nor_pandas(args: list[str]) -> None:
    code, imported, out, err = probe(*args)
    assert (code, err) == (0, "")
    assert "Usage: mlpkit" in out
    assert imported == []


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "data.csv").write_text(tiny_csv())
    path = tmp_path / "config.yaml"
    path.write_text(TINY_CONFIG)
    return path


def _edit(path: Path, old: str, new: str) -> Path:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return path


MISSPELT_KEY = "training.epoch: unknown key; did you mean 'epochs'?"


@pytest.mark.parametrize("command", ["check", "train", "summary"])
def test_a_misspelt_key_exits_2_before_torch(command: str, config: Path, tmp_path: Path) -> None:
    _edit(config, "epochs: 3", "epoch: 3")
    code, imported, _, err = probe(command, config, cwd=tmp_path)
    assert code == 2
    assert len(err.splitlines()) == 1
    assert f"Error: {config}:14: {MISSPELT_KEY}" in err
    assert "torch" not in imported
    assert "mlpkit.flows.train" not in imported
    assert not (tmp_path / "runs").exists()  # train made no run directory


@pytest.mark.parametrize(
    ("edit", "overrides", "expected"),
    [
        (("activation: relu", "activation: relux"), [], "unknown activation 'relux'"),
        ((), ["--set", "training.optimizer.lr=-1"], "training.optimizer.lr"),
        ((), ["--set", "training.optimizer={name: sgd, nesterov: true}"], "nesterov needs"),
        ((), ["--set", "training.batch_size=two"], "training.batch_size"),
    ],
)
def test_other_config_mistakes_exit_2_before_torch(
    edit: tuple[str, ...], overrides: list[str], expected: str, config: Path
) -> None:
    if edit:
        _edit(config, *edit)
    for command in ("check", "train"):
        code, imported, _, err = probe(command, config, *overrides, cwd=config.parent)
        assert (code, len(err.splitlines())) == (2, 1), err
        assert expected in err
        assert "torch" not in imported


def test_check_reads_fits_and_budgets_without_torch_or_matplotlib(config: Path) -> None:
    # Every check train makes before training, from the table and the shapes (flows/check.py)
    code, imported, out, err = probe("check", config, cwd=config.parent)
    assert (code, err) == (0, "")
    assert out == f"ok: {config}: 50 rows, split 30/10/10, 5 inputs, 57 parameters"
    assert "pandas" in imported  # the table was read
    assert not {"torch", "matplotlib", "sklearn"} & set(imported)


def test_commands_that_read_no_table_import_no_pandas(tmp_path: Path) -> None:
    # runs, compare and plot read run files (JSON, CSV by the csv module); pandas (and the
    # pyarrow it loads) is imported only where a table is read. plot's child draws with
    # matplotlib alone.
    for args, code in ((["runs", tmp_path], 0), (["compare", tmp_path / "x"], 2)):
        found, imported, _, _ = probe(*args, cwd=tmp_path)
        assert found == code
        assert imported == ["numpy"]
    found, imported, _, _ = probe("plot", tmp_path / "x", cwd=tmp_path)
    assert (found, imported) == (2, ["numpy", "matplotlib"])


@pytest.mark.slow
def test_the_probe_sees_torch_when_a_command_needs_it(config: Path) -> None:
    # Whether the direct step covers the model is torch's to say: check imports it then. This
    # keeps the tests above honest (an empty list is not a probe that cannot see).
    code, imported, out, err = probe(
        "check", config, "--set", "training.engine=direct", cwd=config.parent
    )
    assert (code, err) == (0, "")
    assert out.startswith(f"ok: {config}: 50 rows")
    assert "torch" in imported


@pytest.mark.slow
def test_train_leaves_matplotlib_to_the_child_that_draws_the_plots(config: Path) -> None:
    args = ("train", config, "-q", "--runs-dir", "runs")
    code, imported, out, err = probe(*args, "--plots", "background", cwd=config.parent)
    assert (code, err) == (0, "")
    assert "torch" in imported and "matplotlib" not in imported
    plots = config.parent / out.strip() / "plots"
    deadline = time.monotonic() + 120  # the child's, drawn after the probe exited
    while len(list(plots.glob("*.png"))) < 3:
        assert time.monotonic() < deadline, "the background child drew no plots"
        time.sleep(0.1)
    code, imported, out, err = probe(*args, "--plots", "wait", cwd=config.parent)
    assert (code, err) == (0, "")
    assert "matplotlib" in imported  # drawn in this process: the probe sees it
    assert len(list((config.parent / out.strip() / "plots").glob("*.png"))) == 3


@pytest.mark.slow
def test_a_regression_run_imports_neither_sklearn_nor_dynamo_a_classification_run_does(
    config: Path,
) -> None:
    # The regression baselines are least squares in numpy; scikit-learn (about a second to
    # import) is loaded for logistic regression and the classification metrics only.
    code, imported, _, err = probe("train", config, "-q", "--runs-dir", "runs", cwd=config.parent)
    assert (code, err) == (0, "")
    assert "torch" in imported and "sklearn" not in imported
    assert "torch._dynamo" not in imported  # the direct engine's run: train/eager.py
    classify = ["--set", "data.target=color", "--set", "data.features=[a, b]",
                "--set", "data.categorical=[]", "--set", "training.loss=cross_entropy",
                "--set", "model.layers.1.units=3"]  # fmt: skip
    code, imported, _, err = probe("train", config, "-q", "--runs-dir", "runs", *classify,
                                   cwd=config.parent)  # fmt: skip
    assert (code, err) == (0, ""), err
    assert "sklearn" in imported
