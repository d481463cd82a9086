import pytest

from mlpkit.config.schema import BatchNormLayer, DenseLayer, DropoutLayer, Layer
from mlpkit.report.summary import render_text, summarize
from mlpkit.train.model import build_model


def dense(units: int, activation: str = "linear", bias: bool = True) -> DenseLayer:
    return DenseLayer(type="dense", units=units, activation=activation, bias=bias)


WRITE_UP: list[Layer] = [dense(32, "relu"), dense(8, "relu"), dense(1)]
FIRST_MODEL: list[Layer] = [dense(1, "relu"), dense(1)]


@pytest.mark.parametrize(
    ("layers", "parameters", "bytes_"),
    [(WRITE_UP, 529, 2116), (FIRST_MODEL, 10, 40)],
    ids=["32-8-1", "1-1"],
)
def test_totals_match_axons_parameter_and_byte_counts(
    layers: list[Layer], parameters: int, bytes_: int
) -> None:
    summary = summarize(layers, in_features=7)
    assert summary.total_parameters == parameters
    assert summary.parameter_bytes == bytes_


@pytest.mark.parametrize(
    "layers",
    [
        WRITE_UP,
        [
            dense(5, "tanh", bias=False),
            BatchNormLayer(type="batch_norm"),
            DropoutLayer(type="dropout", rate=0.2),
            dense(3, "gelu"),
            dense(1),
        ],
    ],
)
def test_counts_match_the_model_that_is_built(layers: list[Layer]) -> None:
    # The built network is the oracle: trainable parameters, layer by layer.
    model = build_model(layers, in_features=9, seed=0)
    summary = summarize(layers, in_features=9)
    assert summary.total_parameters == sum(p.numel() for p in model.parameters())
    assert [r.count for r in summary.rows if r.count] == [
        sum(p.numel() for p in m.parameters())
        for m in model.children()
        if any(True for _ in m.parameters())
    ]


def test_rows_and_shapes_read_like_axon() -> None:
    rows = summarize(WRITE_UP, in_features=7).rows
    assert [r.name for r in rows] == ["input", "dense_0", "relu_0", "dense_1", "relu_1", "dense_2"]
    assert rows[1].input_shapes == ((None, 7),) and rows[1].output_shape == (None, 32)
    assert rows[3].parameters == {"weight": (8, 32), "bias": (8,)}


def test_rendered_table_is_stable() -> None:
    text = render_text(summarize(FIRST_MODEL, in_features=7), width=120)
    assert text.splitlines() == [
        "┌─────────────────────────────┬─────────────┬──────────────┬──────────────────────┬───────────────────────────────────┐",
        "│ Layer                       │ Input shape │ Output shape │ Options              │ Parameters                        │",
        "├─────────────────────────────┼─────────────┼──────────────┼──────────────────────┼───────────────────────────────────┤",
        "│ input ( input )             │             │ (None, 7)    │ shape: (None, 7)     │                                   │",
        '│ dense_0 ( dense["input"] )  │ (None, 7)   │ (None, 1)    │ units: 1, bias: true │ 8 = weight f32[1,7] + bias f32[1] │',
        '│ relu_0 ( relu["dense_0"] )  │ (None, 1)   │ (None, 1)    │                      │                                   │',
        '│ dense_1 ( dense["relu_0"] ) │ (None, 1)   │ (None, 1)    │ units: 1, bias: true │ 2 = weight f32[1,1] + bias f32[1] │',
        "└─────────────────────────────┴─────────────┴──────────────┴──────────────────────┴───────────────────────────────────┘",
        "Total parameters: 10",
        "Parameter memory: 40 bytes",
    ]
