"""A sweep's worker (flows/sweep.py runs one, --workers more): ask the study for trials and
train them until the budget or the deadline is met, each into trial-NNNN/ as an ordinary run,
then tell the study how each ended (complete with its metric, pruned, failed with the reason).

The budget counts trials that ran to an end of their own: complete, pruned, or failed by
their config or training. A trial whose worker died (killed: its lock in workers/ is free, or
with an RDB its heartbeat stopped) is marked failed as lost and does not count, so another runs
in its place. Workers claim trials by number: a trial asked for after the budget was met by
lower-numbered ones is told failed as surplus at once, untrained and left out of trials.csv.
When the space varies only what members of a stack may each hold (learning rate, weight decay,
seed), trials train in batches as one stack (flows/group.py), each still its own run.
"""

from __future__ import annotations

import contextlib
import fcntl
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlpkit.config.load import load_config
from mlpkit.config.schema import (
    SweepConfig,
)
from mlpkit.config.sweep_rules import override
from mlpkit.errors import (
    Interrupted,
    MlpkitError,
    Problem,
    Pruned,
)
from mlpkit.flows.study import HEARTBEAT_SECONDS, USER, distributions, quiet, value_of
from mlpkit.rundir import sweeps

if TYPE_CHECKING:
    import optuna

    from mlpkit.flows.fit import Start, TrainResult

PER_MEMBER = {"training.optimizer.lr", "training.optimizer.weight_decay", "seed"}
STACKED_TRIALS = 8


@dataclass(frozen=True)
class TrialOutcome:
    """One trial that ended in this process."""

    number: int
    state: str  # complete | pruned | failed
    value: float | None
    params: dict[str, Any]
    run_dir: Path | None
    seconds: float
    error: str | None = None


OnTrial = Callable[[TrialOutcome, "sweeps.Best | None"], None]


@dataclass(frozen=True)
class Work:
    """Everything a worker needs: the folder, its config, the study and the budget."""

    folder: Path
    config_path: Path  # the folder's config.yaml
    settings: SweepConfig
    study: optuna.Study
    budget: int | None
    deadline: float | None  # time.monotonic() at which no new trial starts
    runs_dir: Path
    device: str | None
    rdb: bool


def run_worker(work: Work, on_trial: OnTrial | None) -> None:
    """Ask for trials and train them until the budget or the deadline is met: a batch of up
    to STACKED_TRIALS at once, stacked, when the space varies only what members of a stack
    may hold each their own (learning rate, weight decay, seed), else one at a time."""
    import optuna

    worker = secrets.token_hex(6)
    locks = work.folder / sweeps.WORKERS
    locks.mkdir(exist_ok=True)
    stackable = work.settings.stack and set(work.settings.space) <= PER_MEMBER
    batch = STACKED_TRIALS if stackable else 1
    with open(locks / f"{worker}.lock", "w") as held, quiet():
        fcntl.flock(held, fcntl.LOCK_EX)
        _fail_lost(work)
        space = distributions(work.settings)
        met = False
        while not met and (work.deadline is None or time.monotonic() < work.deadline):
            size = batch
            if work.budget is not None:  # asked for no trial past it, but when workers race
                left = work.budget - claimed_before(work.study, sys.maxsize)
                if left <= 0:
                    break
                size = min(batch, left)
            trials = []
            for _ in range(size):
                trial = work.study.ask(space)
                trial.set_user_attr(f"{USER}worker", worker)
                claimed = claimed_before(work.study, trial.number)
                if work.budget is not None and claimed >= work.budget:
                    trial.set_user_attr(f"{USER}surplus", True)
                    work.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    met = True
                    break
                trials.append(trial)
            with contextlib.ExitStack() as beating:
                for trial in trials:
                    beating.enter_context(_heartbeat(work.study, trial))
                outcomes = _stacked(work, trials) if len(trials) > 1 else None
                if outcomes is None:
                    outcomes = []
                    for trial in trials:
                        outcomes.append(_trial(work, trial))
                        if on_trial is not None:
                            on_trial(outcomes[-1], best_trial(work))
                elif on_trial is not None:
                    for outcome in outcomes:
                        on_trial(outcome, best_trial(work))
    (locks / f"{worker}.lock").unlink(missing_ok=True)


def _stacked(work: Work, trials: list[optuna.Trial]) -> list[TrialOutcome] | None:
    """The trials trained as one stack (flows/group.py), each its own run, pruned on its own;
    None if they cannot stack (then they train one at a time)."""
    import optuna

    from mlpkit.flows import group
    from mlpkit.flows.common import resolve_device

    params = [
        {path: value_of(work.settings, path, v) for path, v in trial.params.items()}
        for trial in trials
    ]
    try:
        loadeds = [
            load_config(
                work.config_path,
                [*(override(path, value) for path, value in found.items()), "sweep=null"],
            )
            for found in params
        ]
        device = resolve_device(loadeds[0], work.device)
        built = group.build_members(loadeds, device)
    except MlpkitError:
        return None  # each then fails alone, with its own reason
    if group.stacking_refusal(built) is not None:
        return None
    reporting = [_Reporting(trial, work.settings) for trial in trials]
    places = [sweeps.trial_dir(work.folder, trial.number) for trial in trials]
    started = time.perf_counter()
    try:
        done = group.train_group(
            built,
            work.runs_dir,
            device,
            None,
            places,
            lambda k, record: reporting[k].epoch(record),
        )
    except Interrupted:
        for trial in trials:
            trial.set_user_attr(f"{USER}interrupted", True)
            work.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    seconds = time.perf_counter() - started
    outcomes = []
    for k, trial in enumerate(trials):
        result, failure = done.results[k], done.failures[k]
        if result is not None:
            value = objective(result, work.settings.metric)
            work.study.tell(trial, value)
            outcome = TrialOutcome(trial.number, "complete", value, params[k], places[k], seconds)
        elif isinstance(failure, Pruned):
            work.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            why = _text(failure)
            outcome = TrialOutcome(trial.number, "pruned", None, params[k], places[k], seconds, why)
        else:
            why = _text(failure) if failure is not None else "no result"
            trial.set_user_attr(f"{USER}error", why)
            work.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            outcome = TrialOutcome(trial.number, "failed", None, params[k], places[k], seconds, why)
        outcomes.append(outcome)
    return outcomes


@contextlib.contextmanager
def _heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """With an RDB storage, a heartbeat for the trial every HEARTBEAT_SECONDS while it trains,
    so a worker that dies leaves a trial another worker can find stale."""
    import optuna

    storage = study._storage
    if not isinstance(storage, optuna.storages.RDBStorage) or not storage.get_heartbeat_interval():
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial._trial_id)
            if stop.wait(HEARTBEAT_SECONDS):
                return

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def claimed_before(study: optuna.Study, number: int) -> int:
    """The trials numbered below `number` that count against the budget: ended of their own
    (complete, pruned, failed by their config or run) or still running."""
    from optuna.trial import TrialState

    count = 0
    for trial in study.get_trials(deepcopy=False):
        if trial.number >= number:
            continue
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING) or (
            trial.state == TrialState.FAIL and f"{USER}error" in trial.user_attrs
        ):
            count += 1
    return count


def _fail_lost(work: Work) -> None:
    """Mark failed (lost, not counted) the running trials whose worker is gone: with an RDB
    its heartbeat stopped; with the journal its lock in workers/ is free."""
    import optuna
    from optuna.trial import TrialState

    if work.rdb:
        with quiet():
            optuna.storages.fail_stale_trials(work.study)
        return
    for trial in work.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(f"{USER}worker")
        if worker is None or _held(work.folder / sweeps.WORKERS / f"{worker}.lock"):
            continue
        work.study._storage.set_trial_user_attr(trial._trial_id, f"{USER}lost", True)
        work.study.tell(trial.number, state=TrialState.FAIL)


def _held(lock: Path) -> bool:
    """Whether a worker holds this lock file (a live process)."""
    try:
        with open(lock, "a") as probe:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(probe, fcntl.LOCK_UN)
            return False
    except FileNotFoundError:
        return False


class _Reporting:
    """The trial's run listener: each epoch's metric to the pruner, which may stop the run."""

    def __init__(self, trial: optuna.Trial, settings: SweepConfig) -> None:
        self.trial, self.settings = trial, settings

    def started(self, start: Start) -> None:
        """Nothing to show: the sweep prints a line per trial."""

    def epoch(self, record: dict[str, float]) -> None:
        value = record.get(self.settings.metric)
        if value is None:
            return
        epoch = int(record["epoch"])
        self.trial.report(value, epoch)
        if self.settings.pruner != "none" and self.trial.should_prune():
            what = f"pruned by the {self.settings.pruner} pruner after epoch {epoch}"
            raise Pruned(Problem(f"{what} ({self.settings.metric} {value:.6g})", where="sweep"))


def _trial(work: Work, trial: optuna.Trial) -> TrialOutcome:
    """Train one trial into trial-NNNN/ and tell the study how it ended."""
    import optuna

    from mlpkit.flows.train import train

    params = {path: value_of(work.settings, path, v) for path, v in trial.params.items()}
    sets = [override(path, value) for path, value in params.items()] + ["sweep=null"]
    place = sweeps.trial_dir(work.folder, trial.number)
    started = time.perf_counter()
    run_dir: Path | None = None
    try:
        loaded = load_config(work.config_path, sets)
        run_dir = place
        result = train(loaded, work.runs_dir, work.device, _Reporting(trial, work.settings), place)
    except Pruned as exc:
        work.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        seconds = time.perf_counter() - started
        return TrialOutcome(trial.number, "pruned", None, params, run_dir, seconds, _text(exc))
    except Interrupted:
        trial.set_user_attr(f"{USER}interrupted", True)
        work.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    except MlpkitError as exc:
        trial.set_user_attr(f"{USER}error", _text(exc))
        work.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        seconds = time.perf_counter() - started
        found = run_dir if run_dir is not None and run_dir.exists() else None
        return TrialOutcome(trial.number, "failed", None, params, found, seconds, _text(exc))
    value = objective(result, work.settings.metric)
    work.study.tell(trial, value)
    seconds = time.perf_counter() - started
    return TrialOutcome(trial.number, "complete", value, params, run_dir, seconds)


def _text(exc: MlpkitError) -> str:
    first = exc.problems[0]
    return f"{first.where}: {first.problem}" if first.where else first.problem


def objective(result: TrainResult, metric: str) -> float:
    """The trial's value: `metric` in the epoch whose weights the run ends with (the best
    epoch when early stopping restored it, else the last)."""
    history = result.history
    stopping = result.metrics.get("early_stopping")
    if stopping is not None and stopping.get("restored_best"):
        epoch = int(stopping["best_epoch"])
        return float(next(r for r in history if int(r["epoch"]) == epoch)[metric])
    return float(history[-1][metric])


def best_trial(work: Work) -> sweeps.Best | None:
    from optuna.trial import TrialState

    complete = work.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    best = work.study.best_trial
    assert best.value is not None
    params = {path: value_of(work.settings, path, v) for path, v in best.params.items()}
    run = sweeps.trial_dir(work.folder, best.number).name
    return sweeps.Best(number=best.number, value=best.value, run=run, params=params)
