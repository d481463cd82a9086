"""What a config will cost, from the config and the fitted preprocessing alone, before anything
is allocated: memory, and the number of optimizer steps.

Memory, in float32 bytes (4 a number):

    parameters x copies: weights, gradients, the optimizer's moments, early stopping's best
      (x model.ensemble's members, and their activations too: the stacked engine holds all)
    + activations: every layer's outputs for the larger of a training batch, twice (kept for
      the backward pass, then their gradients) and an evaluation batch (the largest split, up
      to EVAL_BATCH rows)
    + the data as tensors: every row held in memory x (inputs + target), and the epoch's
      shuffled copy of the training rows

The optimizer's moments per parameter: adam and adamw 2 (3 with amsgrad), sgd 1 with momentum
(else 0), rmsprop 1 (+1 with momentum, +1 centered), adagrad 1. Each layer is charged its
parameters and its outputs, so a refusal names the layer that costs most. Over the memory
available it is a ConfigError: a GPU's free memory for CUDA; on the CPU the machine's
available memory, or the address space left where RLIMIT_AS caps it; where neither is known,
only an estimate over ABSURD is. Rebuilding a trained run's network (eval, predict,
export) is checked the same way, for its weights alone.

Steps: epochs x batches an epoch (the training rows over the batch size, or a synthetic
source's iterations_per_epoch); over MAX_STEPS it is a ConfigError, with the count and how long
it would take at the fastest step measured (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mlpkit.config import registries
from mlpkit.config.load import LoadedConfig
from mlpkit.config.schema import (
    AdamConfig,
    BatchNormLayer,
    Config,
    DenseLayer,
    DropoutLayer,
    Layer,
    RMSpropConfig,
    SGDConfig,
)
from mlpkit.data.preprocessing import Preprocessor
from mlpkit.errors import ConfigError, Problem
from mlpkit.reading import available_memory

if TYPE_CHECKING:
    import torch

    from mlpkit.train.prepare import Prepared

FLOAT = 4  # bytes of a float32
GB = 1024**3
ABSURD = 1024 * GB  # refused even where the available memory is unknown
MAX_STEPS = 10**9
FASTEST_STEP = 50e-6  # seconds: mpg's step on the direct engine (docs/PERFORMANCE.md)
# Rows per forward pass when the loop predicts (train/loop.py): large enough to be one pass for
# mpg. Here because the budget charges its outputs, and the budget imports no torch.
EVAL_BATCH = 8192

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class Part:
    """A layer: where it is in the config, what it is, its parameters, and the numbers it
    outputs per row (with the pre-activation, when it has an activation)."""

    where: Path_
    what: str
    parameters: int
    per_row: int


@dataclass(frozen=True)
class Estimate:
    """Bytes a run needs in all, and what they are made of."""

    total: int
    shares: dict[Part, int]  # each layer's bytes: its parameters' copies and its outputs
    copies: list[str]  # what is kept per parameter: weights, gradients, ...
    rows: int  # rows whose outputs are held at once
    batch: str  # which batch that is, in words
    data: int = 0  # bytes of the data's tensors
    data_shape: tuple[int, int] = (0, 0)  # their rows and inputs
    members: int = 1  # model.ensemble: each layer is there once per member

    def parameter_bytes(self, part: Part) -> int:
        return self.members * FLOAT * part.parameters * len(self.copies)


def check(prepared: Prepared, device: torch.device | None = None) -> None:
    """Refuse a config whose training cannot fit in memory or cannot end in a human time, on
    `device` (None: the CPU, without importing torch).

    Raises:
        ConfigError: the step count is over MAX_STEPS, or the memory estimate is over what
            `device` has available (over ABSURD where that is unknown), naming the layer.
    """
    check_steps(prepared)
    _refuse_over(prepared.loaded, training_estimate(prepared), device, "training")


def check_network(loaded: LoadedConfig, preprocessor: Preprocessor, device: torch.device) -> None:
    """Refuse to rebuild a trained run's network (eval, predict, export) whose weights alone
    cannot fit: only an altered config.yaml asks for that, as the run trained with them.

    Raises:
        ConfigError: the weights need more memory than `device` has, naming the layer.
    """
    parts = layer_parts(loaded.config, preprocessor)
    members = loaded.config.model.ensemble
    shares = {p: members * FLOAT * p.parameters for p in parts}
    estimate = Estimate(sum(shares.values()), shares, ["weights"], 0, "", members=members)
    _refuse_over(loaded, estimate, device, "the run's network")


def steps_per_epoch(prepared: Prepared) -> int:
    """Optimizer steps an epoch: a synthetic source's iterations, else the batches of rows."""
    training = prepared.config.training
    if prepared.config.data.source is not None:
        assert training.iterations_per_epoch is not None  # the config rules ask for it
        return training.iterations_per_epoch
    return math.ceil(prepared.split_counts["train"] / training.batch_size)


def check_steps(prepared: Prepared) -> None:
    """Raises ConfigError: epochs x steps an epoch is over MAX_STEPS."""
    training = prepared.config.training
    each = steps_per_epoch(prepared)
    steps = training.epochs * each
    if steps <= MAX_STEPS:
        return
    source = prepared.config.data.source is not None
    per = "training.iterations_per_epoch" if source else f"batch size {training.batch_size:,}"
    raise ConfigError(
        prepared.loaded.problem(
            ("training", "epochs"),
            f"{training.epochs:,} epochs of {each:,} steps ({per}) make {steps:,} optimizer "
            f"steps, over the {MAX_STEPS:,} mlpkit will start: even at {FASTEST_STEP * 1e6:.0f} "
            f"us a step (the fastest measured) that is {_duration(steps * FASTEST_STEP)}",
            "lower training.epochs (training.early_stopping ends a run that stops improving)",
        )
    )


def training_estimate(prepared: Prepared) -> Estimate:
    """The memory a training run of the prepared config needs."""
    config = prepared.config
    parts = layer_parts(config, prepared.preprocessor)
    copies = _copies(config)
    counts = prepared.split.counts()  # the rows held in memory (a stream's samples)
    batch = config.training.batch_size
    if not prepared.streams:
        batch = min(batch, counts["train"])
    evaluated = min(EVAL_BATCH, max(counts.values()))
    if 2 * batch >= evaluated:
        rows, which = 2 * batch, f"a training batch of {batch:,} rows, with their gradients"
    else:
        rows, which = evaluated, f"the {evaluated:,} rows evaluated at once"
    # An ensemble's members are charged as the stacked engine holds them: all at once.
    members = config.model.ensemble
    shares = {p: members * FLOAT * (p.parameters * len(copies) + rows * p.per_row) for p in parts}
    in_memory = sum(counts.values())
    if config.training.shuffle and not prepared.streams:
        in_memory += counts["train"]  # each epoch gathers the training rows in its order
    width = len(prepared.preprocessor.input_names)
    data = FLOAT * in_memory * (width + 1)
    total = sum(shares.values()) + data
    shape = (sum(counts.values()), width)
    return Estimate(total, shares, copies, rows, which, data, shape, members)


def _copies(config: Config) -> list[str]:
    """What training keeps per parameter, in words."""
    copies = ["weights", "gradients"]
    moments = optimizer_moments(config)
    name = config.training.optimizer.name
    copies += [f"{name} moment {index + 1}" for index in range(moments)]
    stopping = config.training.early_stopping
    if stopping is not None and stopping.restore_best:
        copies.append("the best epoch's copy")
    return copies


def optimizer_moments(config: Config) -> int:
    """Numbers the optimizer keeps per parameter."""
    settings = config.training.optimizer
    if isinstance(settings, AdamConfig):  # and adamw, a subclass
        return 3 if settings.amsgrad else 2
    if isinstance(settings, SGDConfig):
        return 1 if settings.momentum else 0
    if isinstance(settings, RMSpropConfig):
        return 1 + int(settings.momentum > 0) + int(settings.centered)
    return 1  # adagrad: the sum of squares


def layer_parts(config: Config, preprocessor: Preprocessor) -> list[Part]:
    """Each layer's parameters and outputs per row, as train/model.py builds the network on
    the preprocessed inputs (the named inputs' columns, when the model has them)."""
    inputs = config.model.inputs
    if inputs is None:
        return _stack(config.model.layers, len(preprocessor.input_names), ("model", "layers"))[0]
    parts, widths = [], []
    for name, spec in inputs.items():
        width = len(preprocessor.positions(spec.columns))
        branch, out = _stack(spec.layers, width, ("model", "inputs", name, "layers"))
        parts += branch
        widths.append(out)
    return parts + _stack(config.model.layers, sum(widths), ("model", "layers"))[0]


def _stack(layers: list[Layer], width: int, where: Path_) -> tuple[list[Part], int]:
    """The parts of a layer list fed `width` columns, and the width that comes out."""
    parts = []
    for index, layer in enumerate(layers):
        path = (*where, index)
        if isinstance(layer, DenseLayer):
            weights = width * layer.units + (layer.units if layer.bias else 0)
            activated = registries.ACTIVATIONS[layer.activation] is not None
            per_row = layer.units * (2 if activated else 1)
            parts.append(Part(path, f"dense {width:,} -> {layer.units:,}", weights, per_row))
            width = layer.units
        elif isinstance(layer, DropoutLayer):  # its output and its mask
            parts.append(Part(path, f"dropout over {width:,}", 0, 2 * width))
        elif isinstance(layer, BatchNormLayer):  # scale and shift; normalized and output
            parts.append(Part(path, f"batch_norm over {width:,}", 2 * width, 2 * width))
    return parts, width


def available_bytes(device: torch.device | None) -> int:
    """Memory a run may use on `device` now, 0 if unknown: a GPU's free memory; on the CPU
    (or None) reading.available_memory (the machine's, less where a container or an
    address-space cap holds the process to less)."""
    if device is not None and device.type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return available_memory()


def _refuse_over(
    loaded: LoadedConfig, estimate: Estimate, device: torch.device | None, doing: str
) -> None:
    available = available_bytes(device)
    if estimate.total > (available if available > 0 else ABSURD):
        raise ConfigError(_memory_problem(loaded, estimate, available, doing))


def _memory_problem(
    loaded: LoadedConfig, estimate: Estimate, available: int, doing: str
) -> Problem:
    """The refusal, located at the layer that costs most (at the features when the data
    does)."""
    have = (
        f"{_gb(available)} is available"
        if available
        else f"the available memory is unknown and mlpkit starts at most {_gb(ABSURD)}"
    )
    needs = f"{doing} needs about {_gb(estimate.total)} of memory and {have}"
    part, share = max(estimate.shares.items(), key=lambda item: item[1])
    if estimate.data > share:
        rows, width = estimate.data_shape
        return loaded.problem(
            ("data", "features"),
            f"{needs}; {_gb(estimate.data)} of it is the data as float32 tensors ({rows:,} rows "
            f"x {width:,} inputs, one-hot columns included)",
            "stream the file (data.stream: true) or leave out wide categorical features",
        )
    parameters = estimate.parameter_bytes(part)
    outputs = share - parameters
    uses = []
    if parameters:
        kept = ", ".join(estimate.copies)
        uses.append(f"{_gb(parameters)} for its {part.parameters:,} parameters ({kept})")
    if estimate.rows:
        uses.append(
            f"{_gb(outputs)} for its outputs ({part.per_row:,} numbers a row) on {estimate.batch}"
        )
    dense = part.what.startswith("dense")
    hint = "use fewer units"
    if estimate.batch.startswith("a training batch") and outputs > parameters:
        hint = "lower training.batch_size or use fewer units"
    what = part.what
    if estimate.members > 1:
        what += f", in each of the {estimate.members} members of model.ensemble"
        hint += " or fewer ensemble members"
    return loaded.problem(
        (*part.where, "units") if dense else part.where,
        f"{needs}; {_gb(share)} of it is this layer ({what}): {', '.join(uses)}",
        hint,
    )


def _gb(size: int) -> str:
    return f"{size / GB:,.1f} GB"


def _duration(seconds: float) -> str:
    for unit, length in (("years", 365 * 86400), ("days", 86400), ("hours", 3600)):
        if seconds >= length:
            return f"{seconds / length:,.1f} {unit}"
    return f"{seconds:,.0f} seconds"
