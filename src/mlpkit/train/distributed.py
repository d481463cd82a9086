"""Data-parallel training under torchrun: the process group, and a step's one collective.

torchrun (torch.distributed.run) starts N copies of `mlpkit train` and tells each its rank in
the environment. `join` reads it and joins the group: gloo for CPU tensors and NCCL for CUDA
ones where the build has it. Every rank builds the same network from the same seed; each
trains on its own rows (loop.py cuts each global batch into N shares; streams give each rank
its own blocks or draws) and the gradients are summed over the group once a step.

One bucket a step. The direct step (direct.py) hands its gradients and loss to `Bucket`,
which lays them into one flat buffer with two more numbers, the rank's rows and whether it
was asked to stop. Each rank scales its mean gradient by its rows, one all-reduce sums the
buffer, and dividing by the summed rows gives the mean gradient and loss over the global
batch: exactly a single process's batch of N x batch_size when the shares are equal, and
still the right weights when they are not (the last batch of an epoch, a rank with fewer
rows in its blocks: it takes a step with no rows, adding zeros). Divergence needs no flag of
its own: a NaN or infinite gradient on one rank makes the summed buffer non-finite on every
rank, so all of them skip the same step and stop at the same batch. The stop flag is read
back on the host each step, so a Ctrl-C that reaches the ranks at different steps still
stops them all after the same one. The autograd path wraps the model in
DistributedDataParallel (its own bucketed all-reduce) and sends the same three numbers in a
small all-reduce of its own.

A rank that dies (SIGKILL, out of memory) closes its connections, and the others' next
collective fails at once; one that hangs is given up on after the group's timeout. Either way
a collective raises GroupLost, and the run is marked interrupted with its last checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from mlpkit.config.load import LoadedConfig
from mlpkit.errors import ConfigError, EnvironmentFault, GroupLost, Problem, clip
from mlpkit.train.steps import NonFiniteLoss

Tensor = torch.Tensor

DEFAULT_TIMEOUT = 300.0  # seconds a collective waits for a rank that neither answers nor dies


@dataclass
class Group:
    """This process's place in a torchrun group, and what the last step agreed on."""

    rank: int
    world: int
    local_rank: int
    local_world: int  # the processes of the group on this machine
    launch: str  # torchrun's run id: the same for every rank, and across --max-restarts
    restarts: int  # how many times torchrun has restarted the group (TORCHELASTIC_RESTART_COUNT)
    timeout: float
    # What the steps fill in: the rows of the last global batch, and whether any rank asked
    # to stop (read back with the gradients); `asked` is this rank's own stop signal.
    rows: int = 0
    stopping: bool = False
    asked: Callable[[], bool] = field(default=lambda: False)
    trained: int = 0  # rows this rank trained since the launch (run.json's rows_per_process)
    announced: bool = False  # rank 0 sent its plan (flows/distributed.py)

    @property
    def writes(self) -> bool:
        """Only rank 0 writes the run directory."""
        return self.rank == 0

    def device(self, wanted: torch.device) -> torch.device:
        """One device per process: CUDA's is the one `join` chose by the local rank."""
        if wanted.type != "cuda":
            return wanted
        return torch.device("cuda", torch.cuda.current_device())

    def all_reduce(self, tensor: Tensor) -> None:
        """Sum `tensor` over the group, in place."""
        import torch.distributed as dist

        try:
            dist.all_reduce(tensor)
        except RuntimeError as exc:  # DistBackendError and gloo's own are RuntimeErrors
            raise self.lost(exc) from None

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value`, on every rank (any picklable object)."""
        import torch.distributed as dist

        box = [value if self.rank == 0 else None]
        try:
            dist.broadcast_object_list(box, src=0)
        except RuntimeError as exc:
            raise self.lost(exc) from None
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank."""
        import torch.distributed as dist

        found: list[Any] = [None] * self.world
        try:
            dist.all_gather_object(found, value)
        except RuntimeError as exc:
            raise self.lost(exc) from None
        return found

    def lost(self, exc: BaseException) -> GroupLost:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return GroupLost(
            Problem(
                f"another process of the group died or stopped answering ({clip(first, 160)})",
                where=f"rank {self.rank} of {self.world}",
                hint="see the other processes' errors; an interrupted run resumes with "
                "mlpkit train --resume RUN under as many processes",
            )
        )

    def shared(self, record: dict[str, float]) -> dict[str, float]:
        """Rank 0's epoch record (its validation figures) on every rank, so that early
        stopping and divergence checks decide the same everywhere."""
        return dict(self.broadcast(record))

    def leave(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def join(timeout: float = DEFAULT_TIMEOUT) -> Group:
    """Join the group torchrun's environment describes (blocks until every rank has).

    Raises:
        EnvironmentFault: the environment is incomplete, or the rendezvous failed.
    """
    import torch.distributed as dist
    from torch.distributed.distributed_c10d import PrefixStore
    from torch.distributed.rendezvous import rendezvous

    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except (KeyError, ValueError) as exc:
        raise EnvironmentFault(
            Problem(
                f"torchrun's environment is incomplete ({exc})",
                where="RANK, WORLD_SIZE",
                hint="start mlpkit with torchrun, or mlpkit train --nproc N",
            )
        ) from None
    cuda = torch.cuda.is_available() and dist.is_nccl_available()
    backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    if cuda:  # before any collective: NCCL's object broadcasts go through the current device
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    wait = timedelta(seconds=timeout)
    try:
        store, rank, world = next(rendezvous("env://", timeout=wait))
        # torchrun keeps one store across --max-restarts: without a prefix of its own, a
        # restarted rank could read an address the group before it left there
        store = PrefixStore(f"mlpkit/attempt-{restarts}", store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=wait)
    except (RuntimeError, ValueError) as exc:
        raise EnvironmentFault(
            Problem(
                f"could not join the process group ({clip(str(exc).splitlines()[0], 160)})",
                where=f"rank {rank} of {world}",
                hint="check MASTER_ADDR and MASTER_PORT (torchrun's --rdzv-endpoint)",
            )
        ) from None
    launch = os.environ.get("TORCHELASTIC_RUN_ID", "")
    return Group(rank, world, local_rank, local_world, launch, restarts, timeout)


def process_batch(loaded: LoadedConfig, world: int) -> int:
    """The rows each process trains a step: batch_size, or with batch_scope global its share
    of it (one process: batch_size either way).

    Raises:
        ConfigError: a global batch the processes cannot share evenly.
    """
    training = loaded.config.training
    if training.batch_scope == "process" or world == 1:
        return training.batch_size
    if training.batch_size % world or training.batch_size < world:
        raise ConfigError(
            loaded.problem(
                ("training", "batch_size"),
                f"is the global batch (batch_scope: global), and {world} processes cannot "
                f"share {training.batch_size} rows evenly",
                f"use a multiple of {world}, or batch_scope: process",
            )
        )
    return training.batch_size // world


class Bucket:
    """The direct step's gradients and loss, summed over the group in one all-reduce (see the
    module's docstring): [gradients of every parameter..., loss, rows, stop]."""

    def __init__(self, group: Group, params: list[Tensor]) -> None:
        self.group = group
        count = sum(p.numel() for p in params)
        self.flat = torch.zeros(count + 3, device=params[0].device)
        self.head = self.flat[: count + 1]  # the gradients and the loss: scaled by rows
        self.tail = self.flat[count + 1 :]  # rows, stop
        self.loss = self.flat[count]
        self.views: list[Tensor] = []
        offset = 0
        for p in params:
            self.views.append(self.flat[offset : offset + p.numel()].view(p.shape))
            offset += p.numel()

    def reduce(self, own: tuple[Tensor, list[Tensor]] | None, rows: int) -> list[Tensor]:
        """Sum every rank's loss and gradients (`own`), each weighted by its rows, then divide
        by the rows of all: the mean over the global batch, in `views` and `loss`. `own` None:
        this rank has no rows for this step and adds zeros."""
        if own is None:
            self.head.zero_()
        else:
            loss, grads = own
            torch.cat([*(g.reshape(-1) for g in grads), loss.reshape(1)], out=self.head)
            if rows != 1:
                self.head.mul_(rows)
        self.tail.copy_(torch.tensor([float(rows), float(self.group.asked())]))
        self.group.all_reduce(self.flat)
        total, stop = self.tail.tolist()  # the one host read of a step
        self.head.div_(total)
        self.group.rows, self.group.stopping = int(total), stop > 0
        self.group.trained += rows
        return self.views


class ReducedAutogradStep:
    """The autograd step over the group: DistributedDataParallel averages the gradients in
    its buckets; the loss is scaled first so that the average is the global batch's mean."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        optimizer: torch.optim.Optimizer,
        group: Group,
    ) -> None:
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        self.ddp = DistributedDataParallel(model, device_ids=ids)
        self.loss_fn, self.optimizer, self.group = loss_fn, optimizer, group
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.sums = torch.zeros(3, device=device)  # loss x rows, rows, stop
        self.found_inf = torch.zeros((), device=device)
        self.one = torch.ones((), device=device)

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        rows = x.shape[0]
        outputs = self.ddp(x)
        # a rank without rows still joins the backward's all-reduce, with zero gradients
        local = self.loss_fn(outputs, y) if rows else outputs.sum() * 0
        asked = float(self.group.asked())
        self.sums.copy_(torch.stack([local.detach() * rows, *self.one.new_tensor([rows, asked])]))
        self.group.all_reduce(self.sums)
        loss_sum, total, stop = self.sums.tolist()
        self.group.rows, self.group.stopping = int(total), stop > 0
        self.group.trained += rows
        loss = self.one.new_tensor(loss_sum / total)
        self.optimizer.zero_grad(set_to_none=True)
        (local * (rows * self.group.world / total)).backward()  # DDP divides by the world
        grads = [p.grad for p in self.parameters if p.grad is not None]
        torch._amp_foreach_non_finite_check_and_unscale_([loss, *grads], self.found_inf, self.one)
        if self.found_inf.item():
            raise NonFiniteLoss(loss.item(), gradients=bool(torch.isfinite(loss)))
        self.optimizer.step()
        return loss

    def settle(self) -> None:
        """Nothing to do: optimizer.step keeps its state up to date."""

    def diverged(self) -> bool:
        return False

    def skipped(self) -> int:
        return 0
