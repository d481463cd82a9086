"""Build the network the config describes, initialized from an explicit seed."""

from __future__ import annotations

import math

import torch
from torch import nn

from mlpkit import components
from mlpkit.config import BatchNormLayer, DenseLayer, DropoutLayer, Layer


def build_model(
    layers: list[Layer],
    in_features: int,
    seed: int,
    device: torch.device | str = "cpu",
    logits: bool = False,
) -> nn.Sequential:
    """A Sequential of the configured layers; the same seed gives the same weights anywhere.

    With `logits`, a final sigmoid or softmax is left out (the task applies it after the loss).
    Weights are drawn on the CPU from a generator of their own (PyTorch's default init scheme),
    then moved, so a CUDA run starts from exactly the CPU run's weights.
    """
    modules: list[nn.Module] = []
    width = in_features
    for layer in layers:
        if isinstance(layer, DenseLayer):
            modules.append(nn.Linear(width, layer.units, bias=layer.bias))
            make_activation = components.ACTIVATIONS[layer.activation]
            if make_activation is not None:
                modules.append(make_activation())
            width = layer.units
        elif isinstance(layer, DropoutLayer):
            modules.append(nn.Dropout(layer.rate))
        elif isinstance(layer, BatchNormLayer):
            modules.append(nn.BatchNorm1d(width, eps=layer.eps, momentum=layer.momentum))
    if logits and isinstance(modules[-1], nn.Sigmoid | nn.Softmax):
        modules.pop()  # classification trains on logits; tasks.py applies sigmoid or softmax
    model = nn.Sequential(*modules)
    _initialize(model, torch.Generator().manual_seed(seed))
    return model.to(device)


def _initialize(model: nn.Module, generator: torch.Generator) -> None:
    # nn.Linear.reset_parameters, but drawing from our generator instead of the global one.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
                if module.bias is not None:
                    bound = 1 / math.sqrt(module.in_features)
                    nn.init.uniform_(module.bias, -bound, bound, generator=generator)
