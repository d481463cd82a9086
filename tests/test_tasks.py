"""Classification: task inference, labels, stratified splits, logits, metrics against sklearn."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, Cli, Project
from sklearn import metrics as sk
from sklearn.utils.class_weight import compute_class_weight

from mlpkit.config.load import load_config
from mlpkit.data.preprocessing import ClassLabels, sorted_labels
from mlpkit.errors import ConfigError
from mlpkit.train.tasks import Binary, Multiclass, make_task, multiclass_scores

CLASSIFIER = """\
name: species
seed: 0
data:
  path: data.csv
  target: species
  features: [a, b]
  split: {train: 0.6, val: 0.2, test: 0.2}
model:
  layers:
    - {type: dense, units: 8, activation: relu}
    - {type: dense, units: 3, activation: softmax}
training:
  epochs: 15
  batch_size: 8
  optimizer: {name: adam, lr: 1e-2}
  loss: cross_entropy
"""


def classes_csv(rows: int = 90, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=rows), rng.normal(size=rows)
    species = np.select([a > 0.4, a < -0.4], ["setosa", "virginica"], "versicolor")
    sick = np.where(a + b > 0, 1, 0)
    lines = ["a,b,species,sick"] + [
        f"{x:.4f},{y:.4f},{s},{k}" for x, y, s, k in zip(a, b, species, sick, strict=True)
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def classifier(project: Project) -> Project:
    project.write_config(CLASSIFIER)
    project.data.write_text(classes_csv())
    return project


def config_errors(project: Project, *overrides: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(project.config, list(overrides))
    return caught.value.render().splitlines()


def test_the_task_follows_the_loss_and_fills_its_defaults(classifier: Project) -> None:
    cfg = load_config(classifier.config).config
    assert cfg.data.task == "multiclass"
    assert cfg.training.metrics == ["accuracy", "f1_macro"]
    binary = load_config(
        classifier.config,
        [
            "data.task=binary",
            "data.target=sick",
            "training.loss=null",
            "model.layers.1={type: dense, units: 1, activation: sigmoid}",
        ],
    ).config
    assert binary.training.loss is not None and binary.training.loss.name == "bce"
    assert binary.training.metrics == ["accuracy", "roc_auc"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["data.task=regression"],
            "training.loss.name: 'cross_entropy' is a multiclass loss but "
            "data.task is regression; use mse or mae or huber",
        ),
        (["training.metrics=[r2]"], "training.metrics: 'r2' is not a multiclass metric"),
        (["data.scale_target=true"], "data.scale_target: a multiclass target has classes"),
        (
            [
                "training.loss=mse",
                "training.class_weights=balanced",
                "model.layers.1={type: dense, units: 1}",
            ],
            "training.class_weights: class weights need a classification task",
        ),
        (
            ["model.layers.1.activation=tanh"],
            "a multiclass output needs softmax (or linear logits), not tanh",
        ),
    ],
)
def test_settings_that_do_not_fit_the_task_are_refused(
    classifier: Project, overrides: list[str], expected: str
) -> None:
    lines = config_errors(classifier, *overrides)
    assert any(expected in line for line in lines), lines


def test_labels_sort_numerically_and_unknown_labels_are_flagged() -> None:
    assert sorted_labels(np.array(["10", "2", "1"])) == ["1", "2", "10"]
    assert sorted_labels(np.array(["b", "a", "10"])) == ["10", "a", "b"]
    labels = ClassLabels(name="y", classes=["no", "yes"])
    assert labels.encode(np.array(["yes", "no", "maybe"])).tolist() == [1, 0, -1]


def test_balanced_class_weights_match_sklearn(classifier: Project) -> None:
    cfg = load_config(classifier.config, ["training.class_weights=balanced"]).config
    train = np.array(["a"] * 6 + ["b"] * 3 + ["c"])
    labels = ClassLabels(name="species", classes=["a", "b", "c"])
    task = make_task(cfg, labels, np.bincount(labels.encode(train)))
    assert isinstance(task, Multiclass) and task.class_weights is not None
    expected = compute_class_weight("balanced", classes=np.array(["a", "b", "c"]), y=train)
    np.testing.assert_allclose(task.class_weights, expected)


def test_binary_scores_from_logits_match_sklearn() -> None:
    rng = np.random.default_rng(1)
    logits = torch.from_numpy(rng.normal(size=(50, 1)))
    y = torch.from_numpy(rng.integers(0, 2, size=(50, 1)).astype(np.float32))
    task = Binary(ClassLabels(name="y", classes=["0", "1"]), threshold=0.3, positive_weight=None)
    ours = task.score(y, logits, None)
    positive = 1 / (1 + np.exp(-logits[:, 0].numpy()))
    truth, predicted = y[:, 0].numpy().astype(int), (positive >= 0.3).astype(int)
    assert ours["accuracy"] == pytest.approx(sk.accuracy_score(truth, predicted))
    assert ours["precision"] == pytest.approx(sk.precision_score(truth, predicted))
    assert ours["recall"] == pytest.approx(sk.recall_score(truth, predicted))
    assert ours["f1"] == pytest.approx(sk.f1_score(truth, predicted))
    assert ours["roc_auc"] == pytest.approx(sk.roc_auc_score(truth, positive))
    assert ours["log_loss"] == pytest.approx(sk.log_loss(truth, positive))
    assert task.confusion(y, logits) == sk.confusion_matrix(truth, predicted).tolist()


def test_multiclass_scores_from_logits_match_sklearn() -> None:
    rng = np.random.default_rng(2)
    logits = torch.from_numpy(rng.normal(size=(60, 4)))
    y = torch.from_numpy(rng.integers(0, 4, size=60))
    task = Multiclass(ClassLabels(name="y", classes=list("abcd")), None, top_k=2)
    ours = task.score(y, logits, None)
    probabilities = torch.softmax(logits, dim=1).numpy()
    truth, predicted = y.numpy(), probabilities.argmax(axis=1)
    assert ours["accuracy"] == pytest.approx(sk.accuracy_score(truth, predicted))
    assert ours["f1_macro"] == pytest.approx(sk.f1_score(truth, predicted, average="macro"))
    assert ours["f1_weighted"] == pytest.approx(sk.f1_score(truth, predicted, average="weighted"))
    assert ours["top_k_accuracy"] == pytest.approx(
        sk.top_k_accuracy_score(truth, probabilities, k=2)
    )
    assert ours["log_loss"] == pytest.approx(sk.log_loss(truth, probabilities))


def test_classification_run_end_to_end(cli: Cli, classifier: Project) -> None:
    run = classifier.train(cli)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.8
    assert set(metrics["baselines"]) == {"majority", "logistic_regression"}
    labels = metrics["confusion_matrix"]["labels"]
    assert labels == ["setosa", "versicolor", "virginica"]
    test_counts = np.array(metrics["confusion_matrix"]["test"]).sum(axis=1)
    # stratified: each class is cut on its own; test takes what flooring train and val leaves
    everything = [line.split(",")[2] for line in classifier.data.read_text().splitlines()[1:]]
    for label, count in zip(labels, test_counts, strict=True):
        n = everything.count(label)
        assert count == n - int(0.6 * n) - int(0.2 * n)
    with open(run / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert set(rows[0]) == {
        "line",
        "species",
        "prediction",
        "p_setosa",
        "p_versicolor",
        "p_virginica",
    }
    assert all(abs(sum(float(r[f"p_{c}"]) for c in labels) - 1) < 1e-9 for r in rows)
    preprocessing = json.loads((run / "preprocessing.json").read_text())
    assert preprocessing["target"] == {"kind": "classes", "name": "species", "classes": labels}
    assert "softmax_0" in (run / "summary.txt").read_text()  # shown, though trained on logits
    eval_result = cli("eval", run)
    assert eval_result.code == 0 and eval_result.out.count(" yes ") == 5
    new = classifier.root / "new.csv"
    new.write_text("b,a\n0.1,2.0\n")
    predicted = cli("predict", run, "--data", new)
    assert predicted.out.splitlines()[0] == "line,prediction,p_setosa,p_versicolor,p_virginica"
    assert predicted.out.splitlines()[1].startswith("2,setosa,")


def test_eval_refuses_a_label_unseen_in_training(cli: Cli, classifier: Project) -> None:
    run = classifier.train(cli)
    other = classifier.root / "other.csv"
    other.write_text("a,b,species\n1,2,setosa\n1,2,tulip\n")
    result = cli("eval", run, "--data", other)
    assert (result.code, result.err) == (
        2,
        f"Error: {other}: column 'species', line 3: label 'tulip' was not a class in training "
        "(1 rows); expected one of: setosa, versicolor, virginica\n",
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["data.target=b", "data.features=[a]"], "classes"),  # continuous target as classes
        (
            [
                "data.task=binary",
                "model.layers.1={type: dense, units: 1, activation: sigmoid}",
                "training.loss=bce",
            ],
            "3 classes (setosa, versicolor, virginica); a binary task needs 2",
        ),
        (["model.layers.1.units=4"], "the output layer has 4 units but 'species' has 3 classes"),
    ],
)
def test_class_problems_found_before_training(
    cli: Cli, classifier: Project, overrides: list[str], expected: str
) -> None:
    args = [arg for override in overrides for arg in ("--set", override)]
    result = cli("train", classifier.config, "--runs-dir", classifier.runs, *args)
    assert result.code == 2 and len(result.err.splitlines()) == 1, result.err
    assert expected in result.err
    assert not classifier.runs.exists()


def test_a_single_class_is_refused(cli: Cli, classifier: Project) -> None:
    classifier.data.write_text("a,b,species\n" + "1,2,setosa\n" * 20)
    result = cli("check", classifier.config)
    assert result.err == (
        f"Error: {classifier.data}: column 'species': a single class (setosa); "
        "classification needs two or more\n"
    )


@pytest.mark.parametrize("name", ["breast-cancer", "wine"])
def test_shipped_classification_examples_learn(cli: Cli, tmp_path: Path, name: str) -> None:
    result = cli("train", REPO / "configs" / f"{name}.yaml", "--runs-dir", tmp_path, "-q")
    assert result.code == 0, result.err
    metrics = json.loads((Path(result.last_line) / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.95
    assert metrics["test"]["accuracy"] > metrics["baselines"]["majority"]["accuracy"] + 0.3


def test_multiclass_over_two_classes_trains_with_top_k_accuracy(
    cli: Cli, classifier: Project
) -> None:
    # multiclass over two classes (top_k 2 = all classes) trains and scores
    classifier.train(
        cli,
        "--set",
        "data.target=sick",
        "--set",
        "model.layers.1.units=2",
        "--set",
        "training.metrics=[accuracy, top_k_accuracy]",
    )


def test_a_class_without_training_rows_is_refused_before_any_run(
    cli: Cli, classifier: Project
) -> None:
    classifier.data.write_text(classifier.data.read_text() + "0.0,0.0,rare,0\n")
    result = cli(
        "train",
        classifier.config,
        "--runs-dir",
        classifier.runs / "x",
        "--set",
        "model.layers.1.units=4",
    )
    assert result.code == 2 and "class rare has no rows in the training split" in result.err
    assert not (classifier.runs / "x").exists()


def test_roc_auc_undefined_on_a_split_is_left_out_and_shown_as_a_dash(
    cli: Cli, classifier: Project
) -> None:
    rows = classifier.data.read_text().splitlines()
    # two positives only: stratified, one lands in train, one in test, none in val
    body = [r.rsplit(",", 1)[0] + ",0" for r in rows[1:]]
    body[0], body[1] = body[0][:-1] + "1", body[1][:-1] + "1"
    classifier.data.write_text("\n".join([rows[0], *body]) + "\n")
    result = cli(
        "train",
        classifier.config,
        "--runs-dir",
        classifier.runs,
        "--set",
        "data.target=sick",
        "--set",
        "data.task=binary",
        "--set",
        "model.layers.1={type: dense, units: 1, activation: sigmoid}",
        "--set",
        "training.loss=bce",
        "--set",
        "data.split={train: 0.5, val: 0.25, test: 0.25}",
    )
    assert result.code == 0, result.err
    metrics = json.loads((Path(result.last_line) / "metrics.json").read_text())
    assert "roc_auc" not in metrics["val"] and "roc_auc" in metrics["test"]
    assert any(line.startswith("│ roc_auc") and " - " in line for line in result.out.splitlines())


def test_class_weights_must_name_classes(cli: Cli, classifier: Project) -> None:
    result = cli("check", classifier.config, "--set", "training.class_weights={cat: 5}")
    assert result.code == 2
    assert (
        "training.class_weights: cat is not a class; the classes are setosa, versicolor"
        in result.err
    )


def test_check_finds_named_input_mistakes(cli: Cli, classifier: Project) -> None:
    two = "model.inputs={p: {columns: [a], layers: [{type: batch_norm}]}, q: {columns: [b]}}"
    result = cli("check", classifier.config, "--set", two, "--set", "training.batch_size=1")
    assert "batch_norm needs batches of at least 2 rows" in result.err
    result = cli("check", classifier.config, "--set", "model.inputs={p: {colums: [a]}}")
    assert "model.inputs.p.colums: unknown key; did you mean 'columns'?" in result.err
    result = cli("check", classifier.config, "--set", "model.inputs={dense_0: {columns: [a, b]}}")
    assert "'dense_0' cannot name an input" in result.err


def test_numeric_labels_have_one_spelling(cli: Cli, classifier: Project) -> None:
    assert sorted_labels(np.array(["1", "1.0", "01", "2"])) == ["1", "2"]
    labels = ClassLabels(name="y", classes=["0", "1"])
    assert labels.encode(np.array(["1.0", "0", "1"])).tolist() == [1, 0, 1]
    run = classifier.train(cli, "--set", "data.target=sick", "--set", "model.layers.1.units=2")
    spelled = classifier.root / "spelled.csv"
    spelled.write_text("a,b,sick\n1,1,1.0\n-1,-1,0.0\n")
    assert cli("eval", run, "--data", spelled).code == 0


def test_f1_averages_over_the_classes_present() -> None:
    perfect = np.array([[0.9, 0.1, 0.0], [0.1, 0.9, 0.0]])  # class 2 never occurs
    scores = multiclass_scores(np.array([0, 1]), perfect, 2, None)
    assert scores["f1_macro"] == 1.0 == sk.f1_score([0, 1], [0, 1], average="macro")


def test_threshold_and_top_k_belong_to_their_task(classifier: Project) -> None:
    assert load_config(classifier.config, ["training.top_k=3"]).config.training.top_k == 3
    assert config_errors(classifier, "training.threshold=0.3") == [
        "Error: --set: training.threshold: only applies to a binary task, and data.task is "
        "multiclass; remove training.threshold"
    ]
