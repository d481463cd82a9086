"""The names a YAML config may use, each mapped to what builds it.

Plain dicts, so the config can validate a name against the keys and suggest the nearest one, and
a new activation, loss, optimizer or metric is one line here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module] | None] = {
    "linear": None,  # no module: the dense layer's output as it is
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "softmax": lambda: nn.Softmax(dim=-1),
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "silu": nn.SiLU,
}

# The range each activation can produce; used to refuse an output layer that cannot reach the
# target (a sigmoid head on a target that runs to 46 mpg).
ACTIVATION_RANGES: dict[str, tuple[float, float]] = {
    "relu": (0.0, float("inf")),
    "sigmoid": (0.0, 1.0),
    "tanh": (-1.0, 1.0),
    "softmax": (0.0, 1.0),
}

LOSSES: dict[str, Callable[..., nn.Module]] = {
    "mse": nn.MSELoss,
    "mae": nn.L1Loss,
    "huber": nn.HuberLoss,
}

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _mae(y: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    return (pred - y).abs().mean()


def _mse(y: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    return (pred - y).square().mean()


def _rmse(y: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    return _mse(y, pred).sqrt()


def _r2(y: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    residual = (pred - y).square().sum()
    total = (y - y.mean()).square().sum()
    # sklearn's convention for a constant target: 1 if predicted exactly, else 0.
    if total == 0:
        return torch.where(residual == 0, 1.0, 0.0).to(y.dtype)
    return 1 - residual / total


def _median_ae(y: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    # torch.median takes the lower middle value; sklearn (numpy) averages the two middle ones.
    return (pred - y).abs().quantile(0.5)


def _max_error(y: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    return (pred - y).abs().max()


# The metric names each task offers (tasks.py computes the classification ones with sklearn).
METRICS_BY_TASK: dict[str, list[str]] = {
    "regression": ["mae", "mse", "rmse", "r2", "median_ae", "max_error"],
    "binary": ["accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"],
    "multiclass": ["accuracy", "f1_macro", "f1_weighted", "top_k_accuracy", "log_loss"],
}
ALL_METRICS = {name: None for names in METRICS_BY_TASK.values() for name in names}
# Metrics where lower is better (with every loss); early stopping's mode `auto` reads this.
LOWER_IS_BETTER = {"loss", "mae", "mse", "rmse", "median_ae", "max_error", "log_loss"}

# Regression metrics, all in the target's original units; inputs are 1-D tensors.
REGRESSION_METRICS: dict[str, Metric] = {
    "mae": _mae,
    "mse": _mse,
    "rmse": _rmse,
    "r2": _r2,
    "median_ae": _median_ae,
    "max_error": _max_error,
}


def regression_scores(
    y_true: torch.Tensor | np.ndarray,
    y_pred: torch.Tensor | np.ndarray,
    names: list[str] | None = None,
) -> dict[str, float]:
    """The named regression metrics (all of them by default) as plain floats, in float64."""
    y = torch.as_tensor(y_true, dtype=torch.float64).reshape(-1)
    pred = torch.as_tensor(y_pred, dtype=torch.float64).reshape(-1)
    return {
        name: float(REGRESSION_METRICS[name](y, pred))
        for name in (REGRESSION_METRICS if names is None else names)
    }
