"""Write the classification examples data/breast_cancer.csv and data/wine.csv, once.

Both tables ship inside scikit-learn (no download); run from the repository root:

    .venv/bin/python data/make_sklearn.py

Column names are scikit-learn's, in snake_case. The target is the last column, written as text
labels (breast_cancer: malignant/benign; wine: class_0/class_1/class_2).
"""

import csv
import re
from pathlib import Path

from sklearn.datasets import load_breast_cancer, load_wine

HERE = Path(__file__).parent


def snake(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def write(name: str, bunch: object, target: str) -> None:
    features = [snake(f) for f in bunch.feature_names]  # type: ignore[attr-defined]
    labels = bunch.target_names  # type: ignore[attr-defined]
    path = HERE / f"{name}.csv"
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([*features, target])
        for row, label in zip(bunch.data, bunch.target, strict=True):  # type: ignore[attr-defined]
            writer.writerow([f"{v:g}" for v in row] + [labels[label]])
    print(f"wrote {path}: {len(bunch.target)} rows, {len(features)} features")  # type: ignore[attr-defined]


if __name__ == "__main__":
    write("breast_cancer", load_breast_cancer(), "diagnosis")
    write("wine", load_wine(), "cultivar")
