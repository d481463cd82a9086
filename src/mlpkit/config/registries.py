"""The names a YAML config may use, each mapped to what builds it.

Plain dicts, so the config can validate a name against the keys and suggest the nearest one, and
a new activation, loss, optimizer or metric is one line here.

Importing this module does not import torch: a builder names its torch class by path and imports
it when first called, so loading and checking a config (and `mlpkit --help`) stay fast. Call a
value as before: `ACTIVATIONS["relu"]()`, `LOSSES["huber"](delta=1.0)`,
`OPTIMIZERS["adam"](params, lr=1e-3)`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn


def torch_class(path: str, **preset: Any) -> Callable[..., Any]:
    """A builder for the class at `path` (e.g. "torch.nn.ReLU"): calls it with `preset` and the
    caller's arguments, importing its module only on the first call."""
    module_name, _, name = path.rpartition(".")

    def build(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module_name), name)(*args, **preset, **kwargs)

    build.__qualname__ = build.__name__ = path
    return build


ACTIVATIONS: dict[str, Callable[[], nn.Module] | None] = {
    "linear": None,  # no module: the dense layer's output as it is
    "relu": torch_class("torch.nn.ReLU"),
    "sigmoid": torch_class("torch.nn.Sigmoid"),
    "tanh": torch_class("torch.nn.Tanh"),
    "softmax": torch_class("torch.nn.Softmax", dim=-1),
    "gelu": torch_class("torch.nn.GELU"),
    "leaky_relu": torch_class("torch.nn.LeakyReLU"),
    "elu": torch_class("torch.nn.ELU"),
    "selu": torch_class("torch.nn.SELU"),
    "silu": torch_class("torch.nn.SiLU"),
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
    "mse": torch_class("torch.nn.MSELoss"),
    "mae": torch_class("torch.nn.L1Loss"),
    "huber": torch_class("torch.nn.HuberLoss"),
}

# Called as the class was: OPTIMIZERS[name](params, **options). Every option torch's
# constructor refuses is refused earlier by schema.py and rules.py (no torch needed).
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": torch_class("torch.optim.SGD"),
    "adam": torch_class("torch.optim.Adam"),
    "adamw": torch_class("torch.optim.AdamW"),
    "rmsprop": torch_class("torch.optim.RMSprop"),
    "adagrad": torch_class("torch.optim.Adagrad"),
}

Metric = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]


def _mae(y: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    return (pred - y).abs().mean()


def _mse(y: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    return (pred - y).square().mean()


def _rmse(y: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    return _mse(y, pred).sqrt()


def _r2(y: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    import torch

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


# The metric names each task offers (train/tasks.py computes the classification ones with
# sklearn).
METRICS_BY_TASK: dict[str, list[str]] = {
    "regression": ["mae", "mse", "rmse", "r2", "median_ae", "max_error"],
    "binary": ["accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"],
    "multiclass": ["accuracy", "f1_macro", "f1_weighted", "top_k_accuracy", "log_loss"],
}
ALL_METRICS = {name: None for names in METRICS_BY_TASK.values() for name in names}
# Metrics where lower is better (with every loss); early stopping's mode `auto` reads this.
LOWER_IS_BETTER = {"loss", "mae", "mse", "rmse", "median_ae", "max_error", "log_loss"}


def lower_is_better(monitor: str, mode: str) -> bool:
    """Whether smaller values of an epoch column (val_mae, train_loss...) are better: mode min
    or max says so; auto reads the metric's own direction."""
    if mode != "auto":
        return mode == "min"
    return monitor.removeprefix("val_").removeprefix("train_") in LOWER_IS_BETTER


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
    import torch

    y = torch.as_tensor(y_true, dtype=torch.float64).reshape(-1)
    pred = torch.as_tensor(y_pred, dtype=torch.float64).reshape(-1)
    return {
        name: float(REGRESSION_METRICS[name](y, pred))
        for name in (REGRESSION_METRICS if names is None else names)
    }
