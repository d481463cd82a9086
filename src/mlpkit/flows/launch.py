"""`mlpkit train CONFIG --nproc N`: torchrun's own elastic launcher, started on this machine;
and what the command line asks of torchrun's environment (no torch imported for it).

The same launcher `torchrun --standalone --nproc-per-node N -m mlpkit train CONFIG` runs
(torch.distributed.run: a c10d rendezvous on a free loopback port, --max-restarts), in this
process, so that what it reports reaches the user as mlpkit's one line rather than a traceback:
a rank's failure ends the launch with that rank's exit code (each rank printed its own line;
rank 0 the run's), and a SIGINT or SIGTERM to the launcher, which it passes on to every rank,
ends it with 130 or 143 once the ranks have stopped at the same step and rank 0 has saved.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from mlpkit.errors import MlpkitError, Problem


def launch(argv: list[str], processes: int, max_restarts: int = 0) -> int:
    """Run `mlpkit <argv>` in `processes` ranks under torch.distributed.run; its exit code."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    # Each rank's share of the cores (torchrun would set 1, with a warning).
    cores = os.cpu_count() or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // processes)))
    args = torchrun.parse_args(  # type: ignore[no-untyped-call]
        [
            "--standalone",
            f"--nproc-per-node={processes}",
            f"--max-restarts={max_restarts}",
            "--module",
            "mlpkit",
            *argv,
        ]
    )
    args.rdzv_backend, args.rdzv_endpoint = "c10d", "localhost:0"  # what --standalone means
    args.rdzv_id = f"mlpkit-{os.getpid()}"
    args.master_port = args.master_port or 29500  # unused by c10d, read all the same
    config, command, command_args = torchrun.config_from_args(args)
    logging.disable(logging.CRITICAL)  # the agent's own log lines: the ranks say what matters
    try:
        elastic_launch(config=config, entrypoint=command)(*command_args)
    except ChildFailedError as failed:
        for rank, failure in sorted(failed.failures.items()):
            # a rank's own line never came: say how it ended (SIGTERM and SIGINT are the
            # launcher's own, stopping the ranks left after a failure)
            if failure.exitcode < 0 and -failure.exitcode not in (signal.SIGTERM, signal.SIGINT):
                name = signal.Signals(-failure.exitcode).name
                sys.stderr.write(f"Error: rank {rank} (pid {failure.pid}) was killed by {name}\n")
        # rank 0's code where it failed (it said what happened to the run), else the first's
        _, failure = min(failed.failures.items())
        code = failure.exitcode
        return code if code > 0 else 128 - code  # killed by signal N: 128 + N, as a shell says
    except SignalException as stopped:
        return 128 + int(stopped.sigval)
    return 0


def launched() -> bool:
    """Whether torchrun started this process (its environment names a rank); no torch."""
    return "TORCHELASTIC_RUN_ID" in os.environ or (
        "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ
    )


def rank() -> int:
    """This process's rank under torchrun; 0 for a process of its own."""
    with contextlib.suppress(ValueError):
        return int(os.environ.get("RANK", "0")) if launched() else 0
    return 0


def refuse_with_torchrun(
    seeds: int | None, folds: int | None, ensemble: int | None, nproc: int | None, restarts: int
) -> None:
    """torchrun trains one run over its processes: not several, and not launched twice."""
    for flag, given in (("--seeds", seeds), ("--folds", folds), ("--ensemble", ensemble)):
        if given is not None and (given > 1 or flag != "--ensemble"):
            raise MlpkitError(
                Problem(
                    "trains several networks on one process (stacked), not under torchrun",
                    where=flag,
                    hint="train them without --nproc and torchrun",
                )
            )
    if nproc is not None and launched():
        hint = "give the processes to torchrun, or run mlpkit train --nproc N alone"
        raise MlpkitError(Problem("under torchrun already", where="--nproc", hint=hint))
    cores = os.cpu_count() or 1
    if nproc is not None and nproc > cores:
        raise MlpkitError(
            Problem(
                f"is {nproc:,}, and this machine has {cores} CPU cores: each process needs one",
                where="--nproc",
                hint=f"use at most {cores}; more machines join with torchrun --nnodes",
            )
        )
    if restarts and nproc is None:
        hint = "under torchrun, give torchrun --max-restarts"
        raise MlpkitError(Problem("needs --nproc", where="--max-restarts", hint=hint))


def train_argv(
    config: Path | None,
    set_: list[str] | None,
    runs_dir: str,
    device: str | None,
    quiet: bool,
    resume: Path | None,
    plots: str,
) -> list[str]:
    """The `mlpkit train` command each process of --nproc runs: this one, less --nproc."""
    argv = ["train", *([str(config)] if config is not None else [])]
    argv += [arg for value in set_ or [] for arg in ("--set", value)]
    argv += ["--runs-dir", runs_dir, "--plots", plots]
    argv += ["--device", device] if device is not None else []
    argv += ["--resume", str(resume)] if resume is not None else []
    return argv + (["--quiet"] if quiet else [])
