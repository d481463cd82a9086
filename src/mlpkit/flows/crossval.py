"""`mlpkit train CONFIG --folds K` (or data.split.folds: K): k-fold cross-validation.

Top to bottom: every check train makes, on the first fold, and each fold's split counts ->
the cross-validation folder (rundir/crossval.py: config.yaml, crossval.json running) -> under
its lock, fold by fold: an ordinary run in fold-i with `data.split.fold: i` (flows/train.py),
so each fold is a complete run directory that eval, predict, plot, export and resume know ->
out-of-fold predictions and the baselines' validation scores (oof.py) -> oof_predictions.csv,
then crossval.json complete with every metric's mean and sample std per part.

`train --resume CV` carries on where it stopped: complete folds are kept, an interrupted fold
resumes from its checkpoint (flows/resume.py), one that stopped before its first checkpoint is
trained again, the folds not begun are trained. A stop signal marks the folder interrupted and
names it in the resume command. `--seeds N` repeats the whole cross-validation per seed
(`over_seeds`): the seed moves the test rows and the folds, so the spread of the K-fold means
over seeds shows how much the estimate itself depends on the cut.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mlpkit.config.load import LoadedConfig, differences, load_config
from mlpkit.data.table import check_split
from mlpkit.errors import (
    ConfigError,
    DataError,
    Interrupted,
    MlpkitError,
    Problem,
    RunDirError,
    one_line,
)
from mlpkit.flows import group, seeds
from mlpkit.flows.common import resolve_device, resolved_config
from mlpkit.flows.fit import Listener
from mlpkit.flows.oof import out_of_fold
from mlpkit.flows.resume import resume as resume_run
from mlpkit.flows.train import train
from mlpkit.report import crossval as report
from mlpkit.report import tracking
from mlpkit.rundir import catalog, crossval, lock, runs
from mlpkit.rundir.crossval import CrossvalInfo
from mlpkit.train.build import build_trainer
from mlpkit.train.prepare import prepare, split_table


@dataclass(frozen=True)
class FoldResult:
    """A complete fold: its number (from 1), seed, run directory and metrics.json."""

    fold: int
    seed: int
    run_dir: Path
    metrics: dict[str, Any]


@dataclass(frozen=True)
class CrossvalResult:
    """A complete cross-validation: its folder, crossval.json, and the folds."""

    cv_dir: Path
    info: CrossvalInfo
    folds: list[FoldResult]

    def means(self) -> dict[str, Any]:
        """The folds' mean test metrics and baselines' test scores, shaped as metrics.json
        (`test`, `baselines`), for a summary over seeds."""
        baselines = self.info.baselines.get("test", {})
        return {
            "test": {name: found.mean for name, found in self.info.test.items()},
            "baselines": {
                name: {metric: found.mean for metric, found in scores.items()}
                for name, scores in baselines.items()
            },
        }


OnFold = Callable[[FoldResult], None]  # a fold is complete (trained now, or before a resume)


def cross_validate(
    config_path: Path,
    overrides: list[str],
    runs_dir: Path,
    device_name: str | None = None,
    listener: Listener | None = None,
    on_fold: OnFold | None = None,
) -> CrossvalResult:
    """Train every fold of the config (which sets data.split.folds) in a new folder.

    Raises:
        MlpkitError: a problem with the config, data or device (before the folder exists), or
            any failure of a fold (the folder is marked failed, or interrupted with a resume
            command naming it).
    """
    loaded = load_config(config_path, overrides)
    folds = loaded.config.data.split.folds
    assert folds is not None  # the CLI calls this only with folds
    _check(loaded, config_path, overrides)
    cv_dir = crossval.create_cv_dir(runs_dir, loaded.config.name)
    cfg = loaded.config
    info = CrossvalInfo(
        name=cfg.name, status="running", folds=folds, seed=cfg.seed, started=runs.now()
    )
    try:
        with lock.hold(cv_dir):
            runs.write_yaml(cv_dir / runs.CONFIG, resolved_config(loaded))
            crossval.write_info(cv_dir, info)

            def load_fold(fold: int) -> LoadedConfig:
                return load_config(config_path, [*overrides, f"data.split.fold={fold}"])

            return _run(cv_dir, info, load_fold, runs_dir, device_name, listener, on_fold)
    except MlpkitError:
        if not crossval.fold_dir(cv_dir, 1).exists():  # nothing trained: leave nothing behind
            shutil.rmtree(cv_dir, ignore_errors=True)
        raise


def resume(
    cv_dir: Path,
    config_path: Path | None,
    overrides: list[str],
    device_name: str | None = None,
    listener: Listener | None = None,
    on_fold: OnFold | None = None,
) -> CrossvalResult:
    """Carry on an interrupted cross-validation in `cv_dir` where it stopped.

    Raises:
        RunDirError: not a cross-validation folder, complete already, or locked.
        ConfigError: `config_path` (with `overrides`) differs from the folder's config.
        MlpkitError: as cross_validate, for the folds still to train.
    """
    crossval.read_info(cv_dir)  # a cross-validation at all, before taking its lock
    with lock.hold(cv_dir):
        info = crossval.read_info(cv_dir)
        if info.status == "complete":
            problem = "the cross-validation is complete"
            raise RunDirError(Problem(problem, file=str(cv_dir), hint="nothing to resume"))
        own = cv_dir / runs.CONFIG
        load_config(own)  # a valid config, or say so before anything runs
        if config_path is not None:
            _same_config(own, config_path, overrides, info.folds)
        info = info.model_copy(
            update={"status": "running", "error": None, "resumed": [*info.resumed, runs.now()]}
        )
        crossval.write_info(cv_dir, info)

        def load_fold(fold: int) -> LoadedConfig:
            return load_config(own, [f"data.split.fold={fold}"])

        runs_dir = cv_dir.resolve().parent.parent  # <runs>/<name>/cv-...: the MLflow store
        return _run(cv_dir, info, load_fold, runs_dir, device_name, listener, on_fold)


def over_seeds(
    config_path: Path,
    overrides: list[str],
    runs_dir: Path,
    count: int,
    device_name: str | None = None,
    listener: Listener | None = None,
    on_fold: OnFold | None = None,
    on_cv: Callable[[int, int, CrossvalResult], None] | None = None,
) -> tuple[seeds.SeedsSummary, Path]:
    """One cross-validation per seed (the config's seed, seed + 1, ...), then the spread of
    their mean test metrics, written beside them as `<runs>/<name>/seeds-*.json`.

    Raises:
        MlpkitError: as cross_validate, for whichever seed fails; the folders before it stay.
    """
    done = []
    for place, seed in enumerate(seeds.seeds_for(config_path, overrides, count), start=1):
        result = cross_validate(
            config_path, [*overrides, f"seed={seed}"], runs_dir, device_name, listener, on_fold
        )
        done.append((seed, result))
        if on_cv is not None:
            on_cv(seed, place, result)
    summary = seeds.summarize(
        config_path,
        overrides,
        [seed for seed, _ in done],
        [result.cv_dir for _, result in done],
        [result.means() for _, result in done],
        folds=done[0][1].info.folds,
    )
    path = done[0][1].cv_dir.parent / f"{runs.unique_name('seeds-')}.json"
    runs.write_json(path, summary.to_json())
    return summary, path


def _check(loaded: LoadedConfig, config_path: Path, overrides: list[str]) -> None:
    """Every check train makes before training, on the first fold (as `mlpkit check`), and
    every fold's split counts (rows besides the test rows, a batch in its training rows).

    Raises:
        MlpkitError: the first problem found, before anything is written.
    """
    resolve_device(loaded)
    tracking.check(loaded)
    prepared = prepare(loaded)  # data.split.fold unset: the first fold's split
    build_trainer(prepared, torch.device("cpu"))  # the memory and step budget
    folds = loaded.config.data.split.folds or 0
    for fold in range(2, folds + 1):
        one = load_config(config_path, [*overrides, f"data.split.fold={fold}"])
        problems = check_split(split_table(one, prepared.table)[0].counts(), one)
        if problems:
            raise DataError(problems)


def _run(
    cv_dir: Path,
    info: CrossvalInfo,
    load_fold: Callable[[int], LoadedConfig],
    runs_dir: Path,
    device_name: str | None,
    listener: Listener | None,
    on_fold: OnFold | None,
) -> CrossvalResult:
    """Every fold, in turn, then the results; crossval.json says how it ended."""
    done: list[FoldResult] = []
    try:
        stacked, why_not = _stacked_folds(cv_dir, info, load_fold, runs_dir, device_name, listener)
        for fold in range(1, info.folds + 1):
            found = stacked.get(fold) or _fold(
                cv_dir, fold, load_fold, runs_dir, device_name, listener, why_not
            )
            done.append(found)
            if on_fold is not None:
                on_fold(found)
        return _finish(cv_dir, info, done, device_name)
    except Interrupted as exc:
        number = exc.exit_code - 128
        stopped = Interrupted(
            Problem(
                f"training stopped by {signal.Signals(number).name} in fold "
                f"{_stopped_folds(cv_dir, info.folds)} of {info.folds}; the finished folds and "
                "a checkpoint are kept",
                file=str(cv_dir),
                hint=f"resume with: mlpkit train --resume {cv_dir}",
            ),
            signal_number=number,
        )
        _mark(cv_dir, info, "interrupted", stopped)
        raise stopped from None
    except BaseException as exc:
        _mark(cv_dir, info, "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed", exc)
        raise


def _stacked_folds(
    cv_dir: Path,
    info: CrossvalInfo,
    load_fold: Callable[[int], LoadedConfig],
    runs_dir: Path,
    device_name: str | None,
    listener: Listener | None,
) -> tuple[dict[int, FoldResult], str | None]:
    """The folds still to train from the start, trained as one stack (flows/group.py) where
    they can be: their results, and why not if they cannot (each fold's run.json says it).

    Raises:
        DivergedError: a fold diverged (the others are complete).
    """
    fresh = []
    for fold in range(1, info.folds + 1):
        path = crossval.fold_dir(cv_dir, fold)
        if path.exists() and _unstarted(path):  # stopped before its first checkpoint
            shutil.rmtree(path)
        if not path.exists():
            fresh.append(fold)
    if len(fresh) < 2:
        return {}, None
    loadeds = [load_fold(fold) for fold in fresh]
    device = resolve_device(loadeds[0], device_name)
    built = group.build_members(loadeds, device)
    why_not = group.stacking_refusal(built)
    if why_not is not None:
        return {}, why_not
    places = [crossval.fold_dir(cv_dir, fold) for fold in fresh]
    outcome = group.train_group(built, runs_dir, device, listener, places)
    if outcome.failure is not None:
        raise outcome.failure
    return {
        fold: FoldResult(fold, loaded.config.seed, path, result.metrics)
        for fold, loaded, path, result in zip(fresh, loadeds, places, outcome.results, strict=True)
        if result is not None
    }, None


def _fold(
    cv_dir: Path,
    fold: int,
    load_fold: Callable[[int], LoadedConfig],
    runs_dir: Path,
    device_name: str | None,
    listener: Listener | None,
    why_not_stacked: str | None = None,
) -> FoldResult:
    """Fold `fold` complete: found so, resumed from its checkpoint, or trained (again)."""
    path = crossval.fold_dir(cv_dir, fold)
    if path.exists() and _unstarted(path):  # stopped before its first checkpoint
        shutil.rmtree(path)
    if not path.exists():
        loaded = load_fold(fold)
        result = train(
            loaded, runs_dir, device_name, listener, place=path, why_not_stacked=why_not_stacked
        )
        return FoldResult(fold, loaded.config.seed, path, result.metrics)
    run = runs.open_run(path, require_complete=False)
    if run.info.status != "complete":
        result = resume_run(path, None, [], device_name, listener)
        return FoldResult(fold, run.info.seed, path, result.metrics)
    assert run.metrics is not None
    metrics = run.metrics.model_dump(mode="json", exclude_none=True)
    return FoldResult(fold, run.info.seed, path, metrics)


def _stopped_folds(cv_dir: Path, folds: int) -> str:
    """The folds an interruption stopped: one, or several trained together ("2, 3")."""
    stopped = [
        str(fold)
        for fold in range(1, folds + 1)
        if crossval.fold_dir(cv_dir, fold).exists()
        and catalog.read_row(crossval.fold_dir(cv_dir, fold)).status == "interrupted"
    ]
    return ", ".join(stopped) or "?"


def _unstarted(path: Path) -> bool:
    """A fold directory no process holds, with no checkpoint and not complete: nothing in it
    is worth keeping (it stopped before its first epoch ended), so it is trained again."""
    if lock.is_held(path) or any((path / runs.CHECKPOINTS).glob("ckpt-*")):
        return False
    status = catalog.read_row(path).status
    return status != "complete"


def _finish(
    cv_dir: Path, info: CrossvalInfo, done: list[FoldResult], device_name: str | None
) -> CrossvalResult:
    """oof_predictions.csv, then crossval.json complete with the spreads."""
    oof = out_of_fold([found.run_dir for found in done], device_name)
    runs.write_csv(cv_dir / crossval.OOF_PREDICTIONS, oof.rows)
    results = report.summarize([found.metrics for found in done], oof.baselines)
    update = {
        "status": "complete",
        "finished": runs.now(),
        "runs": [found.run_dir.name for found in done],
        **results,
    }
    complete = CrossvalInfo.model_validate(info.model_dump() | update)
    crossval.write_info(cv_dir, complete)
    return CrossvalResult(cv_dir, complete, done)


def _mark(cv_dir: Path, info: CrossvalInfo, status: crossval.Status, exc: BaseException) -> None:
    """Record how it ended; if even that fails (a full disk), the first error is the one to
    report (the folder then shows as interrupted: nobody holds its lock)."""
    update = {"status": status, "finished": runs.now(), "error": one_line(exc)}
    with contextlib.suppress(MlpkitError):
        crossval.write_info(cv_dir, info.model_copy(update=update))


# Settings a resume may change: they never change what is trained (as flows/resume.py).
_FREE = {"training.engine"}


def _same_config(own: Path, config_path: Path, overrides: list[str], folds: int) -> None:
    """The config given to a resume must resolve to the folder's own (its folds too).

    Raises:
        ConfigError: it differs, the fields named.
    """
    given = load_config(config_path, overrides)
    if given.config.data.split.folds is None:
        given = load_config(config_path, [*overrides, f"data.split.folds={folds}"])
    changed = [
        key
        for key in differences(resolved_config(given), resolved_config(load_config(own)))
        if key not in _FREE and not key.startswith("tracking")
    ]
    if changed:
        raise ConfigError(
            Problem(
                "differs from the config the cross-validation was trained with in "
                + ", ".join(changed[:8])
                + (f" and {len(changed) - 8} more" if len(changed) > 8 else ""),
                file=str(config_path),
                hint="resume with the folder's own config, or cross-validate again",
            )
        )
