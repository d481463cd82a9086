"""`mlpkit train CONFIG --nproc N`: torchrun's own elastic launcher, started on this machine.

The same launcher `torchrun --standalone --nproc-per-node N -m mlpkit train CONFIG` runs
(torch.distributed.run: a c10d rendezvous on a free loopback port, --max-restarts), in this
process, so that what it reports reaches the user as mlpkit's one line rather than a traceback:
a rank's failure ends the launch with that rank's exit code (each rank printed its own line;
rank 0 the run's), and a SIGINT or SIGTERM to the launcher, which it passes on to every rank,
ends it with 130 or 143 once the ranks have stopped at the same step and rank 0 has saved.
"""

from __future__ import annotations

import logging
import os
import signal
import sys


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
