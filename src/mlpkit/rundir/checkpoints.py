"""Checkpoints: the whole state of training, in the run directory, written so no crash tears it.

    run/checkpoints/ckpt-<steps>-<epoch>/   one checkpoint; names sort oldest to newest
        model.safetensors                   the weights
        best.safetensors                    early stopping's best weights, when kept
        state.pt                            optimizer, scheduler, every RNG, the loop's Position
        manifest.json                       format, position, config, sha256 of each file; last

A checkpoint is written into checkpoints/.partial-<id>/ (each file fsynced, the manifest last)
and renamed into place, so a folder named ckpt-* is always whole; the newest two are kept.
state.pt holds only tensors and plain containers and is read with `weights_only=True` passed
explicitly (an environment variable cannot turn that off), after its hash is checked. Reading
falls back to the previous checkpoint when the newest is damaged.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from mlpkit.errors import Problem, RunDirError
from mlpkit.reading import RUN_FILE_LIMIT, NotAFile, read_bounded
from mlpkit.rundir import runs
from mlpkit.train.loop import Position
from mlpkit.train.model import non_finite
from mlpkit.train.schedules import Schedule

FORMAT = "mlpkit.checkpoint/1"
PARTS = {runs.CHECKPOINT_WEIGHTS, runs.CHECKPOINT_BEST, runs.CHECKPOINT_STATE}
KEEP = 2  # the newest and the one before it, so a damaged newest still leaves one to resume
_PLAIN = (  # the Position fields that are plain values
    "epoch",
    "batches_done",
    "steps",
    "history",
    "sizes",
    "best_value",
    "best_epoch",
    "stale_epochs",
    "stopped_early",
)


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read back and verified."""

    path: Path
    position: Position  # kept in state.pt under "progress"
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, Any]
    config: dict[str, Any]  # the resolved config the run was trained with
    scheduler: dict[str, Any] | None = None  # the learning-rate schedule's state, if any


def save(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    progress: Position,
    config: dict[str, Any],
    device: torch.device,
    scheduler: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint of the current state, then drop all but the newest KEEP.

    Raises:
        EnvironmentFault: a write failed (disk full...); the partial folder is removed and the
            previous checkpoints are untouched.
    """
    root = run_dir / runs.CHECKPOINTS
    final = root / f"ckpt-{progress.steps:012d}-{progress.epoch:06d}"
    files = {runs.CHECKPOINT_WEIGHTS: runs.weights_bytes(model.state_dict())}
    if progress.best_weights is not None:
        files[runs.CHECKPOINT_BEST] = runs.weights_bytes(progress.best_weights)
    state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler,
        "rng": _rng_states(device),
    }
    state["progress"] = _progress_state(progress)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    files[runs.CHECKPOINT_STATE] = buffer.getvalue()
    manifest = {
        "format": FORMAT,
        "epoch": progress.epoch,
        "batches_done": progress.batches_done,
        "steps": progress.steps,
        "written": runs.now(),
        "config": config,
        "files": {name: _digest(data) for name, data in files.items()},
    }
    files[runs.CHECKPOINT_MANIFEST] = runs.json_bytes(manifest)
    partial = root / f".partial-{secrets.token_hex(4)}"
    try:
        root.mkdir(exist_ok=True)
        partial.mkdir()
        for name, data in files.items():  # the manifest last
            runs.write_atomic(partial / name, data)
        if final.exists():  # the same position saved again, or a damaged one passed over
            shutil.rmtree(final)
        os.rename(partial, final)
        runs.sync_folder(root)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise runs.write_fault(exc, final) from None  # the checkpoint that could not be written
    for old in sorted(root.glob("ckpt-*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(run_dir: Path) -> tuple[Checkpoint, list[Problem]]:
    """The newest checkpoint that reads back whole, and why any newer one was passed over.

    Raises:
        RunDirError: no checkpoint, or none usable (each one's problem is named).
    """
    found = sorted((run_dir / runs.CHECKPOINTS).glob("ckpt-*"), reverse=True)
    skipped: list[Problem] = []
    for path in found:
        try:
            return read(path), skipped
        except RunDirError as exc:
            skipped.extend(exc.problems)
    if skipped:
        raise RunDirError(skipped)
    raise RunDirError(
        Problem(
            "has no checkpoint to resume from",
            file=str(run_dir),
            hint="it stopped before its first checkpoint; train the config again",
        )
    )


def read(path: Path) -> Checkpoint:
    """One checkpoint, every file checked against the manifest's hashes before it is parsed.

    Raises:
        RunDirError: a file is missing, damaged, altered, or not of this format.
    """
    manifest = _manifest(path / runs.CHECKPOINT_MANIFEST)
    data = _verified_parts(path, manifest["files"])
    state = _torch_state(path / runs.CHECKPOINT_STATE, data[runs.CHECKPOINT_STATE])
    try:
        progress = _progress(state["progress"])
        if runs.CHECKPOINT_BEST in data:
            progress.best_weights = _tensors(path, runs.CHECKPOINT_BEST, data)
        checkpoint = Checkpoint(
            path=path,
            position=progress,
            model=_tensors(path, runs.CHECKPOINT_WEIGHTS, data),
            optimizer=state["optimizer"],
            rng=state["rng"],
            config=manifest["config"],
            scheduler=state["scheduler"],
        )
        found = _non_finite(checkpoint)
    except RunDirError:
        raise
    except Exception as exc:  # any shape a damaged or hostile state.pt may take
        problem = f"not a {FORMAT} state: {type(exc).__name__} {exc}"
        raise RunDirError(Problem(problem, file=str(path / runs.CHECKPOINT_STATE))) from None
    if found is not None:
        name, count = found
        problem = f"damaged: {name} holds {count:,} non-finite values (NaN or infinite)"
        raise RunDirError(Problem(problem, file=str(path)))
    return checkpoint


def _non_finite(checkpoint: Checkpoint) -> tuple[str, int] | None:
    """The first tensor of the checkpoint holding NaN or infinite values, named with its
    file, and how many it holds; None when all are finite. Training never saves one (it stops
    at a non-finite loss, gradient or state first), so such a checkpoint was altered or
    damaged, and resuming from it could only diverge or train on garbage."""
    tensors = {
        f"{runs.CHECKPOINT_WEIGHTS} tensor '{name}'": t for name, t in checkpoint.model.items()
    }
    for name, t in (checkpoint.position.best_weights or {}).items():
        tensors[f"{runs.CHECKPOINT_BEST} tensor '{name}'"] = t
    for index, entries in checkpoint.optimizer["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[
                    f"{runs.CHECKPOINT_STATE}: optimizer state '{key}' of parameter {index}"
                ] = value
    for batch, loss in enumerate(checkpoint.position.losses):
        tensors[f"{runs.CHECKPOINT_STATE}: the loss of batch {batch + 1}"] = loss
    return non_finite(tensors)


def _verified_parts(path: Path, listed: Any) -> dict[str, bytes]:
    """Each part the manifest lists, read and checked against its size and sha256.

    Raises:
        RunDirError: the list lacks the weights or the state, names a file no checkpoint has,
            or a part is unreadable or damaged.
    """
    manifest = path / runs.CHECKPOINT_MANIFEST
    needed = {runs.CHECKPOINT_WEIGHTS, runs.CHECKPOINT_STATE}
    if not isinstance(listed, dict) or not needed <= set(listed):
        raise RunDirError(Problem("lists no model and state files", file=str(manifest)))
    unknown = set(listed) - PARTS
    if unknown:  # never read a path the manifest makes up
        problem = f"lists unknown files: {', '.join(sorted(unknown))}"
        raise RunDirError(Problem(problem, file=str(manifest)))
    return {name: _verified(path / name, expected) for name, expected in listed.items()}


def load_into(
    checkpoint: Checkpoint,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule | None = None,
) -> None:
    """Put the checkpoint's weights, optimizer and schedule state into freshly built ones.

    Raises:
        RunDirError: the state does not fit the model the config builds.
    """
    try:
        model.load_state_dict(checkpoint.model)
        optimizer.load_state_dict(checkpoint.optimizer)
        _check_optimizer_shapes(optimizer)
        if schedule is not None:
            if checkpoint.scheduler is None:
                raise ValueError("it holds no learning-rate schedule")
            schedule.load_state_dict(checkpoint.scheduler)
    except Exception as exc:  # torch raises RuntimeError, ValueError, KeyError... on a misfit
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        problem = f"does not fit the model of the config: {first}"
        raise RunDirError(Problem(problem, file=str(checkpoint.path))) from None


def _check_optimizer_shapes(optimizer: torch.optim.Optimizer) -> None:
    """load_state_dict accepts moments of the wrong shape; the first step() would fail."""
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            for name, value in optimizer.state.get(parameter, {}).items():
                if (
                    isinstance(value, torch.Tensor)
                    and value.dim()
                    and value.shape != parameter.shape
                ):
                    raise ValueError(f"optimizer state '{name}' has shape {tuple(value.shape)}")


def restore_rng(rng: dict[str, Any], device: torch.device) -> None:
    """Put every random number generator back where the checkpoint found it."""
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and rng.get("cuda") is not None:
        torch.cuda.set_rng_state(rng["cuda"], device)
    kind, keys, position, has_gauss, gauss = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    random.setstate(rng["python"])


def clean_partials(run_dir: Path) -> None:
    """Remove what a crash left half-written: partial checkpoints and temporary files."""
    for partial in (run_dir / runs.CHECKPOINTS).glob(".partial-*"):
        shutil.rmtree(partial, ignore_errors=True)
    for temporary in run_dir.glob(".*.tmp"):
        temporary.unlink(missing_ok=True)


# --- the parts ------------------------------------------------------------------------------


def _rng_states(device: torch.device) -> dict[str, Any]:
    legacy = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
    kind, keys, position, has_gauss, gauss = legacy
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss),
        "python": random.getstate(),
    }


def _progress_state(progress: Position) -> dict[str, Any]:
    state = {name: getattr(progress, name) for name in _PLAIN}
    state["history"] = [dict(record) for record in progress.history]
    state["order_state"] = progress.order_state
    losses = torch.stack(progress.losses).cpu() if progress.losses else None  # [batches]
    state["losses"] = losses
    return state


def _progress(state: dict[str, Any]) -> Position:
    progress = Position(**{name: state[name] for name in _PLAIN})
    counts = (progress.epoch, progress.batches_done, progress.steps, progress.best_epoch)
    if not all(isinstance(n, int) and n >= 0 for n in counts) or progress.epoch < 1:
        raise ValueError("epoch, batches_done, steps and best_epoch must be counts")
    if not isinstance(progress.history, list) or not isinstance(progress.sizes, list):
        raise ValueError("history and sizes must be lists")
    if len(progress.sizes) != (0 if state["losses"] is None else len(state["losses"])):
        raise ValueError("one loss per batch size")
    progress.order_state = state["order_state"]
    if state["losses"] is not None:
        progress.losses = list(state["losses"].unbind())
    return progress


def _digest(data: bytes) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _read_part(path: Path, limit: int) -> bytes:
    """A checkpoint file's bytes, bounded like every run file: a regular file within the run
    (run/checkpoints/ckpt-*/part), of at most `limit` bytes.

    Raises:
        RunDirError: a link outside the run, not a regular file, or too large.
        OSError: missing or unreadable (the callers word these).
    """
    runs.refuse_outside(path, path.parent.parent.parent)
    try:
        return read_bounded(path, limit, "a checkpoint file")
    except NotAFile as exc:
        raise RunDirError(Problem(exc.problem, file=str(path))) from None


def _manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(_read_part(path, RUN_FILE_LIMIT))
    except FileNotFoundError:
        raise RunDirError(
            Problem("missing: the checkpoint is incomplete", file=str(path))
        ) from None
    except (OSError, ValueError, RecursionError) as exc:
        raise RunDirError(Problem(f"unreadable: {exc}", file=str(path))) from None
    wanted = {"format", "epoch", "batches_done", "steps", "config", "files"}
    if not isinstance(manifest, dict) or not wanted <= set(manifest):
        raise RunDirError(Problem(f"not a {FORMAT} manifest", file=str(path)))
    if manifest["format"] != FORMAT:
        problem = f"format '{manifest['format']}' is not {FORMAT}"
        raise RunDirError(Problem(problem, file=str(path), hint="resume it with that version"))
    return manifest


def _verified(path: Path, expected: Any) -> bytes:
    try:
        data = _read_part(path, runs.weights_limit())
    except OSError as exc:
        raise RunDirError(Problem(f"unreadable: {exc.strerror}", file=str(path))) from None
    if not isinstance(expected, dict) or _digest(data) != expected:
        problem = f"damaged: its size or sha256 differs from {runs.CHECKPOINT_MANIFEST}"
        raise RunDirError(Problem(problem, file=str(path))) from None
    return data


def _torch_state(path: Path, data: bytes) -> dict[str, Any]:
    """torch.load with weights_only=True, explicitly: tensors and plain containers only, so a
    pickle that would run code is refused instead (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD only
    changes the default, never an explicit argument)."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for bad files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RunDirError(Problem(f"refused to load: {first}", file=str(path))) from None
    if not isinstance(state, dict):
        raise RunDirError(Problem(f"not a {FORMAT} state", file=str(path)))
    return state


def _tensors(path: Path, name: str, data: dict[str, bytes]) -> dict[str, torch.Tensor]:
    """The checkpoint's part `name` (verified bytes in `data`) as tensors."""
    try:
        return load_safetensors(data[name])
    except SafetensorError as exc:
        raise RunDirError(Problem(f"unusable tensors: {exc}", file=str(path / name))) from None
