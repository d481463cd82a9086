"""mlpkit init on tiny tables: a config that checks and trains, constant columns left out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import Cli

from mlpkit.config.load import load_config
from mlpkit.config.schema import TaskKind
from mlpkit.data import infer
from mlpkit.data.infer import Column, Starter, Target
from mlpkit.flows import init


def linnerud_like(path: Path, rows: int = 20) -> Path:
    """scikit-learn's linnerud in shape (20 rows: three exercises, three body measures), with
    two constant columns besides: a number and a text."""
    rng = np.random.default_rng(0)
    chins = rng.integers(1, 18, size=rows)
    situps = rng.integers(50, 252, size=rows)
    jumps = rng.integers(25, 251, size=rows)
    weight = 190 - 2 * chins + rng.integers(-15, 16, size=rows)
    waist = 30 + weight // 20 + rng.integers(-2, 3, size=rows)
    pulse = rng.integers(46, 75, size=rows)
    lines = ["Chins,Situps,Jumps,Waist,Pulse,site,version,Weight"] + [
        f"{chins[i]},{situps[i]},{jumps[i]},{waist[i]},{pulse[i]},gym,1.0,{weight[i]}"
        for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return linnerud_like(tmp_path / "linnerud.csv")


def test_a_20_row_table_gets_a_config_that_checks_and_trains(cli: Cli, tiny: Path) -> None:
    out = tiny.parent / "linnerud.yaml"
    result = cli("init", tiny, "--target", "Weight", "--out", out)
    assert result.code == 0, result.err
    config = load_config(out).config
    assert config.training.batch_size == 4  # 16 training rows: 4 batches an epoch
    assert config.data.features == ["Chins", "Situps", "Jumps", "Waist", "Pulse"]
    check = cli("check", out)
    assert (check.code, check.err) == (0, "")
    assert check.out.startswith(f"ok: {out}: 20 rows, split 16/2/2, 5 inputs")
    trained = cli("train", out, "--runs-dir", tiny.parent / "runs", "-q")
    assert trained.code == 0, trained.err
    metrics = json.loads((Path(trained.last_line) / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"r2", "mae"}


def test_constant_columns_are_left_out_with_a_comment(cli: Cli, tiny: Path) -> None:
    found = infer.infer(tiny, "Weight")
    left_out = {c.name: c.note for c in found.columns if c.kind == "left out"}
    assert left_out == {
        "site": "one value in every row (gym): nothing to learn from",
        "version": "one value in every row (1.0): nothing to learn from",
    }
    text = init.render(found, tiny.parent / "c.yaml", "mlpkit init linnerud.csv --target Weight")
    lines = text.splitlines()
    start = lines.index("  # left out: one value (or none) in every row, so nothing to learn from")
    assert lines[start + 1 : start + 3] == [
        "  #   - site    # one value in every row (gym)",
        "  #   - version    # one value in every row (1.0)",
    ]
    result = cli("init", tiny, "--target", "Weight", "--out", tiny.parent / "c.yaml")
    shown = [line.split() for line in result.out.splitlines()]
    assert ["version", "left", "out", "one", "value", "in", "every", "row", "(1.0):"] in [
        words[:9] for words in shown
    ]


def test_numbers_written_differently_are_still_one_value(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        "a,b,y\n" + "".join(f"{i},{('1', '1.0', '01')[i % 3]},{i * 2}\n" for i in range(12))
    )
    kinds = {c.name: (c.kind, c.constant) for c in infer.infer(path, "y").columns}
    assert kinds == {"a": ("numeric", False), "b": ("left out", True)}


def test_only_constant_features_is_an_error(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,b,y\n" + "".join(f"5,x,{i}\n" for i in range(12)))
    result = cli("init", path, "--target", "y", "--out", tmp_path / "c.yaml")
    assert (result.code, result.out) == (2, "")
    assert result.err == (
        f"Error: {path}: every column but the target is left out: an identifier or free text "
        "(more distinct texts than half the rows) or one value in every row; nothing to learn "
        "from\n"
    )


@pytest.mark.parametrize(
    ("rows", "batch"),
    [(2, 1), (5, 1), (10, 2), (20, 4), (40, 8), (100, 16), (159, 16), (160, 32), (392, 32)],
)
def test_the_batch_never_exceeds_a_quarter_of_the_training_rows(rows: int, batch: int) -> None:
    assert init.batch_for(rows) == batch
    assert batch <= max(1, int(rows * init.TRAIN_SHARE) // init.MIN_BATCHES)


def test_one_step_an_epoch_is_singular(tmp_path: Path) -> None:
    starter = Starter(
        tmp_path / "two.csv",
        rows=2,
        target=Target("y", "regression", 2, "numbers"),
        columns=[Column("a", "numeric", "numbers")],
    )
    text = init.render(starter, tmp_path / "two.yaml", "mlpkit init two.csv --target y")
    assert "  epochs: 200                      # at most; 1 step an epoch, 200 in all" in text
    assert "steps an epoch" in init.render(
        Starter(starter.data_path, 20, starter.target, starter.columns), tmp_path / "t.yaml", "x"
    )


def test_a_tiny_classification_table_gives_every_part_a_row(cli: Cli, tmp_path: Path) -> None:
    """20 rows of 3 classes (7, 7, 6): a tenth of a class is no row, so the stratified
    validation split would be empty; init widens val and test to 0.15."""
    rng = np.random.default_rng(1)
    labels = ["x"] * 7 + ["y"] * 7 + ["z"] * 6
    path = tmp_path / "three.csv"
    path.write_text(
        "a,b,label\n" + "".join(f"{rng.normal():.3f},{rng.normal():.3f},{c}\n" for c in labels)
    )
    out = tmp_path / "three.yaml"
    assert cli("init", path, "--target", "label", "--out", out).code == 0
    split = load_config(out).config.data.split
    assert (split.train, split.val, split.test) == (0.7, 0.15, 0.15)
    check = cli("check", out)
    assert (check.code, check.err) == (0, "")
    assert check.out.startswith(f"ok: {out}: 20 rows, split 12/2/6,")


@pytest.mark.parametrize(
    ("rows", "task", "largest", "split"),
    [
        (392, "regression", 0, (0.8, 0.1, 0.1)),
        (10, "regression", 0, (0.8, 0.1, 0.1)),
        (8, "regression", 0, (0.7, 0.15, 0.15)),
        (5, "regression", 0, (0.6, 0.2, 0.2)),
        (2, "regression", 0, (0.5, 0.25, 0.25)),
        (60, "multiclass", 20, (0.8, 0.1, 0.1)),
        (20, "binary", 6, (0.6, 0.2, 0.2)),
    ],
)
def test_val_and_test_get_a_row_of_the_largest_class_at_least(
    tmp_path: Path, rows: int, task: TaskKind, largest: int, split: tuple[float, float, float]
) -> None:
    target = Target("y", task, 2, "", largest)
    starter = Starter(tmp_path / "t.csv", rows, target, [Column("a", "numeric", "numbers")])
    assert init.split_for(starter) == pytest.approx(split)
