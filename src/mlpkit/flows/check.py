"""`mlpkit check CONFIG` and `mlpkit summary CONFIG|RUN`: what train would check, and the
layer table, without training.

check asks torch only what torch alone can answer. For most configs, a data file on the CPU
(device cpu or auto: train's budget on a GPU is checked when it trains there), engine auto or
autograd and no scheduler, every check train makes before training runs here without it: the
table read and checked, the split, preprocessing fitted on the training rows, the task (all in
prepare), the memory and step-count budget and the layer table, both computed from shapes
(train.budget, report.summary); the optimizer's options are the config schema's, bounded as
torch bounds them, and a dense stack builds whatever its shapes. The rest (device cuda, a
synthetic source or a streamed file, engine direct, a scheduler) builds the trainer as train
does, importing torch (about a second): whether CUDA is there, whether the direct step covers
the model, whether torch's scheduler takes its settings are torch's to say.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlpkit.config.load import LoadedConfig
from mlpkit.config.schema import Config
from mlpkit.errors import warn
from mlpkit.report import tracking
from mlpkit.report.summary import Summary, summarize_network
from mlpkit.train import budget
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
    if needs_torch(loaded.config):
        prepared = _check_with_torch(loaded)
    else:
        tracking.check(loaded)
        prepared = prepare(loaded)
        budget.check(prepared)  # what build_trainer checks first, before it builds anything
    warn(prepared.warnings)
    return Checked(prepared, summarize_network(prepared.config, prepared.preprocessor))


def needs_torch(config: Config) -> bool:
    """Whether checking the config asks torch something the shapes cannot answer."""
    data, training = config.data, config.training
    return (
        training.device == "cuda"
        or data.source is not None
        or data.stream
        or training.engine == "direct"
        or training.scheduler is not None
    )


def _check_with_torch(loaded: LoadedConfig) -> Prepared:
    """train's own checks: the device, the trackers, prepare, then the trainer built."""
    import torch

    from mlpkit.flows.common import resolve_device
    from mlpkit.train.build import build_trainer

    resolve_device(loaded)
    tracking.check(loaded)
    prepared = prepare(loaded)
    build_trainer(prepared, torch.device("cpu"))
    return prepared


def summary_of_config(loaded: LoadedConfig) -> Summary:
    """The layer table of a config: the data is read only for the input width (one-hot
    columns depend on the categories seen in training)."""
    prepared = prepare(loaded)
    return summarize_network(prepared.config, prepared.preprocessor)


def summary_of_run(run_dir: Path) -> Summary:
    """The layer table of a run, from its config.yaml and preprocessing.json; no data."""
    from mlpkit.flows.common import load_run_config
    from mlpkit.rundir import runs

    run = runs.open_run(run_dir, require_complete=False)
    return summarize_network(load_run_config(run).config, run.preprocessor)
