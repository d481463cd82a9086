import numpy as np
import pandas as pd
import pytest

from mlpkit.config.schema import DataConfig
from mlpkit.data.fitting import fit_preprocessor
from mlpkit.data.preprocessing import Preprocessor, TargetScale

DATA = DataConfig(
    path="x.csv",
    target="y",
    features=["a", "color", "const"],
    categorical=["color"],
    scale_target=True,
)


def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "a": [1.0, 2.0, 3.0, 4.0],
            "color": ["red", "blue", "red", "green"],
            "const": [5.0] * 4,
            "y": [10.0, 20.0, 30.0, 40.0],
        }
    )


def test_fits_on_the_rows_given_and_encodes_in_config_order() -> None:
    pre = fit_preprocessor(frame().iloc[:2], DATA)
    assert pre.input_names == ["a", "color=blue", "color=red", "const"]
    x = pre.transform(frame())
    assert x.dtype == np.float32 and x.shape == (4, 4)
    np.testing.assert_allclose(x[:, 0], [-1, 1, 3, 5])  # mean 1.5, std 0.5 from the 2 rows
    np.testing.assert_array_equal(x[:, 1:3], [[0, 1], [1, 0], [0, 1], [0, 0]])  # green unseen
    np.testing.assert_array_equal(x[:, 3], 0)  # a constant column stays finite


def test_target_scaling_round_trips() -> None:
    target = fit_preprocessor(frame(), DATA).target
    assert isinstance(target, TargetScale)  # a regression target
    y = frame()["y"].to_numpy()
    np.testing.assert_allclose(target.unscale(target.scale(y)), y, rtol=1e-6)
    assert target.scale(y).mean() == pytest.approx(0, abs=1e-6)


def test_json_round_trip_is_exact() -> None:
    pre = fit_preprocessor(frame(), DATA)
    again = Preprocessor.model_validate_json(pre.model_dump_json())
    assert again == pre
    np.testing.assert_array_equal(again.transform(frame()), pre.transform(frame()))
