"""Build what training updates from a prepared config: the network, its optimizer, loss and
learning-rate schedule, the engine that runs the steps, and the step itself.

Everything torch may refuse is built here, before a run directory exists, so a refusal is a
config error that leaves runs/ as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from mlpkit.config import registries
from mlpkit.config.schema import Config
from mlpkit.data.preprocessing import Preprocessor
from mlpkit.errors import ConfigError, EnvironmentFault, Problem
from mlpkit.train import budget, direct, eager, threads
from mlpkit.train.distributed import Group, ReducedAutogradStep
from mlpkit.train.loop import EarlyStopping
from mlpkit.train.model import Ensemble, InputSpec, build_model, member_seed
from mlpkit.train.prepare import Prepared
from mlpkit.train.schedules import Schedule
from mlpkit.train.steps import AutogradStep, Step
from mlpkit.train.tasks import Regression, Task

# Optimizers with a fused kernel (one call updates every parameter): faster than the for-each
# default (measured: docs/PERFORMANCE.md), and what the direct step calls.
FUSED = ("sgd", "adam", "adamw")


@dataclass(frozen=True)
class Engine:
    """How steps run: `direct` (direct.py) or `autograd`; why not direct; CPU threads."""

    name: str
    threads: int
    why_not_direct: str | None = None


@dataclass(frozen=True)
class Trainer:
    """What training updates: the network, its optimizer and learning-rate schedule, the loss
    it minimizes, the engine its steps run on, and when to stop early."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    engine: Engine
    schedule: Schedule | None = None
    stopping: EarlyStopping | None = None


def network(
    config: Config, preprocessor: Preprocessor, task: Task, device: torch.device
) -> nn.Module:
    """The configured network, as a trained run's weights load into it: one network, or with
    model.ensemble K > 1 an Ensemble of K members (its weights `members.<k>.<name>`).
    Classification keeps logits as its output (see tasks.py and model.Ensemble)."""
    count = config.model.ensemble
    if count == 1:
        return member_network(config, preprocessor, task, device, 0)
    members = [member_network(config, preprocessor, task, device, k) for k in range(count)]
    return Ensemble(members, COMBINE[task.name])


# How an Ensemble averages its members, by task (model.Ensemble says why these forms).
COMBINE = {"regression": "mean", "binary": "sigmoid", "multiclass": "softmax"}


def member_network(
    config: Config, preprocessor: Preprocessor, task: Task, device: torch.device, member: int
) -> nn.Module:
    """One network of the configured architecture, from member `member`'s seed (member 0:
    the config's seed, the network a run without an ensemble has)."""
    logits = not isinstance(task, Regression)
    width = len(preprocessor.input_names)
    inputs = input_specs(config, preprocessor)
    seed = member_seed(config.seed, member)
    return build_model(config.model.layers, width, seed, device, logits, inputs)


def input_specs(config: Config, preprocessor: Preprocessor) -> list[InputSpec] | None:
    """The named inputs with the positions of their encoded columns, or None for one input."""
    if config.model.inputs is None:
        return None
    return [
        InputSpec(name, preprocessor.positions(spec.columns), spec.layers)
        for name, spec in config.model.inputs.items()
    ]


def make_optimizer(model: nn.Module, config: Config) -> torch.optim.Optimizer:
    """training.optimizer over the model's parameters, fused where torch has a fused kernel."""
    settings = config.training.optimizer
    options = settings.model_dump(exclude={"name"})
    if "betas" in options:
        options["betas"] = tuple(options["betas"])
    if settings.name in FUSED:
        options["fused"] = True
    optimizer_class = registries.OPTIMIZERS[settings.name]
    eager.skip_dynamo_import()
    return optimizer_class(model.parameters(), **options)


def build_trainer(prepared: Prepared, device: torch.device, member: int = 0) -> Trainer:
    """Build model, optimizer and loss, so whatever torch refuses is known before a run exists.

    The model is one network: the config's, or with model.ensemble K > 1 member `member`'s
    (train/ensemble.py trains the members in turn, each with a trainer of its own).

    Raises:
        ConfigError: the run would not fit in memory or take over budget.MAX_STEPS steps
            (checked before anything is allocated), torch refuses an optimizer option the
            config checks let through, or training.engine is direct for a model, loss or
            optimizer it does not cover.
        EnvironmentFault: the memory ran out while building the network all the same.
    """
    budget.check(prepared, device)
    model = _network(prepared, device, member)
    try:
        optimizer = make_optimizer(model, prepared.config)
    except ValueError as exc:
        problem = prepared.loaded.problem(("training", "optimizer"), f"torch refuses it: {exc}")
        raise ConfigError(problem) from None
    loss_fn = prepared.task.loss(device)
    engine = choose_engine(prepared, model, loss_fn, optimizer)
    settings = prepared.config.training.scheduler
    schedule = None
    if settings is not None:
        schedule = Schedule(settings, optimizer, prepared.config.training.epochs)
    stopping = early_stopping(prepared.config)
    return Trainer(model, optimizer, loss_fn, engine, schedule, stopping)


def _network(prepared: Prepared, device: torch.device, member: int) -> nn.Module:
    """The network, built after the budget passed it; should the memory still run out (other
    processes took it meanwhile), that is the machine's failure, not a bug."""
    try:
        config, preprocessor, task = prepared.config, prepared.preprocessor, prepared.task
        return member_network(config, preprocessor, task, device, member)
    except (MemoryError, RuntimeError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        if not isinstance(exc, MemoryError | torch.OutOfMemoryError) and "alloc" not in str(exc):
            raise
        size = budget.training_estimate(prepared).total / budget.GB
        what = f"out of memory building the network (training needs about {size:,.1f} GB)"
        raise EnvironmentFault(Problem(what, where="model")) from None


def choose_engine(
    prepared: Prepared, model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer
) -> Engine:
    """training.engine resolved: auto takes the direct step wherever it covers the model."""
    training = prepared.config.training
    parameters = sum(p.numel() for p in model.parameters())
    count = threads.choose(training.threads, parameters, training.batch_size)
    if training.engine == "autograd":
        return Engine("autograd", count)
    why_not = direct.unsupported(model, loss_fn, optimizer)
    if why_not is None:
        return Engine("direct", count)
    if training.engine == "direct":
        problem = prepared.loaded.problem(
            ("training", "engine"),
            f"the direct step does not cover {why_not}",
            hint="use engine: auto (direct where it applies) or autograd",
        )
        raise ConfigError(problem)
    return Engine("autograd", count, why_not)


def make_step(trainer: Trainer, group: Group | None = None) -> tuple[Step, Trainer]:
    """The step the trainer's engine runs, and the trainer as it will train; under torchrun
    (`group`), the step sums each batch's gradients over the group's processes.

    Call it after any checkpoint's optimizer state is loaded: the direct step works on that
    state in place. A checkpoint of an older mlpkit may restore a non-fused optimizer, which
    the direct step does not cover: then the trainer returned trains through autograd and
    says why.
    """
    model, loss_fn, optimizer = trainer.model, trainer.loss_fn, trainer.optimizer

    def autograd() -> Step:  # made only when needed: DDP's constructor is a collective
        if group is None:
            return AutogradStep(model, loss_fn, optimizer)
        return ReducedAutogradStep(model, loss_fn, optimizer, group)

    if trainer.engine.name != "direct":
        return autograd(), trainer
    try:
        step = direct.DirectStep(model, loss_fn, optimizer, group)
    except direct.Unsupported as why:
        engine = Engine("autograd", trainer.engine.threads, str(why))
        return autograd(), replace(trainer, engine=engine)
    return step, trainer


def early_stopping(config: Config) -> EarlyStopping | None:
    """The loop's early stopping from the config; mode auto reads the metric's direction."""
    settings = config.training.early_stopping
    if settings is None:
        return None
    lower = registries.lower_is_better(settings.monitor, settings.mode)
    return EarlyStopping(
        settings.monitor, lower, settings.patience, settings.min_delta, settings.restore_best
    )
