"""`mlpkit train CONFIG`: check everything, then train into a new run directory.

Top to bottom: device -> prepare (read, check and split the table, fit preprocessing on the
training rows) -> build the trainer and its step (after the memory and step-count budget) ->
warnings (a constant target) -> open the trackers -> the layer table ->
create the run directory -> under its lock, the first files (config.yaml, summary.txt,
preprocessing.json) -> fit_run (fit.py). Everything that can be checked is checked before the
run directory exists, so a rejected input leaves runs/ as it was.
"""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

import torch

import mlpkit
from mlpkit.config.load import LoadedConfig
from mlpkit.data.table import Table
from mlpkit.errors import ConfigError, MlpkitError, warn
from mlpkit.flows import distributed
from mlpkit.flows.common import (
    resolve_device,
    resolved_config,
    training_info,
)
from mlpkit.flows.fit import Job, Listener, Start, TrainResult, fit_run
from mlpkit.report import tracking
from mlpkit.report.summary import render_text, summarize_network
from mlpkit.rundir import crossval, lock, runs
from mlpkit.train import ensemble
from mlpkit.train.build import Engine, build_trainer, make_step
from mlpkit.train.distributed import Group, process_batch
from mlpkit.train.prepare import Prepared, prepare


def train(
    loaded: LoadedConfig,
    runs_dir: Path,
    device_name: str | None = None,
    listener: Listener | None = None,
    place: Path | None = None,
    why_not_stacked: str | None = None,
    group: Group | None = None,
) -> TrainResult:
    """Train the config into a new run directory under `runs_dir` and write every file of it.

    `place`, when given, is the run directory to make instead (a cross-validation's fold-i);
    it must not exist yet. `runs_dir` still holds the default MLflow store. `why_not_stacked`:
    a member of --seeds or --folds trained alone, and why (run.json says it). `group`: under
    torchrun this is rank 0, which announces the config to the other ranks
    (flows/distributed.py), trains its share and alone writes the run.

    Raises:
        MlpkitError: any problem with the config, data or device (before the run exists), or
            divergence, interruption and environment failures during training (the run is
            marked as such, with a checkpoint to resume from).
    """
    device = resolve_device(loaded, device_name)
    if group is not None:
        device = group.device(device)
        refuse_ensemble(loaded)
        process_batch(loaded, group.world)  # a global batch the processes can share
        distributed.announce(group, distributed.Plan(loaded))
    config = resolved_config(loaded)
    prepared = prepare(loaded)
    if group is not None:
        distributed.check_data(group, prepared, device)
    built = build_trainer(prepared, device)
    # before make_step, which gives the optimizer state (the stacked engine starts without)
    together = prepared.config.model.ensemble > 1 and ensemble.stacks(prepared, built)
    step, trainer = make_step(built, group)
    warn(prepared.warnings)
    trackers = tracking.open_tracking(loaded, config, runs_dir)
    summary = summarize_network(prepared.config, prepared.preprocessor)
    spread = None if group is None else distributed.distributed_info(group, prepared, device)
    if listener is not None:
        listener.started(Start(prepared, device, summary, None, together, spread))
    if place is None:
        run_dir = runs.create_run_dir(runs_dir, prepared.config.name)
    else:
        run_dir = crossval.create_fold_dir(place)
    fitting = False
    try:
        with lock.hold(run_dir):  # one hold from the first file to the last
            runs.write_yaml(run_dir / runs.CONFIG, config)
            runs.write_bytes(run_dir / runs.SUMMARY, render_text(summary).encode())
            preprocessing = prepared.preprocessor.model_dump(mode="json")
            runs.write_json(run_dir / runs.PREPROCESSING, preprocessing)
            info = run_info(prepared, device, trainer.engine, why_not_stacked, spread=spread)
            job = Job(run_dir, prepared, trainer, step, device, config, info, trackers, group=group)
            fitting = True
            return fit_run(job, listener)
    except MlpkitError:
        if not fitting:  # not a run yet: leave nothing behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def refuse_ensemble(loaded: LoadedConfig) -> None:
    """torchrun trains one network over its processes; an ensemble's members train together
    on one process instead (train/ensemble.py).

    Raises:
        ConfigError: model.ensemble is over 1.
    """
    if loaded.config.model.ensemble > 1:
        raise ConfigError(
            loaded.problem(
                ("model", "ensemble"),
                "an ensemble trains its members stacked on one process, not under torchrun",
                "train it without torchrun, or set model.ensemble: 1",
            )
        )


def split_file_info(file: Table | None) -> runs.SplitFileInfo | None:
    """run.json's record of a part's own file, which eval and resume check it against."""
    if file is None:
        return None
    return runs.SplitFileInfo(path=str(file.path), sha256=file.sha256, rows=file.n_rows)


def run_info(
    prepared: Prepared,
    device: torch.device,
    engine: Engine,
    why_not_stacked: str | None = None,
    members: int | None = None,
    spread: runs.DistributedInfo | None = None,
) -> runs.RunInfo:
    """run.json as a new run begins: status running, the data file, the versions, the engine
    (stacked, with `members`, for a member of a stacked group; `spread` over a torchrun
    group)."""
    return runs.RunInfo(
        name=prepared.config.name,
        status="running",
        seed=prepared.config.seed,
        device=str(device),
        data=runs.DataInfo(
            path=str(prepared.table.path),
            sha256=prepared.table.sha256,
            rows=prepared.data_rows,
            dropped_rows=prepared.table.dropped,
            filled_cells=prepared.filled,
            val_file=split_file_info(prepared.files.get("val")),
            test_file=split_file_info(prepared.files.get("test")),
        ),
        versions={
            "mlpkit": mlpkit.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        started=runs.now(),
        training=training_info(
            engine, members=members, why_not_stacked=why_not_stacked, distributed=spread
        ),
    )
