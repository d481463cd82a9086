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

What it covers: dense layers with a bias, each with no activation or one the direct engine
covers (relu, tanh, sigmoid, silu, exact gelu, elu, leaky relu: its kernels); the
losses MSE, BCE with logits (no pos_weight) and cross-entropy (no class weights), each the mean
over a member's batch; Adam and AdamW (fused). `unstackable` names anything else, and the
caller then trains the members one after another.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mlpkit.train import direct

Activation = tuple[direct.Forward, direct.Backward]

LOSSES = {nn.MSELoss: "mse", nn.BCEWithLogitsLoss: "bce", nn.CrossEntropyLoss: "cross_entropy"}


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


def loss_kind(loss_fn: nn.Module) -> str:
    """The stacked name of a loss the engine covers.

    Raises:
        Unstackable: any other loss, or one with weights.
    """
    kind = LOSSES.get(type(loss_fn))
    if kind is None or getattr(loss_fn, "reduction", "mean") != "mean":
        raise Unstackable(f"the loss {type(loss_fn).__name__}")
    if isinstance(loss_fn, nn.BCEWithLogitsLoss) and loss_fn.pos_weight is not None:
        raise Unstackable("a weighted loss (data.class_weights)")
    if isinstance(loss_fn, nn.CrossEntropyLoss) and (
        loss_fn.weight is not None or loss_fn.label_smoothing != 0
    ):
        raise Unstackable("a weighted loss (data.class_weights)")
    return kind


class StackedNetwork:
    """The members' parameters in one [K, P] buffer, the forward pass and written-out loss
    gradients (into a [K, P] gradient buffer of the same layout)."""

    def __init__(self, members: list[nn.Module], loss_fn: nn.Module) -> None:
        if not members:
            raise Unstackable("no members")
        self.layers, self._activations = _layers(members[0])
        if any(_layers(member)[0] != self.layers for member in members[1:]):
            raise Unstackable("members of different shapes")
        self.loss = loss_kind(loss_fn)
        first = next(members[0].parameters())
        self.device = first.device
        k = len(members)
        size = sum(layer.out_features * (layer.in_features + 1) for layer in self.layers)
        self.flat = torch.empty(k, size, dtype=first.dtype, device=self.device)
        self.grad = torch.zeros_like(self.flat)
        self.weights, self.biases = self._views(self.flat)
        self.weight_grads, self.bias_grads = self._views(self.grad)
        # the views the forward pass takes, made once (a view costs a call like any op)
        self._transposed = [weight.transpose(1, 2) for weight in self.weights]
        self._bias_rows = [bias.unsqueeze(1) for bias in self.biases]
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
        layers = zip(self._transposed, self._bias_rows, self._activations, strict=True)
        for weight, bias, activation in layers:
            x = torch.baddbmm(bias, x, weight)
            if activation is not None:
                x = activation[0](x)
        return x

    def loss_and_gradients(self, x: Tensor, y: Tensor, rows: Tensor | None = None) -> Tensor:
        """Each member's mean loss [K] on its batch; its gradients written into `grad`: what
        autograd gives for each member alone. `rows` [K], when members' batches differ in
        size (folds of different sizes): member k's batch is its first rows[k] rows, the rest
        padding that neither its loss nor its gradients see."""
        inputs, before, after = [], [], []  # each layer's input, pre-activation, output
        h = x
        layers = zip(self._transposed, self._bias_rows, self._activations, strict=True)
        for weight, bias, activation in layers:
            inputs.append(h)
            z = torch.baddbmm(bias, h, weight)
            h = z if activation is None else activation[0](z)
            before.append(z)
            after.append(h)
        loss, delta = _loss_and_delta(self.loss, h, y, rows)
        for i in reversed(range(len(self.layers))):
            activation = self._activations[i]
            if activation is not None:  # autograd's own derivative kernel (direct.py)
                delta = activation[1](delta, before[i], after[i])
            torch.sum(delta, dim=1, out=self.bias_grads[i])
            self.weight_grads[i].copy_(torch.bmm(delta.transpose(1, 2), inputs[i]))
            if i:
                delta = torch.bmm(delta, self.weights[i])
        return loss


def _loss_and_delta(
    kind: str, out: Tensor, y: Tensor, rows: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Per-member mean loss [K] and its gradient at the output [K, batch, out]."""
    if rows is not None:
        return _masked_loss_and_delta(kind, out, y, rows)
    if kind == "mse":
        error = out - y
        n = error.shape[1] * error.shape[2]
        return error.square().mean(dim=(1, 2)), error * (2.0 / n)
    if kind == "bce":
        n = out.shape[1] * out.shape[2]
        loss = nn.functional.binary_cross_entropy_with_logits(out, y, reduction="none")
        return loss.mean(dim=(1, 2)), (out.sigmoid() - y) / n
    # cross-entropy: y holds class indices [K, batch]
    log_p = torch.log_softmax(out, dim=2)
    picked = log_p.gather(2, y.unsqueeze(2))  # [K, batch, 1]
    delta = log_p.exp().scatter_add_(2, y.unsqueeze(2), -torch.ones_like(picked))
    return -picked.mean(dim=(1, 2)), delta / out.shape[1]


def _masked_loss_and_delta(
    kind: str, out: Tensor, y: Tensor, rows: Tensor
) -> tuple[Tensor, Tensor]:
    """As _loss_and_delta, each member's mean over its first rows[k] rows only (a member
    with none gets a zero loss and gradient: it sits the step out)."""
    keep = (torch.arange(out.shape[1], device=out.device) < rows.unsqueeze(1)).to(out.dtype)
    keep = keep.unsqueeze(2)  # [K, batch, 1]
    count = rows.clamp(min=1).to(out.dtype).view(-1, 1, 1)
    if kind == "mse":
        error = (out - y) * keep
        n = count * out.shape[2]
        return (error.square() / n).sum(dim=(1, 2)), error * (2.0 / n)
    if kind == "bce":
        n = count * out.shape[2]
        loss = nn.functional.binary_cross_entropy_with_logits(out, y, reduction="none")
        return (loss * keep / n).sum(dim=(1, 2)), (out.sigmoid() - y) * keep / n
    log_p = torch.log_softmax(out, dim=2)
    picked = log_p.gather(2, y.unsqueeze(2)) * keep
    delta = log_p.exp().scatter_add_(2, y.unsqueeze(2), -torch.ones_like(picked))
    return -(picked / count).sum(dim=(1, 2)), delta * keep / count


@dataclass(frozen=True)
class OptimizerSettings:
    """One member's Adam: learning rate, betas, eps, weight decay, decoupled (AdamW)."""

    lr: float
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled: bool = False


class StackedOptimizer:
    """Adam (or AdamW) over a StackedNetwork's buffer, each member with its own settings and
    step count; members sit steps out when told. State rows keep the buffer's layout."""

    def __init__(self, network: StackedNetwork, settings: list[OptimizerSettings]) -> None:
        if len(settings) != network.members:
            raise ValueError("one OptimizerSettings per member")
        self.network = network
        self.settings = settings
        self.exp_avg = torch.zeros_like(network.flat)
        self.exp_avg_sq = torch.zeros_like(network.flat)
        self.steps = [0] * network.members  # each member's count, as its own Adam's `step`
        self._count = torch.zeros((), dtype=torch.float32, device=network.device)
        self._one = torch.ones((), dtype=torch.float32, device=network.device)
        self._uniform = len(set(settings)) == 1

    def step(self, active: list[int] | None = None) -> None:
        """Apply the gradient buffer to the members listed (None: every member)."""
        settings = self.settings
        if active is None and self._uniform and len(set(self.steps)) == 1:
            # the common case: one kernel call over the whole buffer, one shared count
            self._count.fill_(self.steps[0]).add_(self._one)
            _kernel(
                settings[0],
                [self.network.flat],
                [self.network.grad],
                [self.exp_avg],
                [self.exp_avg_sq],
                [self._count],
            )
            self.steps = [count + 1 for count in self.steps]
            return
        members = range(self.network.members) if active is None else active
        groups: dict[OptimizerSettings, list[int]] = {}
        for k in members:
            groups.setdefault(settings[k], []).append(k)
            self.steps[k] += 1
        for setting, ks in groups.items():
            counts = [torch.tensor(float(self.steps[k]), device=self.network.device) for k in ks]
            _kernel(
                setting,
                [self.network.flat[k] for k in ks],
                [self.network.grad[k] for k in ks],
                [self.exp_avg[k] for k in ks],
                [self.exp_avg_sq[k] for k in ks],
                counts,
            )

    def member_state(self, k: int, params: Mapping[str, Tensor]) -> dict[Tensor, dict[str, Tensor]]:
        """Member k's Adam state as torch.optim keeps it, keyed by the member network's
        parameters (`params`: its named parameters): what a checkpoint of it holds."""
        averages = self.network.row(self.exp_avg, k)
        squares = self.network.row(self.exp_avg_sq, k)
        step = float(self.steps[k])
        return {
            parameter: {
                "step": torch.tensor(step, dtype=torch.float32, device=self.network.device),
                "exp_avg": averages[name].clone(),
                "exp_avg_sq": squares[name].clone(),
            }
            for name, parameter in params.items()
        }


def _kernel(
    settings: OptimizerSettings,
    params: list[Tensor],
    grads: list[Tensor],
    averages: list[Tensor],
    squares: list[Tensor],
    counts: list[Tensor],
) -> None:
    kernel = torch._fused_adamw_ if settings.decoupled else torch._fused_adam_
    kernel(
        params, grads, averages, squares, [], counts,
        lr=settings.lr, beta1=settings.beta1, beta2=settings.beta2,
        weight_decay=settings.weight_decay, eps=settings.eps, amsgrad=False, maximize=False,
        grad_scale=None, found_inf=None,
    )  # fmt: skip
