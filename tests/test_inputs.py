"""Named multi-input models: config rules, the network, the summary and graph, a full run."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, Cli, Project

from mlpkit.config.load import load_config
from mlpkit.config.schema import DenseLayer, Layer
from mlpkit.errors import ConfigError
from mlpkit.flows.evaluate import evaluate_run
from mlpkit.report.summary import render_mermaid, summarize
from mlpkit.train.model import InputSpec, MultiInput, build_model

TWO_INPUTS = """\
name: two
seed: 0
data:
  path: data.csv
  target: y
  categorical: [color]
  split: {train: 0.6, val: 0.2, test: 0.2}
model:
  inputs:
    numbers: {columns: [a, b], layers: [{type: dense, units: 4, activation: tanh}]}
    color: {columns: [color]}
  layers:
    - {type: dense, units: 8, activation: relu}
    - {type: dense, units: 1}
training:
  epochs: 3
  batch_size: 8
  optimizer: {name: adam, lr: 1e-2}
"""


@pytest.fixture
def two(project: Project) -> Project:
    project.write_config(TWO_INPUTS)
    return project


def test_features_come_from_the_inputs(two: Project) -> None:
    cfg = load_config(two.config).config
    assert cfg.data.features == ["a", "b", "color"]
    assert cfg.model.inputs is not None and list(cfg.model.inputs) == ["numbers", "color"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "model.inputs.color.columns=[color, a]",
            "model.inputs.color.columns: 'a' already feeds input 'numbers'",
        ),
        ("data.features=[a, b, color, c]", "data.features: c feed no input in model.inputs"),
        ("data.features=[a, color]", "model.inputs.numbers.columns: 'b' is not in data.features"),
    ],
)
def test_inputs_must_split_the_features(two: Project, override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(two.config, [override])
    assert expected in caught.value.render()


def test_input_names_must_be_plain(two: Project) -> None:
    two.write_config(
        TWO_INPUTS.replace("    color: {columns: [color]}", '    "my color": {columns: [color]}')
    )
    with pytest.raises(ConfigError, match="'my color' cannot name an input"):
        load_config(two.config)


def test_multi_input_forward_is_branches_concatenated_then_trunk() -> None:
    branch: list[Layer] = [DenseLayer(type="dense", units=3, activation="tanh")]
    model = build_model(
        [DenseLayer(type="dense", units=1)],
        4,
        seed=0,
        inputs=[InputSpec("p", [0, 2], branch), InputSpec("q", [3, 1], [])],
    )
    assert isinstance(model, MultiInput)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        left = model.branches[0](x[:, [0, 2]])  # [5, 3]
        expected = model.trunk(torch.cat([left, x[:, [3, 1]]], dim=1))
        assert torch.equal(model(x), expected)
    # the column positions are derived state, not saved weights
    assert not any(key.startswith("columns_") for key in model.state_dict())


def test_summary_counts_and_graph_by_hand() -> None:
    branch: list[Layer] = [DenseLayer(type="dense", units=4, activation="tanh")]
    trunk: list[Layer] = [
        DenseLayer(type="dense", units=8, activation="relu"),
        DenseLayer(type="dense", units=1),
    ]
    summary = summarize(trunk, 3, [("numbers", 2, branch), ("color", 1, [])])
    # numbers: 2*4 + 4 = 12; trunk: (4 + 1)*8 + 8 = 48, then 8 + 1 = 9
    assert summary.total_parameters == 12 + 48 + 9
    concat = next(row for row in summary.rows if row.op == "concatenate")
    assert concat.parents == ("tanh_0", "color")
    assert concat.input_shapes == ((None, 4), (None, 1)) and concat.output_shape == (None, 5)
    model = build_model(
        trunk, 3, seed=0, inputs=[InputSpec("numbers", [0, 1], branch), InputSpec("color", [2], [])]
    )
    assert summary.total_parameters == sum(p.numel() for p in model.parameters())
    assert render_mermaid(summary).splitlines() == [
        "flowchart TD",
        '    numbers["numbers<br/>input (None, 2)"]',
        '    dense_0["dense_0<br/>dense (None, 4) · 12 params"]',
        '    tanh_0["tanh_0<br/>tanh (None, 4)"]',
        '    color["color<br/>input (None, 1)"]',
        '    concatenate_0["concatenate_0<br/>concatenate (None, 5)"]',
        '    dense_1["dense_1<br/>dense (None, 8) · 48 params"]',
        '    relu_0["relu_0<br/>relu (None, 8)"]',
        '    dense_2["dense_2<br/>dense (None, 1) · 9 params"]',
        "    numbers --> dense_0",
        "    dense_0 --> tanh_0",
        "    tanh_0 --> concatenate_0",
        "    color --> concatenate_0",
        "    concatenate_0 --> dense_1",
        "    dense_1 --> relu_0",
        "    relu_0 --> dense_2",
    ]


def test_a_multi_input_run_end_to_end(cli: Cli, two: Project) -> None:
    run = two.train(cli)
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["data"]["features"] == ["a", "b", "color"]
    assert cli("summary", run).out == cli("summary", two.config).out
    # color has 3 categories: numbers (2 -> 4) + color (3) = 7 into the trunk
    assert 'concatenate_0 ( concatenate["tanh_0", "color"] )' in cli("summary", run).out
    stored = json.loads((run / "metrics.json").read_text())["test"]
    assert cli("eval", run).code == 0
    assert evaluate_run(run).scores == stored
    new = two.root / "new.csv"
    new.write_text("color,b,a\nred,2,1\n")
    assert cli("predict", run, "--data", new).out.startswith("line,prediction\n2,")


def test_xor_stream_classifies_all_four_points(cli: Cli, tmp_path: Path) -> None:
    result = cli("train", REPO / "configs" / "xor.yaml", "--runs-dir", tmp_path, "-q")
    assert result.code == 0, result.err
    run = Path(result.last_line)
    points = tmp_path / "points.csv"
    points.write_text("x1,x2\n0,0\n0,1\n1,0\n1,1\n")
    predicted = cli("predict", run, "--data", points)
    labels = [line.split(",")[1] for line in predicted.out.splitlines()[1:]]
    assert labels == ["0", "1", "1", "0"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["baselines"]["logistic_regression"]["accuracy"] < 0.6  # xor is not linear
    assert cli("summary", run).out.count("( input )") == 2  # x1 and x2


def test_synthetic_sources_are_checked(cli: Cli, project: Project) -> None:
    project.write_config(
        "name: s\ndata: {source: {name: xor}, target: y, features: [x1, x3]}\n"
        "model: {layers: [{type: dense, units: 1, activation: sigmoid}]}\n"
        "training: {epochs: 1, iterations_per_epoch: 5, loss: bce}\n"
    )
    result = cli("check", project.config)
    assert result.code == 2
    assert "data.features: the xor source makes no column x3; it makes x1, x2, y" in result.err
    project.write_config(
        "name: s\ndata: {source: {name: regression, features: 3}, target: y, features: [x1, x2, x3]}\n"
        "model: {layers: [{type: dense, units: 1}]}\ntraining: {epochs: 1}\n"
    )
    assert (
        "iterations_per_epoch: missing: a synthetic stream has no end"
        in cli("check", project.config).err
    )
    run = project.train(
        cli, "--set", "training.iterations_per_epoch=20", "--set", "data.eval_rows=50"
    )
    stored = json.loads((run / "metrics.json").read_text())["test"]
    assert evaluate_run(run).scores == stored  # the test rows are drawn again


SHAPES = """\
name: shapes
data:
  source: {name: regression, features: 5}
  target: y
model:
  inputs:
    a: {shape: 2, layers: [{type: dense, units: 3, activation: tanh}]}
    b: {shape: 3}
  layers:
    - {type: dense, units: 1}
training:
  epochs: 1
  iterations_per_epoch: 20
"""


def test_inputs_of_a_source_take_shapes_in_order(cli: Cli, project: Project) -> None:
    project.write_config(SHAPES)
    cfg = load_config(project.config).config
    assert cfg.model.inputs is not None
    assert [spec.columns for spec in cfg.model.inputs.values()] == [
        ["x1", "x2"],
        ["x3", "x4", "x5"],
    ]
    assert cfg.data.features == ["x1", "x2", "x3", "x4", "x5"]
    summary = cli("summary", project.config).out
    # a: 2 -> dense 3 = 2*3 + 3 = 9; concatenate 3 + 3 = 6 -> dense 1 = 6 + 1 = 7
    assert "concatenate_0" in summary and "(None, 3), (None, 3)" in summary
    assert "Total parameters: 16" in summary
    too_wide = cli("check", project.config, "--set", "model.inputs.b.shape=4")
    assert too_wide.code == 2
    assert too_wide.err == (
        "Error: --set: model.inputs.b.shape: 4 columns, but the input has 3; "
        "shapes take the regression source's columns x1, x2, ... in order\n"
    )


def test_a_shape_needs_a_synthetic_source(two: Project) -> None:
    with pytest.raises(
        ConfigError, match=r"model\.inputs\.color\.shape: a shape applies to a synthetic"
    ):
        load_config(two.config, ["model.inputs.color={shape: 1}"])


def test_eval_rows_beyond_memory_are_refused_before_drawing() -> None:
    from mlpkit.train.prepare import prepare

    loaded = load_config(REPO / "configs" / "xor.yaml", ["data.eval_rows=1000000000000"])
    with pytest.raises(ConfigError, match=r"data\.eval_rows: 2,000,000,004,096 drawn rows"):
        prepare(loaded)
