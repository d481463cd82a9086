"""The run-directory format: every file name, the one atomic writer, the readers of run files.

A run directory holds config.yaml, run.json, summary.txt, preprocessing.json, history.csv,
metrics.json, predictions.csv, model.safetensors and plots/*.png (report/plots.py, drawn from
those files after the run completes; plots.log says why when they could not be), with
checkpoints/ (rundir/checkpoints.py) and a .lock (rundir/lock.py) while it trains. run.json
carries the status; `complete` is written last, so a directory whose run.json does not say
complete is never treated as finished. The names below are the only spelling of
those files: other modules ask for them.
Loading never executes code: JSON, a safe YAML loader, and safetensors for the weights.
Reading is bounded (reading.py): only regular files, run files up to RUN_FILE_LIMIT, weights up
to half the memory available, and never through a link that leads outside the run directory.
torch is imported only where weights are written or loaded: `mlpkit init` and `mlpkit runs`
use this module without a model. It runs past the usual ~400 lines on purpose: the whole
format, its writers and its bounded readers in one place is the point of the module.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors import SafetensorError

from mlpkit.config.yamlfile import dump_yaml, parse_yaml
from mlpkit.data.preprocessing import Preprocessor
from mlpkit.errors import EnvironmentFault, MlpkitError, Problem, RunDirError
from mlpkit.reading import (
    RUN_FILE_LIMIT,
    NotAFile,
    TooLarge,
    memory_bound,
    read_bounded,
    size_text,
)

if TYPE_CHECKING:
    import torch

RUN_FORMAT = "mlpkit.run/1"

# Every name in a run directory, here and nowhere else: other modules ask for these.
CONFIG = "config.yaml"  # the resolved config, every default filled in
RUN_INFO = "run.json"  # status, data file, versions, engine; `complete` written last
SUMMARY = "summary.txt"  # the layer table
PREPROCESSING = "preprocessing.json"  # fitted scaling and encoding
HISTORY = "history.csv"  # one row per epoch
METRICS = "metrics.json"  # every metric per split, the baselines beside them
PREDICTIONS = "predictions.csv"  # the test rows with their predictions
WEIGHTS = "model.safetensors"  # the trained weights
PLOTS = "plots"  # folder: the PNGs drawn from the files above
PLOTS_LOG = "plots.log"  # why the plots drawn in the background are missing, if they are
CHECKPOINTS = "checkpoints"  # folder: one subfolder per checkpoint
LOCK = ".lock"  # held by the process training the run
TENSORBOARD = "tensorboard"  # folder: TensorBoard event files, when tracked
MLFLOW_LINK = "mlflow.json"  # the MLflow store, experiment and run ids, when tracked
# Inside each checkpoint folder.
CHECKPOINT_MANIFEST = "manifest.json"  # written last: sizes and hashes of the other parts
CHECKPOINT_WEIGHTS = "model.safetensors"
CHECKPOINT_BEST = "best.safetensors"  # early stopping's best weights, when kept
CHECKPOINT_STATE = "state.pt"  # optimizer, scheduler, RNGs, the loop's Position
# `mlpkit export`'s default file per format.
EXPORTS = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
# What mlpkit itself writes in a run: never a target for `export --out`.
OWN_NAMES = frozenset(
    {CONFIG, RUN_INFO, SUMMARY, PREPROCESSING, HISTORY, METRICS, PREDICTIONS, WEIGHTS, PLOTS}
    | {PLOTS_LOG}
    | {CHECKPOINTS, LOCK, TENSORBOARD, MLFLOW_LINK}
)
_FORMAT_HINT = f"expected a run written by mlpkit train (format {RUN_FORMAT})"
Status = Literal["running", "interrupted", "failed", "diverged", "pruned", "complete"]


Scores = dict[str, float]


ModelT = TypeVar("ModelT", bound=BaseModel)


class EarlyStoppingResult(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    monitor: str
    best_value: float
    best_epoch: int
    stopped_epoch: int | None  # the last epoch trained when it stopped early, else None
    restored_best: bool  # the weights are the best epoch's, not the last epoch's


class MemberMetrics(BaseModel):
    """An ensemble member's metrics (model.ensemble): its seed, best epoch, each split's."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    seed: int
    best_epoch: int
    train: Scores
    val: Scores | None = None
    test: Scores


class MetricsFile(BaseModel):
    """metrics.json: every metric per split in target units, the baselines' test metrics.

    An ensemble's (model.ensemble K > 1) has the ensemble's where a single network's are, its
    members' metrics under `members` and their mean per split under `members_mean`; its
    best_epoch and early_stopping are member 0's, as history.csv is."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    train: Scores
    val: Scores | None = None
    test: Scores
    baselines: dict[str, Scores]
    best_epoch: int
    early_stopping: EarlyStoppingResult | None = None
    confusion_matrix: dict[str, list[str] | list[list[int]]] | None = None  # classification
    members: list[MemberMetrics] | None = None
    members_mean: dict[str, Scores] | None = None


class SplitFileInfo(BaseModel):
    """A part's own file (data.val_path, data.test_path): eval and resume check its sha256."""

    path: str
    sha256: str
    rows: int


class DataInfo(BaseModel):
    path: str
    sha256: str
    rows: int  # used: those left out for a missing target are not counted
    dropped_rows: int = 0  # left out for a missing target (data.missing.target: drop)
    # missing cells data.missing filled, per column (a streamed file: in its training rows)
    filled_cells: dict[str, int] = {}
    val_file: SplitFileInfo | None = None  # the validation rows' own file, when given
    test_file: SplitFileInfo | None = None  # the test rows' own file, when given


class DistributedInfo(BaseModel):
    """A run trained under torchrun (train/distributed.py): the group and its batches."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    processes: int  # the world size; a resume must have as many
    backend: str  # gloo (CPU) or nccl (CUDA)
    batch_per_process: int  # rows each process trains a step
    effective_batch: int  # rows a step trains over the group: processes x batch_per_process
    launch: str  # torchrun's run id: a restart (--max-restarts) finds its run by it
    rows_per_process: list[int] | None = None  # rows each process trained, once complete


class TrainingInfo(BaseModel):
    """How training ran: its engine (train/direct.py), CPU threads, optimizer steps and seconds."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    engine: Literal["direct", "autograd", "stacked"]  # stacked: train/stacked.py, a group
    threads: int
    why_not_direct: str | None = None  # with engine auto: what the direct step does not cover
    members: int | None = None  # stacked: how many runs trained together as one computation
    why_not_stacked: str | None = None  # a --seeds/--folds member trained alone: why
    steps: int | None = None  # once complete
    seconds: float | None = None  # the epochs' time: training, validation and checkpoints
    distributed: DistributedInfo | None = None  # trained by a torchrun group


class ExportInfo(BaseModel):
    """One `mlpkit export`: the file written and how closely it matched `mlpkit predict`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    format: Literal["onnx", "torchscript"]
    path: str  # relative to the run directory when inside it, else absolute
    sha256: str  # of the file as written
    rows: int  # rows of the data file the check ran on
    split: Literal["test", "val", "train"]  # which part they were (test unless it is empty)
    max_abs_diff: float  # largest |exported - predict| over those rows and the outputs
    exported: str  # when


class RunInfo(BaseModel):
    """run.json: what ran, where, on what data, and how it ended."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    format: Literal["mlpkit.run/1"] = "mlpkit.run/1"
    name: str
    status: Status
    seed: int
    device: str
    data: DataInfo
    versions: dict[str, str]
    started: str
    finished: str | None = None
    error: str | None = None
    resumed: list[str] = []  # when each `train --resume` started
    training: TrainingInfo | None = None
    exports: list[ExportInfo] = []  # each `mlpkit export` of the complete run, one per path


def now() -> str:
    """The time as run files record it: ISO 8601 to the second, with the local UTC offset."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def stamp(when: datetime | None = None) -> str:
    """The time in a file or folder name, `YYYYmmdd-HHMMSS`: names sort oldest first."""
    return (when or datetime.now()).strftime("%Y%m%d-%H%M%S")


def unique_name(prefix: str = "", when: datetime | None = None) -> str:
    """`<prefix><stamp>-<6 hex digits>`: the random part keeps two names of one second apart."""
    return f"{prefix}{stamp(when)}-{secrets.token_hex(3)}"


def create_run_dir(runs_dir: Path, name: str, when: datetime | None = None) -> Path:
    """Make `runs_dir/name/YYYYmmdd-HHMMSS-<id>` exclusively: never an existing directory.

    Raises:
        EnvironmentFault: the folder cannot be created (permissions, disk).
    """
    return create_unique_dir(runs_dir / name, "", when)


def create_unique_dir(parent: Path, prefix: str, when: datetime | None = None) -> Path:
    """Make `parent/<prefix>YYYYmmdd-HHMMSS-<id>` exclusively (a run, a cross-validation, a
    sweep), `parent` first if need be.

    Raises:
        EnvironmentFault: the folder cannot be created (permissions, disk).
    """
    try:
        parent.mkdir(parents=True, exist_ok=True)
        while True:
            path = parent / unique_name(prefix, when)
            try:
                path.mkdir()  # fails if it exists, so two never share a directory
                return path
            except FileExistsError:
                continue
    except OSError as exc:
        raise write_fault(exc, parent) from None


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, fsync, then rename: readers never see a
    torn file, and after a crash the file is the old one or the new one, whole.

    For callers that report a failure their own way; write_bytes reports it for a run.

    Raises:
        OSError: as the system raised it; no temporary file is left.
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise


def sync_folder(path: Path) -> None:
    """Make a rename inside `path` durable: fsync the folder itself.

    Raises:
        OSError: as the system raised it.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: Path, data: bytes) -> None:
    """A run file, written atomically (write_atomic).

    Raises:
        EnvironmentFault: disk full, permission denied and the like; no temporary file is left.
    """
    try:
        write_atomic(path, data)
    except OSError as exc:
        raise write_fault(exc, path) from None


def json_bytes(value: Any) -> bytes:
    """Strict JSON (a NaN is a bug, not a literal), indented for people."""
    return (json.dumps(value, indent=2, allow_nan=False) + "\n").encode()


def write_json(path: Path, value: Any) -> None:
    write_bytes(path, json_bytes(value))


def write_yaml(path: Path, value: Any) -> None:
    """YAML that mlpkit's reader reads back as `value` (a text like '010' or '1e3' stays text)."""
    write_bytes(path, dump_yaml(value, sort_keys=False).encode())


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    # Every row's columns in first-seen order: a run resumed from an older mlpkit's checkpoint
    # has history rows without the columns added since (lr); their cells stay empty.
    columns = list(dict.fromkeys(key for row in rows for key in row))
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes(path, buffer.getvalue().encode())


def weights_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """Tensors as safetensors bytes, on the CPU and contiguous, whatever device they are on."""
    from safetensors.torch import save  # imports torch: see the module docstring

    return save({k: v.detach().cpu().contiguous() for k, v in state.items()})


def write_weights(path: Path, model: torch.nn.Module) -> None:
    write_bytes(path, weights_bytes(model.state_dict()))


def write_info(run_dir: Path, info: RunInfo) -> None:
    write_json(run_dir / RUN_INFO, info.model_dump(mode="json"))


def write_fault(exc: OSError, path: Path) -> Exception:
    """Any failed write is an error to report, never a traceback: the machine's (exit 4) or,
    for a path whose folders are missing or are files, the user's (exit 2)."""
    if exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR, errno.ENOENT):
        hint = "every folder on the path must exist as a folder, or not exist at all for --runs-dir"
        return RunDirError(Problem(f"cannot create it: {exc.strerror}", file=str(path), hint=hint))
    return EnvironmentFault(Problem(f"cannot write: {exc.strerror}", file=str(path)))


# --- reading a run --------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """A run, opened and checked, ready to rebuild its model."""

    path: Path
    info: RunInfo
    preprocessor: Preprocessor
    metrics: MetricsFile | None  # None unless the run is complete

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    def load_weights(self, model: torch.nn.Module) -> None:
        """Load model.safetensors into `model`.

        Raises:
            RunDirError: the file is missing, malformed, or does not fit the model.
        """
        from safetensors.torch import load  # imports torch: see the module docstring

        path = self.path / WEIGHTS
        data = read_file(path, weights_limit(), self.path)
        try:
            model.load_state_dict(load(data))
        except (SafetensorError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise RunDirError(Problem(f"unusable weights: {first}", file=str(path))) from None


def open_run(path: Path, require_complete: bool = True) -> Run:
    """Open a run directory made by `mlpkit train`.

    Raises:
        RunDirError: not a directory, not a run, an unknown format, or (by default) not complete.
    """
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        raise RunDirError(Problem(f"{what}; expected a run directory", file=str(path)))
    check_links(path)
    info_path = path / RUN_INFO
    if not info_path.exists():
        raise RunDirError(
            Problem(
                f"not a run directory (no {RUN_INFO})",
                file=str(path),
                hint="pass a folder that mlpkit train printed",
            )
        )
    info = validated(RunInfo, info_path)
    if require_complete and info.status != "complete":
        problem = f"the run is {info.status}, not complete"
        raise RunDirError(Problem(problem, file=str(path), hint=next_step(path, info.status)))
    preprocessor = validated(Preprocessor, path / PREPROCESSING)
    complete = info.status == "complete"
    metrics = validated(MetricsFile, path / METRICS) if complete else None
    return Run(path=path, info=info, preprocessor=preprocessor, metrics=metrics)


def next_step(path: Path, status: Status) -> str:
    """What to do with a run that is not complete."""
    if status == "diverged":
        return "it cannot be resumed: lower training.optimizer.lr and train again"
    if status == "pruned":
        return "a sweep's pruner stopped it: train its config.yaml again to finish it"
    resume = f"mlpkit train --resume {path}"
    if status == "running":
        return f"it is still training, or its process died (mlpkit runs tells); then: {resume}"
    return f"resume it: {resume}"


def validated(model: type[ModelT], path: Path, hint: str | None = None) -> ModelT:
    """The JSON file at `path` as `model`, checked (run.json, metrics.json, crossval.json,
    sweep.json...).

    Raises:
        RunDirError: missing, unreadable, or not what `model` describes; `hint` says what was
            expected (by default: a run mlpkit wrote).
    """
    raw = read_json(path)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = f"{first['msg'].lower()}" + (f" at {where}" if where else "")
        problem = f"not a valid {path.name}: {message}"
        raise RunDirError(Problem(problem, file=str(path), hint=hint or _FORMAT_HINT)) from None


def launched_by(folder: Path, launch: str) -> Path | None:
    """The newest run under `folder` (runs/<name>) that a torchrun launch began: what a group
    restarted by --max-restarts carries on."""
    found = []
    for info_path in sorted(folder.glob(f"*/{RUN_INFO}")) if folder.is_dir() else []:
        with contextlib.suppress(RunDirError):
            training = validated(RunInfo, info_path).training
            if training and training.distributed and training.distributed.launch == launch:
                found.append(info_path.parent)
    return found[-1] if found else None


def weights_limit() -> int:
    """The largest weights file loaded: half the memory available, since the file's bytes and
    the tensors made from them are held at once."""
    return memory_bound(1 / 2)


def read_file(path: Path, limit: int = RUN_FILE_LIMIT, run_dir: Path | None = None) -> bytes:
    """A run file's bytes: a regular file of at most `limit` bytes inside `run_dir` (by
    default the file's own folder), never through a link that leads outside it.

    Raises:
        RunDirError: the file is missing, a link outside the run, not a regular file, larger
            than `limit`, or unreadable: one line.
    """
    refuse_outside(path, path.parent if run_dir is None else run_dir)
    try:
        return read_bounded(path, limit, "a run file")
    except FileNotFoundError:
        raise RunDirError(Problem("missing from the run directory", file=str(path))) from None
    except TooLarge as exc:
        problem = f"is {size_text(exc.size)}; mlpkit reads at most {size_text(limit)} here"
        hint = (
            "that is half the memory available, as loading weights holds the file and its "
            "tensors; free some memory"
            if limit != RUN_FILE_LIMIT
            else "a run file written by mlpkit is far smaller; is it the right file?"
        )
        raise RunDirError(Problem(problem, file=str(path), hint=hint)) from None
    except NotAFile as exc:
        raise RunDirError(Problem(exc.problem, file=str(path))) from None
    except OSError as exc:
        raise RunDirError(Problem(f"cannot read: {exc.strerror}", file=str(path))) from None


def refuse_outside(path: Path, run_dir: Path) -> None:
    """Raises RunDirError when `path` (a file or folder of the run) is, or passes through, a
    link that leads outside `run_dir`: a run is read from its own files only."""
    try:
        target, root = path.resolve(), run_dir.resolve()
    except (OSError, RuntimeError):  # a loop of links
        raise RunDirError(Problem("is a loop of links", file=str(path))) from None
    if not target.is_relative_to(root):
        problem = f"is a link to {target}, outside the run directory"
        raise RunDirError(Problem(problem, file=str(path), hint="copy the file into the run"))


def check_links(run_dir: Path) -> None:
    """Raises RunDirError when an entry of the run (a file or folder mlpkit writes, a
    checkpoint or one of its files) is a link leading outside the run directory."""
    entries = [run_dir / name for name in sorted(OWN_NAMES)]
    checkpoints = run_dir / CHECKPOINTS
    if checkpoints.is_dir() and not checkpoints.is_symlink():
        for folder in sorted(checkpoints.glob("ckpt-*")):
            entries.append(folder)
            parts = (CHECKPOINT_MANIFEST, CHECKPOINT_WEIGHTS, CHECKPOINT_BEST, CHECKPOINT_STATE)
            entries += [folder / name for name in parts]
    for entry in entries:
        if entry.is_symlink():
            refuse_outside(entry, run_dir)


def read_json(path: Path) -> Any:
    """A run file's JSON value.

    Raises:
        RunDirError: the file is missing, unreadable, or not JSON.
    """
    try:
        return json.loads(read_file(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunDirError(Problem(f"malformed JSON: {exc}", file=str(path))) from None
    except RecursionError:
        raise RunDirError(Problem("malformed JSON: nested too deeply", file=str(path))) from None


def read_csv(path: Path) -> dict[str, list[str]]:
    """A CSV run file (history.csv, predictions.csv) as column -> cells: every row as long as
    the header, at least one row.

    Raises:
        RunDirError: the file is missing, unreadable, or not such a table.
    """
    try:
        rows = list(csv.reader(io.StringIO(read_file(path).decode())))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise RunDirError(Problem(f"not a readable CSV file: {exc}", file=str(path))) from None
    if len(rows) < 2 or any(len(row) != len(rows[0]) for row in rows):
        problem = "not a CSV file written by mlpkit train (no rows, or rows of unequal length)"
        raise RunDirError(Problem(problem, file=str(path)))
    return {name: list(cells) for name, *cells in zip(*rows, strict=True)}


# Forgiving readers, for listing runs and finding links: whatever is wrong reads as nothing,
# and is read within the same bounds (a FIFO, a device or a huge file is nothing too).


def read_bytes_or_none(path: Path) -> bytes | None:
    """The bytes of the regular file `path` (at most RUN_FILE_LIMIT), or None."""
    try:
        return read_bounded(path, RUN_FILE_LIMIT, "a run file")
    except (NotAFile, OSError):
        return None


def read_json_or_empty(path: Path) -> dict[str, Any]:
    """The JSON object in `path`, or {} when it is missing, unreadable or not an object."""
    data = read_bytes_or_none(path)
    try:
        value = json.loads(data) if data is not None else None
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def read_yaml_or_none(path: Path) -> Any:
    """The YAML value in `path` (read as configs are), or None when it is missing, unreadable
    or not YAML."""
    data = read_bytes_or_none(path)
    try:
        return parse_yaml(data.decode(), str(path)).data if data is not None else None
    except (UnicodeDecodeError, MlpkitError, RecursionError):
        return None
