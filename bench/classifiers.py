"""The classification examples beside scikit-learn's MLPClassifier with the same layers.

    .venv/bin/python bench/classifiers.py [--seeds 0 1 2]

For each config and seed, both models see the same stratified split and the same fitted
preprocessing (mlpkit's), the same hidden layers, Adam at the config's learning rate, batch
size and number of epochs. Prints a Markdown table of test accuracy. Run on demand, never in CI.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import warnings
from pathlib import Path

from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from mlpkit.config.load import load_config
from mlpkit.config.schema import DenseLayer
from mlpkit.flows.train import train
from mlpkit.train.prepare import prepare

CONFIGS = [Path("configs/breast-cancer.yaml"), Path("configs/wine.yaml")]


def sklearn_accuracy(config: Path, seed: int) -> float:
    """MLPClassifier on mlpkit's split and preprocessing, with the config's hidden layers."""
    prepared = prepare(load_config(config, [f"seed={seed}"]))
    cfg = prepared.config
    hidden = [layer for layer in cfg.model.layers if isinstance(layer, DenseLayer)][:-1]
    frame, target = prepared.table.frame, cfg.data.target
    split = prepared.split
    x_train = prepared.preprocessor.transform(frame.iloc[split.train])
    x_test = prepared.preprocessor.transform(frame.iloc[split.test])
    model = MLPClassifier(
        hidden_layer_sizes=tuple(layer.units for layer in hidden),
        activation=hidden[0].activation if hidden[0].activation != "linear" else "identity",
        solver="adam",
        learning_rate_init=cfg.training.optimizer.lr,
        batch_size=cfg.training.batch_size,
        max_iter=cfg.training.epochs,
        n_iter_no_change=cfg.training.epochs + 1,  # no early stop: the same number of epochs
        alpha=0.0,  # mlpkit's Adam has no weight decay here
        random_state=seed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter reached is the point
        model.fit(x_train, frame[target].to_numpy()[split.train])
    return float(model.score(x_test, frame[target].to_numpy()[split.test]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    print("| config | seed | mlpkit test accuracy | MLPClassifier test accuracy |")
    print("| --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as runs_dir:
        for config in CONFIGS:
            ours, theirs = [], []
            for seed in args.seeds:
                result = train(load_config(config, [f"seed={seed}"]), Path(runs_dir))
                ours.append(result.metrics["test"]["accuracy"])
                theirs.append(sklearn_accuracy(config, seed))
                print(f"| {config.name} | {seed} | {ours[-1]:.4f} | {theirs[-1]:.4f} |", flush=True)
            print(
                f"| {config.name} | mean | {statistics.mean(ours):.4f} | "
                f"{statistics.mean(theirs):.4f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
