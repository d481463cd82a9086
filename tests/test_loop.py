import pytest
import torch
from torch import nn

from mlpkit.config.schema import BatchNormLayer, DenseLayer, Layer
from mlpkit.errors import DivergedError
from mlpkit.train.loop import EpochRecord, Hooks, Position, Tensors, fit
from mlpkit.train.model import build_model

LAYERS: list[Layer] = [
    DenseLayer(type="dense", units=8, activation="relu"),
    DenseLayer(type="dense", units=1),
]


def data(rows: int = 40) -> Tensors:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 3, generator=g)
    return Tensors(x, x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(rows, 1, generator=g))


def run_fit(
    epochs: int = 3, batch_size: int = 4, shuffle: bool = True, sgd_lr: float = 0.0
) -> tuple[nn.Module, list[EpochRecord]]:
    model = build_model(LAYERS, 3, seed=0)
    optimizer = (
        torch.optim.SGD(model.parameters(), lr=sgd_lr)
        if sgd_lr
        else torch.optim.Adam(model.parameters(), lr=1e-2)
    )
    history = fit(
        model,
        torch.nn.MSELoss(),
        optimizer,
        data(),
        data(10),
        epochs=epochs,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=0,
        score=lambda y, outputs: {"mae": float((outputs - y).abs().mean())},
    )
    return model, history.history


def test_same_seed_gives_bit_identical_weights() -> None:
    first, _ = run_fit()
    second, _ = run_fit()
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_fit_equals_a_hand_written_loop() -> None:
    # The reference: the plainest PyTorch loop over the same rows in the same order.
    reference = build_model(LAYERS, 3, seed=0)
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-2)
    train = data()
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        order = torch.randperm(40, generator=generator)
        for start in range(0, 40, 4):
            rows = order[start : start + 4]
            loss = torch.nn.functional.mse_loss(reference(train.x[rows]), train.y[rows])
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
    ours, history = run_fit()
    for a, b in zip(ours.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert set(history[0]) == {"epoch", "train_loss", "val_loss", "val_mae", "lr", "seconds"}


def test_loss_goes_down() -> None:
    _, history = run_fit(epochs=20)
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 5


def test_divergence_is_an_error_not_a_nan_model() -> None:
    with pytest.raises(DivergedError, match=r"training loss became (nan|inf)"):
        run_fit(epochs=5, sgd_lr=100.0)


def test_batch_norm_skips_a_last_batch_of_one_row() -> None:
    layers: list[Layer] = [
        DenseLayer(type="dense", units=4),
        BatchNormLayer(type="batch_norm"),
        DenseLayer(type="dense", units=1),
    ]
    model = build_model(layers, 3, seed=0)
    rows = data(41)  # batches of 4 leave one row over
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        model.train()(rows.x[:1])  # the premise: PyTorch refuses a one-row batch
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the epoch loss is a pure mean
    history = fit(
        model,
        torch.nn.MSELoss(),
        optimizer,
        rows,
        None,
        epochs=1,
        batch_size=4,
        shuffle=False,
        seed=0,
    ).history
    # Without shuffling, the first 40 rows train in 10 batches; row 41 is left out.
    reference = build_model(layers, 3, seed=0).train()
    with torch.no_grad():
        losses = [
            torch.nn.functional.mse_loss(reference(rows.x[i : i + 4]), rows.y[i : i + 4])
            for i in range(0, 40, 4)
        ]
    assert history[0]["train_loss"] == pytest.approx(float(torch.stack(losses).mean()), rel=1e-5)


def test_the_epoch_mean_is_summed_in_float64() -> None:
    # Two rows of loss 3e38 each: finite in float32, their float32 sum is not.
    big = torch.tensor(3e38)
    position = Position(losses=[big, big], sizes=[1, 1])
    assert float(torch.stack(position.losses).sum()) == float("inf")  # the premise
    assert position.epoch_loss() == pytest.approx(3e38, rel=1e-7)


def test_a_validation_loss_that_overflows_is_divergence_before_the_epoch_is_saved() -> None:
    model = build_model(LAYERS, 3, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    val = data(10)
    val = Tensors(val.x, torch.full_like(val.y, 1e19))  # each squared error 1e38: finite
    saved: list[int] = []
    with pytest.raises(DivergedError) as raised:
        fit(
            model, torch.nn.MSELoss(), optimizer, data(), val, epochs=3, batch_size=4,
            shuffle=True, seed=0, hooks=Hooks(save=lambda at: saved.append(at.epoch)),
        )  # fmt: skip
    assert str(raised.value).startswith(
        "Error: training: the validation loss of epoch 1 became inf: it overflowed float32; "
        "the run stopped before saving that epoch"
    )
    assert saved == []


def test_an_optimizer_moment_that_overflows_is_divergence() -> None:
    # The loss (1e36) and the weight's gradient (2e18 x 1e4) are finite; Adam's square of the
    # gradient is not, and would freeze that weight for good (an update of m / sqrt(inf) = 0).
    model = build_model([DenseLayer(type="dense", units=1)], 3, seed=0)
    x = torch.full((4, 3), 1e4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with pytest.raises(DivergedError, match=r"the optimizer's 'exp_avg_sq' of 0\.weight became"):
        fit(
            model, torch.nn.MSELoss(), optimizer, Tensors(x, torch.full((4, 1), 1e18)), None,
            epochs=1, batch_size=4, shuffle=False, seed=0,
        )  # fmt: skip
