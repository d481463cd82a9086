"""A sweep's Optuna study: its search space as Optuna distributions, the sampler, the pruner,
the storage (the sweep folder's journal file, or an RDB URL reached at once), and opening a
study by name, refusing one made for another search. Optuna is imported only in here and in
the worker, where a sweep needs it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mlpkit.config import registries
from mlpkit.config.load import LoadedConfig
from mlpkit.config.schema import (
    Choice,
    Distribution,
    IntRange,
    LogUniform,
    SweepConfig,
)
from mlpkit.errors import (
    ConfigError,
    Problem,
    one_line,
)
from mlpkit.rundir import sweeps

if TYPE_CHECKING:
    import optuna


# The median pruner judges a trial against the trials before it from the third on, and from
# its second epoch (the first epoch's figure says little of where a run ends).
MEDIAN_STARTUP_TRIALS = 3
MEDIAN_WARMUP_EPOCHS = 1
HEARTBEAT_SECONDS = 10  # RDB storages: a running trial's worker writes one this often
GRACE_SECONDS = 30  # ... and a trial with none for this long was lost with its worker
JOURNAL_GRACE = 5  # seconds after which a journal lock is taken as a dead worker's
USER = "mlpkit."  # the study's and the trials' user attributes mlpkit keeps


# What members of one stack may each hold their own (train/stacked.py): a space of these only
# trains its trials in batches of STACKED_TRIALS as one computation.
def grid(settings: SweepConfig) -> dict[str, list[Any]]:
    axes: dict[str, list[Any]] = {}
    for path, distribution in settings.space.items():
        if isinstance(distribution, IntRange):
            low, high = distribution.int
            axes[path] = list(range(low, high + 1))
        elif isinstance(distribution, Choice):
            axes[path] = choices(distribution)
    return axes


def direction(settings: SweepConfig) -> Literal["minimize", "maximize"]:
    if settings.direction is not None:
        return settings.direction
    lower = registries.lower_is_better(settings.metric, "auto")
    return "minimize" if lower else "maximize"


def choices(distribution: Choice) -> list[Any]:
    """A choice's options as Optuna keeps them: scalars as they are, anything else (a list of
    layers) as its JSON text."""
    scalar = all(
        value is None or isinstance(value, bool | int | float | str)
        for value in distribution.choice
    )
    return list(distribution.choice) if scalar else [json.dumps(v) for v in distribution.choice]


def distributions(settings: SweepConfig) -> dict[str, Any]:
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
        return optuna.distributions.CategoricalDistribution(choices(distribution))
    low, high = distribution.uniform
    return optuna.distributions.FloatDistribution(low, high)


def value_of(settings: SweepConfig, path: str, sampled: Any) -> Any:
    """A sampled parameter as the config takes it (a JSON-kept choice decoded)."""
    distribution = settings.space[path]
    kept_as_json = isinstance(distribution, Choice) and choices(distribution) != list(
        distribution.choice
    )
    return json.loads(sampled) if kept_as_json and isinstance(sampled, str) else sampled


def journal(folder: Path) -> Any:
    import optuna
    import optuna.storages.journal

    path = str(folder / sweeps.JOURNAL)
    with quiet():
        # A worker holds the journal's lock only to append or read a few lines; one killed
        # while holding it leaves it behind, which the others take over after the grace
        # period (Optuna's default: 30 s of every worker waiting).
        lock = optuna.storages.journal.JournalFileOpenLock(path, grace_period=JOURNAL_GRACE)
        backend = optuna.storages.journal.JournalFileBackend(path, lock_obj=lock)
        return optuna.storages.journal.JournalStorage(backend)


def rdb(url: str) -> Any:
    """An RDB storage for `url`, reached now (its tables made if new).

    Raises:
        ConfigError: the driver is missing, or the database cannot be reached.
    """
    import optuna

    try:
        with quiet():
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


def open_study(
    loaded: LoadedConfig, settings: SweepConfig, storage: Any, name: str
) -> optuna.Study:
    """The study `name`, made or joined; one made for another search is refused."""
    import optuna

    search = {
        "metric": settings.metric,
        "space": {path: d.model_dump(mode="json") for path, d in settings.space.items()},
    }
    wanted = direction(settings)
    with quiet():
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            direction=wanted,
            sampler=_sampler(settings, loaded.config.seed),
            pruner=_pruner(settings, loaded.config.training.epochs),
            load_if_exists=True,
        )
    theirs = study.user_attrs.get(f"{USER}search")
    if theirs is None:
        study.set_user_attr(f"{USER}search", search)
        if settings.sampler == "grid":
            _queue_grid(study, settings, loaded.config.seed)
    elif theirs != search or study.direction.name.lower() != wanted:
        what = f"the study '{name}' exists for another search (its metric, space or direction)"
        hint = "name another study with --study, or give the config it was made with"
        raise ConfigError(Problem(what, where="--study", hint=hint))
    return study


def _queue_grid(study: optuna.Study, settings: SweepConfig, config_seed: int) -> None:
    """Every point of the grid queued once, in a seeded order: Optuna's GridSampler stops the
    study from inside a trial, which only works under study.optimize, not ask and tell."""
    import random

    axes = grid(settings)
    points = [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]
    seed = settings.seed if settings.seed is not None else config_seed
    random.Random(seed).shuffle(points)
    with quiet():
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
def quiet() -> Iterator[None]:
    """Optuna's INFO lines and experimental-feature warnings kept off the terminal."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # the heartbeat is written by _heartbeat while a trial trains (ask and tell, not
        # study.optimize, which Optuna's own heartbeat thread assumes)
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed", UserWarning)
        yield
