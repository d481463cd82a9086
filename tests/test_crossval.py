"""k-fold cross-validation: the cut (data/folds.py), `train --folds K` end to end, the folder's
files, resume of an interrupted cross-validation, --seeds with --folds, runs and compare."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import REPO, Cli, Project, stop_at_poll
from sklearn.metrics import accuracy_score, r2_score

from mlpkit.data.folds import cut_folds

FOLD_FILES = {
    ".lock",
    "checkpoints",
    "config.yaml",
    "history.csv",
    "metrics.json",
    "model.safetensors",
    "predictions.csv",
    "preprocessing.json",
    "run.json",
    "summary.txt",
}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as rows:
        return list(csv.DictReader(rows))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def cross_validate(cli: Cli, config: Path, runs: Path, *extra: str) -> tuple[Path, list[str]]:
    result = cli("train", config, "--runs-dir", runs, *extra)
    assert result.code == 0, result.err
    return Path(result.last_line), result.out.splitlines()


# --- the cut --------------------------------------------------------------------------------


def test_every_non_test_row_is_in_exactly_one_fold() -> None:
    found = cut_folds(103, 0.2, 4, seed=7)
    parts = [found.part(fold) for fold in range(1, 5)]
    everything = np.concatenate([found.test, *parts])
    assert sorted(everything.tolist()) == list(range(103))  # each row once
    assert len(found.test) == 103 - int(0.8 * 103)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    for fold, part in enumerate(parts, start=1):
        rest = found.rest(fold)
        assert set(rest.tolist()) == set(everything.tolist()) - set(part.tolist()) - set(
            found.test.tolist()
        )
    again = cut_folds(103, 0.2, 4, seed=7)  # the seed alone decides
    assert again.part(2).tolist() == found.part(2).tolist()
    assert cut_folds(103, 0.2, 4, seed=8).test.tolist() != found.test.tolist()


def test_stratified_folds_keep_the_class_mix() -> None:
    labels = np.array(["a"] * 90 + ["b"] * 27 + ["c"] * 8)
    np.random.default_rng(0).shuffle(labels)
    found = cut_folds(len(labels), 0.2, 5, seed=1, labels=labels)
    kept = Counter(labels[np.concatenate([found.part(f) for f in range(1, 6)])].tolist())
    assert kept == {"a": 72, "b": 21, "c": 6}  # floor(0.8 x each class) are folded
    assert Counter(labels[found.test].tolist()) == {"a": 18, "b": 6, "c": 2}
    for fold in range(1, 6):
        mix = Counter(labels[found.part(fold)].tolist())
        for label, count in kept.items():  # every class shared out within one row
            assert abs(mix[label] - count / 5) < 1, (fold, mix)
    sizes = [len(found.part(fold)) for fold in range(1, 6)]
    assert max(sizes) - min(sizes) <= 1


def test_more_folds_than_rows_leaves_parts_empty() -> None:
    found = cut_folds(6, 0.2, 10, seed=0)
    assert sum(len(found.part(fold)) for fold in range(1, 11)) == 4  # floor(0.8 x 6)
    assert len(found.part(10)) == 0
    assert len(cut_folds(10, 0.9, 2, seed=0).order) == 1  # (1 - 0.9) x 10 is not quite 1


# --- train --folds end to end ----------------------------------------------------------------


def test_five_folds_on_mpg(cli: Cli, tmp_path: Path) -> None:
    config = REPO / "configs" / "mpg-tiny.yaml"
    cv, lines = cross_validate(
        cli, config, tmp_path / "runs", "--folds", "5", "--set", "training.epochs=2"
    )
    assert cv.parent == tmp_path / "runs" / "mpg-tiny" and cv.name.startswith("cv-")
    assert lines[0].startswith("mpg-tiny: 392 rows of mpg.csv -> 40 test, 5 folds of the other 352")
    folds = [cv / f"fold-{fold}" for fold in range(1, 6)]
    for fold, line in enumerate(lines[1:6], start=1):
        assert line.startswith(f"fold {fold}/5: val r2 ") and "; test r2 " in line
        assert line.endswith(str(folds[fold - 1]))
    table = "\n".join(lines[6:-1])
    assert "5-fold cross-validation (std: sample, ddof=1)" in table
    assert "validation" in table and "baselines (test)" in table
    assert "linear_regression r2" in table

    # every fold is an ordinary, complete run validating on its own part
    metrics = [read_json(fold / "metrics.json") for fold in folds]
    for fold, path in enumerate(folds, start=1):
        assert {p.name for p in path.iterdir()} == FOLD_FILES
        assert read_json(path / "run.json")["status"] == "complete"
        split = yaml.safe_load((path / "config.yaml").read_text())["data"]["split"]
        assert (split["folds"], split["fold"]) == (5, fold)

    # crossval.json: every metric's mean and sample std, and the table prints them
    info = read_json(cv / "crossval.json")
    assert info["status"] == "complete" and info["folds"] == 5
    assert info["runs"] == [f"fold-{fold}" for fold in range(1, 6)]
    r2_rows = [line for line in table.splitlines() if line.startswith("│ r2 ")]
    for part, row in zip(("val", "test"), r2_rows, strict=True):  # validation, then test
        for name, found in info[part].items():
            values = [m[part][name] for m in metrics]
            assert found["values"] == values
            assert found["mean"] == pytest.approx(np.mean(values), abs=0)
            assert found["std"] == pytest.approx(np.std(values, ddof=1), abs=0)
        r2 = info[part]["r2"]
        cells = [cell.strip() for cell in row.split("│")[2:-1]]
        assert cells == [f"{r2['mean']:.4f} ± {r2['std']:.4f}", *(f"{v:.4f}" for v in r2["values"])]
    linear = [m["baselines"]["linear_regression"]["r2"] for m in metrics]
    assert info["baselines"]["test"]["linear_regression"]["r2"]["values"] == linear
    assert len(info["baselines"]["val"]["linear_regression"]["r2"]["values"]) == 5

    # out-of-fold predictions: each non-test row exactly once, by the fold that validated it
    oof = read_csv(cv / "oof_predictions.csv")
    assert list(oof[0]) == ["line", "fold", "mpg", "prediction"]
    with open(REPO / "data" / "mpg.csv") as data:
        file_lines = list(range(2, sum(1 for _ in data) + 1))  # after the header, one a row
    oof_lines = [int(row["line"]) for row in oof]
    test_lines = [int(row["line"]) for row in read_csv(folds[0] / "predictions.csv")]
    assert len(oof_lines) == len(set(oof_lines)) == 352
    assert not set(oof_lines) & set(test_lines)
    assert sorted(oof_lines + test_lines) == file_lines
    for path in folds[1:]:  # one test split for every fold
        assert [int(r["line"]) for r in read_csv(path / "predictions.csv")] == test_lines
    for fold, found in enumerate(metrics, start=1):  # the fold's own val scores, again
        rows = [row for row in oof if row["fold"] == str(fold)]
        truth = [float(row["mpg"]) for row in rows]
        predicted = [float(row["prediction"]) for row in rows]
        assert r2_score(truth, predicted) == pytest.approx(found["val"]["r2"], abs=1e-6)


def test_folds_keep_the_class_mix_of_wine(cli: Cli, tmp_path: Path) -> None:
    config = REPO / "configs" / "wine.yaml"
    cv, _ = cross_validate(
        cli, config, tmp_path, "--folds", "3", "--set", "training.epochs=2", "-q"
    )
    oof = read_csv(cv / "oof_predictions.csv")
    assert list(oof[0]) == ["line", "fold", "cultivar", "prediction"] + [
        f"p_class_{k}" for k in range(3)
    ]
    with open(REPO / "data" / "wine.csv") as data:
        everything = Counter(row["cultivar"] for row in csv.DictReader(data))
    kept = Counter(row["cultivar"] for row in oof)
    test = Counter(r["cultivar"] for r in read_csv(cv / "fold-1" / "predictions.csv"))
    assert kept + test == everything
    for label, count in everything.items():  # test: the same stratified share of each class
        assert test[label] == count - int(0.8 * count)
    for fold in (1, 2, 3):
        rows = [row for row in oof if row["fold"] == str(fold)]
        mix = Counter(row["cultivar"] for row in rows)
        assert all(abs(mix[label] - kept[label] / 3) < 1 for label in kept), mix
        accuracy = accuracy_score([r["cultivar"] for r in rows], [r["prediction"] for r in rows])
        found = read_json(cv / f"fold-{fold}" / "metrics.json")["val"]["accuracy"]
        assert accuracy == pytest.approx(found)


def test_folds_from_the_config_and_folds_overriding_it(cli: Cli, project: Project) -> None:
    project.edit_config("split: {train: 0.6, val: 0.2, test: 0.2}", "split: {test: 0.2, folds: 2}")
    checked = cli("check", project.config)
    assert checked.code == 0, checked.err
    assert "split 20/20/10 (fold 1 of 2 over 40 rows; data.split.train and val are not used)" in (
        checked.out
    )
    cv = project.train(cli)
    assert sorted(p.name for p in cv.iterdir() if p.name.startswith("fold-")) == [
        "fold-1",
        "fold-2",
    ]
    cv = project.train(cli, "--folds", "4")
    assert read_json(cv / "crossval.json")["folds"] == 4
    lines = cli("train", project.config, "--runs-dir", project.runs, "--folds", "4", "-q")
    assert lines.out.splitlines()[:-1] == [
        str(Path(lines.last_line) / f"fold-{f}") for f in (1, 2, 3, 4)
    ]
    one = project.train(cli, "--set", "data.split.fold=3", "--set", "data.split.folds=4")
    assert (one / "run.json").is_file()  # one fold alone: an ordinary run


# --- resume ---------------------------------------------------------------------------------


def one_at_a_time(project: Project) -> None:
    """Folds trained one after another (the autograd engine never stacks): resume of a fold
    stopped alone, bit for bit. Stacked folds: tests/test_group.py."""
    project.edit_config("  loss: mse", "  loss: mse\n  engine: autograd")


def test_an_interrupted_cross_validation_resumes_where_it_stopped(
    cli: Cli, project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    one_at_a_time(project)
    reference, _ = cross_validate(cli, project.config, project.root / "ref", "--folds", "4", "-q")
    # 30 training rows in batches of 8: 4 steps and an epoch end, 15 polls a fold of 3 epochs
    stop_at_poll(monkeypatch, 22)
    stopped = cli("train", project.config, "--runs-dir", project.runs, "--folds", "4", "-q")
    (cv,) = (project.runs / "tiny").iterdir()
    assert stopped.code == 130
    assert stopped.err == (
        f"Error: {cv}: training stopped by SIGINT in fold 2 of 4; the finished folds and a "
        f"checkpoint are kept; resume with: mlpkit train --resume {cv}\n"
    )
    assert read_json(cv / "crossval.json")["status"] == "interrupted"
    assert read_json(cv / "fold-1" / "run.json")["status"] == "complete"
    assert read_json(cv / "fold-2" / "run.json")["status"] == "interrupted"
    assert not (cv / "fold-3").exists() and not (cv / "oof_predictions.csv").exists()
    listed = cli("runs", project.runs).out.splitlines()
    assert listed[1].split()[:5] == [f"tiny/{cv.name}", "tiny", "interrupted", "1/4", "folds"]

    monkeypatch.undo()
    monkeypatch.setenv("MLPKIT_PLOTS", "off")
    resumed = cli("train", "--resume", cv)
    assert resumed.code == 0, resumed.err
    assert resumed.last_line == str(cv)
    assert "fold 1/4: val r2" in resumed.out and "fold 4/4: val r2" in resumed.out
    info, expected = read_json(cv / "crossval.json"), read_json(reference / "crossval.json")
    assert info["status"] == "complete" and len(info["resumed"]) == 1
    for part in ("train", "val", "test", "baselines"):  # bit-identical to an uninterrupted one
        assert info[part] == expected[part]
    assert (cv / "oof_predictions.csv").read_bytes() == (
        reference / "oof_predictions.csv"
    ).read_bytes()
    assert read_json(cv / "fold-2" / "run.json")["resumed"]  # resumed, not trained again

    done = cli("train", "--resume", cv)
    assert done.code == 2
    assert done.err == f"Error: {cv}: the cross-validation is complete; nothing to resume\n"


def test_a_fold_stopped_before_its_first_checkpoint_trains_again(
    cli: Cli, project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    one_at_a_time(project)
    reference, _ = cross_validate(cli, project.config, project.root / "ref", "--folds", "2", "-q")
    stop_at_poll(monkeypatch, 17)
    assert cli("train", project.config, "--runs-dir", project.runs, "--folds", "2").code == 130
    (cv,) = (project.runs / "tiny").iterdir()
    shutil.rmtree(cv / "fold-2" / "checkpoints")  # as if killed before its first epoch ended
    monkeypatch.undo()
    monkeypatch.setenv("MLPKIT_PLOTS", "off")
    assert cli("train", project.config, "--resume", cv, "--folds", "2").code == 2
    changed = cli("train", project.config, "--resume", cv, "--set", "training.epochs=9")
    assert changed.code == 2
    assert changed.err == (
        f"Error: {project.config}: differs from the config the cross-validation was trained "
        "with in training.epochs; resume with the folder's own config, or cross-validate again\n"
    )
    resumed = cli("train", project.config, "--resume", cv, "-q")
    assert resumed.code == 0, resumed.err
    assert not read_json(cv / "fold-2" / "run.json")["resumed"]  # a fresh run
    assert read_json(cv / "crossval.json")["val"] == read_json(reference / "crossval.json")["val"]


# --- mistakes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1", "Error: mlpkit train: Invalid value for '--folds': Input should be greater than or equal to 2; see mlpkit train --help"),
        ("0", "Error: mlpkit train: Invalid value for '--folds': Input should be greater than or equal to 2; see mlpkit train --help"),
        ("41", "Error: --set: data.split.folds: 41 folds need at least 41 rows besides the 10 test rows, and there are 40; use fewer folds"),
    ],
)  # fmt: skip
def test_bad_folds_are_one_line_errors(
    cli: Cli, project: Project, value: str, message: str
) -> None:
    result = cli("train", project.config, "--runs-dir", project.runs, "--folds", value)
    assert (result.code, result.err, result.out) == (2, message + "\n", "")
    assert not project.runs.exists()  # nothing written


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("stream: true", "data.split.folds: cross-validation needs the table in memory, not data.stream: true; remove data.split.folds (or --folds), or set data.stream: false"),
        ("split: {test: 0.2, folds: 3, fold: 4}", "data.split.fold: is 4 but there are 3 folds; a fold from 1 to 3"),
    ],
)  # fmt: skip
def test_folds_config_mistakes(cli: Cli, project: Project, edit: str, message: str) -> None:
    project.edit_config("  split: {train: 0.6, val: 0.2, test: 0.2}", f"  {edit}")
    result = cli("train", project.config, "--runs-dir", project.runs, "--folds", "3")
    assert result.code == 2
    assert result.err.count("\n") == 1 and message in result.err, result.err


def test_a_synthetic_source_takes_no_folds(cli: Cli, tmp_path: Path) -> None:
    result = cli("train", REPO / "configs" / "xor.yaml", "--runs-dir", tmp_path, "--folds", "3")
    assert (result.code, result.err) == (
        2,
        "Error: --set: data.split.folds: cross-validation needs a data file; a synthetic source "
        "draws new rows; remove data.split.folds (or --folds)\n",
    )


# --- with --seeds, runs, compare ---------------------------------------------------------------


def test_seeds_times_folds(cli: Cli, project: Project) -> None:
    result = cli(
        "train", project.config, "--runs-dir", project.runs, "--folds", "2", "--seeds", "2",
        "--set", "training.epochs=1",
    )  # fmt: skip
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    summary = read_json(Path(lines[-1]))
    assert summary["seeds"] == [0, 1] and summary["folds"] == 2
    folders = [Path(path) for path in summary["runs"]]
    assert [read_json(f / "crossval.json")["seed"] for f in folders] == [0, 1]
    means = [read_json(f / "crossval.json")["test"]["r2"]["mean"] for f in folders]
    assert summary["test"]["r2"]["values"] == means
    assert [line[:17] for line in lines[1:7]] == [
        "seed 0 fold 1/2: ",
        "seed 0 fold 2/2: ",
        "seed 0 (1/2): val",
        "seed 1 fold 1/2: ",
        "seed 1 fold 2/2: ",
        "seed 1 (2/2): val",
    ]
    assert "test metrics over 2 seeds (std: sample, ddof=1); each the mean of 2 folds" in (
        result.out
    )


def test_runs_and_compare_know_the_folder(cli: Cli, project: Project) -> None:
    cv = project.train(cli, "--folds", "2")
    run = project.train(cli)
    listed = cli("runs", project.runs)
    assert listed.code == 0
    rows = listed.out.splitlines()[1:]
    info = read_json(cv / "crossval.json")
    r2 = info["test"]["r2"]
    names = [row.split()[0] for row in rows]  # the folder, then its folds under it
    at = names.index(f"tiny/{cv.name}")
    assert names[at + 1 : at + 3] == ["fold-1", "fold-2"] and f"tiny/{run.name}" in names
    assert rows[at].split()[1:4] == ["tiny", "complete", "2/2"]
    assert f"r2 {r2['mean']:.4g} ± {r2['std']:.2g}" in rows[at]

    compared = cli("compare", project.runs / "tiny")  # the folder: one column, not its folds
    assert compared.code == 0, compared.err
    assert "2 regression runs" in compared.out
    assert f"{r2['mean']:.4f} ± {r2['std']:.4f}" in compared.out
    assert "data.split.folds" in compared.out
    alone = cli("compare", cv)
    assert alone.code == 0 and f"{r2['mean']:.4f} ± {r2['std']:.4f}" in alone.out
    evaluated = cli("eval", cv / "fold-2")  # each fold is an ordinary run
    assert evaluated.code == 0 and "no" not in evaluated.out.split()
