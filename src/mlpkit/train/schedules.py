"""Learning-rate schedules from training.scheduler, built on torch's own schedulers.

A Schedule steps once at the end of each epoch, after validation, so every epoch trains at one
learning rate (history.csv's `lr`), reduce_on_plateau can watch a validation value, and a
checkpoint taken mid-epoch holds the schedule as the epoch began. Warmup is torch's LinearLR
for the first epochs, then the main schedule starts from the optimizer's lr; torch's
SequentialLR would do the same but steps its schedulers with a deprecated epoch argument and
does not take ReduceLROnPlateau.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch.optim import lr_scheduler

from mlpkit.config import registries
from mlpkit.config.schema import (
    CosineSchedule,
    ExponentialSchedule,
    OneCycleSchedule,
    PlateauSchedule,
    Scheduler,
    StepSchedule,
)
from mlpkit.train.loop import EpochRecord


class Schedule:
    """training.scheduler over an optimizer; `step(record)` at the end of each epoch."""

    def __init__(self, settings: Scheduler, optimizer: torch.optim.Optimizer, epochs: int) -> None:
        self.settings = settings
        self.epochs_done = 0
        self.warmup_epochs = getattr(settings, "warmup_epochs", 0)
        # The main schedule first: its constructor records the optimizer's lr as the base it
        # starts from; the warmup built after it lowers the lr to its first epoch's.
        self.main = _main_schedule(settings, optimizer, epochs - self.warmup_epochs)
        self.warmup = None
        if self.warmup_epochs:
            self.warmup = lr_scheduler.LinearLR(
                optimizer,
                start_factor=getattr(settings, "warmup_start_factor", 1.0),
                end_factor=1.0,
                total_iters=self.warmup_epochs,
            )

    def step(self, record: EpochRecord) -> None:
        """Move to the next epoch's learning rate, given the epoch just ended."""
        self.epochs_done += 1
        with warnings.catch_warnings():
            # torch warns when optimizer.step() was never called, which the direct step
            # (direct.py) never does: it runs the optimizer's fused kernel itself.
            warnings.filterwarnings(
                "ignore", r"Detected call of `lr_scheduler\.step\(\)`", UserWarning
            )
            self._step(record)

    def _step(self, record: EpochRecord) -> None:
        if self.warmup is not None and self.epochs_done <= self.warmup_epochs:
            self.warmup.step()  # the last warmup step lands on the optimizer's lr
        elif isinstance(self.main, lr_scheduler.ReduceLROnPlateau):
            assert isinstance(self.settings, PlateauSchedule)
            self.main.step(record[self.settings.monitor])
        else:
            self.main.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "epochs_done": self.epochs_done,
            "main": self.main.state_dict(),
            "warmup": self.warmup.state_dict() if self.warmup is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs_done = int(state["epochs_done"])
        self.main.load_state_dict(state["main"])
        if self.warmup is not None:
            self.warmup.load_state_dict(state["warmup"])


def _main_schedule(
    settings: Scheduler, optimizer: torch.optim.Optimizer, epochs: int
) -> lr_scheduler.LRScheduler | lr_scheduler.ReduceLROnPlateau:
    match settings:
        case StepSchedule():
            return lr_scheduler.StepLR(optimizer, settings.step_epochs, settings.gamma)
        case ExponentialSchedule():
            return lr_scheduler.ExponentialLR(optimizer, settings.gamma)
        case CosineSchedule():
            # T_max one less than the epochs it spans, so the last epoch trains at min_lr
            last = max(1, epochs - 1)
            return lr_scheduler.CosineAnnealingLR(optimizer, T_max=last, eta_min=settings.min_lr)
        case OneCycleSchedule():
            peak = settings.max_lr or optimizer.param_groups[0]["lr"]
            return lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=peak,
                total_steps=epochs,
                pct_start=settings.pct_start,
                anneal_strategy=settings.anneal,
                div_factor=settings.div_factor,
                final_div_factor=settings.final_div_factor,
                cycle_momentum=False,  # the direct step reads Adam's betas once; lr each step
            )
        case PlateauSchedule():
            lower = registries.lower_is_better(settings.monitor, settings.mode)
            return lr_scheduler.ReduceLROnPlateau(
                optimizer,
                mode="min" if lower else "max",
                factor=settings.factor,
                patience=settings.patience,
                threshold=settings.threshold,
                cooldown=settings.cooldown,
                min_lr=settings.min_lr,
            )
    raise AssertionError(f"no schedule for {settings}")
