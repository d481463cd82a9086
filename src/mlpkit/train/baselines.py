"""Reference models fitted on the same split and preprocessing as the network.

A network that cannot beat these has learned nothing worth its parameters; the write-up made the
same comparison with linear regression.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mlpkit.config.registries import regression_scores


def regression_baselines(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> dict[str, dict[str, float]]:
    """Test metrics of the mean predictor and ordinary least squares; targets in original units."""
    x_train, x_test = x_train.astype(np.float64), x_test.astype(np.float64)
    mean_prediction = np.full_like(y_test, y_train.mean(), dtype=np.float64)
    least_squares = _least_squares(x_train, y_train)(x_test)
    return {
        "mean": regression_scores(y_test, mean_prediction),
        "linear_regression": regression_scores(y_test, least_squares),
    }


def _least_squares(x: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Ordinary least squares with an intercept, as scikit-learn's LinearRegression fits it
    (centre x and y, the minimum-norm solution of the rest by LAPACK's gelsd), in numpy: the
    baseline no longer imports scikit-learn (about a second of every regression run)."""
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    coefficients = np.linalg.lstsq(x - x_mean, y - y_mean, rcond=None)[0]
    intercept = y_mean - x_mean @ coefficients
    return lambda rows: rows @ coefficients + intercept
