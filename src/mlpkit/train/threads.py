"""How many CPU threads training uses, and setting them for the length of a training run.

PyTorch's default (one thread per core) pays off only when a step has enough arithmetic to
split: for mpg's 529 parameters at batch 1 the second thread is pure synchronization, and one
thread is faster. `auto` therefore picks 1 thread below SMALL_STEP multiply-adds a step
(parameters x batch rows), all cores above it. The threshold comes from
`python bench/threads.py`, which times both on a range of model and batch sizes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch

SMALL_STEP = 1 << 21  # multiply-adds a step below which one thread is faster (2 cores here)


def choose(setting: Literal["auto"] | int, parameters: int, batch_size: int) -> int:
    """The thread count for training: the configured one, or auto's pick."""
    if setting != "auto":
        return setting
    return 1 if parameters * batch_size < SMALL_STEP else torch.get_num_threads()


@contextmanager
def limited(count: int) -> Iterator[None]:
    """Train with `count` intra-op threads, then give the process its setting back (torch's
    thread count is process-wide, and a library must not leave it changed)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
