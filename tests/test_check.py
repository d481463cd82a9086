"""flows/check.py: `mlpkit check` answers from the table and the shapes where torch would add
nothing, so what it passes there, building the trainer as train does passes too (and the layer
table's count is the built network's)."""

from __future__ import annotations

import pytest
import torch
from conftest import Project

from mlpkit.config.load import load_config
from mlpkit.flows.check import check, needs_torch
from mlpkit.train.build import build_trainer

LAYERS = (
    "model.layers=[{type: dense, units: 4, activation: tanh}, {type: batch_norm, momentum: 1, "
    "eps: 1e-30}, {type: dropout, rate: 0.99}, {type: dense, units: 1, bias: false}]"
)


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["training.optimizer={name: adam, lr: 1e-30, betas: [0, 0], eps: 1e-30, amsgrad: true}"],
        ["training.optimizer={name: adamw, lr: 1e9, weight_decay: 0, betas: [0.999999, 0.5]}"],
        ["training.optimizer={name: sgd, lr: 1e-30, momentum: 0.9, nesterov: true}"],
        ["training.optimizer={name: sgd, momentum: 0, dampening: 5, weight_decay: 3}"],
        ["training.optimizer={name: rmsprop, alpha: 1e-9, momentum: 2, centered: true}"],
        ["training.optimizer={name: adagrad, lr_decay: 5, initial_accumulator_value: 7}"],
        [LAYERS],
        ["training.engine=autograd", "training.threads=3", "training.batch_size=1"],
        ["training.early_stopping={patience: 1, monitor: val_r2, restore_best: true}"],
        ["training.loss=huber"],
    ],
)
def test_what_check_passes_without_torch_the_trainer_builds(
    project: Project, overrides: list[str]
) -> None:
    loaded = load_config(project.config, overrides)
    assert not needs_torch(loaded.config)
    checked = check(loaded)
    trainer = build_trainer(checked.prepared, torch.device("cpu"))
    built = sum(p.numel() for p in trainer.model.parameters())
    assert checked.summary.total_parameters == built


@pytest.mark.parametrize(
    "override",
    [
        "training.device=cuda",
        "training.engine=direct",
        "training.scheduler={name: cosine}",
        "data.stream=true",
    ],
)
def test_what_only_torch_can_answer_is_asked_of_it(project: Project, override: str) -> None:
    assert needs_torch(load_config(project.config, [override]).config)
