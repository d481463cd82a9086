import numpy as np
import pytest
from sklearn import metrics as sk

from mlpkit.config.registries import regression_scores

SKLEARN = {
    "mae": sk.mean_absolute_error,
    "mse": sk.mean_squared_error,
    "rmse": sk.root_mean_squared_error,
    "r2": sk.r2_score,
    "median_ae": sk.median_absolute_error,
    "max_error": sk.max_error,
}


@pytest.mark.parametrize("n", [1, 2, 7, 40, 1001])
def test_regression_metrics_match_sklearn(n: int) -> None:
    rng = np.random.default_rng(n)
    y, pred = rng.normal(20, 5, size=n), rng.normal(20, 5, size=n)
    ours = regression_scores(y, pred)
    assert set(ours) == set(SKLEARN)
    for name, reference in SKLEARN.items():
        if name == "r2" and n < 2:
            continue  # sklearn warns and returns nan for a single sample
        assert ours[name] == pytest.approx(reference(y, pred), rel=1e-12, abs=1e-12), name


def test_r2_of_a_constant_target_follows_sklearn() -> None:
    y = np.full(5, 3.0)
    assert regression_scores(y, y)["r2"] == sk.r2_score(y, y) == 1.0
    assert regression_scores(y, y + 1)["r2"] == sk.r2_score(y, y + 1) == 0.0
