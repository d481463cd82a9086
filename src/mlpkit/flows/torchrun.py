"""`mlpkit train` in a process torchrun started: join the group, then lead or follow.

Rank 0 leads: it trains the config (flows/train.py) or resumes the run (flows/resume.py) over
the group, or, in a group torchrun restarted (--max-restarts), resumes the run its launch
began. Every other rank follows it (flows/distributed.py) and writes nothing.
"""

from __future__ import annotations

from pathlib import Path

from mlpkit.config.load import LoadedConfig
from mlpkit.flows import distributed
from mlpkit.flows.fit import Listener, TrainResult
from mlpkit.flows.resume import resume as resume_run
from mlpkit.flows.train import train as train_run
from mlpkit.rundir import runs
from mlpkit.train.distributed import join


def train_in_group(
    loaded: LoadedConfig | None,
    resume: Path | None,
    config: Path | None,
    overrides: list[str],
    runs_dir: Path,
    device: str | None,
    listener: Listener | None,
) -> TrainResult | None:
    """The run rank 0 trains or resumes over the group; None on the other ranks."""
    group = join()
    try:
        if not group.writes:
            distributed.follow(group, device)
            return None
        with distributed.leading(group):
            if resume is None and group.restarts and loaded is not None:
                # torchrun restarted the group (--max-restarts): carry on the run it began
                resume = runs.launched_by(runs_dir / loaded.config.name, group.launch)
                loaded = None if resume is not None else loaded
            if loaded is None:
                assert resume is not None
                return resume_run(resume, config, overrides, device, listener, group)
            return train_run(loaded, runs_dir, device, listener, group=group)
    finally:
        group.leave()
