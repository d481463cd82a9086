"""Shell completion (Typer's, through click): commands and options complete in bash and zsh,
and --show-completion prints the script a user sources."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest
import typer

from mlpkit.cli import app

VERBS = sorted(typer.main.get_group(app).commands)


def complete(shell: str, words: str) -> list[str]:
    """What the shell's completion function would offer after `words` (the last one partial)."""
    env = os.environ | {
        "_MLPKIT_COMPLETE": f"complete_{shell}",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split(" ")) - 1),
        "_TYPER_COMPLETE_ARGS": words,
    }
    done = subprocess.run(
        [sys.executable, "-m", "mlpkit"], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_commands_and_options_complete(shell: str) -> None:
    offered = complete(shell, "mlpkit ")
    assert all(any(verb in word for word in offered) for verb in VERBS), offered
    narrowed = complete(shell, "mlpkit pre")
    assert any("predict" in word for word in narrowed)
    assert not any("train" in word for word in narrowed)
    options = complete(shell, "mlpkit train --re")
    assert any("--resume" in word for word in options)
    assert not any("--quiet" in word for word in options)


def test_show_completion_prints_a_script_to_source() -> None:
    # Typer names the shell from the process tree, so the command runs under bash (`; true`
    # keeps bash from replacing itself with the command), as when a user types it.
    command = f"{shlex.quote(sys.executable)} -m mlpkit --show-completion; true"
    done = subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "complete -o default -F _mlpkit_completion mlpkit" in done.stdout
