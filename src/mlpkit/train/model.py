"""Build the network the config describes, initialized from an explicit seed."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mlpkit.config import registries
from mlpkit.config.schema import BatchNormLayer, DenseLayer, DropoutLayer, Layer


@dataclass(frozen=True)
class InputSpec:
    """A named input: which model-input columns it takes, and its own layers."""

    name: str
    columns: list[int]  # positions among the preprocessed input columns
    layers: list[Layer]


class MultiInput(nn.Module):
    """Named inputs, each its own columns through its own branch, concatenated, then a trunk.

    The batch stays one tensor [rows, all input columns], so training slices it like any other;
    each input's columns are gathered here.
    """

    def __init__(
        self, columns: list[list[int]], branches: list[nn.Sequential], trunk: nn.Sequential
    ) -> None:
        super().__init__()
        for index, positions in enumerate(columns):
            # not persistent: derived from preprocessing, so not part of the saved weights
            self.register_buffer(f"columns_{index}", torch.tensor(positions), persistent=False)
        self.branches = nn.ModuleList(branches)
        self.trunk = trunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [
            branch(x.index_select(1, self.get_buffer(f"columns_{index}")))  # [rows, width_i]
            for index, branch in enumerate(self.branches)
        ]
        return self.trunk(torch.cat(parts, dim=1))  # type: ignore[no-any-return]


class Ensemble(nn.Module):
    """K members of one architecture, read as one network: its output averages theirs in the
    terms the task reads outputs in, so tasks.py, the losses and the exports need nothing new.

    - `mean` (regression): the members' mean output.
    - `softmax` (multiclass): log of the mean probabilities, log(mean_k softmax(z_k)) =
      logsumexp_k(log_softmax(z_k)) - log K. They sum to 1, so the task's softmax of it gives
      the mean probabilities back, and cross-entropy on it is the ensemble's log loss.
    - `sigmoid` (binary): the logit of the mean probability, log p - log(1 - p) =
      logsumexp_k(logsigmoid(z_k)) - logsumexp_k(logsigmoid(-z_k)) (the log K cancels); the
      task's sigmoid of it gives p back. Both forms stay finite for any finite logits.
    """

    def __init__(self, members: list[nn.Module], combine: str) -> None:
        super().__init__()
        if combine not in ("mean", "softmax", "sigmoid"):
            raise ValueError(f"unknown combination '{combine}'")
        self.members = nn.ModuleList(members)
        self.combine = combine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = torch.stack([member(x) for member in self.members])  # [K, rows, outputs]
        if self.combine == "mean":
            return outputs.mean(dim=0)
        if self.combine == "softmax":
            log_p = torch.log_softmax(outputs, dim=2)  # [K, rows, classes]
            return torch.logsumexp(log_p, dim=0) - math.log(len(self.members))
        positive = torch.logsumexp(nn.functional.logsigmoid(outputs), dim=0)  # log K + log p
        negative = torch.logsumexp(nn.functional.logsigmoid(-outputs), dim=0)  # log K + log(1-p)
        return positive - negative


def member_seed(seed: int, member: int) -> int:
    """Member `member`'s seed (its initial weights, shuffle and dropout): member 0 has the
    config's own, so it is the network a run without an ensemble trains; the others draw
    theirs from numpy's SeedSequence of (seed, member), so they are unrelated to the seeds
    `train --seeds` gives the next runs (seed + 1, ...)."""
    if member == 0:
        return seed
    return int(np.random.SeedSequence([seed, member]).generate_state(1)[0])  # < 2**32


def build_model(
    layers: list[Layer],
    in_features: int,
    seed: int,
    device: torch.device | str = "cpu",
    logits: bool = False,
    inputs: list[InputSpec] | None = None,
) -> nn.Module:
    """The configured network; the same seed gives the same weights anywhere.

    Without `inputs`, a Sequential over all `in_features` columns; with them, a MultiInput.
    With `logits`, a final sigmoid or softmax is left out (the task applies it after the loss).
    Weights are drawn on the CPU from a generator of their own (PyTorch's default init scheme),
    then moved, so a CUDA run starts from exactly the CPU run's weights.
    """
    if inputs is None:
        model: nn.Module = nn.Sequential(*_trunk(layers, in_features, logits))
    else:
        branches, widths = [], []
        for spec in inputs:
            modules, width = _stack(spec.layers, len(spec.columns))
            branches.append(nn.Sequential(*modules))  # no layers: passes the columns through
            widths.append(width)
        trunk = nn.Sequential(*_trunk(layers, sum(widths), logits))
        model = MultiInput([spec.columns for spec in inputs], branches, trunk)
    _initialize(model, torch.Generator().manual_seed(seed))
    return model.to(device)


def _trunk(layers: list[Layer], width: int, logits: bool) -> list[nn.Module]:
    modules, _ = _stack(layers, width)
    if logits and isinstance(modules[-1], nn.Sigmoid | nn.Softmax):
        modules.pop()  # classification trains on logits; tasks.py applies sigmoid or softmax
    return modules


def _stack(layers: list[Layer], width: int) -> tuple[list[nn.Module], int]:
    """The modules of a layer list fed `width` columns, and the width that comes out."""
    modules: list[nn.Module] = []
    for layer in layers:
        if isinstance(layer, DenseLayer):
            modules.append(nn.Linear(width, layer.units, bias=layer.bias))
            make_activation = registries.ACTIVATIONS[layer.activation]
            if make_activation is not None:
                modules.append(make_activation())
            width = layer.units
        elif isinstance(layer, DropoutLayer):
            modules.append(nn.Dropout(layer.rate))
        elif isinstance(layer, BatchNormLayer):
            modules.append(nn.BatchNorm1d(width, eps=layer.eps, momentum=layer.momentum))
    return modules, width


def _initialize(model: nn.Module, generator: torch.Generator) -> None:
    # nn.Linear.reset_parameters, but drawing from our generator instead of the global one.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
                if module.bias is not None:
                    bound = 1 / math.sqrt(module.in_features)
                    nn.init.uniform_(module.bias, -bound, bound, generator=generator)


def non_finite(tensors: Mapping[str, torch.Tensor]) -> tuple[str, int] | None:
    """The first floating-point tensor holding NaN or infinite values, by name, with how many
    it holds; None when all are finite. One host sync per device the tensors are on."""
    names = [name for name, t in tensors.items() if t.is_floating_point() and t.numel()]
    counts: dict[str, int] = {}
    for device in {tensors[name].device for name in names}:
        here = [name for name in names if tensors[name].device == device]
        found = torch.stack([(~torch.isfinite(tensors[name])).sum() for name in here])
        counts |= dict(zip(here, found.tolist(), strict=True))
    return next(((name, counts[name]) for name in names if counts[name]), None)
