import time
from pathlib import Path
from typing import get_args

import pytest
from conftest import REPO, Project

from mlpkit.config import registries
from mlpkit.config.load import load_config
from mlpkit.config.schema import LOSS_TASKS, AdamConfig, DenseLayer, Loss, Optimizer
from mlpkit.errors import ConfigError


def errors_of(path: Path, *overrides: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, list(overrides))
    return caught.value.render().splitlines()


def test_tiny_config_loads_with_defaults(project: Project) -> None:
    loaded = load_config(project.config)
    cfg = loaded.config
    assert cfg.training.optimizer == AdamConfig(name="adam", lr=0.01)
    assert isinstance(cfg.training.optimizer.lr, float)
    assert cfg.training.device == "auto"
    assert cfg.data.standardize is True
    assert loaded.data_path == project.data.resolve()


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates_and_documents_itself(path: Path) -> None:
    loaded = load_config(path)
    assert loaded.config.data.source is not None or loaded.data_path.exists()
    text = path.read_text()
    assert text.startswith("#"), "a shipped config opens with a comment header"
    assert f"mlpkit train configs/{path.name}" in text.split("\nname:")[0]


def test_misspelt_key_gets_line_and_did_you_mean(project: Project) -> None:
    project.edit_config("  features:", "  featurs:")
    assert errors_of(project.config) == [
        f"Error: {project.config}:6: data.featurs: unknown key; did you mean 'features'? expected one of: categorical, chunk_rows, dates, encoding, eval_rows, features, missing, path, scale_target, source, split, standardize, stream, target, task, test_path, val_path, workers"
    ]


def test_missing_required_key_gives_an_example(project: Project) -> None:
    project.edit_config("  target: y\n", "")
    assert errors_of(project.config) == [
        f"Error: {project.config}:3: data.target: missing required key; e.g. target: mpg"
    ]


def test_unknown_key_deep_in_a_layer(project: Project) -> None:
    project.edit_config(
        "{type: dense, units: 8, activation: relu}", "{type: dense, unit: 8, activation: relu}"
    )
    lines = errors_of(project.config)
    assert (
        f"Error: {project.config}:11: model.layers.0.unit: unknown key; did you mean 'units'? expected one of: activation, bias, type, units"
        in lines
    )


def test_unknown_activation_lists_nearest(project: Project) -> None:
    project.edit_config("activation: relu", "activation: relu6")
    assert errors_of(project.config) == [
        f"Error: {project.config}:11: model.layers.0.activation: unknown activation 'relu6'; "
        "did you mean 'relu'? expected one of: elu, gelu, leaky_relu, linear, relu, selu, sigmoid, silu, softmax, tanh"
    ]


def test_unknown_optimizer_and_unknown_option(project: Project) -> None:
    project.edit_config("name: adam", "name: adma")
    assert errors_of(project.config) == [
        f"Error: {project.config}:16: training.optimizer.name: unknown optimizer 'adma'; "
        "did you mean 'adam'? expected one of: adagrad, adam, adamw, rmsprop, sgd"
    ]
    project.edit_config("name: adma, lr: 1e-2", "name: adam, lr: 1e-2, momentum: 0.9")
    assert errors_of(project.config) == [
        f"Error: {project.config}:16: training.optimizer.momentum: unknown key; "
        "expected one of: amsgrad, betas, eps, lr, name, weight_decay"
    ]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("batch_size: 8", "batch_size: true", "training.batch_size: expected an integer, got true"),
        ("batch_size: 8", 'batch_size: "8"', 'training.batch_size: expected an integer, got "8"'),
        ("batch_size: 8", "batch_size: 0", "training.batch_size: must be greater than 0, got 0"),
        ("epochs: 3", "epochs: -1", "training.epochs: must be greater than 0, got -1"),
        ("lr: 1e-2", "lr: 0", "training.optimizer.lr: must be greater than 0, got 0"),
        ("lr: 1e-2", "lr: .nan", "training.optimizer.lr: must be a finite number, got NaN"),
        ("units: 8", "units: 0", "model.layers.0.units: must be greater than 0, got 0"),
        ("loss: mse", "loss: mean_squared", "training.loss.name: unknown loss 'mean_squared'"),
        ("seed: 0", "seed: 0.5", "seed: expected an integer, got 0.5"),
    ],
)
def test_wrong_values_are_named(project: Project, old: str, new: str, expected: str) -> None:
    project.edit_config(old, new)
    lines = errors_of(project.config)
    assert len(lines) == 1
    assert expected in lines[0]


def test_dropout_rate_and_empty_layers(project: Project) -> None:
    project.edit_config(
        "    - {type: dense, units: 1}",
        "    - {type: dropout, rate: 1.5}\n    - {type: dense, units: 1}",
    )
    assert "model.layers.1.rate: must be less than 1, got 1.5" in errors_of(project.config)[0]
    assert (
        "model.layers: list should have at least 1 item"
        in errors_of(project.config, "model.layers=[]")[0]
    )


def test_every_problem_is_reported_at_once(project: Project) -> None:
    project.edit_config("epochs: 3", "epochs: 0")
    project.edit_config("activation: relu", "activation: relux")
    assert len(errors_of(project.config)) == 2


def test_cross_field_rules(project: Project) -> None:
    lines = errors_of(project.config, "data.features=[a, b, color, y]", "data.split.test=0.5")
    assert any("data.features: lists the target 'y' (label leakage)" in line for line in lines)
    assert any("data.split: fractions add up to 1.3" in line for line in lines)
    lines = errors_of(project.config, "model.layers.1.units=3")
    assert lines == [
        "Error: --set: model.layers.1.units: the output layer has 3 units; a regression "
        "on one target needs 1; set units: 1"
    ]
    layers = "model.layers=[{type: dense, units: 4}, {type: batch_norm}, {type: dense, units: 1}]"
    assert errors_of(project.config, "training.batch_size=1", layers) == [
        "Error: --set: training.batch_size: batch_norm needs batches of at least 2 rows; "
        "raise batch_size or remove the batch_norm layer"
    ]
    lines = errors_of(project.config, "training.optimizer={name: sgd, nesterov: true}")
    assert "nesterov needs momentum > 0" in lines[0]


def test_overrides_are_validated_like_the_file(project: Project) -> None:
    loaded = load_config(project.config, ["training.epochs=7", "training.optimizer.lr=1e-4"])
    assert loaded.config.training.epochs == 7
    assert loaded.config.training.optimizer.lr == pytest.approx(1e-4)
    assert errors_of(project.config, "training.epoch=7") == [
        "Error: --set: training.epoch: unknown key; did you mean 'epochs'? expected one of: batch_scope, batch_size, checkpoint_every_steps, class_weights, device, early_stopping, engine, epochs, iterations_per_epoch, loss, metrics, optimizer, scheduler, shuffle, threads, threshold, top_k"
    ]
    assert errors_of(project.config, "training.epochs") == [
        "Error: --set: 'training.epochs' is not key=value; e.g. --set training.epochs=5"
    ]


def test_overrides_into_lists_are_checked(project: Project) -> None:
    cfg = load_config(project.config, ["model.layers.0.units=16"]).config
    first = cfg.model.layers[0]
    assert isinstance(first, DenseLayer) and first.units == 16
    assert errors_of(project.config, "model.layers.9.units=3") == [
        "Error: --set: model.layers.9.units: 'model.layers' has 2 items, no item 9"
    ]
    assert errors_of(project.config, "model.layers.2={type: dense, units: 1}") == [
        "Error: --set: model.layers.2: 'model.layers' has 2 items, no item 2"
    ]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("seed=99999999999999999999", "seed: must be less than or equal to 4294967295"),
        ("seed=-1", "seed: must be greater than or equal to 0, got -1"),
        ("training.optimizer.betas=[0.9, 1.5]", "training.optimizer.betas.1: must be less than 1"),
        ("trainng.epochs=5", "trainng: unknown key; did you mean 'training'?"),
        ("model.layers.0.foo.bar=5", "model.layers.0.foo: unknown key"),
        (
            "model.layers=[{units: 1}]",
            "model.layers.0: missing 'type'; expected one of: dense, dropout, batch_norm",
        ),
        ("training.optimizer={}", "missing 'name'; expected one of: sgd, adam, adamw, rmsprop"),
        ("name=" + "x" * 101, "name: string should have at most 100 characters"),
    ],
)
def test_overrides_that_torch_or_the_os_would_reject(
    project: Project, override: str, expected: str
) -> None:
    (line,) = errors_of(project.config, override)
    assert line.startswith("Error: --set: ")  # blamed on the command line, not the file
    assert expected in line


def test_name_must_be_a_folder_name(project: Project) -> None:
    assert errors_of(project.config, "name=my run/1") == [
        "Error: --set: name: 'my run/1' cannot name a run folder; "
        "use letters, digits, '.', '_' and '-', e.g. mpg-small"
    ]


def test_shorthand_optimizer_and_loss(project: Project) -> None:
    cfg = load_config(project.config, ["training.optimizer=sgd", "training.loss=huber"]).config
    assert cfg.training.optimizer.name == "sgd" and cfg.training.optimizer.lr == 0.01
    assert cfg.training.loss is not None and cfg.training.loss.name == "huber"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "the file is empty"),
        (b"- a\n- b\n", "the file is a list, not a mapping"),
        (b"name: caf\xe9\n", "the file is not UTF-8 text"),
    ],
)
def test_unusable_files(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    assert expected in errors_of(path)[0]


def test_missing_and_directory_config(tmp_path: Path) -> None:
    assert errors_of(tmp_path / "nope.yaml") == [
        f"Error: {tmp_path / 'nope.yaml'}: config file not found"
    ]
    assert "is a directory" in errors_of(tmp_path)[0]


def _tags(union: object) -> set[str]:
    members = get_args(get_args(union)[0])
    return {get_args(m.model_fields["name"].annotation)[0] for m in members}


def test_registries_and_config_choices_agree() -> None:
    assert _tags(Optimizer) == set(registries.OPTIMIZERS)
    assert _tags(Loss) == set(LOSS_TASKS)
    regression = {name for name, task in LOSS_TASKS.items() if task == "regression"}
    assert regression == set(registries.LOSSES)  # classification losses live in tasks.py


# --- YAML 1.1 surprises (issue 14): YAML 1.2's booleans, and leading zeros refused ----------


def test_yaml_1_1_booleans_are_text_so_no_can_name_a_column(project: Project) -> None:
    project.edit_config("features: [a, b, color]", "features: [a, b, color, NO, yes]")
    assert load_config(project.config).config.data.features == ["a", "b", "color", "NO", "yes"]


def test_a_boolean_where_text_is_expected_shows_what_was_written(project: Project) -> None:
    project.edit_config("features: [a, b, color]", "features: [a, b, FALSE]")
    assert errors_of(project.config) == [
        f"Error: {project.config}:6: data.features.2: expected text, got FALSE; "
        "quote it ('FALSE') to keep it as text"
    ]
    assert errors_of(project.config, "data.target=1") == [
        f"Error: {project.config}:6: data.features.2: expected text, got FALSE; "
        "quote it ('FALSE') to keep it as text",
        "Error: --set: data.target: expected text, got 1; quote it ('1') to keep it as text",
    ]


def test_yes_for_a_switch_says_to_write_true(project: Project) -> None:
    project.edit_config("  categorical: [color]\n", "  categorical: [color]\n  standardize: yes\n")
    assert errors_of(project.config) == [
        f'Error: {project.config}:8: data.standardize: expected true or false, got "yes"; '
        "write true or false (YAML 1.2 reads yes, no, on and off as text)"
    ]


def test_a_leading_zero_seed_is_refused_not_read_as_octal(project: Project) -> None:
    project.edit_config("seed: 0", "seed: 010")
    assert errors_of(project.config) == [
        f"Error: {project.config}:2: seed: 010 has a leading zero: YAML 1.1 reads it as octal "
        "8, YAML 1.2 as 10; write 10 for the number, or quote it ('010') for text"
    ]
    assert errors_of(project.config, "seed=07") == [  # the file is not read past its error
        f"Error: {project.config}:2: seed: 010 has a leading zero: YAML 1.1 reads it as octal "
        "8, YAML 1.2 as 10; write 10 for the number, or quote it ('010') for text"
    ]
    project.edit_config("seed: 010", "seed: 10")
    assert errors_of(project.config, "seed=07") == [
        "Error: --set seed:1: 07 has a leading zero: YAML 1.1 reads it as octal 7, YAML 1.2 as 7; "
        "write 7 for the number, or quote it ('07') for text"
    ]


# --- user-sized lists: linear checks, summarised problems (issue 14) ------------------------


def test_a_repeated_feature_is_counted(project: Project) -> None:
    assert errors_of(project.config, "data.features=[a, b, a, color, a, b]") == [
        "Error: --set: data.features: lists 'a' 3 times",
        "Error: --set: data.features: lists 'b' twice",
    ]


def test_30000_features_with_repeats_are_checked_in_linear_time(project: Project) -> None:
    names = [f"f{i}" for i in range(30_000)]
    features = ", ".join(names + names[:5000] + ["a", "b", "color"])
    started = time.process_time()  # was 28 s: features.count per feature
    (line,) = errors_of(project.config, f"data.features=[{features}]")
    assert time.process_time() - started < 3
    assert line.startswith(
        "Error: --set: data.features: lists 5,000 names more than once: 'f0' twice, 'f1' twice, "
    )
    assert line.endswith("'f9' twice and 4,990 more; name each column once")
    assert len(line) < 2000


def test_many_items_of_the_wrong_type_are_one_line(project: Project) -> None:
    items = ", ".join(str(i) for i in range(60_000))
    assert errors_of(project.config, f"data.features=[{items}]") == [
        "Error: --set: data.features.0: expected text, got 0 (and likewise at data.features.1, "
        "data.features.2, data.features.3, data.features.4, data.features.5, data.features.6, "
        "data.features.7, data.features.8, data.features.9 and 59,990 more); "
        "quote it ('0') to keep it as text"
    ]


def test_a_few_items_of_the_wrong_type_are_a_line_each(project: Project) -> None:
    assert errors_of(project.config, "data.features=[a, 1, 2, 3]") == [
        f"Error: --set: data.features.{i}: expected text, got {i}; quote it ('{i}') to keep it "
        "as text"
        for i in (1, 2, 3)
    ]


def test_many_unknown_keys_are_one_line(project: Project) -> None:
    keys = ", ".join(f"k{i}: 1" for i in range(1000))
    (line,) = errors_of(project.config, f"training.optimizer={{name: adam, {keys}}}")
    assert line.startswith(
        "Error: --set: training.optimizer.k0: unknown key (and likewise at training.optimizer.k1, "
    )
    assert line.endswith(
        "training.optimizer.k9 and 990 more); "
        "expected one of: amsgrad, betas, eps, lr, name, weight_decay"
    )


def test_many_categorical_names_missing_from_the_features_are_one_line(project: Project) -> None:
    names = ", ".join(f"c{i}" for i in range(500))
    assert errors_of(project.config, f"data.categorical=[{names}]") == [
        "Error: --set: data.categorical: 500 names are not in data.features: 'c0', 'c1', 'c2', "
        "'c3', 'c4', 'c5', 'c6', 'c7', 'c8', 'c9' and 490 more; "
        "list each categorical column in data.features too"
    ]


def test_many_input_columns_missing_from_the_features_are_one_line(project: Project) -> None:
    columns = ", ".join(["a", "b", "color"] + [f"z{i}" for i in range(400)])
    (line,) = errors_of(project.config, f"model.inputs={{x: {{columns: [{columns}]}}}}")
    assert line == (
        "Error: --set: model.inputs.x.columns: 400 columns are not in data.features: 'z0', "
        "'z1', 'z2', 'z3', 'z4', 'z5', 'z6', 'z7', 'z8', 'z9' and 390 more; "
        "list them there too, or leave data.features out"
    )


def test_a_set_path_with_a_non_ascii_digit_is_a_key_not_an_index(project: Project) -> None:
    with pytest.raises(ConfigError, match=r"data\.split"):
        load_config(project.config, ["data.split.\u00b2=0.5"])
