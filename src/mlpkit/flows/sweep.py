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

The budget (sweep.trials or --trials) counts trials that ran to an end of their own:
complete, pruned, or failed by their config or training. A trial whose worker died (killed:
its lock in workers/ is free, or with an RDB its heartbeat stopped) is marked failed as lost
and does not count, so `mlpkit sweep --resume FOLDER` runs another in its place. Workers
claim trials by number: a trial asked for after the budget was met by lower-numbered ones is
told failed as surplus at once, untrained and left out of trials.csv.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import secrets
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mlpkit.config import registries
from mlpkit.config.load import LoadedConfig, load_config
from mlpkit.config.schema import (
    Choice,
    Distribution,
    IntRange,
    LogUniform,
    SweepConfig,
    Uniform,
)
from mlpkit.config.sweep_rules import override, sweep_problems
from mlpkit.errors import (
    ConfigError,
    Interrupted,
    MlpkitError,
    Problem,
    Pruned,
    RunDirError,
    one_line,
)
from mlpkit.flows.common import resolved_config
from mlpkit.rundir import runs, sweeps

if TYPE_CHECKING:
    import optuna

    from mlpkit.flows.fit import Start, TrainResult

# The median pruner judges a trial against the trials before it from the third on, and from
# its second epoch (the first epoch's figure says little of where a run ends).
MEDIAN_STARTUP_TRIALS = 3
MEDIAN_WARMUP_EPOCHS = 1
HEARTBEAT_SECONDS = 10  # RDB storages: a running trial's worker writes one this often
GRACE_SECONDS = 30  # ... and a trial with none for this long was lost with its worker
USER = "mlpkit."
# What members of one stack may each hold their own (train/stacked.py): a space of these only
# trains its trials in batches of STACKED_TRIALS as one computation.
PER_MEMBER = {"training.optimizer.lr", "training.optimizer.weight_decay", "seed"}
STACKED_TRIALS = 8  # the study's and the trials' user attributes mlpkit keeps


@dataclass(frozen=True)
class Options:
    """The command line's part of a sweep."""

    trials: int | None = None  # overrides sweep.trials
    timeout: float | None = None  # overrides sweep.timeout (seconds)
    workers: int = 1
    storage: str | None = None  # an RDB URL; None: the folder's journal file
    study: str | None = None  # the study's name; None: the folder's name
    device: str | None = None


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
class Sweep:
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
        opened = _open_study(loaded, settings, _rdb(options.storage), study_name)
    folder = sweeps.create_sweep_dir(runs_dir, loaded.config.name)
    study_name = study_name or folder.name
    runs.write_yaml(folder / runs.CONFIG, resolved_config(loaded))
    if opened is None:
        opened = _open_study(loaded, settings, _journal(folder), study_name)
    info = sweeps.SweepInfo(
        name=loaded.config.name,
        status="running",
        study=study_name,
        storage=options.storage or "journal",
        metric=settings.metric,
        direction=_direction(settings),
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
    storage = _journal(folder) if info.storage == "journal" else _rdb(info.storage)
    study = _open_study(loaded, settings, storage, info.study)
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
    storage = _journal(folder) if info.storage == "journal" else _rdb(info.storage)
    study = _open_study(loaded, settings, storage, info.study)
    runs_dir = folder.resolve().parent.parent
    _work(_sweep(folder, settings, study, info, runs_dir, device), None)


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
    if _budget(settings, options) is None and not (options.timeout or settings.timeout):
        raise ConfigError(
            loaded.problem(
                ("sweep",),
                "has neither a trial budget nor a time budget",
                "set sweep.trials (or --trials N) or sweep.timeout (or --timeout S)",
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
        for values in _grid(settings).values():
            size *= len(values)
        return size
    return None


def _grid(settings: SweepConfig) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for path, distribution in settings.space.items():
        if isinstance(distribution, IntRange):
            low, high = distribution.int
            grid[path] = list(range(low, high + 1))
        elif isinstance(distribution, Choice):
            grid[path] = _choices(distribution)
    return grid


def _direction(settings: SweepConfig) -> Literal["minimize", "maximize"]:
    if settings.direction is not None:
        return settings.direction
    lower = registries.lower_is_better(settings.metric, "auto")
    return "minimize" if lower else "maximize"


def _choices(distribution: Choice) -> list[Any]:
    """A choice's options as Optuna keeps them: scalars as they are, anything else (a list of
    layers) as its JSON text."""
    scalar = all(
        value is None or isinstance(value, bool | int | float | str)
        for value in distribution.choice
    )
    return list(distribution.choice) if scalar else [json.dumps(v) for v in distribution.choice]


def _distributions(settings: SweepConfig) -> dict[str, Any]:
    import optuna

    found: dict[str, Any] = {}
    for path, distribution in settings.space.items():
        found[path] = _distribution(optuna, distribution)
    return found


def _distribution(optuna: Any, distribution: Distribution) -> Any:
    if isinstance(distribution, LogUniform):
        low, high = distribution.log_uniform
        return optuna.distributions.FloatDistribution(low, high, log=True)
    if isinstance(distribution, IntRange):
        low, high = distribution.int
        return optuna.distributions.IntDistribution(low, high, log=distribution.log)
    if isinstance(distribution, Choice):
        return optuna.distributions.CategoricalDistribution(_choices(distribution))
    low, high = distribution.uniform
    return optuna.distributions.FloatDistribution(low, high)


def _value(settings: SweepConfig, path: str, sampled: Any) -> Any:
    """A sampled parameter as the config takes it (a JSON-kept choice decoded)."""
    distribution = settings.space[path]
    kept_as_json = isinstance(distribution, Choice) and _choices(distribution) != list(
        distribution.choice
    )
    return json.loads(sampled) if kept_as_json and isinstance(sampled, str) else sampled


# --- the study ---------------------------------------------------------------------------


def _journal(folder: Path) -> Any:
    import optuna
    import optuna.storages.journal

    with _quiet():
        backend = optuna.storages.journal.JournalFileBackend(str(folder / sweeps.JOURNAL))
        return optuna.storages.journal.JournalStorage(backend)


def _rdb(url: str) -> Any:
    """An RDB storage for `url`, reached now (its tables made if new).

    Raises:
        ConfigError: the driver is missing, or the database cannot be reached.
    """
    import optuna

    try:
        with _quiet():
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
                engine_kwargs={"pool_pre_ping": True},
            )
    except ImportError as exc:  # Optuna wraps the driver's ModuleNotFoundError
        missing = getattr(exc.__cause__, "name", None) or getattr(exc, "name", None)
        scheme = url.split(":", 1)[0]
        hint = "for PostgreSQL: pip install 'mlpkit[postgres]'"
        what = f"the database driver for {scheme} ({missing or 'its module'}) is not installed"
        raise ConfigError(Problem(what, where="--storage", hint=hint)) from None
    except Exception as exc:  # sqlalchemy's errors, whatever the dialect
        what = f"cannot open {_hidden(url)}: {one_line(exc)}"
        hint = "check the URL, that the server is up and the database exists"
        raise ConfigError(Problem(what, where="--storage", hint=hint)) from None


def _hidden(url: str) -> str:
    """The URL without its password."""
    head, at, tail = url.rpartition("@")
    if not at or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, user_password = head.partition("//")
    return f"{scheme}//{user_password.split(':', 1)[0]}:***@{tail}"


def _open_study(
    loaded: LoadedConfig, settings: SweepConfig, storage: Any, name: str
) -> optuna.Study:
    """The study `name`, made or joined; one made for another search is refused."""
    import optuna

    search = {
        "metric": settings.metric,
        "space": {path: d.model_dump(mode="json") for path, d in settings.space.items()},
    }
    direction = _direction(settings)
    with _quiet():
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            direction=direction,
            sampler=_sampler(settings, loaded.config.seed),
            pruner=_pruner(settings, loaded.config.training.epochs),
            load_if_exists=True,
        )
    theirs = study.user_attrs.get(f"{USER}search")
    if theirs is None:
        study.set_user_attr(f"{USER}search", search)
        if settings.sampler == "grid":
            _queue_grid(study, settings, loaded.config.seed)
    elif theirs != search or study.direction.name.lower() != direction:
        what = f"the study '{name}' exists for another search (its metric, space or direction)"
        hint = "name another study with --study, or give the config it was made with"
        raise ConfigError(Problem(what, where="--study", hint=hint))
    return study


def _queue_grid(study: optuna.Study, settings: SweepConfig, config_seed: int) -> None:
    """Every point of the grid queued once, in a seeded order: Optuna's GridSampler stops the
    study from inside a trial, which only works under study.optimize, not ask and tell."""
    import random

    grid = _grid(settings)
    points = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    seed = settings.seed if settings.seed is not None else config_seed
    random.Random(seed).shuffle(points)
    with _quiet():
        for point in points:
            study.enqueue_trial(point)


def _sampler(settings: SweepConfig, config_seed: int) -> Any:
    import optuna

    seed = settings.seed if settings.seed is not None else config_seed
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if settings.sampler == "grid":  # every grid point is queued when the study is made
        return optuna.samplers.RandomSampler(seed=seed)
    if settings.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(settings: SweepConfig, epochs: int) -> Any:
    import optuna

    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=MEDIAN_WARMUP_EPOCHS
        )
    if settings.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    return optuna.pruners.NopPruner()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Optuna's INFO lines and experimental-feature warnings kept off the terminal."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # the heartbeat is written by _heartbeat while a trial trains (ask and tell, not
        # study.optimize, which Optuna's own heartbeat thread assumes)
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed", UserWarning)
        yield


# --- workers -----------------------------------------------------------------------------


def _sweep(
    folder: Path,
    settings: SweepConfig,
    study: optuna.Study,
    info: sweeps.SweepInfo,
    runs_dir: Path,
    device: str | None,
) -> Sweep:
    deadline = None if info.timeout is None else time.monotonic() + info.timeout
    return Sweep(
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
        _work(work, on_trial)
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
    return subprocess.Popen(command, stdout=subprocess.DEVNULL)


def _work(work: Sweep, on_trial: OnTrial | None) -> None:
    """Ask for trials and train them until the budget or the deadline is met: a batch of up
    to STACKED_TRIALS at once, stacked, when the space varies only what members of a stack
    may hold each their own (learning rate, weight decay, seed), else one at a time."""
    import optuna

    worker = secrets.token_hex(6)
    locks = work.folder / sweeps.WORKERS
    locks.mkdir(exist_ok=True)
    stackable = work.settings.stack and set(work.settings.space) <= PER_MEMBER
    batch = STACKED_TRIALS if stackable else 1
    with open(locks / f"{worker}.lock", "w") as held, _quiet():
        fcntl.flock(held, fcntl.LOCK_EX)
        _fail_lost(work)
        distributions = _distributions(work.settings)
        met = False
        while not met and (work.deadline is None or time.monotonic() < work.deadline):
            size = batch
            if work.budget is not None:  # asked for no trial past it, but when workers race
                left = work.budget - _claimed_before(work.study, sys.maxsize)
                if left <= 0:
                    break
                size = min(batch, left)
            trials = []
            for _ in range(size):
                trial = work.study.ask(distributions)
                trial.set_user_attr(f"{USER}worker", worker)
                claimed = _claimed_before(work.study, trial.number)
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
                            on_trial(outcomes[-1], _best(work))
                elif on_trial is not None:
                    for outcome in outcomes:
                        on_trial(outcome, _best(work))
    (locks / f"{worker}.lock").unlink(missing_ok=True)


def _stacked(work: Sweep, trials: list[optuna.Trial]) -> list[TrialOutcome] | None:
    """The trials trained as one stack (flows/group.py), each its own run, pruned on its own;
    None if they cannot stack (then they train one at a time)."""
    import optuna

    from mlpkit.flows import group
    from mlpkit.flows.common import resolve_device

    params = [
        {path: _value(work.settings, path, v) for path, v in trial.params.items()}
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


def _claimed_before(study: optuna.Study, number: int) -> int:
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


def _fail_lost(work: Sweep) -> None:
    """Mark failed (lost, not counted) the running trials whose worker is gone: with an RDB
    its heartbeat stopped; with the journal its lock in workers/ is free."""
    import optuna
    from optuna.trial import TrialState

    if work.rdb:
        with _quiet():
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


def _trial(work: Sweep, trial: optuna.Trial) -> TrialOutcome:
    """Train one trial into trial-NNNN/ and tell the study how it ended."""
    import optuna

    from mlpkit.flows.train import train

    params = {path: _value(work.settings, path, v) for path, v in trial.params.items()}
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


def _best(work: Sweep) -> sweeps.Best | None:
    from optuna.trial import TrialState

    complete = work.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    best = work.study.best_trial
    assert best.value is not None
    params = {path: _value(work.settings, path, v) for path, v in best.params.items()}
    run = sweeps.trial_dir(work.folder, best.number).name
    return sweeps.Best(number=best.number, value=best.value, run=run, params=params)


# --- the end -----------------------------------------------------------------------------


def _finish(work: Sweep, info: sweeps.SweepInfo) -> sweeps.SweepInfo:
    """trials.csv, best.yaml, the plots, then sweep.json complete."""
    from mlpkit.report import sweep_plots

    runs.write_csv(work.folder / sweeps.TRIALS, _rows(work))
    best = _best(work)
    if best is not None:  # from its values: the best trial may have run on another machine
        sets = [override(path, value) for path, value in best.params.items()] + ["sweep=null"]
        runs.write_yaml(
            work.folder / sweeps.BEST, resolved_config(load_config(work.config_path, sets))
        )
    with _quiet():
        sweep_plots.draw(work.study, work.folder / sweeps.PLOTS)
    update = {"status": "complete", "finished": runs.now(), "best": best}
    done = info.model_copy(update=update)
    sweeps.write_info(work.folder, done)
    return done


def _rows(work: Sweep) -> list[dict[str, Any]]:
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
            row[path] = None if value is None else _value(work.settings, path, value)
        row[work.settings.metric] = trial.value
        row["run"] = place.name if place.exists() else None
        row["seconds"] = seconds
        row["error"] = attrs.get(f"{USER}error")
        rows.append(row)
    return rows
