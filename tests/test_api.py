"""The public surface: what `import mlpkit` offers and what the CLI and README promise."""

import re

import typer
from conftest import REPO

import mlpkit
from mlpkit.cli import app


def test_public_names_are_small_and_explicit() -> None:
    assert mlpkit.__all__ == ["Config", "MlpkitError", "__version__", "load_config"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", mlpkit.__version__)


def test_cli_verbs_and_readme_agree() -> None:
    verbs = {command.name for command in typer.main.get_group(app).commands.values()}
    assert verbs == {
        "train",
        "check",
        "summary",
        "eval",
        "predict",
        "export",
        "runs",
        "plot",
        "compare",
        "sweep",
        "init",
    }
    readme = (REPO / "README.md").read_text()
    for verb in verbs:
        assert f"mlpkit {verb} " in readme, f"README does not show mlpkit {verb}"
    assert readme.splitlines()[6:8] == [
        "make run    # creates .venv (CPU PyTorch first), installs mlpkit, trains configs/mpg.yaml",
        "make test   # same set-up, then ruff, mypy and the test suite",
    ]


def test_ci_runs_the_readme_test_command() -> None:
    assert (REPO / ".ci" / "run").read_text().strip().splitlines()[-1] == "make test"
