"""A run's plots, drawn after the command that completed it: in a detached child process
(`background`, the default), here before the command exits (`wait`), or not at all (`off`).

The plots are a view of a complete run, drawn from its history.csv, metrics.json and
predictions.csv alone (report/plots.py), so they need not hold the run up: `mlpkit train`
marks the run complete, prints its directory, then hands every run it completed to one child,
`python -m mlpkit plot --background RUN...`, and exits without waiting. One child per
command, whatever the number of runs (--seeds, --folds), draws them one after another at a
lower priority, so a long cross-validation does not start dozens of matplotlib processes.

No lock is needed: the files drawn from never change once a run is complete (`complete` is
written last), and every PNG is written to a temporary name and renamed into place, so a
child that crashes or is killed leaves the run as it was, with some plots or none. A failure
the child meets is written to RUN/plots.log (removed again by a later successful drawing);
`mlpkit plot RUN` draws the plots again in the foreground.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

import mlpkit
from mlpkit.errors import MlpkitError, one_line
from mlpkit.rundir import runs

Mode = Literal["background", "wait", "off"]
MODES: tuple[Mode, ...] = ("background", "wait", "off")
NICENESS = 10  # the child yields the CPU to whatever the user runs next


def after(run_dirs: list[Path], mode: Mode) -> subprocess.Popen[bytes] | None:
    """Draw the plots of the complete runs `run_dirs` as `mode` says; in the background, the
    child process (the caller may wait for it; the CLI exits and leaves it to finish).

    Raises:
        EnvironmentFault: `wait` only: a PNG cannot be written (disk full, permissions); the
            run stays complete.
    """
    if not run_dirs or mode == "off":
        return None
    if mode == "wait":
        for run_dir in run_dirs:
            _draw_here(run_dir)
        return None
    return detach(run_dirs)


def same_package_env() -> dict[str, str]:
    """The environment for a `python -m mlpkit` child that imports this very mlpkit (the one
    this process runs, installed or not) first."""
    package_root = str(Path(mlpkit.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return env


def detach(run_dirs: list[Path]) -> subprocess.Popen[bytes]:
    """Start `python -m mlpkit plot --background RUN...` in its own session (a Ctrl-C or a
    closed terminal after the command returns does not stop it), reading and writing nothing
    of ours: a caller capturing the command's output (`RUN=$(mlpkit train ...)`) is not kept
    waiting for the child."""
    env = same_package_env()
    command = [sys.executable, "-m", "mlpkit", "plot", "--background", *map(str, run_dirs)]
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )


def draw_detached(run_dirs: list[Path]) -> None:
    """The child's work: each run's plots in turn at a lower priority; a run that cannot be
    drawn gets RUN/plots.log saying why and how to try again, and the next run is drawn."""
    from mlpkit.report import plots  # matplotlib: in the child, never in `train` itself

    os.nice(NICENESS)
    for run_dir in run_dirs:
        log = run_dir / runs.PLOTS_LOG
        try:
            plots.redraw(run_dir)
        except Exception as exc:  # a view failed, the run did not: record it, go on
            why = one_line(exc).removeprefix("Error: ")  # ours render as an error line
            text = f"plots not drawn ({why}); try again: mlpkit plot {run_dir}\n"
            with contextlib.suppress(MlpkitError):  # the folder gone or full: nothing to add
                runs.write_bytes(log, text.encode())


def _draw_here(run_dir: Path) -> None:
    """plots/*.png before the command exits. A failure to draw them (a bug) is a warning, and
    `mlpkit plot` draws them again; a failure to write them (disk full) is an error, as for
    any file, though the run stays complete."""
    from mlpkit.report import plots  # matplotlib: imported only when plots are drawn here

    try:
        plots.draw_run(run_dir)
    except MlpkitError:
        raise
    except Exception as exc:
        sys.stderr.write(
            f"Warning: plots not drawn ({one_line(exc)}); try again: mlpkit plot {run_dir}\n"
        )
