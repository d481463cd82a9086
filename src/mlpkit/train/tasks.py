"""What a run predicts: a number (regression), one of two classes (binary) or of several.

A task turns target cells into training targets, builds its loss, scores model outputs in the
target's own terms, and turns outputs into prediction columns. For classification the network
outputs logits: a sigmoid or softmax on the output layer is shown in the summary but applied
here, after a loss computed from logits (BCEWithLogits, cross-entropy) for numerical stability.
torch is imported by the methods that make tensors: `mlpkit check` makes a task without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mlpkit.config import registries
from mlpkit.config.schema import Config
from mlpkit.data.preprocessing import ClassLabels, TargetScale, canonical_label
from mlpkit.train.baselines import regression_baselines

if TYPE_CHECKING:
    import torch
    from torch import nn

Scores = dict[str, float]


@dataclass(frozen=True)
class Regression:
    """A number. Every task has the methods below; the network's outputs stay raw (a linear
    head, logits for classification) and each method reads them in the task's own terms."""

    scale: TargetScale
    loss_name: str
    loss_options: dict[str, Any]

    name = "regression"

    def targets(self, values: np.ndarray) -> torch.Tensor:
        """Scaled float targets, [rows, 1]."""
        import torch

        return torch.from_numpy(self.scale.scale(values.astype(np.float64)))[:, None]

    def loss(self, device: torch.device) -> nn.Module:
        """The loss training minimizes, on the outputs and `targets`."""
        return registries.LOSSES[self.loss_name](**self.loss_options)

    def score(self, y: torch.Tensor, outputs: torch.Tensor, names: list[str] | None) -> Scores:
        """The metrics `names` (all of the task's when None) in the target's own units."""
        y_true = self.scale.unscale(y[:, 0].double().cpu().numpy())
        y_pred = self.scale.unscale(outputs[:, 0].double().cpu().numpy())
        return registries.regression_scores(y_true, y_pred, names)

    def columns(self, outputs: torch.Tensor) -> dict[str, np.ndarray]:
        """What predict writes for each row: here the prediction in target units."""
        return {"prediction": self.scale.unscale(outputs[:, 0].double().cpu().numpy())}

    def truth(self, y: torch.Tensor) -> np.ndarray:
        """Training targets back in the file's terms (units, or class names)."""
        return self.scale.unscale(y[:, 0].double().cpu().numpy())

    def baselines(
        self, x_train: np.ndarray, y_train: torch.Tensor, x_test: np.ndarray, y_test: torch.Tensor
    ) -> dict[str, Scores]:
        """The reference models' test scores, fitted on the network's own training inputs."""
        return regression_baselines(x_train, self.truth(y_train), x_test, self.truth(y_test))


@dataclass(frozen=True)
class Binary:
    """One of two classes: one logit, BCE with logits, a probability over `threshold`."""

    labels: ClassLabels  # classes[1] is the positive class
    threshold: float
    positive_weight: float | None  # from class_weights: weight(positive) / weight(negative)

    name = "binary"

    def targets(self, values: np.ndarray) -> torch.Tensor:
        """0/1 floats, [rows, 1], as BCEWithLogits wants them."""
        import torch

        return torch.from_numpy(self.labels.encode(values).astype(np.float32))[:, None]

    def loss(self, device: torch.device) -> nn.Module:
        import torch
        from torch import nn

        if self.positive_weight is None:
            return nn.BCEWithLogitsLoss()
        return nn.BCEWithLogitsLoss(pos_weight=torch.tensor([self.positive_weight], device=device))

    def probabilities(self, outputs: torch.Tensor) -> np.ndarray:
        """P(positive class) per row."""
        import torch

        return torch.sigmoid(outputs[:, 0].double()).cpu().numpy()

    def score(self, y: torch.Tensor, outputs: torch.Tensor, names: list[str] | None) -> Scores:
        truth = y[:, 0].long().cpu().numpy()
        return binary_scores(truth, self.probabilities(outputs), self.threshold, names)

    def columns(self, outputs: torch.Tensor) -> dict[str, np.ndarray]:
        positive = self.probabilities(outputs)
        predicted = (positive >= self.threshold).astype(int)
        return {
            "prediction": np.asarray(self.labels.classes)[predicted],
            f"p_{self.labels.classes[1]}": positive,
        }

    def truth(self, y: torch.Tensor) -> np.ndarray:
        labels: np.ndarray = np.asarray(self.labels.classes)[y[:, 0].long().cpu().numpy()]
        return labels

    def baselines(
        self, x_train: np.ndarray, y_train: torch.Tensor, x_test: np.ndarray, y_test: torch.Tensor
    ) -> dict[str, Scores]:
        train, test = y_train[:, 0].long().numpy(), y_test[:, 0].long().numpy()
        majority = np.full(len(test), train.mean())  # P(positive) = its share in training
        logistic = _logistic(x_train, train).predict_proba(x_test.astype(np.float64))[:, 1]
        return {
            "majority": binary_scores(test, majority, self.threshold, None),
            "logistic_regression": binary_scores(test, logistic, self.threshold, None),
        }

    def confusion(self, y: torch.Tensor, outputs: torch.Tensor) -> list[list[int]]:
        predicted = self.probabilities(outputs) >= self.threshold
        from sklearn import metrics as sk  # classification only: see _logistic

        matrix = sk.confusion_matrix(y[:, 0].long().cpu().numpy(), predicted, labels=[0, 1])
        return matrix.tolist()  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Multiclass:
    """One of several classes: a logit per class, cross-entropy, the most probable class."""

    labels: ClassLabels
    class_weights: list[float] | None
    top_k: int

    name = "multiclass"

    def targets(self, values: np.ndarray) -> torch.Tensor:
        """Class indices, [rows], as cross-entropy wants them."""
        import torch

        return torch.from_numpy(self.labels.encode(values))

    def loss(self, device: torch.device) -> nn.Module:
        import torch
        from torch import nn

        if self.class_weights is None:
            return nn.CrossEntropyLoss()
        return nn.CrossEntropyLoss(weight=torch.tensor(self.class_weights, device=device))

    def probabilities(self, outputs: torch.Tensor) -> np.ndarray:
        import torch

        return torch.softmax(outputs.double(), dim=1).cpu().numpy()

    def score(self, y: torch.Tensor, outputs: torch.Tensor, names: list[str] | None) -> Scores:
        return multiclass_scores(y.cpu().numpy(), self.probabilities(outputs), self.top_k, names)

    def columns(self, outputs: torch.Tensor) -> dict[str, np.ndarray]:
        probabilities = self.probabilities(outputs)
        columns = {"prediction": np.asarray(self.labels.classes)[probabilities.argmax(axis=1)]}
        for index, label in enumerate(self.labels.classes):
            columns[f"p_{label}"] = probabilities[:, index]
        return columns

    def truth(self, y: torch.Tensor) -> np.ndarray:
        labels: np.ndarray = np.asarray(self.labels.classes)[y.cpu().numpy()]
        return labels

    def baselines(
        self, x_train: np.ndarray, y_train: torch.Tensor, x_test: np.ndarray, y_test: torch.Tensor
    ) -> dict[str, Scores]:
        train, test = y_train.numpy(), y_test.numpy()
        n_classes = len(self.labels.classes)
        shares = np.bincount(train, minlength=n_classes) / len(train)
        majority = np.tile(shares, (len(test), 1))
        logistic = _logistic(x_train, train)
        probabilities = np.zeros((len(test), n_classes))
        probabilities[:, logistic.classes_] = logistic.predict_proba(x_test.astype(np.float64))
        return {
            "majority": multiclass_scores(test, majority, self.top_k, None),
            "logistic_regression": multiclass_scores(test, probabilities, self.top_k, None),
        }

    def confusion(self, y: torch.Tensor, outputs: torch.Tensor) -> list[list[int]]:
        predicted = self.probabilities(outputs).argmax(axis=1)
        labels = list(range(len(self.labels.classes)))
        from sklearn import metrics as sk

        return sk.confusion_matrix(y.cpu().numpy(), predicted, labels=labels).tolist()  # type: ignore[no-any-return]


Task = Regression | Binary | Multiclass


def make_task(
    config: Config, target: TargetScale | ClassLabels, class_counts: np.ndarray | None
) -> Task:
    """The task for a config and its fitted target; class weights come from the training rows'
    count of each class (None when the task will not train: eval and predict need no loss)."""
    training = config.training
    if isinstance(target, TargetScale):
        assert training.loss is not None  # load_config fills in the task's default loss
        options = training.loss.model_dump(exclude={"name"})
        return Regression(target, training.loss.name, options)
    weights = None
    if class_counts is not None:
        weights = _class_weights(training.class_weights, target, class_counts)
    if config.data.task == "binary":
        positive = None if weights is None else weights[1] / weights[0]
        return Binary(target, training.threshold, positive)
    return Multiclass(target, weights, training.top_k)


def _class_weights(
    setting: str | dict[str, float] | None, labels: ClassLabels, class_counts: np.ndarray
) -> list[float] | None:
    """balanced: n_rows / (n_classes * rows of the class), as scikit-learn computes it."""
    if setting is None:
        return None
    if setting == "balanced":
        rows = int(class_counts.sum())
        return [rows / (len(labels.classes) * max(int(c), 1)) for c in class_counts]
    assert isinstance(setting, dict)
    weights = {canonical_label(key): weight for key, weight in setting.items()}
    return [float(weights.get(label, 1.0)) for label in labels.classes]


def binary_scores(
    truth: np.ndarray, positive: np.ndarray, threshold: float, names: list[str] | None
) -> Scores:
    """Binary metrics from 0/1 truth and P(positive); ROC AUC only when both classes occur."""
    from sklearn import metrics as sk

    predicted = (positive >= threshold).astype(int)
    metrics: dict[str, Callable[[], float]] = {
        "accuracy": lambda: sk.accuracy_score(truth, predicted),
        "precision": lambda: sk.precision_score(truth, predicted, zero_division=0),
        "recall": lambda: sk.recall_score(truth, predicted, zero_division=0),
        "f1": lambda: sk.f1_score(truth, predicted, zero_division=0),
        "log_loss": lambda: sk.log_loss(truth, np.clip(positive, 1e-15, 1 - 1e-15), labels=[0, 1]),
    }
    if len(np.unique(truth)) == 2:  # undefined on one class: left out, not NaN
        metrics["roc_auc"] = lambda: sk.roc_auc_score(truth, positive)
    return _computed(metrics, names)


def multiclass_scores(
    truth: np.ndarray, probabilities: np.ndarray, top_k: int, names: list[str] | None
) -> Scores:
    """Multiclass metrics from class indices and per-class probabilities.

    F1 averages over the classes present in truth or prediction, as sklearn does by default.
    """
    from sklearn import metrics as sk

    labels = list(range(probabilities.shape[1]))
    predicted = probabilities.argmax(axis=1)
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]  # [rows, k]
    metrics: dict[str, Callable[[], float]] = {
        "accuracy": lambda: sk.accuracy_score(truth, predicted),
        "f1_macro": lambda: sk.f1_score(truth, predicted, average="macro", zero_division=0),
        "f1_weighted": lambda: sk.f1_score(truth, predicted, average="weighted", zero_division=0),
        "top_k_accuracy": lambda: (top == truth[:, None]).any(axis=1).mean(),
        "log_loss": lambda: sk.log_loss(truth, np.clip(probabilities, 1e-15, 1), labels=labels),
    }
    return _computed(metrics, names)


def _computed(metrics: dict[str, Callable[[], float]], names: list[str] | None) -> Scores:
    """Compute only the metrics asked for (all when `names` is None), as plain floats."""
    chosen = metrics if names is None else {n: metrics[n] for n in names if n in metrics}
    return {name: float(compute()) for name, compute in chosen.items()}


def _logistic(x: np.ndarray, y: np.ndarray) -> Any:
    """scikit-learn's logistic regression, fitted. sklearn (a second to import) is imported
    here and in the classification metrics only, so a regression run never loads it."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=5000).fit(x.astype(np.float64), y)
