"""From a validated config to everything training needs, with every check that needs the data.

`prepare` reads (or, for a synthetic source, draws) the table, checks its columns and classes
against the config, splits the rows (stratified by class for classification), fits
preprocessing on the training rows and makes the task. Nothing here writes anything: a problem
found here leaves runs/ untouched. torch is imported only where tensors are made (and for a
synthetic source or a streamed file): `mlpkit check` prepares a table without it. (A little
past ~500 lines: the synthetic source's and the streamed file's preparation sit beside the
table's, as the three ways to one Prepared, and their streams beside them, each rank of a
torchrun group's own.)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlpkit.config import registries
from mlpkit.config.load import LoadedConfig
from mlpkit.config.model_rules import output_layer
from mlpkit.config.schema import Config
from mlpkit.config.split_rules import ignored_fractions
from mlpkit.data.blocks import load_table
from mlpkit.data.fitting import TrainingRows
from mlpkit.data.preprocessing import (
    CategoricalFeature,
    NumericFeature,
    Preprocessor,
    TargetScale,
    canonical_label,
    sorted_labels,
)
from mlpkit.data.splitfiles import joined, read_split_files, split_training_file
from mlpkit.data.table import Split, Table, check_split
from mlpkit.errors import ConfigError, DataError, Problem
from mlpkit.reading import memory_bound, size_text
from mlpkit.train.tasks import Task, make_task

if TYPE_CHECKING:
    import torch

    from mlpkit.data.filestream import FileScan
    from mlpkit.train.distributed import Group
    from mlpkit.train.loop import BatchStream, Tensors


@dataclass(frozen=True)
class Prepared:
    """A checked config with its table, split and fitted preprocessing: ready to train."""

    loaded: LoadedConfig
    table: Table
    split: Split
    preprocessor: Preprocessor
    task: Task
    scan: FileScan | None = None  # a streamed file: its blocks; `table` holds samples of it
    warnings: tuple[Problem, ...] = ()  # what the data allows but the user should know
    filled: dict[str, int] = field(default_factory=dict)  # missing cells filled per column
    # parts read from their own files (data.val_path, data.test_path); their rows are also
    # in `table`, after data.path's, and `split` points at them there
    files: dict[str, Table] = field(default_factory=dict)

    @property
    def data_note(self) -> str:
        """The rows left out and the cells filled, for the first line ("" when none)."""
        notes = []
        if self.table.dropped:
            notes.append(f"{self.table.dropped:,} dropped for a missing target")
        filled = sum(self.filled.values())
        if filled:
            cells = "1 missing cell" if filled == 1 else f"{filled:,} missing cells"
            columns = "1 column" if len(self.filled) == 1 else f"{len(self.filled)} columns"
            notes.append(f"{cells} filled in {columns}")
        notes += [f"{part}: {t.n_rows} rows of {t.path.name}" for part, t in self.files.items()]
        return f" ({'; '.join(notes)})" if notes else ""

    def source_of(self, part: str) -> Table:
        """The table a part's rows came from (its file's path and unit): its own file, or
        data.path's (synthetic or streamed: the samples)."""
        return self.files.get(part, self.table)

    @property
    def config(self) -> Config:
        return self.loaded.config

    @property
    def streams(self) -> bool:
        """Training reads batches from a stream (a synthetic source or a streamed file)."""
        return self.config.data.source is not None or self.scan is not None

    @property
    def data_rows(self) -> int:
        """Rows of data.path (split files not counted)."""
        if self.scan is not None:
            return self.scan.rows
        return self.table.n_rows - sum(file.n_rows for file in self.files.values())

    @property
    def split_counts(self) -> dict[str, int]:
        """Rows of train, val and test (a streamed file's whole parts, not its samples)."""
        return self.split.counts() if self.scan is None else self.scan.counts

    def describe_split(self) -> str:
        counts = self.split_counts
        text = f"{counts['train']} train / {counts['val']} val / {counts['test']} test"
        if self.scan is not None:
            text += f" (streamed; val and test scored on up to {self.config.data.eval_rows} rows)"
        return text

    def tensors(self, rows: np.ndarray, device: torch.device) -> Tensors:
        """The rows' model inputs and targets, on `device`."""
        return make_tensors(self.table.frame.iloc[rows], self.preprocessor, self.task, device)


def make_tensors(
    frame: Any, preprocessor: Preprocessor, task: Task, device: torch.device
) -> Tensors:
    """Model inputs and the task's targets for `frame`'s rows, on `device`."""
    import torch

    from mlpkit.train.loop import Tensors

    x = torch.from_numpy(preprocessor.transform(frame))  # [rows, inputs]
    y = task.targets(frame[preprocessor.target.name].to_numpy())
    return Tensors(x.to(device), y.to(device))


def prepare(loaded: LoadedConfig) -> Prepared:
    """Read, check and split the data and fit preprocessing: every check short of training.

    Raises:
        DataError: the table, the split or the output layer does not fit the config.
    """
    cfg = loaded.config
    if cfg.data.source is not None:
        table, split, classes = synthetic_table(loaded)
        return _prepared(loaded, table, split, classes)
    if cfg.data.stream:
        return _streamed(loaded)
    table = load_table(loaded.data_path, cfg.data, loaded)
    split, classes = split_table(loaded, table)
    files = read_split_files(loaded, classes)
    if not files:
        return _prepared(loaded, table, split, classes)
    prepared = _prepared(loaded, *joined(table, split, files), classes)
    return replace(prepared, files=files, warnings=prepared.warnings + ignored_fractions(loaded))


def split_table(loaded: LoadedConfig, table: Table) -> tuple[Split, list[str] | None]:
    """The seeded split of a file's rows (stratified by class for classification) and the
    classes, checked against the task and the output layer; eval derives the same split again.
    A part from its own file (data.val_path, data.test_path) takes none of these rows.

    Raises:
        DataError: the target's classes do not fit the task or the output layer.
    """
    cfg = loaded.config
    if cfg.data.task == "regression":
        return split_training_file(table.n_rows, cfg.data, cfg.seed), None
    target = table.frame[cfg.data.target].to_numpy()
    labels = np.asarray([canonical_label(v) for v in target])  # 1 and 1.0: one class
    classes = sorted_labels(labels)
    _check_classes(loaded, table, classes)
    return split_training_file(table.n_rows, cfg.data, cfg.seed, labels), classes


def _prepared(
    loaded: LoadedConfig, table: Table, split: Split, classes: list[str] | None
) -> Prepared:
    problems = check_split(split.counts(), loaded)
    if problems:
        raise DataError(problems)
    training_rows = TrainingRows(loaded.config.data, classification=classes is not None)
    training_rows.add(table.frame.iloc[split.train])
    prepared = prepared_from(loaded, table, split, classes, training_rows)
    return replace(prepared, filled=_missing_cells(table, prepared.preprocessor))


def _missing_cells(table: Table, preprocessor: Preprocessor) -> dict[str, int]:
    """Missing cells per feature column that has any, in every row of the table."""
    counts = {}
    for feature in preprocessor.features:
        column = table.frame[feature.name]
        missing = column == "" if isinstance(feature, CategoricalFeature) else column.isna()
        if missing.any():
            counts[feature.name] = int(missing.sum())
    return counts


def _streamed(loaded: LoadedConfig) -> Prepared:
    """A streamed file: one scan fits preprocessing and keeps the evaluation samples."""
    from mlpkit.data import filestream  # torch's DataLoader: only for a streamed file

    found = filestream.scan(loaded)
    if found.classes is not None:
        _check_classes(loaded, found.table, found.classes)
    problems = check_split(found.counts, loaded)
    if problems:
        raise DataError(problems)
    prepared = prepared_from(loaded, found.table, found.split, found.classes, found.training_rows)
    return replace(prepared, scan=found)


def prepared_from(
    loaded: LoadedConfig,
    table: Table,
    split: Split,
    classes: list[str] | None,
    training_rows: TrainingRows,
) -> Prepared:
    """Fit preprocessing and the task from what the training rows showed, and check the head.

    `table` holds the rows to validate, test and fit baselines on; for a streamed file the
    training rows themselves were seen chunk by chunk and are not all in it.
    """
    counts = None
    if classes is not None:
        _check_training_classes(loaded, table, classes, set(training_rows.label_counts))
        counts = training_rows.class_counts(classes)
    preprocessor = training_rows.preprocessor(classes)
    task = make_task(loaded.config, preprocessor.target, counts)
    warnings = _constant_target(loaded, table, training_rows) if classes is None else ()
    filled = {name: count for name, count in training_rows.missing.items() if count}
    prepared = Prepared(loaded, table, split, preprocessor, task, warnings=warnings, filled=filled)
    problems = _head_reaches_target(prepared, training_rows.target_range)
    if problems:
        raise DataError(problems)
    return prepared


def _constant_target(
    loaded: LoadedConfig, table: Table, training_rows: TrainingRows
) -> tuple[Problem, ...]:
    """A regression target with one value in every training row: training works, but there
    is nothing to learn but that value, and R2 is undefined (0 or 1 by sklearn's convention)."""
    low, high = training_rows.target_range
    if low != high:
        return ()
    target = loaded.config.data.target
    return (
        Problem(
            f"the target has a single value ({low:g}) in all {training_rows.rows:,} training "
            "rows: the network can only learn that value, and R2 is undefined (reported as 1 "
            "if predicted exactly, else 0)",
            file=str(table.path),
            where=f"column '{target}'",
            hint="check data.target",
        ),
    )


SAMPLE_ROWS = 4096  # synthetic: rows drawn to fit preprocessing and the baselines


def synthetic_table(loaded: LoadedConfig) -> tuple[Table, Split, list[str] | None]:
    """A synthetic source's fixed rows: a sample to fit preprocessing and baselines on (the
    split's train part; training itself reads the endless stream), then validation and test.

    Raises:
        DataError: the config names columns the source does not make, or a task it cannot serve.
    """
    from mlpkit.data import synthetic  # torch: only for a synthetic source

    cfg = loaded.config
    source = cfg.data.source
    assert source is not None
    made = [*synthetic.columns(source), synthetic.TARGET]
    missing = [c for c in [*cfg.data.features, cfg.data.target] if c not in made]
    classes = synthetic.classes(source)
    problems = []
    if missing:
        problems.append(
            loaded.problem(
                ("data", "features"),
                f"the {source.name} source makes no column {', '.join(missing)}",
                "it makes " + ", ".join(made),
            )
        )
    if cfg.data.categorical:
        problems.append(
            loaded.problem(("data", "categorical"), "synthetic sources make numeric columns only")
        )
    if (classes is None) != (cfg.data.task == "regression"):
        kind = "class labels" if classes else "numbers"
        problems.append(
            loaded.problem(
                ("data", "task"),
                f"the {source.name} source's target has {kind}, not a {cfg.data.task} target",
                "choose the loss (and task) to match the source",
            )
        )
    if problems:
        raise DataError(problems)
    n_eval = cfg.data.eval_rows
    _refuse_rows_over_memory(loaded, SAMPLE_ROWS + 2 * n_eval, len(made))
    frame = synthetic.table(source, SAMPLE_ROWS + 2 * n_eval, cfg.seed + 1)
    spec = json.dumps([source.model_dump(), n_eval, cfg.seed], sort_keys=True)
    table = Table(
        frame,
        np.arange(1, len(frame) + 1),
        Path(f"synthetic:{source.name}"),
        hashlib.sha256(spec.encode()).hexdigest(),
    )
    rows = np.arange(len(frame))
    split = Split(
        rows[:SAMPLE_ROWS], rows[SAMPLE_ROWS : SAMPLE_ROWS + n_eval], rows[SAMPLE_ROWS + n_eval :]
    )
    return table, split, classes


# Bytes a drawn row costs while it is drawn, framed, preprocessed and made a tensor: float64
# columns in a few copies at once (measured ~5 copies; 8 leaves room).
SYNTHETIC_ROW_COPIES = 8


def _refuse_rows_over_memory(loaded: LoadedConfig, rows: int, columns: int) -> None:
    """A synthetic source's validation and test rows are drawn and held whole: refuse a
    data.eval_rows whose rows cannot fit in memory, before drawing them.

    Raises:
        ConfigError: over the memory available (or absurd where that is unknown).
    """
    needed = rows * columns * 8 * SYNTHETIC_ROW_COPIES
    limit = memory_bound(1.0)
    if needed > limit:
        problem = (
            f"{rows:,} drawn rows of {columns} columns need about {size_text(needed)} of memory "
            f"and {size_text(limit)} is available"
        )
        hint = "validation and test each draw data.eval_rows rows: use fewer"
        raise ConfigError(loaded.problem(("data", "eval_rows"), problem, hint))


def training_stream(
    prepared: Prepared, device: torch.device, first_epoch: int = 1, group: Group | None = None
) -> BatchStream:
    """Training batches from the synthetic source or the streamed file, preprocessed on the
    fly; each epoch's batches depend on the seed and the epoch only, so a resumed run can begin
    at `first_epoch`. Under torchrun (`group`) each rank reads its own blocks of the file, or
    draws its own stream, in batches of its share.

    Raises:
        ConfigError: a streamed file of fewer blocks than the group has processes.
    """
    import torch

    from mlpkit.data import filestream, synthetic
    from mlpkit.train.distributed import process_batch
    from mlpkit.train.loop import BatchStream

    cfg = prepared.config
    rank, world = (0, 1) if group is None else (group.rank, group.world)
    batch_size = process_batch(prepared.loaded, world)
    if prepared.scan is not None:
        refuse_fewer_blocks(prepared, world)
        dataset = filestream.TrainingBlocks(
            prepared.scan,
            prepared.preprocessor,
            prepared.task.targets,
            cfg.data.split,
            cfg.seed,
            batch_size,
            cfg.training.shuffle,
            skip_single_row=_config_has_batch_norm(cfg),
            epoch=first_epoch - 1,  # the dataset counts the epochs it has begun
            rank=rank,
            world=world,
        )
        return BatchStream(filestream.epoch_batches(dataset, cfg.data.workers, device))
    source = cfg.data.source
    assert source is not None and cfg.training.iterations_per_epoch is not None
    made = synthetic.columns(source)
    features = [f for f in prepared.preprocessor.features if isinstance(f, NumericFeature)]
    positions = torch.tensor([made.index(f.name) for f in features])
    mean = torch.tensor([f.mean for f in features], dtype=torch.float32)
    std = torch.tensor([f.std for f in features], dtype=torch.float32)
    steps = cfg.training.iterations_per_epoch
    labels = synthetic.classes(source)
    # Class targets as the task encodes each label, looked up by the drawn class index: the
    # same values as encoding every batch's labels, without the per-batch text handling.
    encoded = None if labels is None else prepared.task.targets(np.asarray(labels))

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        seed = synthetic.epoch_seed(cfg.seed, epoch, rank)
        for x, y in islice(synthetic.batches(source, batch_size, seed), steps):
            xb = (x.index_select(1, positions) - mean) / std  # [batch, inputs]
            yb = prepared.task.targets(y.numpy()) if encoded is None else encoded[y]
            yield xb.to(device), yb.to(device)

    return BatchStream(batches)


def refuse_fewer_blocks(prepared: Prepared, processes: int) -> None:
    """A streamed file's blocks are shared out whole: every process needs one at least.

    Raises:
        ConfigError: the file has fewer blocks than processes.
    """
    if prepared.scan is not None and len(prepared.scan.blocks) < processes:
        raise ConfigError(
            prepared.loaded.problem(
                ("data", "chunk_rows"),
                f"makes {len(prepared.scan.blocks)} blocks of the file, fewer than the "
                f"{processes} processes, which read a block each at least",
                "lower data.chunk_rows, or train on fewer processes",
            )
        )


def _config_has_batch_norm(config: Config) -> bool:
    branches = [spec.layers for spec in (config.model.inputs or {}).values()]
    layers = [layer for group in [config.model.layers, *branches] for layer in group]
    return any(layer.type == "batch_norm" for layer in layers)


def _check_training_classes(
    loaded: LoadedConfig, table: Table, classes: list[str], seen: set[str]
) -> None:
    """Every class has training rows, and class_weights name only real classes."""
    absent = [label for label in classes if label not in seen]
    if absent:
        raise DataError(
            Problem(
                f"class {', '.join(absent)} has no rows in the training split",
                file=str(table.path),
                where=f"column '{loaded.config.data.target}'",
                hint="add rows of it, raise data.split.train, or drop it",
            )
        )
    weights = loaded.config.training.class_weights
    keys = [] if weights is None or weights == "balanced" else list(weights)
    unknown = [key for key in keys if canonical_label(key) not in classes]
    if unknown:
        raise DataError(
            loaded.problem(
                ("training", "class_weights"),
                f"{', '.join(unknown)} is not a class",
                "the classes are " + ", ".join(classes),
            )
        )


def _check_classes(loaded: LoadedConfig, table: Table, classes: list[str]) -> None:
    """A classification target has the classes its task and output layer expect."""
    task, target = loaded.config.data.task, loaded.config.data.target
    shown = ", ".join(classes[:6]) + (", ..." if len(classes) > 6 else "")
    where = f"column '{target}'"
    if len(classes) < 2:
        raise DataError(
            Problem(
                f"a single class ({shown}); classification needs two or more",
                file=str(table.path),
                where=where,
            )
        )
    if task == "binary" and len(classes) != 2:
        raise DataError(
            Problem(
                f"{len(classes)} classes ({shown}); a binary task needs 2",
                file=str(table.path),
                where=where,
                hint="set data.task: multiclass",
            )
        )
    found = output_layer(loaded.config.model.layers)
    assert found is not None  # load_config refuses a model without a dense layer
    index, head = found
    if task == "multiclass" and head.units != len(classes):
        raise DataError(
            loaded.problem(
                ("model", "layers", index, "units"),
                f"the output layer has {head.units} units but '{target}' has {len(classes)} "
                f"classes ({shown})",
                f"set units: {len(classes)}",
            )
        )


def _head_reaches_target(prepared: Prepared, target_range: tuple[float, float]) -> list[Problem]:
    """An output activation with a bounded range must be able to produce the training targets
    (`target_range`: their lowest and highest value)."""
    found = output_layer(prepared.config.model.layers)
    assert found is not None  # load_config refuses a model without a dense layer
    index, head = found
    scale = prepared.preprocessor.target
    if head.activation not in registries.ACTIVATION_RANGES or not isinstance(scale, TargetScale):
        return []
    low, high = registries.ACTIVATION_RANGES[head.activation]
    target = prepared.config.data.target
    scaled = scale.scale(np.asarray(target_range, dtype=np.float64))  # monotonic: min, max
    if low <= scaled.min() and scaled.max() <= high:
        return []
    kind = "scaled target" if prepared.config.data.scale_target else "target"
    return [
        prepared.loaded.problem(
            ("model", "layers", index, "activation"),
            f"'{head.activation}' outputs lie in [{low:g}, {high:g}] but the {kind} '{target}' "
            f"ranges over [{scaled.min():.4g}, {scaled.max():.4g}]",
            "use activation: linear on the output",
        )
    ]
