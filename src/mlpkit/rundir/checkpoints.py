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
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from mlpkit.errors import Problem, RunDirError
from mlpkit.rundir.runs import write_fault
from mlpkit.train.loop import Position
from mlpkit.train.schedules import Schedule

FORMAT = "mlpkit.checkpoint/1"
FOLDER = "checkpoints"
PARTS = {"model.safetensors", "best.safetensors", "state.pt"}
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
    progress: Position
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
    root = run_dir / FOLDER
    final = root / f"ckpt-{progress.steps:012d}-{progress.epoch:06d}"
    files = {"model.safetensors": _safetensors(model.state_dict())}
    if progress.best_weights is not None:
        files["best.safetensors"] = _safetensors(progress.best_weights)
    state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler,
        "rng": _rng_states(device),
    }
    state["progress"] = _progress_state(progress)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    files["state.pt"] = buffer.getvalue()
    manifest = {
        "format": FORMAT,
        "epoch": progress.epoch,
        "batches_done": progress.batches_done,
        "steps": progress.steps,
        "written": datetime.now().astimezone().isoformat(timespec="seconds"),
        "config": config,
        "files": {name: _digest(data) for name, data in files.items()},
    }
    files["manifest.json"] = (json.dumps(manifest, indent=2, allow_nan=False) + "\n").encode()
    partial = root / f".partial-{secrets.token_hex(4)}"
    try:
        root.mkdir(exist_ok=True)
        partial.mkdir()
        for name, data in files.items():  # manifest.json last
            _write_synced(partial / name, data)
        if final.exists():  # the same position saved again, or a damaged one passed over
            shutil.rmtree(final)
        os.rename(partial, final)
        _sync_folder(root)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise write_fault(exc, final) from None  # the checkpoint that could not be written
    for old in sorted(root.glob("ckpt-*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(run_dir: Path) -> tuple[Checkpoint, list[Problem]]:
    """The newest checkpoint that reads back whole, and why any newer one was passed over.

    Raises:
        RunDirError: no checkpoint, or none usable (each one's problem is named).
    """
    found = sorted((run_dir / FOLDER).glob("ckpt-*"), reverse=True)
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
    manifest = _manifest(path / "manifest.json")
    listed = manifest["files"]
    if not isinstance(listed, dict) or not {"model.safetensors", "state.pt"} <= set(listed):
        raise RunDirError(
            Problem("lists no model and state files", file=str(path / "manifest.json"))
        )
    unknown = set(listed) - PARTS
    if unknown:  # never read a path the manifest makes up
        problem = f"lists unknown files: {', '.join(sorted(unknown))}"
        raise RunDirError(Problem(problem, file=str(path / "manifest.json")))
    data = {name: _verified(path / name, expected) for name, expected in listed.items()}
    state = _torch_state(path / "state.pt", data["state.pt"])
    try:
        progress = _progress(state["progress"])
        if "best.safetensors" in data:
            progress.best_weights = _tensors(path / "best.safetensors", data["best.safetensors"])
        return Checkpoint(
            path=path,
            progress=progress,
            model=_tensors(path / "model.safetensors", data["model.safetensors"]),
            optimizer=state["optimizer"],
            rng=state["rng"],
            config=manifest["config"],
            scheduler=state["scheduler"],
        )
    except Exception as exc:  # any shape a damaged or hostile state.pt may take
        problem = f"not a {FORMAT} state: {type(exc).__name__} {exc}"
        raise RunDirError(Problem(problem, file=str(path / "state.pt"))) from None


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
    for partial in (run_dir / FOLDER).glob(".partial-*"):
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


def _safetensors(state: dict[str, torch.Tensor]) -> bytes:
    return save_safetensors({k: v.detach().cpu().contiguous() for k, v in state.items()})


def _digest(data: bytes) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _sync_folder(path: Path) -> None:
    """Make a rename inside `path` durable: fsync the folder itself."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_bytes())
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
        data = path.read_bytes()
    except OSError as exc:
        raise RunDirError(Problem(f"unreadable: {exc.strerror}", file=str(path))) from None
    if not isinstance(expected, dict) or _digest(data) != expected:
        problem = "damaged: its size or sha256 differs from manifest.json"
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


def _tensors(path: Path, data: bytes) -> dict[str, torch.Tensor]:
    try:
        return load_safetensors(data)
    except SafetensorError as exc:
        raise RunDirError(Problem(f"unusable tensors: {exc}", file=str(path))) from None
