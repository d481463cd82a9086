"""K networks of one dense shape trained as one computation (issue 16's stacked engine, core).

Members are ordinary Sequential networks (build_model, each with its own seed); their weights
are stacked into [K, out, in] and [K, out] tensors. A step takes each member's own batch as
one [K, batch, in] tensor: the forward pass is one baddbmm per layer, the backward pass is
written out with bmm (as the direct engine writes it for one network), and one fused Adam call
updates the stacked parameters. Adam is elementwise, so each member's slice moves exactly as
that member alone would (same lr, betas, eps, step count): members do not interact.

What it covers so far: dense layers with linear, relu, tanh or sigmoid activations, the MSE
loss (mean over a member's batch and outputs), Adam/AdamW. Not yet wired into `train --seeds`
or `--folds`; per-member divergence, early stopping and learning rates are still to come.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

ACTIVATIONS = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid"}


class Unstackable(ValueError):
    """The members cannot be stacked; the message says why (for run.json's fallback note)."""


@dataclass(frozen=True)
class _Layer:
    activation: str  # linear | relu | tanh | sigmoid


def _layers(model: nn.Module) -> tuple[list[nn.Linear], list[_Layer]]:
    """A Sequential of Linear layers, each optionally followed by a covered activation."""
    if not isinstance(model, nn.Sequential):
        raise Unstackable("only a plain stack of dense layers (no named inputs)")
    linears: list[nn.Linear] = []
    layers: list[_Layer] = []
    for module in model:
        if isinstance(module, nn.Linear):
            if module.bias is None:
                raise Unstackable("dense layers without a bias")
            linears.append(module)
            layers.append(_Layer("linear"))
        elif type(module) in ACTIVATIONS and layers and layers[-1].activation == "linear":
            layers[-1] = _Layer(ACTIVATIONS[type(module)])
        else:
            raise Unstackable(f"a {type(module).__name__} layer")
    return linears, layers


class StackedDense:
    """The members' stacked weights, forward pass and written-out MSE gradients."""

    def __init__(self, members: list[nn.Module]) -> None:
        if not members:
            raise Unstackable("no members")
        shapes = []
        stacks = []
        for member in members:
            linears, layers = _layers(member)
            shapes.append(([tuple(linear.weight.shape) for linear in linears], layers))
            stacks.append(linears)
        if any(shape != shapes[0] for shape in shapes):
            raise Unstackable("members of different shapes")
        self.layers = shapes[0][1]
        with torch.no_grad():
            self.weights = [
                torch.stack([linears[i].weight for linears in stacks]).clone()
                for i in range(len(self.layers))
            ]  # [K, out, in] each
            self.biases = [
                torch.stack([linears[i].bias for linears in stacks]).clone()
                for i in range(len(self.layers))
            ]  # [K, out] each

    @property
    def parameters(self) -> list[Tensor]:
        return [p for pair in zip(self.weights, self.biases, strict=True) for p in pair]

    @property
    def members(self) -> int:
        return int(self.weights[0].shape[0])

    def forward(self, x: Tensor) -> Tensor:
        """[K, batch, in] -> [K, batch, out]."""
        for weight, bias, layer in zip(self.weights, self.biases, self.layers, strict=True):
            x = _activate(torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2)), layer)
        return x

    def mse_gradients(self, x: Tensor, y: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Each member's MSE loss [K] on its batch and the gradients of the parameters (in the
        order of `parameters`), written out: what autograd gives for each member alone."""
        inputs, outputs = [], []
        h = x
        for weight, bias, layer in zip(self.weights, self.biases, self.layers, strict=True):
            inputs.append(h)
            h = _activate(torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2)), layer)
            outputs.append(h)
        error = h - y  # [K, batch, out]
        loss = (error * error).mean(dim=(1, 2))
        delta = error * (2.0 / (error.shape[1] * error.shape[2]))
        grads: list[Tensor] = []
        for i in reversed(range(len(self.layers))):
            delta = delta * _derivative(outputs[i], self.layers[i])
            grads.append(delta.sum(dim=1))  # bias [K, out]
            grads.append(torch.bmm(delta.transpose(1, 2), inputs[i]))  # weight [K, out, in]
            if i:
                delta = torch.bmm(delta, self.weights[i])
        grads.reverse()  # weight, bias per layer, in order
        return loss, grads

    def member(self, k: int, model: nn.Module) -> nn.Module:
        """Copy member k's weights into `model` (a network of the members' shape)."""
        linears, _ = _layers(model)
        with torch.no_grad():
            for linear, weight, bias in zip(linears, self.weights, self.biases, strict=True):
                linear.weight.copy_(weight[k])
                linear.bias.copy_(bias[k])
        return model


def _activate(x: Tensor, layer: _Layer) -> Tensor:
    if layer.activation == "relu":
        return torch.relu(x)
    if layer.activation == "tanh":
        return torch.tanh(x)
    if layer.activation == "sigmoid":
        return torch.sigmoid(x)
    return x


def _derivative(output: Tensor, layer: _Layer) -> Tensor | float:
    """d activation / d input, from the activation's output."""
    if layer.activation == "relu":
        return (output > 0).to(output.dtype)
    if layer.activation == "tanh":
        return 1.0 - output * output
    if layer.activation == "sigmoid":
        return output * (1.0 - output)
    return 1.0


class StackedAdam:
    """One fused Adam (or AdamW) over the stacked parameters: each member's slice moves as that
    member's own Adam would."""

    def __init__(
        self, stack: StackedDense, lr: float, weight_decay: float = 0.0, decoupled: bool = False
    ) -> None:
        self.stack = stack
        for parameter in stack.parameters:
            parameter.requires_grad_(True)
        optimizer = torch.optim.AdamW if decoupled else torch.optim.Adam
        self.optimizer = optimizer(stack.parameters, lr=lr, weight_decay=weight_decay, fused=True)

    def step(self, x: Tensor, y: Tensor) -> Tensor:
        """One step of every member on its own batch; returns the members' losses [K]."""
        with torch.no_grad():
            loss, grads = self.stack.mse_gradients(x, y)
        for parameter, grad in zip(self.stack.parameters, grads, strict=True):
            parameter.grad = grad
        self.optimizer.step()
        return loss
