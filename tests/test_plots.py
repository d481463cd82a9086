"""plots.py, `mlpkit plot` and flows/plotting.py: the PNGs a run gets, what they show, how
redrawing fails, and the detached child that draws them after `mlpkit train` returns.

Three tiny runs (regression, binary, multiclass) and a short synthetic stream are trained once
for the module (flows.train.train, then their plots drawn as the CLI's --plots wait does);
tests that change a run's files work on a copy.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TINY_CONFIG, Cli, tiny_csv
from matplotlib.figure import Figure
from matplotlib.image import imread
from sklearn import metrics as sk

from mlpkit.config.load import load_config
from mlpkit.errors import EnvironmentFault, Problem
from mlpkit.flows import plotting
from mlpkit.flows.train import train
from mlpkit.report import charts, plots

pytestmark = pytest.mark.plots  # in-process runs draw their plots here (conftest.py)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LEARNING = {"learning_curves.png"}
REGRESSION_PLOTS = LEARNING | {"predicted_vs_actual.png", "residuals.png"}
CLASSIFICATION_PLOTS = LEARNING | {"confusion_matrix.png", "roc_curve.png", "pr_curve.png"}

BINARY_CONFIG = """\
name: binary
seed: 0
data:
  path: data.csv
  target: label
  features: [a, b]
  split: {train: 0.6, val: 0.2, test: 0.2}
model:
  layers:
    - {type: dense, units: 8, activation: relu}
    - {type: dense, units: 1, activation: sigmoid}
training:
  epochs: 6
  batch_size: 16
  optimizer: {name: adam, lr: 1e-2}
  loss: bce
  metrics: [accuracy, roc_auc]
"""
MULTICLASS_CONFIG = (
    BINARY_CONFIG.replace("name: binary", "name: multiclass")
    .replace("units: 1, activation: sigmoid", "units: 3, activation: softmax")
    .replace("loss: bce", "loss: cross_entropy")
    .replace("[accuracy, roc_auc]", "[accuracy, f1_macro]")
)


def labelled_csv(classes: list[str], rows: int = 150) -> str:
    """`label` follows a + b with some noise: learnable, yet not perfectly, in a few epochs."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=rows), rng.normal(size=rows)
    score = a + b + rng.normal(scale=0.7, size=rows)
    edges = np.quantile(score, np.linspace(0, 1, len(classes) + 1)[1:-1])
    labels = np.asarray(classes)[np.searchsorted(edges, score)]
    lines = ["a,b,label"] + [f"{x:.4f},{y:.4f},{c}" for x, y, c in zip(a, b, labels, strict=True)]
    return "\n".join(lines) + "\n"


def trained(root: Path, config: str, data: str, *overrides: str) -> Path:
    root.mkdir()
    (root / "config.yaml").write_text(config)
    (root / "data.csv").write_text(data)
    run = train(load_config(root / "config.yaml", list(overrides)), root / "runs").run_dir
    plotting.after([run], "wait")
    return run


@pytest.fixture(scope="module")
def regression(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plots") / "regression"
    return trained(root, TINY_CONFIG, tiny_csv(), "training.epochs=8")


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plots") / "binary"
    return trained(root, BINARY_CONFIG, labelled_csv(["no", "yes"]))


@pytest.fixture(scope="module")
def multiclass(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plots") / "multiclass"
    return trained(root, MULTICLASS_CONFIG, labelled_csv(["low", "mid", "high"]))


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """configs/xor.yaml, shortened: a synthetic source, binary, labels 0 and 1."""
    runs = tmp_path_factory.mktemp("plots") / "runs"
    overrides = ["training.epochs=3", "training.iterations_per_epoch=20", "data.eval_rows=200"]
    run = train(load_config(REPO / "configs" / "xor.yaml", overrides), runs).run_dir
    plotting.after([run], "wait")
    return run


def copy_run(run: Path, root: Path) -> Path:
    """The run's files in root/<name>/<stamp>/ (its checkpoints left behind)."""
    copy = root / run.parent.name / run.name
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints", ".lock"))
    return copy


def decoded(path: Path) -> np.ndarray:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    pixels: np.ndarray = imread(io.BytesIO(data), format="png")  # [height, width, RGBA]
    assert pixels.ndim == 3 and pixels.shape[2] == 4
    return pixels


def assert_a_real_picture(path: Path) -> None:
    """A PNG of a sensible size with plenty drawn on it: not blank, not one flat colour."""
    pixels = decoded(path)
    height, width = pixels.shape[:2]
    assert 300 <= width <= 2500 and 300 <= height <= 2000, (path.name, width, height)
    rgba = (pixels * 255).round().astype(np.uint8).reshape(-1, 4)
    colours = np.unique(rgba.view(np.uint32))  # one number per colour: fast to count
    assert len(colours) > 100, (path.name, len(colours))  # lines, text, antialiasing
    white = (pixels[..., :3] > 0.98).all(axis=-1).mean()
    assert 0.3 < white < 0.995, (path.name, white)  # mostly background, but something drawn


def lines_labelled(figure: Figure) -> list[list[str]]:
    """Each panel's legend entries."""
    return [
        [text.get_text() for text in legend.get_texts()]
        for ax in figure.axes
        if (legend := ax.get_legend()) is not None
    ]


@pytest.mark.parametrize(
    ("run", "expected"),
    [
        ("regression", REGRESSION_PLOTS),
        ("binary", CLASSIFICATION_PLOTS),
        ("multiclass", CLASSIFICATION_PLOTS),
        ("stream", CLASSIFICATION_PLOTS),
    ],
)
def test_a_run_gets_the_plots_of_its_task(
    run: str, expected: set[str], request: pytest.FixtureRequest
) -> None:
    run_dir: Path = request.getfixturevalue(run)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
    assert {p.name for p in (run_dir / "plots").iterdir()} == expected  # no temporary files
    for path in (run_dir / "plots").iterdir():
        assert_a_real_picture(path)


def test_the_best_epoch_is_marked_on_every_panel(regression: Path) -> None:
    data = plots.read_run(regression)
    best = data.metrics.best_epoch
    figure = charts.learning_curves(data)
    titles = [ax.get_title() for ax in figure.axes]
    assert [t.split(" (")[0] for t in titles] == ["loss", "mae", "r2"]  # the config's metrics
    legends = lines_labelled(figure)
    assert legends[0] == ["train", "val", f"best epoch {best}"]
    assert all(entries[-1] == f"best epoch {best}" for entries in legends)
    for ax in figure.axes:  # the dashed line stands at the best epoch
        (vertical,) = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert np.asarray(vertical.get_xdata()).tolist() == [best, best]


def test_learning_curves_follow_history_csv(regression: Path, tmp_path: Path) -> None:
    run = copy_run(regression, tmp_path)
    (before,) = [p for p in plots.draw_run(run) if p.name == "learning_curves.png"]
    first = before.read_bytes()
    assert plots.draw_run(run) and before.read_bytes() == first  # the same files, the same image
    history = run / "history.csv"
    with history.open() as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["val_loss"] = str(float(row["val_loss"]) * 3)
    with history.open("w") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plots.draw_run(run)
    assert before.read_bytes() != first
    assert decoded(before).shape == imread(io.BytesIO(first), format="png").shape


def test_a_changing_lr_gets_a_panel_a_constant_one_a_note(regression: Path) -> None:
    data = plots.read_run(regression)
    epochs = len(data.history["epoch"])
    data.history["lr"] = np.full(epochs, 0.01)
    figure = charts.learning_curves(data)
    assert "lr 0.01 throughout" in figure.get_suptitle()
    assert len(figure.axes) == 3
    data.history["lr"] = 0.01 * 0.5 ** np.arange(epochs)
    figure = charts.learning_curves(data)
    assert [ax.get_title() for ax in figure.axes][-1] == "learning rate (log scale)"
    assert "throughout" not in figure.get_suptitle()


def test_a_run_without_validation_plots_train_loss_only(tmp_path: Path) -> None:
    run = trained(
        tmp_path / "noval", TINY_CONFIG, tiny_csv(), "data.split={train: 0.8, val: 0, test: 0.2}"
    )
    figure = charts.learning_curves(plots.read_run(run))
    assert "no validation split" in figure.get_suptitle()
    best = json.loads((run / "metrics.json").read_text())["best_epoch"]
    assert lines_labelled(figure) == [["train", f"best epoch {best}"]]
    assert_a_real_picture(run / "plots" / "learning_curves.png")


def test_regression_plots_show_every_test_row(regression: Path) -> None:
    data = plots.read_run(regression)
    actual, predicted = data.column("y"), data.column("prediction")
    figure = charts.predicted_vs_actual(data, actual, predicted)
    (ax,) = figure.axes
    points = ax.collections[0].get_offsets()
    assert np.array_equal(np.asarray(points), np.column_stack([actual, predicted]))
    assert "predicted vs actual, test split (10 rows)" in figure.get_suptitle()
    assert ax.get_xlabel() == "actual y" and ax.get_ylabel() == "predicted y"
    residual_ax = charts.residuals(data, actual, predicted).axes[0]
    residual = np.asarray(residual_ax.collections[0].get_offsets())[:, 1]
    assert np.allclose(residual, actual - predicted)


def test_large_test_splits_show_a_fixed_sample(
    regression: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(charts, "MAX_POINTS", 4)
    data = plots.read_run(regression)
    actual, predicted = data.column("y"), data.column("prediction")
    first, again = (charts.predicted_vs_actual(data, actual, predicted) for _ in range(2))
    points = np.asarray(first.axes[0].collections[0].get_offsets())
    assert len(points) == 4 and "(4 of 10 rows shown)" in first.get_suptitle()
    assert np.array_equal(points, np.asarray(again.axes[0].collections[0].get_offsets()))


def test_roc_and_pr_agree_with_sklearn(binary: Path, multiclass: Path) -> None:
    metrics = json.loads((binary / "metrics.json").read_text())
    figures = plots.draw(plots.read_run(binary))
    (roc,) = lines_labelled(figures["roc_curve"])
    assert roc == ["chance", f"label = yes (AUC {metrics['test']['roc_auc']:.3f})"]
    with open(multiclass / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    truth = np.array([row["label"] for row in rows])
    expected_roc, expected_pr = ["chance"], []
    for label in ("high", "low", "mid"):  # the classes in their sorted order, as labelled
        positive, p = truth == label, np.array([float(row[f"p_{label}"]) for row in rows])
        expected_roc.append(f"{label} (AUC {sk.roc_auc_score(positive, p):.3f})")
        expected_pr.append(f"{label} (AP {sk.average_precision_score(positive, p):.3f})")
    figures = plots.draw(plots.read_run(multiclass))
    assert lines_labelled(figures["roc_curve"]) == [expected_roc]
    assert lines_labelled(figures["pr_curve"]) == [[*expected_pr, "chance: the class's share"]]


def test_the_confusion_matrix_shows_each_split_labelled(multiclass: Path) -> None:
    confusion = json.loads((multiclass / "metrics.json").read_text())["confusion_matrix"]
    figure = charts.confusion_matrix(plots.read_run(multiclass), confusion["labels"])
    panels, bar = figure.axes[:3], figure.axes[3]
    assert [ax.get_title().split(":")[0] for ax in panels] == ["train", "val", "test"]
    assert bar.get_ylabel() == "share of the true class"
    for ax, split in zip(panels, ("train", "val", "test"), strict=True):
        assert [t.get_text() for t in ax.get_xticklabels()] == confusion["labels"]
        counts = [int(t.get_text().replace(",", "")) for t in ax.texts]
        assert counts == [n for row in confusion[split] for n in row]
    assert panels[0].get_ylabel() == "true label"


def test_plot_redraws_a_run_and_prints_the_paths(
    cli: Cli, regression: Path, tmp_path: Path
) -> None:
    run = copy_run(regression, tmp_path)
    (run / "plots" / "residuals.png").unlink()
    result = cli("plot", run)
    assert (result.code, result.err) == (0, "")
    assert result.out.splitlines() == [
        str(run / "plots" / name)
        for name in ("learning_curves.png", "predicted_vs_actual.png", "residuals.png")
    ]
    assert_a_real_picture(run / "plots" / "residuals.png")
    shutil.rmtree(run / "plots")
    assert cli("plot", run).code == 0 and len(list((run / "plots").iterdir())) == 3


def test_plot_errors_are_one_line(cli: Cli, regression: Path, tmp_path: Path) -> None:
    def error(path: Path) -> str:
        result = cli("plot", path)
        assert result.code == 2 and result.out == "", result.err
        (line,) = result.err.splitlines()
        return line

    assert error(tmp_path) == (
        f"Error: {tmp_path}: not a run directory (no run.json); pass a folder that mlpkit train printed"
    )
    assert error(tmp_path / "nope") == (
        f"Error: {tmp_path / 'nope'}: does not exist; expected a run directory"
    )
    run = copy_run(regression, tmp_path)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(info | {"status": "interrupted"}))
    assert error(run) == (
        f"Error: {run}: the run is interrupted, not complete: plots are drawn when a run completes; "
        f"resume it: mlpkit train --resume {run}"
    )
    (run / "run.json").write_text(json.dumps(info))
    history = (run / "history.csv").read_text()
    header, first, *rest = history.splitlines(keepends=True)
    (run / "history.csv").write_text("".join([header, first.replace(",", ",x", 1), *rest]))
    assert error(run).startswith(f"Error: {run / 'history.csv'}: column 'train_loss' holds 'x")
    (run / "history.csv").unlink()
    assert error(run) == f"Error: {run / 'history.csv'}: missing from the run directory"
    (run / "history.csv").write_text(history)
    (run / "metrics.json").write_text('{"test": 5}')
    assert error(run).startswith(f"Error: {run / 'metrics.json'}: not a valid metrics.json: ")


def test_a_failure_to_draw_is_a_warning_not_a_failed_run(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(run_dir: Path) -> list[Path]:
        raise RuntimeError("no fonts")

    monkeypatch.setattr(plots, "draw_run", broken)
    (tmp_path / "config.yaml").write_text(TINY_CONFIG)
    (tmp_path / "data.csv").write_text(tiny_csv())
    result = cli("train", tmp_path / "config.yaml", "--runs-dir", tmp_path / "runs", "-q")
    assert result.code == 0
    run = Path(result.last_line)
    assert result.err == (
        f"Warning: plots not drawn (RuntimeError: no fonts); try again: mlpkit plot {run}\n"
    )
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    assert not (run / "plots").exists()


def test_names_and_labels_are_shown_as_they_are(multiclass: Path) -> None:
    """A pair of $ in a class label would be mathtext to matplotlib, and this one an error."""
    data = plots.read_run(multiclass)
    labels = [r"$\q$", "low", "mid"]
    figure = charts.confusion_matrix(data, labels)
    assert plots.png(figure).startswith(PNG_SIGNATURE)
    assert figure.axes[0].get_yticklabels()[0].get_text() == r"\$\q\$"


def test_a_failure_to_write_them_is_exit_4_and_the_run_stays_complete(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(run_dir: Path) -> list[Path]:
        raise EnvironmentFault(Problem("cannot write: No space left on device", file="x.png"))

    monkeypatch.setattr(plots, "draw_run", disk_full)
    (tmp_path / "config.yaml").write_text(TINY_CONFIG)
    (tmp_path / "data.csv").write_text(tiny_csv())
    result = cli("train", tmp_path / "config.yaml", "--runs-dir", tmp_path / "runs", "-q")
    assert (result.code, result.err) == (4, "Error: x.png: cannot write: No space left on device\n")
    (run,) = (tmp_path / "runs" / "tiny").iterdir()
    assert result.out == f"{run}\n"  # printed as the run completed, before the plots
    assert json.loads((run / "run.json").read_text())["status"] == "complete"


def test_labels_the_font_cannot_draw_leave_stderr_quiet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An emoji or a control character in a class name is drawn as a box, without matplotlib
    printing a warning (and the raw text) on stderr."""
    run = trained(
        tmp_path / "odd", MULTICLASS_CONFIG, labelled_csv(["\U0001f642", "x\x1by", '"new\nline"'])
    )
    assert capsys.readouterr().err == ""
    assert {p.name for p in (run / "plots").iterdir()} == CLASSIFICATION_PLOTS


def _drawn(run: Path, expected: set[str], timeout: float = 120) -> None:
    """Wait until every plot of `expected` is in RUN/plots and no process names the run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        have = (
            {p.name for p in (run / "plots").glob("*.png")} if (run / "plots").exists() else set()
        )
        if have == expected and not _processes_naming(run):
            return
        time.sleep(0.1)
    raise AssertionError(f"plots not drawn in {timeout} s: {sorted(have)}")


def _processes_naming(run: Path) -> list[int]:
    """Processes whose command line holds the run directory (the background child's does)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            words = cmdline.read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        if str(run).encode() in words:
            found.append(int(cmdline.parent.name))
    return found


def test_train_returns_before_its_plots_and_a_detached_child_draws_them(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(TINY_CONFIG)
    (tmp_path / "data.csv").write_text(tiny_csv())
    done = subprocess.run(
        [sys.executable, "-m", "mlpkit", "train", "config.yaml", "-q", "--plots", "background"],
        cwd=tmp_path,
        capture_output=True,  # returns when train exits: the child holds none of its pipes
        text=True,
        timeout=300,
    )
    assert (done.returncode, done.stderr) == (0, "")
    run = tmp_path / done.stdout.strip()
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    _drawn(run, REGRESSION_PLOTS)
    for path in (run / "plots").iterdir():  # no temporary files left either
        assert_a_real_picture(path)
    assert not (run / "plots.log").exists()


def test_one_child_draws_every_run_it_is_given_and_exits(
    regression: Path, binary: Path, tmp_path: Path
) -> None:
    runs = [copy_run(regression, tmp_path / "a"), copy_run(binary, tmp_path / "b")]
    for run in runs:
        shutil.rmtree(run / "plots")
    child = plotting.after(runs, "background")
    assert child is not None
    assert child.wait(timeout=120) == 0  # finished, reaped: no zombie left behind
    assert {p.name for p in (runs[0] / "plots").iterdir()} == REGRESSION_PLOTS
    assert {p.name for p in (runs[1] / "plots").iterdir()} == CLASSIFICATION_PLOTS


def test_a_child_that_cannot_draw_a_run_leaves_it_whole_and_says_why(
    cli: Cli, regression: Path, binary: Path, tmp_path: Path
) -> None:
    broken, fine = copy_run(regression, tmp_path / "a"), copy_run(binary, tmp_path / "b")
    shutil.rmtree(broken / "plots")
    shutil.rmtree(fine / "plots")
    history = (broken / "history.csv").read_bytes()
    (broken / "history.csv").unlink()
    before = {p.name: p.read_bytes() for p in broken.iterdir()}
    child = plotting.after([broken, fine], "background")
    assert child is not None and child.wait(timeout=120) == 0
    assert {p.name: p.read_bytes() for p in broken.iterdir() if p.name != "plots.log"} == before
    assert (broken / "plots.log").read_text() == (
        f"plots not drawn ({broken / 'history.csv'}: missing from the run directory); "
        f"try again: mlpkit plot {broken}\n"
    )
    assert {p.name for p in (fine / "plots").iterdir()} == CLASSIFICATION_PLOTS  # the next run
    (broken / "history.csv").write_bytes(history)
    assert cli("plot", broken, fine).code == 0  # both again, in the foreground
    assert not (broken / "plots.log").exists()  # mended
    assert {p.name for p in (broken / "plots").iterdir()} == REGRESSION_PLOTS


def test_seeds_hand_all_their_runs_to_one_child(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handed: list[list[Path]] = []
    monkeypatch.setattr(plotting, "detach", handed.append)
    (tmp_path / "config.yaml").write_text(TINY_CONFIG)
    (tmp_path / "data.csv").write_text(tiny_csv())
    config, runs = tmp_path / "config.yaml", tmp_path / "runs"
    result = cli("train", config, "--runs-dir", runs, "-q", "--seeds", "3", "--plots", "background")
    assert result.code == 0, result.err
    printed = [Path(line) for line in result.out.splitlines()[:3]]  # then the summary file
    assert handed == [printed]  # one child, the three runs in the order they completed
    assert sorted(printed) == sorted((runs / "tiny").glob("2*"))
    assert not list(runs.glob("*/*/plots"))  # none drawn by train itself
    result = cli("train", config, "--runs-dir", runs, "-q", "--plots", "off")
    assert result.code == 0 and len(handed) == 1
    assert not (Path(result.last_line) / "plots").exists()
