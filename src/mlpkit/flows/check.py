"""`mlpkit check CONFIG` and `mlpkit summary CONFIG|RUN`: what train would check, and the
layer table, without training."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from mlpkit.config.load import LoadedConfig
from mlpkit.errors import warn
from mlpkit.flows.common import load_run_config, resolve_device
from mlpkit.report import tracking
from mlpkit.report.summary import Summary, summarize_network
from mlpkit.rundir import runs
from mlpkit.train.build import build_trainer
from mlpkit.train.prepare import Prepared, prepare


@dataclass(frozen=True)
class Checked:
    """A config that passed every check train runs before training, with its layer table."""

    prepared: Prepared
    summary: Summary


def check(loaded: LoadedConfig) -> Checked:
    """Run every check that `train` runs before training, and nothing else; print the
    warnings train would print.

    Raises:
        MlpkitError: the first problem found, as train would report it.
    """
    resolve_device(loaded)
    tracking.check(loaded)
    prepared = prepare(loaded)
    build_trainer(prepared, torch.device("cpu"))
    warn(prepared.warnings)
    return Checked(prepared, summarize_network(prepared.config, prepared.preprocessor))


def summary_of_config(loaded: LoadedConfig) -> Summary:
    """The layer table of a config: the data is read only for the input width (one-hot
    columns depend on the categories seen in training)."""
    prepared = prepare(loaded)
    return summarize_network(prepared.config, prepared.preprocessor)


def summary_of_run(run_dir: Path) -> Summary:
    """The layer table of a run, from its config.yaml and preprocessing.json; no data."""
    run = runs.open_run(run_dir, require_complete=False)
    return summarize_network(load_run_config(run).config, run.preprocessor)
