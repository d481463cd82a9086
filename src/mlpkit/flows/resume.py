"""`mlpkit train --resume RUN`: continue an interrupted run in place from its newest intact
checkpoint.

Top to bottom, under the run's lock: the run must be resumable -> its newest whole checkpoint
-> the config must be the checkpoint's (fields named if not) -> prepare: the data file and the
preprocessing must be the run's -> build the trainer, load the checkpoint's state into it,
then the step -> fit_run (fit.py) carries on from the checkpoint's position.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mlpkit.config.load import LoadedConfig, differences, load_config
from mlpkit.errors import ConfigError, DataError, Problem, RunDirError
from mlpkit.flows import distributed
from mlpkit.flows.common import (
    resolve_device,
    resolved_config,
    same_split_file,
    training_info,
)
from mlpkit.flows.fit import Job, Listener, Start, TrainResult, fit_run
from mlpkit.report import tracking
from mlpkit.report.summary import summarize_network
from mlpkit.rundir import checkpoints, crossval, lock, runs
from mlpkit.train.build import build_trainer, make_step
from mlpkit.train.distributed import Group
from mlpkit.train.prepare import Prepared, prepare


def resume(
    run_dir: Path,
    config_path: Path | None,
    overrides: list[str],
    device_name: str | None = None,
    listener: Listener | None = None,
    group: Group | None = None,
) -> TrainResult:
    """Continue the run in `run_dir` from its newest intact checkpoint.

    A run trained under torchrun resumes under as many processes (`group`: this is rank 0,
    which announces the config and the checkpoint to the others, flows/distributed.py).

    The config (the run's own, or `config_path` with `overrides`, which must resolve to the
    same) and the data file must be those the run was trained on.

    Raises:
        RunDirError: not a resumable run, locked by another process, no usable checkpoint, or
            trained by another number of processes.
        ConfigError: the config differs from the run's (the fields are named).
        DataError: the data file changed since the run began.
    """
    runs.open_run(run_dir, require_complete=False)  # a run at all, before taking its lock
    with lock.hold(run_dir):
        run = runs.open_run(run_dir, require_complete=False)  # as it is now that we hold it
        _refuse_finished(run)
        _refuse_ensemble(run)
        checkpoint, skipped = checkpoints.latest(run_dir)
        loaded = _same_config(run, checkpoint, config_path, overrides)
        _same_world(run, group)
        device = resolve_device(loaded, device_name)
        if group is not None:
            device = group.device(device)
            distributed.announce(group, distributed.Plan(loaded, checkpoint))
        prepared = prepare(loaded)
        if group is not None:
            distributed.check_data(group, prepared, device)
        _same_data(run, prepared)
        trainer = build_trainer(prepared, device)
        checkpoints.load_into(checkpoint, trainer.model, trainer.optimizer, trainer.schedule)
        step, trainer = make_step(trainer, group)  # after the optimizer's state is loaded
        config = resolved_config(loaded)
        runs_dir = crossval.runs_dir_of(run_dir)  # where the default MLflow store is
        trackers = tracking.open_tracking(loaded, config, runs_dir, resumed=run_dir)
        spread = None if group is None else distributed.distributed_info(group, prepared, device)
        if listener is not None:
            summary = summarize_network(prepared.config, prepared.preprocessor)
            started = Start(prepared, device, summary, checkpoint.position, spread=spread)
            listener.started(started)
        for problem in skipped:  # a damaged newer checkpoint: say so, resume from the one before
            sys.stderr.write(f"Warning: skipped {problem.render().removeprefix('Error: ')}\n")
        checkpoints.clean_partials(run_dir)
        update: dict[str, Any] = {"status": "running", "finished": None, "error": None}
        update |= {"resumed": [*run.info.resumed, runs.now()], "device": str(device)}
        update["training"] = training_info(trainer.engine, distributed=spread)
        info = run.info.model_copy(update=update)
        job = Job(
            run_dir, prepared, trainer, step, device, config, info, trackers, checkpoint, group
        )
        return fit_run(job, listener)


def _refuse_finished(run: runs.Run) -> None:
    """A complete run has nothing to resume; a diverged one would only diverge again."""
    status = run.info.status
    if status in ("complete", "diverged", "pruned"):
        hint = "nothing to resume" if status == "complete" else runs.next_step(run.path, status)
        raise RunDirError(Problem(f"the run is {status}", file=str(run.path), hint=hint))


def _same_world(run: runs.Run, group: Group | None) -> None:
    """A run resumes under as many processes as it trained on: its position counts global
    batches of that many shares, which another number would cut differently."""
    training = run.info.training
    trained = training.distributed.processes if training and training.distributed else 1
    now = group.world if group is not None else 1
    if trained != now:
        how = "1 process" if now == 1 else f"{now} processes"
        hint = (
            f"resume with: mlpkit train --resume {run.path} --nproc {trained} (or under "
            f"torchrun with {trained} processes)"
            if trained > 1
            else f"resume it without torchrun: mlpkit train --resume {run.path}"
        )
        raise RunDirError(
            Problem(
                f"the run trained on {trained} process{'es' if trained > 1 else ''}, and "
                f"resuming it on {how} would cut its batches differently",
                file=str(run.path),
                hint=hint,
            )
        )


def _refuse_ensemble(run: runs.Run) -> None:
    """An ensemble's members train one after another without checkpoints (train/ensemble.py):
    there is nothing to resume from yet."""
    members = load_config(run.config_path).config.model.ensemble
    if members > 1:
        raise RunDirError(
            Problem(
                f"the run is an ensemble of {members} (model.ensemble), and ensemble runs keep "
                "no checkpoints yet, so it cannot be resumed",
                file=str(run.path),
                hint="train it again",
            )
        )


def _same_config(
    run: runs.Run,
    checkpoint: checkpoints.Checkpoint,
    config_path: Path | None,
    overrides: list[str],
) -> LoadedConfig:
    """The config to resume with: the run's own, or the one given (with --set) if it resolves
    to the same; either way refused when it differs from the checkpoint's, fields named."""
    own = load_config(run.config_path, [] if config_path else overrides)
    _refuse_changes(own, checkpoint, run.config_path)
    if config_path is None:
        return own
    given = load_config(config_path, overrides)
    _refuse_changes(given, checkpoint, config_path)
    return given


# Settings a resume may change: the engine gives the same results, and every key under
# `tracking` only says where the epochs are also reported (a resume may turn a tracker on, or
# move off a dead store).
_FREE_ON_RESUME = {"training.engine"}
_FREE_SECTIONS = {"tracking"}


def _refuse_changes(loaded: LoadedConfig, checkpoint: checkpoints.Checkpoint, path: Path) -> None:
    trained = checkpoint.config
    if isinstance(trained.get("model"), dict) and "ensemble" not in trained["model"]:
        # a checkpoint from before model.ensemble: it trained one network, the default
        trained = {**trained, "model": {**trained["model"], "ensemble": 1}}
    changed = [
        key
        for key in differences(resolved_config(loaded), trained)
        if key not in _FREE_ON_RESUME and key.split(".")[0] not in _FREE_SECTIONS
    ]
    if changed:
        more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
        raise ConfigError(
            Problem(
                "differs from the config the run was trained with in "
                + ", ".join(changed[:8])
                + more,
                file=str(path),
                hint="resume with the run's own config, or train a new run",
            )
        )


def _same_data(run: runs.Run, prepared: Prepared) -> None:
    if prepared.table.sha256 != run.info.data.sha256:
        raise DataError(
            Problem(
                "the data file changed since the run began; resuming on other data would not "
                "continue the same training",
                file=str(prepared.table.path),
                hint="restore the original file, or train a new run on this one",
            )
        )
    for part, file in prepared.files.items():  # data.val_path, data.test_path
        same_split_file(run, file, part, "restore the original file, or train a new run")
    if prepared.preprocessor != run.preprocessor:
        raise RunDirError(
            Problem(
                f"{runs.PREPROCESSING} does not match the preprocessing fitted on the data",
                file=str(run.path / runs.PREPROCESSING),
                hint="the run was edited after it began; train a new run",
            )
        )
