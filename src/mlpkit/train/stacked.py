"""K networks of one dense shape trained as one computation: the stacked engine's step.

Members are ordinary Sequential networks (train.model.build_model, each with its own seed).
Their parameters are copied into one flat [K, P] buffer, and each layer's weight and bias are
views of it ([K, out, in], [K, out]). A step takes each member's own batch as one
[K, batch, in] tensor: the forward pass is one baddbmm per layer, the backward pass is written
out with bmm into a [K, P] gradient buffer laid out the same way, and one fused Adam kernel
updates the buffer. Adam is elementwise, so each member's row moves exactly as that member's
own Adam would (same lr, betas, eps, step count): members never interact.

For a small network a step's cost is the number of torch calls, not arithmetic, so K members
cost little more than one (bench/stacked.py). Per-member settings keep that: a member may sit
a step out (its fold has fewer rows, it stopped early or diverged): the kernel then takes the
active members' rows as a list, each with its own step count; members with their own learning
rate or weight decay go through one kernel call per setting.

What it covers is what the direct engine covers (train/direct.py): dense layers with a bias,
each with no activation or one of its activations (relu, tanh, sigmoid, silu, exact gelu, elu,
leaky relu: its very kernels); the losses MSE, L1, Huber, BCE with logits (pos_weight too) and
cross-entropy (class weights too), each the mean over a member's batch; Adam, AdamW and SGD
(fused). Unstackable names anything else, and the caller then trains the members one after
another.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mlpkit.train import direct

Activation = tuple[direct.Forward, direct.Backward]

LOSSES = {
    nn.MSELoss: "mse",
    nn.L1Loss: "l1",
    nn.HuberLoss: "huber",
    nn.BCEWithLogitsLoss: "bce",
    nn.CrossEntropyLoss: "cross_entropy",
}


class Unstackable(ValueError):
    """The members cannot be stacked; the message says why (run.json's fallback note)."""


@dataclass(frozen=True)
class _Layer:
    weight: str  # the member's state_dict key of the weight ("0.weight")
    bias: str
    out_features: int
    in_features: int
    activation: str  # the activation module's repr ("ReLU()"), "" for none: equal if alike


def _layers(model: nn.Module) -> tuple[list[_Layer], list[Activation | None]]:
    """A Sequential of Linear layers, each optionally followed by an activation the direct
    engine covers (its forward and autograd's own derivative kernel, direct.ACTIVATIONS)."""
    if not isinstance(model, nn.Sequential):
        raise Unstackable("a model with named inputs")
    layers: list[_Layer] = []
    functions: list[Activation | None] = []
    for name, module in model.named_children():
        if isinstance(module, nn.Linear):
            if module.bias is None:
                raise Unstackable("a dense layer without a bias")
            out_features, in_features = module.weight.shape
            layers.append(_Layer(f"{name}.weight", f"{name}.bias", out_features, in_features, ""))
            functions.append(None)
        elif type(module) in direct.ACTIVATIONS and layers and not layers[-1].activation:
            try:
                functions[-1] = direct.ACTIVATIONS[type(module)](module)
            except direct.Unsupported as why:
                raise Unstackable(str(why)) from None
            last = layers[-1]
            layers[-1] = _Layer(
                last.weight, last.bias, last.out_features, last.in_features, repr(module)
            )
        else:
            raise Unstackable(f"a {type(module).__name__} layer")
    if not layers:
        raise Unstackable("a model without dense layers")
    return layers, functions


@dataclass(frozen=True)
class Loss:
    """A loss the stacked engine computes per member: its kind and options."""

    kind: str  # mse | l1 | huber | bce | cross_entropy
    delta: float = 1.0  # huber
    weight: Tensor | None = None  # bce: pos_weight; cross_entropy: the class weights


def stacked_loss(loss_fn: nn.Module) -> Loss:
    """The loss as the stacked engine computes it (each a mean over a member's batch).

    Raises:
        Unstackable: a loss the engine does not cover.
    """
    kind = LOSSES.get(type(loss_fn))
    if kind is None or getattr(loss_fn, "reduction", "mean") != "mean":
        raise Unstackable(f"the loss {type(loss_fn).__name__}")
    if isinstance(loss_fn, nn.HuberLoss):
        return Loss(kind, delta=loss_fn.delta)
    if isinstance(loss_fn, nn.BCEWithLogitsLoss):
        if loss_fn.weight is not None:
            raise Unstackable("the loss BCEWithLogitsLoss with a weight per element")
        return Loss(kind, weight=loss_fn.pos_weight)
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        if loss_fn.label_smoothing != 0 or loss_fn.ignore_index != -100:
            raise Unstackable("the loss CrossEntropyLoss with these options")
        return Loss(kind, weight=loss_fn.weight)
    return Loss(kind)


class StackedNetwork:
    """The members' parameters in one [K, P] buffer, the forward pass and written-out loss
    gradients (into a [K, P] gradient buffer of the same layout)."""

    def __init__(self, members: list[nn.Module], loss_fn: nn.Module) -> None:
        if not members:
            raise Unstackable("no members")
        self.layers, self._activations = _layers(members[0])
        if any(_layers(member)[0] != self.layers for member in members[1:]):
            raise Unstackable("members of different shapes")
        self.loss = stacked_loss(loss_fn)
        first = next(members[0].parameters())
        self.device = first.device
        k = len(members)
        size = sum(layer.out_features * (layer.in_features + 1) for layer in self.layers)
        self.flat = torch.empty(k, size, dtype=first.dtype, device=self.device)
        self.grad = torch.zeros_like(self.flat)
        self.weights, self.biases = self._views(self.flat)
        self.weight_grads, self.bias_grads = self._views(self.grad)
        # what each step takes, views made once (a view costs a call like any op)
        self._transposed = [weight.transpose(1, 2) for weight in self.weights]
        self._bias_rows = [bias.unsqueeze(1) for bias in self.biases]
        self._forward_layers = list(
            zip(self._transposed, self._bias_rows, self._activations, strict=True)
        )
        self._backward_layers = [
            (
                None if self._activations[i] is None else self._activations[i][1],  # type: ignore[index]
                self.bias_grads[i],
                self.weight_grads[i],
                self.weights[i] if i else None,  # the first layer passes no gradient on
            )
            for i in reversed(range(len(self.layers)))
        ]
        self._scalars = direct._Scalars(self.device)
        with torch.no_grad():
            for i, member in enumerate(members):
                self.load_member(i, member)

    @property
    def members(self) -> int:
        return int(self.flat.shape[0])

    def _views(self, buffer: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Each layer's [K, out, in] weight and [K, out] bias as views of `buffer`."""
        k, weights, biases, at = buffer.shape[0], [], [], 0
        for layer in self.layers:
            count = layer.out_features * layer.in_features
            weights.append(buffer[:, at : at + count].view(k, layer.out_features, -1))
            at += count
            biases.append(buffer[:, at : at + layer.out_features])
            at += layer.out_features
        return weights, biases

    def row(self, buffer: Tensor, k: int) -> dict[str, Tensor]:
        """Member k's slice of a [K, P] buffer as its state_dict keys and shapes (views)."""
        weights, biases = self._views(buffer)
        found: dict[str, Tensor] = {}
        for layer, weight, bias in zip(self.layers, weights, biases, strict=True):
            found[layer.weight], found[layer.bias] = weight[k], bias[k]
        return found

    def load_member(self, k: int, member: nn.Module) -> None:
        """Member k's row from a network's weights."""
        state = member.state_dict()
        for name, view in self.row(self.flat, k).items():
            view.copy_(state[name])

    def member_state(self, k: int) -> dict[str, Tensor]:
        """Member k's weights as its own network's state_dict (copies)."""
        return {name: view.clone() for name, view in self.row(self.flat, k).items()}

    def forward(self, x: Tensor) -> Tensor:
        """[K, batch, in] -> [K, batch, out]."""
        for weight, bias, activation in self._forward_layers:
            x = torch.baddbmm(bias, x, weight)
            if activation is not None:
                x = activation[0](x)
        return x

    def loss_and_gradients(self, x: Tensor, y: Tensor, rows: Tensor | None = None) -> Tensor:
        """Each member's mean loss [K] on its batch; its gradients written into `grad`: what
        autograd gives for each member alone. `rows` [K], when members' batches differ in
        size (folds of different sizes): member k's batch is its first rows[k] rows, the rest
        padding that neither its loss nor its gradients see."""
        saved = []  # each layer's input, pre-activation and output
        h = x
        for weight, bias, activation in self._forward_layers:
            z = torch.baddbmm(bias, h, weight)
            a = z if activation is None else activation[0](z)
            saved.append((h, z, a))
            h = a
        loss, delta = _loss_and_delta(self.loss, h, y, rows, self._scalars)
        # the weight gradient: for a batch of one row an outer product, which an elementwise
        # multiply computes exactly and at a fraction of a batched matmul's cost per member
        product = torch.mul if x.shape[1] == 1 else torch.bmm
        for (h, z, a), layer in zip(reversed(saved), self._backward_layers, strict=True):
            derivative, bias_grad, weight_grad, passing = layer
            if derivative is not None:  # autograd's own derivative kernel (direct.py)
                delta = derivative(delta, z, a)
            torch.sum(delta, dim=1, out=bias_grad)
            product(delta.transpose(1, 2), h, out=weight_grad)
            if passing is not None:
                delta = torch.bmm(delta, passing)
        return loss


def _loss_and_delta(
    loss: Loss, out: Tensor, y: Tensor, rows: Tensor | None, scalars: direct._Scalars
) -> tuple[Tensor, Tensor]:
    """Per-member mean loss [K] and its gradient at the output [K, batch, out]; with `rows`,
    each member's mean over its first rows[k] rows only (a member with none gets a zero loss
    and gradient: it sits the step out)."""
    if loss.kind == "mse" and rows is None:  # the common case, in the fewest calls
        error = out - y
        square = error.square()
        count = out.shape[1] * out.shape[2]
        # the mean of one value is itself (batch 1, one output: no reduction to run)
        mean = square.view(-1) if count == 1 else square.mean(dim=(1, 2))
        return mean, error.mul(scalars(2.0 / count))
    keep: Tensor | None = None
    n: Tensor | float = float(out.shape[1] * out.shape[2])
    if rows is not None:
        keep = (torch.arange(out.shape[1], device=out.device) < rows.unsqueeze(1)).to(out.dtype)
        keep = keep.unsqueeze(2)  # [K, batch, 1]
        n = rows.clamp(min=1).to(out.dtype).view(-1, 1, 1) * out.shape[2]
    if loss.kind == "cross_entropy":
        return _cross_entropy(out, y, loss.weight, keep)
    elementwise, grad = _elementwise(loss, out, y)
    if keep is not None:
        elementwise, grad = elementwise * keep, grad * keep
    return (elementwise / n).sum(dim=(1, 2)), grad / n


def _elementwise(loss: Loss, out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The loss of each output and its gradient, before the mean (autograd's formulas)."""
    if loss.kind == "mse":
        error = out - y
        return error.square(), error * 2.0
    if loss.kind == "l1":
        error = out - y
        return error.abs(), error.sgn()
    if loss.kind == "huber":
        error = out - y
        value = nn.functional.huber_loss(out, y, reduction="none", delta=loss.delta)
        return value, error.clamp(-loss.delta, loss.delta)
    pos_weight = loss.weight  # bce with logits
    value = nn.functional.binary_cross_entropy_with_logits(
        out, y, reduction="none", pos_weight=pos_weight
    )
    if pos_weight is None:
        return value, out.sigmoid() - y
    weighted = pos_weight * y
    return value, (weighted + 1 - y) * out.sigmoid() - weighted


def _cross_entropy(
    out: Tensor, y: Tensor, weight: Tensor | None, keep: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Cross-entropy over class indices y [K, batch]: each row's negative log-probability of
    its class, weighted by its class's weight, over the members' sum of those weights."""
    log_p = torch.log_softmax(out, dim=2)
    index = y.unsqueeze(2)
    picked = log_p.gather(2, index)  # [K, batch, 1]
    rows = torch.ones_like(picked) if weight is None else weight[index]
    if keep is not None:
        rows = rows * keep
    total = rows.sum(dim=(1, 2)).clamp(min=torch.finfo(out.dtype).tiny)  # [K]
    delta = log_p.exp().scatter_add_(2, index, -torch.ones_like(picked)) * rows
    return -(picked * rows).sum(dim=(1, 2)) / total, delta / total.view(-1, 1, 1)


@dataclass(frozen=True)
class OptimizerSettings:
    """One member's optimizer: Adam, AdamW or SGD, and its options."""

    lr: float
    kind: str = "adam"  # adam | adamw | sgd
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.0  # sgd
    dampening: float = 0.0
    nesterov: bool = False


class StackedOptimizer:
    """Adam, AdamW or SGD over a StackedNetwork's buffer (torch's fused kernels), each member
    with its own settings and step count; members sit steps out when told. The state rows
    keep the buffer's layout."""

    def __init__(self, network: StackedNetwork, settings: list[OptimizerSettings]) -> None:
        if len(settings) != network.members:
            raise ValueError("one OptimizerSettings per member")
        self.network = network
        self.settings = settings
        self.exp_avg = torch.zeros_like(network.flat)  # sgd: the momentum buffers
        self.exp_avg_sq = torch.zeros_like(network.flat)
        self.steps = [0] * network.members  # each member's count, as its own Adam's `step`
        self._count = torch.zeros((), dtype=torch.float32, device=network.device)
        self._one = torch.ones((), dtype=torch.float32, device=network.device)
        self._counted = 0  # what _count holds, known without reading it from the device
        self._uniform = len(set(settings)) == 1

    def step(self, active: list[int] | None = None) -> None:
        """Apply the gradient buffer to the members listed (None: every member)."""
        settings, network = self.settings, self.network
        if active is None and self._uniform and len(set(self.steps)) == 1:
            # the common case: one kernel call over the whole buffer, one shared count
            if self._counted != self.steps[0]:  # after steps some members sat out
                self._count.fill_(self.steps[0])
            self._count.add_(self._one)
            self._counted = self.steps[0] + 1
            first = self.steps[0] == 0
            self._kernel(settings[0], [network.flat], [network.grad], [self.exp_avg],
                         [self.exp_avg_sq], [self._count], first)  # fmt: skip
            self.steps = [count + 1 for count in self.steps]
            return
        members = range(network.members) if active is None else active
        groups: dict[tuple[OptimizerSettings, bool], list[int]] = {}
        for k in members:
            groups.setdefault((settings[k], self.steps[k] == 0), []).append(k)
            self.steps[k] += 1
        for (setting, first), ks in groups.items():
            counts = [torch.tensor(float(self.steps[k]), device=network.device) for k in ks]
            self._kernel(
                setting,
                [network.flat[k] for k in ks],
                [network.grad[k] for k in ks],
                [self.exp_avg[k] for k in ks],
                [self.exp_avg_sq[k] for k in ks],
                counts,
                first,
            )

    @staticmethod
    def _kernel(
        settings: OptimizerSettings,
        params: list[Tensor],
        grads: list[Tensor],
        averages: list[Tensor],
        squares: list[Tensor],
        counts: list[Tensor],
        first: bool,
    ) -> None:
        if settings.kind == "sgd":  # momentum buffers start as the first gradient, as torch's
            torch._fused_sgd_(
                params, grads, averages if settings.momentum else [],
                weight_decay=settings.weight_decay, momentum=settings.momentum, lr=settings.lr,
                dampening=settings.dampening, nesterov=settings.nesterov, maximize=False,
                is_first_step=first, grad_scale=None, found_inf=None,
            )  # fmt: skip
            return
        kernel = torch._fused_adamw_ if settings.kind == "adamw" else torch._fused_adam_
        kernel(
            params, grads, averages, squares, [], counts,
            lr=settings.lr, beta1=settings.beta1, beta2=settings.beta2,
            weight_decay=settings.weight_decay, eps=settings.eps, amsgrad=False,
            maximize=False, grad_scale=None, found_inf=None,
        )  # fmt: skip

    def member_state(self, k: int, params: Mapping[str, Tensor]) -> dict[Tensor, dict[str, Tensor]]:
        """Member k's optimizer state as torch.optim keeps it, keyed by the member network's
        parameters (`params`: its named parameters): what a checkpoint of it holds."""
        device, setting = self.network.device, self.settings[k]
        if setting.kind == "sgd":
            if not setting.momentum or not self.steps[k]:
                return {}
            buffers = self.network.row(self.exp_avg, k)
            return {p: {"momentum_buffer": buffers[name].clone()} for name, p in params.items()}
        averages = self.network.row(self.exp_avg, k)
        squares = self.network.row(self.exp_avg_sq, k)
        step = float(self.steps[k])
        return {
            parameter: {
                "step": torch.tensor(step, dtype=torch.float32, device=device),
                "exp_avg": averages[name].clone(),
                "exp_avg_sq": squares[name].clone(),
            }
            for name, parameter in params.items()
        }
