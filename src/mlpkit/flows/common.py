"""What the flows share: the device, a run's config and network rebuilt from its directory,
the rows a run was trained on found again, and the resolved config as a run records it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlpkit.config.load import DATA_FILE_KEYS, LoadedConfig, load_config
from mlpkit.data import filestream
from mlpkit.data.blocks import load_table
from mlpkit.data.splitfiles import read_split_file
from mlpkit.data.table import Split, Table
from mlpkit.errors import DataError, DeviceError, Problem, RunDirError
from mlpkit.report import tracking
from mlpkit.rundir import runs
from mlpkit.train import budget
from mlpkit.train.build import Engine, network
from mlpkit.train.loop import Position
from mlpkit.train.model import non_finite
from mlpkit.train.prepare import split_table, synthetic_table
from mlpkit.train.tasks import Task, make_task


def resolve_device(loaded: LoadedConfig, override: str | None = None) -> torch.device:
    """The torch device for training.device (or --device): auto picks CUDA when there is one.

    Raises:
        DeviceError: CUDA was asked for and is not available.
    """
    wanted = override if override is not None else loaded.config.training.device
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if wanted == "cuda" and not torch.cuda.is_available():
        problem = (
            Problem(
                "CUDA is not available on this machine", where="--device", hint="use --device cpu"
            )
            if override
            else loaded.problem(
                ("training", "device"), "CUDA is not available on this machine", "use cpu or auto"
            )
        )
        raise DeviceError(problem)
    if wanted not in ("cpu", "cuda"):
        raise DeviceError(
            Problem(
                f"unknown device '{wanted}'", where="--device", hint="expected auto, cpu or cuda"
            )
        )
    return torch.device(wanted)


def resolved_config(loaded: LoadedConfig) -> dict[str, Any]:
    """The config with every default filled in and data's file paths absolute, as written to
    a run."""
    resolved = loaded.config.model_dump(mode="json")
    for key in DATA_FILE_KEYS:
        path = loaded.file_path(key)
        if path is not None:
            resolved["data"][key] = str(path)
    uri = loaded.config.tracking.mlflow.uri
    if uri is not None:  # a relative store path, like data.path, is read from the config's folder
        resolved["tracking"]["mlflow"]["uri"] = tracking.absolute_uri(uri, loaded.source.parent)
    return resolved


def training_info(
    engine: Engine,
    position: Position | None = None,
    *,
    members: int | None = None,
    why_not_stacked: str | None = None,
    distributed: runs.DistributedInfo | None = None,
) -> runs.TrainingInfo:
    """run.json's `training`: the engine (stacked with `members`), and once trained, the
    steps and seconds it took."""
    done: dict[str, Any] = {}
    if position is not None:
        seconds = sum(record["seconds"] for record in position.history)
        done = {"steps": position.steps, "seconds": seconds}
    if members is not None:
        return runs.TrainingInfo.model_validate(
            {"engine": "stacked", "threads": engine.threads, "members": members} | done
        )
    return runs.TrainingInfo.model_validate(
        {
            "engine": engine.name,
            "threads": engine.threads,
            "why_not_direct": engine.why_not_direct,
            "why_not_stacked": why_not_stacked,
            "distributed": distributed,
        }
        | done
    )


def load_run_config(run: runs.Run) -> LoadedConfig:
    """The run's config.yaml, checked against the preprocessing.json written beside it.

    Raises:
        ConfigError: config.yaml is not a valid config.
        RunDirError: the two files describe different features or targets.
    """
    loaded = load_config(run.config_path)
    data, state = loaded.config.data, run.preprocessor
    expected = [
        (
            name,
            "categorical"
            if name in data.categorical
            else "date"
            if name in data.dates
            else "numeric",
        )
        for name in data.features
    ]
    found = [(feature.name, feature.kind) for feature in state.features]
    if found != expected or state.target.name != data.target:
        raise RunDirError(
            Problem(
                f"{runs.PREPROCESSING} does not match {runs.CONFIG} "
                "(features, kinds or target differ)",
                file=str(run.path),
                hint="the run was edited after training; train it again",
            )
        )
    return loaded


def rebuild(run: runs.Run, device_name: str) -> tuple[LoadedConfig, Task, nn.Module]:
    """A run's config, task and trained network, from its directory alone.

    Raises:
        RunDirError: the run's files do not fit together, or its weights are not finite;
            ConfigError: its network would not fit in memory; DeviceError: no such device.
    """
    loaded = load_run_config(run)
    device = resolve_device(loaded, device_name)
    task = make_task(loaded.config, run.preprocessor.target, None)
    budget.check_network(loaded, run.preprocessor, device)
    model = network(loaded.config, run.preprocessor, task, device)
    run.load_weights(model)
    refuse_non_finite(model.state_dict(), run.path / runs.WEIGHTS)
    return loaded, task, model


def refuse_non_finite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Weights with NaN or infinite values would only give NaN or infinite predictions.

    Raises:
        RunDirError: a tensor holds a non-finite value (the first such tensor named).
    """
    bad = non_finite(tensors)
    if bad is not None:
        name, count = bad
        raise RunDirError(
            Problem(
                f"tensor '{name}' holds {count:,} non-finite values (NaN or infinite)",
                file=str(path),
                hint="the weights are damaged; train the run again",
            )
        )


def refuse_non_finite_outputs(
    outputs: torch.Tensor, lines: np.ndarray, unit: str, path: Path | str
) -> None:
    """Refuse to score or write outputs that are NaN or infinite, naming the first row's line
    in the input file. The weights are finite (checked when loaded), so it is the row's
    values, far outside what the network was trained on, that overflow float32.

    Raises:
        DataError: some row's output (any of its columns) is not finite.
    """
    finite = torch.isfinite(outputs.reshape(outputs.shape[0], -1)).all(dim=1).cpu().numpy()
    if finite.all():
        return
    bad = np.flatnonzero(~finite)
    value = outputs.reshape(outputs.shape[0], -1)[int(bad[0])].tolist()
    more = f", and {len(bad) - 1:,} more rows" if len(bad) > 1 else ""
    raise DataError(
        Problem(
            f"the network's output for this row is not finite ({_shown(value)}){more}",
            file=str(path),
            where=f"{unit} {int(lines[bad[0]])}",
            hint="its values lie far outside the training data's; check them",
        )
    )


def _shown(values: list[float]) -> str:
    shown = ", ".join(str(v) for v in values[:3])
    return shown + (", ..." if len(values) > 3 else "")


def trained_rows(run: runs.Run, loaded: LoadedConfig, hint: str) -> tuple[Table, Split]:
    """The rows the run was split from, found again, with their split: a synthetic source's
    drawn again from the seed, a streamed file's samples by a new scan, a file read again.

    Raises:
        DataError: the data file changed since the run was trained (`hint`: what to do).
    """
    if loaded.config.data.source is not None:
        table, split, _ = synthetic_table(loaded)
        return table, split
    if loaded.config.data.test_path is not None:  # the test rows are that file's, all of them
        test = read_split_file(loaded, "test")
        same_split_file(run, test, "test", hint)
        nothing = np.arange(0)
        return test, Split(train=nothing, val=nothing, test=np.arange(test.n_rows))
    if loaded.config.data.stream:  # the scan finds the same samples again
        found = filestream.scan(loaded)
        table, split = found.table, found.split
    else:
        table = load_table(loaded.data_path, loaded.config.data, loaded)
        split = split_table(loaded, table)[0]
    if table.sha256 != run.info.data.sha256:
        raise DataError(
            Problem(
                "the data file changed since the run was trained",
                file=str(loaded.data_path),
                hint=hint,
            )
        )
    return table, split


def same_split_file(run: runs.Run, file: Table, part: str, hint: str) -> None:
    """A part's own file is the one the run was trained with (its sha256 in run.json).

    Raises:
        DataError: it changed since (or the run has no record of it).
    """
    recorded: runs.SplitFileInfo | None = getattr(run.info.data, f"{part}_file")
    if recorded is None or recorded.sha256 != file.sha256:
        raise DataError(
            Problem(
                f"the {part} file (data.{part}_path) changed since the run was trained",
                file=str(file.path),
                hint=hint,
            )
        )


def csv_rows(columns: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Columns of equal length as CSV rows of plain Python values."""
    names = list(columns)
    return [
        dict(zip(names, values, strict=True))
        for values in zip(*(columns[n].tolist() for n in names), strict=True)
    ]
