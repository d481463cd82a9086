"""Data files larger than memory (data.stream: true): a scan, then epochs read block by block.

The scan reads every block once (blocks.py checks each cell as table.read_table would). It assigns
each row to train, val or test by a seeded hash of its values, so the assignment is the same on
every pass, in every worker and for any block size, and duplicate rows share a part. It adds the
training rows to TrainingRows (preprocessing statistics, class counts) and keeps bounded samples:
at most data.eval_rows rows of validation, of test, and of training (for the baselines). A
sample keeps the rows of smallest second hash (bottom-k): uniform over the file, and the same on
every scan, which is how `mlpkit eval` finds the test rows again.

Each epoch then reads the blocks again through an IterableDataset and a DataLoader with
data.workers processes: the blocks in a seeded random order, a worker taking every n-th one,
the training rows of a block shuffled, then cut into batches. Memory holds a few blocks, the
samples and the model; it does not grow with the number of rows.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mlpkit.config.load import LoadedConfig
from mlpkit.config.schema import SplitConfig
from mlpkit.data.blocks import Block, BlockRef, CsvBlocks, ParquetBlocks, open_blocks
from mlpkit.data.columns import no_rows_left
from mlpkit.data.fitting import TrainingRows
from mlpkit.data.preprocessing import Preprocessor, canonical_label, sorted_labels
from mlpkit.data.table import Split, Table
from mlpkit.errors import DataError, Problem

PARTS = ("train", "val", "test")
Batch = tuple[torch.Tensor, torch.Tensor]


def assign_parts(
    frame: pd.DataFrame, split: SplitConfig, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's part (0 train, 1 val, 2 test) and its sampling priority, both from a seeded
    64-bit hash of the row's values: a pure function of the row and the seed."""
    key = f"mlpkit{seed:010d}"  # pandas takes a 16-character key
    hashes = pd.util.hash_pandas_object(frame, index=False, hash_key=key).to_numpy()
    train_cut = np.uint64(min(int(split.train * 2.0**64), 2**64 - 1))
    val_cut = np.uint64(min(int((split.train + split.val) * 2.0**64), 2**64 - 1))
    part = np.where(hashes < train_cut, 0, np.where(hashes < val_cut, 1, 2)).astype(np.int8)
    return part, _mix(hashes)


def _mix(hashes: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a second hash, independent of the one that chose the part."""
    with np.errstate(over="ignore"):
        z = hashes ^ (hashes >> np.uint64(30))
        z = z * np.uint64(0xBF58476D1CE4E5B9)
        z = z ^ (z >> np.uint64(27))
        z = z * np.uint64(0x94D049BB133111EB)
        mixed: np.ndarray = z ^ (z >> np.uint64(31))
        return mixed


class _Sample:
    """At most `size` rows: those of smallest priority seen so far."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.frame: pd.DataFrame | None = None
        self.lines = np.empty(0, dtype=np.int64)
        self.priority = np.empty(0, dtype=np.uint64)

    def add(self, frame: pd.DataFrame, lines: np.ndarray, priority: np.ndarray) -> None:
        if self.frame is not None:
            frame = pd.concat([self.frame, frame], ignore_index=True)
        lines = np.concatenate([self.lines, lines])
        priority = np.concatenate([self.priority, priority])
        if len(priority) > self.size:
            keep = np.argpartition(priority, self.size - 1)[: self.size]
            frame, lines, priority = (
                frame.iloc[keep].reset_index(drop=True),
                lines[keep],
                priority[keep],
            )
        self.frame, self.lines, self.priority = frame, lines, priority

    def in_file_order(self) -> tuple[pd.DataFrame, np.ndarray]:
        frame = self.frame if self.frame is not None else pd.DataFrame()
        order = np.argsort(self.lines, kind="stable")
        return frame.iloc[order].reset_index(drop=True), self.lines[order]


@dataclass(frozen=True)
class FileScan:
    """What one pass over a streamed file learned."""

    reader: CsvBlocks | ParquetBlocks
    blocks: list[BlockRef]
    counts: dict[str, int]  # rows of each part in the whole file
    table: Table  # the samples: training (for baselines), then validation, then test rows
    split: Split  # positions of each sample in `table`
    classes: list[str] | None  # classification: every label in the file
    training_rows: TrainingRows
    block_train_rows: list[int]  # training rows of each block, in file order

    @property
    def rows(self) -> int:
        return sum(self.counts.values())


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def fixed_mmap_threshold() -> None:
    """Pin glibc's mmap threshold at its default, so block-sized buffers (pandas, pyarrow,
    torch) always come from mmap and go back to the system when freed. glibc otherwise raises
    the threshold after the first such free and serves later blocks from a heap that fragments
    and grows with the number of blocks read (measured: +30% peak memory over 10M rows).
    A process-wide allocator setting; elsewhere (no glibc) it does nothing."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 128 * 1024)


def scan(loaded: LoadedConfig) -> FileScan:
    """Read the whole file once, block by block.

    Raises:
        DataError: the file, a column or a cell is unusable, or it has no rows.
    """
    fixed_mmap_threshold()
    cfg = loaded.config
    classification = cfg.data.task in ("binary", "multiclass")
    reader = open_blocks(loaded.data_path, cfg.data, loaded)
    training_rows = TrainingRows(cfg.data, classification)
    samples = {part: _Sample(cfg.data.eval_rows) for part in PARTS}
    counts = dict.fromkeys(PARTS, 0)
    labels: set[str] = set()
    blocks: list[BlockRef] = []
    block_train_rows: list[int] = []
    dropped = 0
    for block in reader.scan():
        blocks.append(block.ref)
        dropped += block.dropped
        part, priority = assign_parts(block.frame, cfg.data.split, cfg.seed)
        for index, name in enumerate(PARTS):
            rows = part == index
            counts[name] += int(rows.sum())
            samples[name].add(block.frame[rows], block.lines[rows], priority[rows])
        training_rows.add(block.frame[part == 0])
        block_train_rows.append(int((part == 0).sum()))
        if classification:
            target = block.frame[cfg.data.target].unique()
            labels.update(canonical_label(value) for value in target)
    if sum(counts.values()) == 0 and dropped:
        raise no_rows_left(reader.path, cfg.data, dropped)
    if sum(counts.values()) == 0:
        raise DataError(Problem("the file has a header but no rows", file=str(reader.path)))
    table, split = _sample_table(reader, samples, dropped)
    classes = sorted_labels(np.asarray(sorted(labels))) if classification else None
    return FileScan(reader, blocks, counts, table, split, classes, training_rows, block_train_rows)


def _sample_table(
    reader: CsvBlocks | ParquetBlocks, samples: dict[str, _Sample], dropped: int
) -> tuple[Table, Split]:
    frames, lines, positions = [], [], []
    start = 0
    for part in PARTS:
        frame, found = samples[part].in_file_order()
        frames.append(frame)
        lines.append(found)
        positions.append(np.arange(start, start + len(frame)))
        start += len(frame)
    table = Table(
        pd.concat(frames, ignore_index=True),
        np.concatenate(lines),
        reader.path,
        reader.sha256,
        reader.unit,
        dropped,
    )
    return table, Split(*positions)


@dataclass
class TrainingBlocks(IterableDataset[Batch]):
    """Training batches from the file's blocks, one epoch per iter() (see the module's docstring).

    Each iter() is the next epoch, whether in this process or in a persistent DataLoader worker
    (each worker's copy is iterated once an epoch), so the epoch order is the same either way.
    """

    scan: FileScan
    preprocessor: Preprocessor
    # a block's target column -> the tensor the loss wants (the task's own encoding)
    targets: Callable[[np.ndarray], torch.Tensor]
    split: SplitConfig
    seed: int
    batch_size: int
    shuffle: bool
    skip_single_row: bool  # batch norm cannot train on a last batch of one row
    epoch: int = 0  # the last epoch begun
    # Under torchrun: this process's rank and the group's size; each rank reads every
    # world-th block of the epoch's order (its DataLoader workers share those).
    rank: int = 0
    world: int = 1
    _no_rows: Batch | None = field(default=None, init=False, repr=False)

    def __iter__(self) -> Iterator[Batch]:
        self.epoch += 1
        fixed_mmap_threshold()  # also in a worker started by spawn rather than fork
        return self._blocks(self.epoch)

    def _blocks(self, epoch: int) -> Iterator[Batch]:
        worker = get_worker_info()
        index, workers = (0, 1) if worker is None else (worker.id, worker.num_workers)
        blocks = self.rank_blocks(epoch, self.rank)
        for block_index in blocks[index::workers]:
            x, y = self._training_rows(self.scan.reader.read(self.scan.blocks[block_index]))
            if self.shuffle:
                rng = np.random.default_rng([self.seed, epoch, int(block_index)])
                order = torch.from_numpy(rng.permutation(len(x)))
                x, y = x[order], y[order]
            yield x, y

    def rank_blocks(self, epoch: int, rank: int) -> np.ndarray:
        """The blocks a rank reads in an epoch, in order: the epoch's seeded order of all
        blocks (the same on every rank), every world-th from the rank's own."""
        blocks = np.arange(len(self.scan.blocks))
        if self.shuffle:
            blocks = np.random.default_rng([self.seed, epoch]).permutation(blocks)
        return blocks[rank :: self.world]

    def steps(self, epoch: int) -> int:
        """The steps of an epoch: the most batches any rank's blocks give (one process: its
        batches), so every rank takes part in each step's all-reduce."""
        most = 0
        for rank in range(self.world):
            rows = sum(self.scan.block_train_rows[i] for i in self.rank_blocks(epoch, rank))
            left = rows % self.batch_size
            last = left > 1 or (left == 1 and not self.skip_single_row)
            most = max(most, rows // self.batch_size + last)
        return most

    def no_rows(self) -> Batch:
        """A batch of no rows, as this file's batches are shaped: a rank's step when its
        blocks have run out before the others'. Its shape is read from the first block once."""
        if self._no_rows is None:
            x, y = self._training_rows(self.scan.reader.read(self.scan.blocks[0]))
            self._no_rows = x[:0], y[:0]
        return self._no_rows

    def _training_rows(self, block: Block) -> Batch:
        part, _ = assign_parts(block.frame, self.split, self.seed)
        rows = block.frame[part == 0]
        x = torch.from_numpy(self.preprocessor.transform(rows))  # [rows, inputs]
        return x, self.targets(rows[self.preprocessor.target.name].to_numpy())


def epoch_batches(
    dataset: TrainingBlocks, workers: int, device: torch.device
) -> Callable[[int], Iterator[Batch]]:
    """A function of the epoch giving that epoch's batches on `device`.

    Workers send whole blocks of preprocessed rows (one transfer per block, not per batch) and
    live as long as training; the batches are cut here, a remainder carried to the next block.
    """
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(dataset.seed),  # not the global one (dropout's)
    )
    size = dataset.batch_size

    def batches(epoch: int) -> Iterator[Batch]:
        # `epoch` is not passed on: the dataset counts its own (each iter() is the next epoch)
        made = 0
        pending_x, pending_y = torch.empty(0), torch.empty(0)
        for x, y in loader:
            if len(pending_x):
                x, y = torch.cat([pending_x, x]), torch.cat([pending_y, y])
            full = len(x) - len(x) % size
            for start in range(0, full, size):
                made += 1
                yield x[start : start + size].to(device), y[start : start + size].to(device)
            pending_x, pending_y = x[full:], y[full:]
        if len(pending_x) > 1 or (len(pending_x) == 1 and not dataset.skip_single_row):
            made += 1
            yield pending_x.to(device), pending_y.to(device)
        if dataset.world > 1:  # steps without rows, until the rank with the most is done
            left = dataset.steps(epoch) - made
            if left > 0:
                x, y = dataset.no_rows()
                for _ in range(left):
                    yield x.to(device), y.to(device)

    return batches
