"""`mlpkit sweep CONFIG`: a hyperparameter search on Optuna, each trial an ordinary run.

Top to bottom: load the config (it must have a `sweep:` section) -> config.sweep_rules (every
path, distribution and value a distribution can produce, before anything runs) -> every check
train makes, on the config as written -> with --storage URL, the study opened and compared
(direction, metric, space) before anything is written -> the sweep folder (rundir/sweeps.py):
config.yaml, sweep.json running, the journal file as the default storage -> workers: this
process and --workers - 1 more (`mlpkit sweep --join FOLDER`), each asking the study for
trials until the budget is met -> per trial: its sampled values as --set overrides, trained
in process into trial-NNNN/ (flows.train.train), its epochs reported to the pruner -> told
complete (its metric), pruned, or failed (with the reason; the sweep goes on) ->
trials.csv, best.yaml, plots (report/sweep_plots.py) -> sweep.json complete.

The study's pieces are flows/study.py's; the trials, flows/sweep_worker.py's (the budget, lost
and surplus trials, stacked batches are explained there).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlpkit.config.load import LoadedConfig, load_config
from mlpkit.config.schema import (
    LogUniform,
    SweepConfig,
    Uniform,
)
from mlpkit.config.sweep_rules import override, sweep_problems
from mlpkit.errors import (
    ConfigError,
    Interrupted,
    Problem,
    RunDirError,
    one_line,
)
from mlpkit.flows.common import resolved_config
from mlpkit.flows.plotting import same_package_env
from mlpkit.flows.study import USER, direction, grid, journal, open_study, quiet, rdb, value_of
from mlpkit.flows.sweep_worker import OnTrial, Work, best_trial, run_worker
from mlpkit.rundir import runs, sweeps

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class Options:
    """The command line's part of a sweep."""

    trials: int | None = None  # overrides sweep.trials
    timeout: float | None = None  # overrides sweep.timeout (seconds)
    workers: int = 1
    storage: str | None = None  # an RDB URL; None: the folder's journal file
    study: str | None = None  # the study's name; None: the folder's name
    device: str | None = None


def sweep(
    config_path: Path,
    overrides: list[str],
    runs_dir: Path,
    options: Options,
    on_trial: OnTrial | None = None,
) -> tuple[Path, sweeps.SweepInfo]:
    """Run a new sweep of the config and return its folder and sweep.json.

    Raises:
        ConfigError: no sweep section, or a problem with it (before anything is written);
            the storage cannot be reached or holds a study of that name for another search.
        MlpkitError: any check train makes fails on the config as written.
        Interrupted: a stop signal; the sweep folder says interrupted, resume it.
    """
    from mlpkit.flows.check import check

    loaded = load_config(config_path, overrides)
    settings = _settings(loaded, overrides)
    check(loaded)  # every check train makes, before any trial
    _refuse_unbounded(loaded, settings, options)
    study_name = options.study
    opened = None
    if options.storage is not None:  # reach it and check the study before writing anything
        study_name = study_name or loaded.config.name
        opened = open_study(loaded, settings, rdb(options.storage), study_name)
    folder = sweeps.create_sweep_dir(runs_dir, loaded.config.name)
    study_name = study_name or folder.name
    runs.write_yaml(folder / runs.CONFIG, resolved_config(loaded))
    if opened is None:
        opened = open_study(loaded, settings, journal(folder), study_name)
    info = sweeps.SweepInfo(
        name=loaded.config.name,
        status="running",
        study=study_name,
        storage=options.storage or "journal",
        metric=settings.metric,
        direction=direction(settings),
        trials=_budget(settings, options),
        timeout=options.timeout or settings.timeout,
        started=runs.now(),
    )
    sweeps.write_info(folder, info)
    return _run(folder, info, opened, runs_dir, options, on_trial)


def resume(
    folder: Path, options: Options, on_trial: OnTrial | None = None
) -> tuple[Path, sweeps.SweepInfo]:
    """Carry on the sweep in `folder` up to its budget (trials lost with a killed worker are
    marked failed and run again).

    Raises:
        RunDirError: not a sweep folder, or complete.
        ConfigError, MlpkitError, Interrupted: as sweep.
    """
    info = sweeps.read_info(folder)
    if info.status == "complete":
        raise RunDirError(
            Problem("the sweep is complete", file=str(folder), hint="nothing to resume")
        )
    loaded = load_config(folder / runs.CONFIG)
    settings = _settings(loaded, [])
    storage = journal(folder) if info.storage == "journal" else rdb(info.storage)
    study = open_study(loaded, settings, storage, info.study)
    info = info.model_copy(
        update={"status": "running", "error": None, "resumed": [*info.resumed, runs.now()]}
    )
    if options.trials is not None:
        info = info.model_copy(update={"trials": options.trials})
    sweeps.write_info(folder, info)
    runs_dir = folder.resolve().parent.parent
    return _run(folder, info, study, runs_dir, options, on_trial)


def join(folder: Path, device: str | None) -> None:
    """A worker process of the sweep in `folder` (started by --workers): trials until the
    budget is met, then exit. Writes no summary (the first process does)."""
    info = sweeps.read_info(folder)
    loaded = load_config(folder / runs.CONFIG)
    settings = _settings(loaded, [])
    storage = journal(folder) if info.storage == "journal" else rdb(info.storage)
    study = open_study(loaded, settings, storage, info.study)
    runs_dir = folder.resolve().parent.parent
    run_worker(_sweep(folder, settings, study, info, runs_dir, device), None)


def _settings(loaded: LoadedConfig, overrides: list[str]) -> SweepConfig:
    settings = loaded.config.sweep
    if settings is None:
        raise ConfigError(
            Problem(
                "has no sweep section",
                file=str(loaded.source),
                hint="add sweep: {space: {training.optimizer.lr: {log_uniform: [1e-4, 1e-1]}}}",
            )
        )
    problems = sweep_problems(loaded, overrides)
    if problems:
        raise ConfigError(problems)
    return settings


def _refuse_unbounded(loaded: LoadedConfig, settings: SweepConfig, options: Options) -> None:
    cpus = os.cpu_count() or 1
    if options.workers > cpus:  # each worker a process with torch: memory grows with them
        raise ConfigError(
            Problem(
                f"{options.workers} workers on {cpus} CPUs",
                where="--workers",
                hint=f"give at most {cpus}; more machines join with --storage and --study",
            )
        )
    if _budget(settings, options) is None and not (options.timeout or settings.timeout):
        raise ConfigError(
            loaded.problem(
                ("sweep",),
                "has neither a trial budget nor a time budget",
                "set sweep.trials (or --trials N) or sweep.timeout (or --timeout S)",
            )
        )
    if settings.sampler == "cmaes" and importlib.util.find_spec("cmaes") is None:
        raise ConfigError(
            loaded.problem(
                ("sweep", "sampler"),
                "the cmaes sampler needs the cmaes package, which is not installed",
                "pip install 'mlpkit[cmaes]', or use sampler: tpe",
            )
        )
    if settings.sampler == "grid":
        for path, distribution in settings.space.items():
            if isinstance(distribution, LogUniform | Uniform):
                raise ConfigError(
                    loaded.problem(
                        ("sweep", "space", path),
                        "the grid sampler takes choices and int ranges only",
                        "list the values: {choice: [...]}",
                    )
                )


def _budget(settings: SweepConfig, options: Options) -> int | None:
    """The trial budget: --trials, sweep.trials, or for a grid its size."""
    if options.trials is not None or settings.trials is not None:
        return options.trials or settings.trials
    if settings.sampler == "grid":
        size = 1
        for values in grid(settings).values():
            size *= len(values)
        return size
    return None


def _sweep(
    folder: Path,
    settings: SweepConfig,
    study: optuna.Study,
    info: sweeps.SweepInfo,
    runs_dir: Path,
    device: str | None,
) -> Work:
    deadline = None if info.timeout is None else time.monotonic() + info.timeout
    return Work(
        folder,
        folder / runs.CONFIG,
        settings,
        study,
        info.trials,
        deadline,
        runs_dir,
        device,
        info.storage != "journal",
    )


def _run(
    folder: Path,
    info: sweeps.SweepInfo,
    study: optuna.Study,
    runs_dir: Path,
    options: Options,
    on_trial: OnTrial | None,
) -> tuple[Path, sweeps.SweepInfo]:
    loaded = load_config(folder / runs.CONFIG)
    settings = _settings(loaded, [])
    work = _sweep(folder, settings, study, info, runs_dir, options.device)
    helpers = [_start_worker(folder, options.device) for _ in range(options.workers - 1)]
    try:
        run_worker(work, on_trial)
        for helper in helpers:
            helper.wait()
    except BaseException as exc:
        for helper in helpers:
            with contextlib.suppress(OSError):
                helper.send_signal(signal.SIGINT)
            helper.wait()
        stopped = isinstance(exc, Interrupted | KeyboardInterrupt)
        update = {"status": "interrupted" if stopped else "failed", "error": one_line(exc)}
        sweeps.write_info(folder, info.model_copy(update=update))
        if isinstance(exc, Interrupted):
            raise Interrupted(
                Problem(
                    f"the sweep stopped ({exc.problems[0].problem})",
                    file=str(folder),
                    hint=f"resume with: mlpkit sweep --resume {folder}",
                ),
                signal_number=exc.exit_code - 128,
            ) from None
        raise
    return folder, _finish(work, info)


def _start_worker(folder: Path, device: str | None) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "mlpkit", "sweep", "--join", str(folder), "--quiet"]
    if device is not None:
        command += ["--device", device]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, env=same_package_env())


def _finish(work: Work, info: sweeps.SweepInfo) -> sweeps.SweepInfo:
    """trials.csv, best.yaml, the plots, then sweep.json complete."""
    from mlpkit.report import sweep_plots

    runs.write_csv(work.folder / sweeps.TRIALS, _rows(work))
    best = best_trial(work)
    if best is not None:  # from its values: the best trial may have run on another machine
        sets = [override(path, value) for path, value in best.params.items()] + ["sweep=null"]
        runs.write_yaml(
            work.folder / sweeps.BEST, resolved_config(load_config(work.config_path, sets))
        )
    with quiet():
        sweep_plots.draw(work.study, work.folder / sweeps.PLOTS)
    update = {"status": "complete", "finished": runs.now(), "best": best}
    done = info.model_copy(update=update)
    sweeps.write_info(work.folder, done)
    return done


def _rows(work: Work) -> list[dict[str, Any]]:
    """A row per trial (surplus ones aside), by number."""
    rows = []
    for trial in sorted(work.study.get_trials(deepcopy=False), key=lambda t: t.number):
        attrs = trial.user_attrs
        if attrs.get(f"{USER}surplus"):
            continue
        state = trial.state.name.lower()
        if attrs.get(f"{USER}lost"):
            state = "lost"
        elif attrs.get(f"{USER}interrupted"):
            state = "interrupted"
        place = sweeps.trial_dir(work.folder, trial.number)
        seconds = None
        if trial.datetime_start is not None and trial.datetime_complete is not None:
            seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
        row: dict[str, Any] = {"number": trial.number, "state": state}
        for path in work.settings.space:
            value = trial.params.get(path)
            row[path] = None if value is None else value_of(work.settings, path, value)
        row[work.settings.metric] = trial.value
        row["run"] = place.name if place.exists() else None
        row["seconds"] = seconds
        row["error"] = attrs.get(f"{USER}error")
        rows.append(row)
    return rows
