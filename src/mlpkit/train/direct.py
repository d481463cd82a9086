"""Training steps with the gradients written out: no autograd graph, one fused optimizer call.

For a small MLP a step's cost is PyTorch's per-operation overhead, not arithmetic: mpg's 529
parameters need about 4 kFLOP a step, yet the usual loop (module calls, building the autograd
graph, walking it, optimizer.step's Python) spends ~600 us on it. A plain dense stack has
gradients simple enough to write out with the very ATen kernels autograd would run: addmm
forward, mm for the weight and input gradients, threshold_backward for relu, mse_loss_backward
for the loss, and so on. They write into gradient buffers made once, and then one fused kernel
(torch._fused_adam_, _fused_adamw_ or _fused_sgd_) updates every parameter in place with the
optimizer's own state tensors, so optimizer.state_dict() and checkpoints are the usual ones.
On CPU the result is the autograd path's, bit for bit (tests/test_direct.py trains both ways
and compares weights and optimizer state), at a fraction of the cost.

A NaN or infinite loss must never reach the weights, nor a non-finite gradient of a finite
loss, yet checking them per step is a host sync (a stall on a GPU). Instead each step ORs "the
loss or a gradient is not finite" into a flag on the device, and the fused optimizer skips its
update while the flag is up (the mechanism AMP's GradScaler uses); a counter on the device adds
up the skipped steps. The flag is read once an epoch and before a checkpoint: the batch that
diverged is the one that many steps back, and the weights are those from before it, as with
autograd.

`unsupported` says whether a model, loss and optimizer are covered; anything else (dropout,
batch norm, other activations, losses or optimizers) trains through autograd.

At ~470 lines this is over the package's usual size on purpose: the tables of derivative
kernels, the loss gradients and the fused updates are one mechanism, checked bit for bit
against autograd as one (tests/test_direct.py); split, each part would make sense only
beside the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mlpkit.train.distributed import Bucket, Group

aten = torch.ops.aten
Tensor = torch.Tensor

# An activation as (forward, gradient); the gradient maps (gradient at the output, the
# pre-activation z, the activation a) to the gradient at z with the kernel of autograd's own
# derivative formula, so the numbers are the same.
Forward = Callable[[Tensor], Tensor]
Backward = Callable[[Tensor, Tensor, Tensor], Tensor]


def _relu(m: nn.Module) -> tuple[Forward, Backward]:
    return torch.relu, lambda g, z, a: aten.threshold_backward.default(g, a, 0)


def _tanh(m: nn.Module) -> tuple[Forward, Backward]:
    return torch.tanh, lambda g, z, a: aten.tanh_backward.default(g, a)


def _sigmoid(m: nn.Module) -> tuple[Forward, Backward]:
    return torch.sigmoid, lambda g, z, a: aten.sigmoid_backward.default(g, a)


def _silu(m: nn.Module) -> tuple[Forward, Backward]:
    return nn.functional.silu, lambda g, z, a: aten.silu_backward.default(g, z)


def _gelu(m: nn.Module) -> tuple[Forward, Backward]:
    if getattr(m, "approximate", "none") != "none":
        raise Unsupported("an approximate GELU")
    return nn.functional.gelu, lambda g, z, a: aten.gelu_backward.default(g, z)


def _elu(m: nn.Module) -> tuple[Forward, Backward]:
    alpha = float(getattr(m, "alpha", 1.0))
    return (
        lambda z: nn.functional.elu(z, alpha),
        lambda g, z, a: aten.elu_backward.default(g, alpha, 1, 1, False, z),
    )


def _leaky_relu(m: nn.Module) -> tuple[Forward, Backward]:
    slope = float(getattr(m, "negative_slope", 0.01))
    return (
        lambda z: nn.functional.leaky_relu(z, slope),
        lambda g, z, a: aten.leaky_relu_backward.default(g, z, slope, False),
    )


ACTIVATIONS: dict[type[nn.Module], Callable[[nn.Module], tuple[Forward, Backward]]] = {
    nn.ReLU: _relu,
    nn.Tanh: _tanh,
    nn.Sigmoid: _sigmoid,
    nn.SiLU: _silu,
    nn.GELU: _gelu,
    nn.ELU: _elu,
    nn.LeakyReLU: _leaky_relu,
}

# A loss as (outputs, targets) -> (mean loss, its gradient at the outputs), with the kernels
# autograd runs for the loss module's backward (seeded with a gradient of one).
LossAndGrad = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


class _Scalars:
    """Scalars as 0-d tensors on the device, made once: an op on a Python number first wraps
    it in a tensor, which costs more than a small op itself. Same values, same results."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.one = torch.ones((), device=device)
        self._made: dict[float, Tensor] = {}

    def __call__(self, value: float) -> Tensor:
        made = self._made.get(value)
        if made is None:
            made = self._made[value] = torch.tensor(value, device=self.device)
        return made


def _mse(scalars: _Scalars) -> LossAndGrad:
    # what mse_loss and mse_loss_backward compute, at a fraction of their overhead
    def mse(out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        difference = out - y
        square = difference.square()
        n = square.numel()
        loss = square.view(()) if n == 1 else square.mean()  # the mean of one value is itself
        return loss, difference.mul(scalars(2.0 / n))

    return mse


def _l1(scalars: _Scalars) -> LossAndGrad:
    # To autograd l1_loss is (out - y).abs().mean(): mean's gradient one/n, times sgn(out - y).
    def l1(out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        difference = out - y
        return difference.abs().mean(), (scalars.one / difference.numel()) * difference.sgn()

    return l1


def _huber(scalars: _Scalars, delta: float) -> LossAndGrad:
    def huber(out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return (
            aten.huber_loss.default(out, y, 1, delta),
            aten.huber_loss_backward.default(scalars.one, out, y, 1, delta),
        )

    return huber


def _bce_with_logits(pos_weight: Tensor | None) -> LossAndGrad:
    def bce(out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        value = nn.functional.binary_cross_entropy_with_logits(out, y, pos_weight=pos_weight)
        # autograd's binary_cross_entropy_with_logits_backward, operation for operation
        # (less its final multiplication by the seed gradient of one)
        if pos_weight is None:
            grad = out.sigmoid().sub_(y)
        else:
            weighted = pos_weight.mul(y)
            grad = weighted.add(1).sub_(y).mul_(out.sigmoid()).sub_(weighted)
        return value, grad.div_(out.numel())

    return bce


def _cross_entropy(scalars: _Scalars, weight: Tensor | None) -> LossAndGrad:
    def cross_entropy(out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        log_p = torch.log_softmax(out, 1)
        value, total = aten.nll_loss_forward.default(log_p, y, weight, 1, -100)
        grad = aten.nll_loss_backward.default(scalars.one, log_p, y, weight, 1, -100, total)
        return value, aten._log_softmax_backward_data.default(grad, log_p, 1, out.dtype)

    return cross_entropy


class Unsupported(Exception):
    """The model, loss or optimizer is outside what the direct step covers; says which."""


def _loss(loss_fn: nn.Module, scalars: _Scalars) -> LossAndGrad:
    kind = type(loss_fn)
    if kind not in (nn.MSELoss, nn.L1Loss, nn.HuberLoss, nn.BCEWithLogitsLoss, nn.CrossEntropyLoss):
        raise Unsupported(f"the loss {kind.__name__}")
    if getattr(loss_fn, "reduction", None) != "mean":
        raise Unsupported(f"the loss {kind.__name__} without reduction 'mean'")
    if kind is nn.MSELoss:
        return _mse(scalars)
    if kind is nn.L1Loss:
        return _l1(scalars)
    if isinstance(loss_fn, nn.HuberLoss):
        return _huber(scalars, loss_fn.delta)
    if isinstance(loss_fn, nn.BCEWithLogitsLoss) and loss_fn.weight is None:
        return _bce_with_logits(loss_fn.pos_weight)
    if (
        isinstance(loss_fn, nn.CrossEntropyLoss)
        and loss_fn.label_smoothing == 0
        and loss_fn.ignore_index == -100
    ):
        return _cross_entropy(scalars, loss_fn.weight)
    raise Unsupported(f"the loss {kind.__name__} with these options")


def _layers(model: nn.Module) -> tuple[Tensor | None, list[tuple[nn.Linear, nn.Module | None]]]:
    """The model as (input columns to gather, or None; [(linear, activation or None)])."""
    columns, body = None, model
    if not isinstance(model, nn.Sequential):
        branches, trunk = getattr(model, "branches", None), getattr(model, "trunk", None)
        if not isinstance(branches, nn.ModuleList) or not isinstance(trunk, nn.Sequential):
            raise Unsupported(f"a {type(model).__name__} model")
        if any(len(branch) for branch in branches):  # type: ignore[arg-type]
            raise Unsupported("named inputs with layers of their own")
        # model.MultiInput's buffers columns_0.. hold each input's columns, in concatenation
        # order (the trunk may have buffers of its own: batch norm's, refused below)
        columns = torch.cat([model.get_buffer(f"columns_{i}") for i in range(len(branches))])
        body = trunk
    pairs: list[tuple[nn.Linear, nn.Module | None]] = []
    for module in body.children():
        if isinstance(module, nn.Linear):
            pairs.append((module, None))
        elif pairs and pairs[-1][1] is None and type(module) in ACTIVATIONS:
            pairs[-1] = (pairs[-1][0], module)
        else:
            raise Unsupported(f"a {type(module).__name__} layer at that place")
    if not pairs:
        raise Unsupported("a model without dense layers")
    return columns, pairs


def unsupported(
    model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer
) -> str | None:
    """What keeps the direct step from training these (None: it covers them); changes nothing."""
    try:
        _layers(model)
        _loss(loss_fn, _Scalars(torch.device("cpu")))
        _optimizer_group(optimizer, set(model.parameters()))
    except Unsupported as why:
        return str(why)
    return None


class DirectStep:
    """Training steps of a dense stack with written-out gradients and a fused update.

    Build it after any optimizer state has been restored: it works on the optimizer's state
    tensors in place, and creates them (as the optimizer would) if there are none yet. Call
    `settle` before reading or saving the optimizer's state.

    Raises:
        Unsupported: the model, loss or optimizer is not covered; train with autograd.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        optimizer: torch.optim.Optimizer,
        over: Group | None = None,
    ):
        self.columns, pairs = _layers(model)
        group, params = _optimizer_group(optimizer, set(model.parameters()))
        # under torchrun: the gradients summed over the group's processes (distributed.py)
        self.bucket = None if over is None else Bucket(over, params)
        device = params[0].device
        scalars = _Scalars(device)
        self.loss = _loss(loss_fn, scalars)
        self.one = scalars.one
        self.found_inf = torch.zeros((), device=device)  # 1 once a step was not finite
        self.skips = torch.zeros((), device=device)  # steps skipped since found_inf rose
        self._settle: Callable[[], None] | None = None
        if isinstance(optimizer, torch.optim.Adam):  # and AdamW, a subclass
            self.update, self._settle = _adam(optimizer, group, params, self.found_inf, scalars)
        else:
            self.update = _sgd(optimizer, group, params, self.found_inf)
        if self.columns is not None:
            self.columns = self.columns.to(device)
        # Plain tuples, unpacked in the loop: attribute look-ups add up at ~150 us a step.
        slot = {p: index for index, p in enumerate(params)}
        self.forward_layers: list[tuple[Tensor, Tensor | None, Forward | None]] = []
        backward: list[tuple[Tensor, Tensor, int, int, Backward | None, bool]] = []
        for index, (linear, activation) in enumerate(pairs):
            functions = None if activation is None else ACTIVATIONS[type(activation)](activation)
            weight, bias = linear.weight.detach(), linear.bias  # detached: outside autograd
            self.forward_layers.append(
                (weight.t(), None if bias is None else bias.detach(), functions and functions[0])
            )
            bias_slot = -1 if bias is None else slot[bias]
            backward.append(
                (
                    weight,
                    weight.t(),
                    slot[linear.weight],
                    bias_slot,
                    functions and functions[1],
                    index > 0,
                )
            )
        self.backward_layers = backward[::-1]
        self.slots = len(params)

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        """One step on the batch (x [rows, features], y as the loss takes it); returns the loss.

        Nothing here waits for the device: a loss that is not finite raises the
        flag and the update is skipped, from that step on, until `diverged` is read."""
        with torch.inference_mode():  # no autograd bookkeeping at all: ~20% of a small step
            return self._step(x, y)

    def _step(self, x: Tensor, y: Tensor) -> Tensor:
        bucket = self.bucket
        if bucket is None:
            loss, grads = self._gradients(x, y)
        else:  # the global batch's mean loss and gradients, from every process's share
            rows = x.shape[0]
            own = self._gradients(x, y) if rows else None  # no rows: this rank adds zeros
            grads = bucket.reduce(own, rows)
            loss = bucket.loss.clone()  # the buffer is the next step's
        # As in the autograd path, the loss and the gradients decide: found_inf goes up (and
        # stays up) if one is NaN or infinite (multiplying by one changes no bit), and the
        # fused kernel then skips the update.
        checked = [loss, *grads]
        torch._amp_foreach_non_finite_check_and_unscale_(checked, self.found_inf, self.one)
        self.update(grads)
        self.skips.add_(self.found_inf)
        return loss

    def _gradients(self, x: Tensor, y: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The batch's mean loss, and its gradient for every parameter (in slot order)."""
        if self.columns is not None:
            x = x.index_select(1, self.columns)
        kept = []  # (input, pre-activation, activation) of each layer
        for weight_t, bias, forward in self.forward_layers:
            z = torch.mm(x, weight_t) if bias is None else torch.addmm(bias, x, weight_t)
            a = z if forward is None else forward(z)
            kept.append((x, z, a))
            x = a
        loss, grad = self.loss(x, y)
        one_row = grad.shape[0] == 1
        # Fresh tensors rather than out= into kept buffers: out= costs more than it saves here.
        grads: list[Tensor] = [loss] * self.slots  # placeholders, each replaced below
        for (weight, weight_t, weight_slot, bias_slot, backward, inner), (x, z, a) in zip(
            self.backward_layers, reversed(kept), strict=True
        ):
            if backward is not None:
                grad = backward(grad, z, a)
            grads[weight_slot] = torch.mm(grad.t(), x)
            if bias_slot >= 0:
                # One row: its sum is itself (up to the sign of a zero, which no update sees).
                grads[bias_slot] = grad[0] if one_row else torch.sum(grad, 0)
            if inner:
                # autograd's mm_mat1_backward: an input laid out column-major (a [1, 1] one
                # counts) gets its gradient as (W^T grad^T)^T, which sums in another order
                if x.stride(0) == 1 and x.stride(1) == x.shape[0]:
                    grad = torch.mm(weight_t, grad.t()).t()
                else:
                    grad = torch.mm(grad, weight)
        return loss, grads

    def diverged(self) -> bool:
        """Whether some step's loss or gradient was not finite (one host sync)."""
        return bool(self.found_inf)

    def skipped(self) -> int:
        """How many of the latest steps were skipped, the first non-finite one included."""
        return int(self.skips)

    def settle(self) -> None:
        """Bring the optimizer's own state up to date (Adam's step counts)."""
        if self._settle is not None:
            self._settle()


Update = Callable[[list[Tensor]], None]


def _optimizer_group(
    optimizer: torch.optim.Optimizer, parameters: set[Tensor]
) -> tuple[dict[str, Any], list[Tensor]]:
    """The optimizer's one parameter group and its parameters, if the direct step can run it."""
    kind = type(optimizer).__name__
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD):
        raise Unsupported(f"the optimizer {kind}")
    if len(optimizer.param_groups) != 1 or not optimizer.param_groups[0].get("fused"):
        raise Unsupported(f"{kind} without fused=True")
    group = optimizer.param_groups[0]
    params: list[Tensor] = list(group["params"])
    if isinstance(group["lr"], Tensor):
        raise Unsupported(f"{kind} with a tensor learning rate")
    if set(params) != parameters:
        raise Unsupported(f"{kind} over other parameters than the model's")
    return group, params


def _adam(
    optimizer: torch.optim.Optimizer,
    group: dict[str, Any],
    params: list[Tensor],
    found_inf: Tensor,
    scalars: _Scalars,
) -> tuple[Update, Callable[[], None]]:
    """Adam's or AdamW's fused kernel, and what copies its step count into the state."""
    states = [optimizer.state[p] for p in params]
    for p, state in zip(params, states, strict=True):
        if not state:  # what Adam._init_group makes on the first step with fused=True
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    steps = [state["step"] for state in states]
    if any(not torch.equal(step, steps[0]) for step in steps):
        raise Unsupported("optimizer state with different step counts per parameter")
    # All parameters step together, so one count serves them all: one add a step instead of
    # a for-each add over every parameter's count (on CPU the costliest op of a small step).
    count = steps[0].clone()
    counts = [count] * len(steps)
    weights = [p.detach() for p in params]  # the same storage, outside autograd
    averages = [state["exp_avg"] for state in states]
    squares = [state["exp_avg_sq"] for state in states]
    maxima = [state["max_exp_avg_sq"] for state in states] if group["amsgrad"] else []
    kernel = torch._fused_adamw_ if group.get("decoupled_weight_decay") else torch._fused_adam_
    beta1, beta2 = group["betas"]

    one = scalars.one

    def update(grads: list[Tensor]) -> None:
        count.add_(one)
        kernel(
            weights, grads, averages, squares, maxima, counts,
            lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
            eps=group["eps"], amsgrad=group["amsgrad"], maximize=group["maximize"],
            grad_scale=None, found_inf=found_inf,
        )  # fmt: skip
        count.sub_(found_inf)  # a skipped step does not count

    def settle() -> None:
        for step in steps:
            step.copy_(count)

    return update, settle


def _sgd(
    optimizer: torch.optim.Optimizer, group: dict[str, Any], params: list[Tensor], found_inf: Tensor
) -> Update:
    """SGD's fused kernel, keeping its momentum buffers in the optimizer's state as step() does."""
    momentum = group["momentum"]
    # .get: SGD without momentum keeps no state at all, and optimizer.state is a defaultdict
    buffers = [optimizer.state.get(p, {}).get("momentum_buffer") for p in params]
    first = [momentum != 0 and all(b is None for b in buffers)]
    if first[0]:  # as torch's _fused_sgd: empty buffers, filled by the first step
        buffers = [torch.empty_like(p) for p in params]
    kept: list[Tensor] = [b for b in buffers if b is not None] if momentum != 0 else []
    weights = [p.detach() for p in params]  # the same storage, outside autograd

    def update(grads: list[Tensor]) -> None:
        torch._fused_sgd_(
            weights, grads, kept,
            weight_decay=group["weight_decay"], momentum=momentum, lr=group["lr"],
            dampening=group["dampening"], nesterov=group["nesterov"],
            maximize=group["maximize"], is_first_step=first[0],
            grad_scale=None, found_inf=found_inf,
        )  # fmt: skip
        if first[0]:  # SGD.step keeps the buffers in its state
            for p, buffer in zip(params, kept, strict=True):
                optimizer.state[p]["momentum_buffer"] = buffer
            first[0] = False

    return update
