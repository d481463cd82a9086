"""Real signals to a real `mlpkit train` process: SIGKILL, SIGINT and SIGTERM mid-training, then
`mlpkit train --resume`, which must end byte-identical to an uninterrupted run.

A few fixed moments here; `python tests/kill_harness.py --trials 20` runs many random ones.
"""

from __future__ import annotations

from pathlib import Path

import kill_harness
import pytest
from kill_harness import Trial

Harness = tuple[Path, Path, float]  # the config, the uninterrupted run, its training span (s)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Harness:
    root = tmp_path_factory.mktemp("signals")
    config = kill_harness.write_project(root)
    expected, span = kill_harness.reference(config)
    return config, expected, span


def signalled(harness: Harness, name: str, fraction: float) -> Trial:
    config, expected, span = harness
    runs = config.parent / f"runs-{name}"
    return kill_harness.trial(config, runs, name, fraction * span, expected)


@pytest.mark.slow
def test_kill_9_mid_training_leaves_an_interrupted_resumable_run(harness: Harness) -> None:
    trial = signalled(harness, "KILL", 0.3)
    assert trial.code == -9
    assert trial.status == "interrupted (process died)"  # not "running"
    assert trial.checkpoints >= 1
    assert trial.resumed == 0 and trial.identical and trial.history_ok


@pytest.mark.slow
@pytest.mark.parametrize(("name", "code"), [("INT", 130), ("TERM", 143)])
def test_sigint_and_sigterm_save_say_how_to_resume_and_resume_exactly(
    harness: Harness, name: str, code: int
) -> None:
    trial = signalled(harness, name, 0.3)
    assert trial.code == code
    assert trial.status == "interrupted"
    assert not trial.partial  # it stopped at a step boundary, after a whole checkpoint
    (line,) = trial.stderr.splitlines()
    assert f"training stopped by SIG{name}, a checkpoint was saved" in line
    assert "; resume with: mlpkit train --resume " in line
    assert trial.resumed == 0 and trial.identical and trial.history_ok
