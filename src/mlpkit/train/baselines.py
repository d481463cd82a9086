"""Reference models fitted on the same split and preprocessing as the network.

A network that cannot beat these has learned nothing worth its parameters; the write-up made the
same comparison with linear regression.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LinearRegression

from mlpkit.config.registries import regression_scores


def regression_baselines(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> dict[str, dict[str, float]]:
    """Test metrics of the mean predictor and ordinary least squares; targets in original units."""
    x_train, x_test = x_train.astype(np.float64), x_test.astype(np.float64)
    mean_prediction = np.full_like(y_test, y_train.mean(), dtype=np.float64)
    least_squares = LinearRegression().fit(x_train, y_train).predict(x_test)
    return {
        "mean": regression_scores(y_test, mean_prediction),
        "linear_regression": regression_scores(y_test, least_squares),
    }
