"""Calibration: ranges per method against numpy, determinism, data loading and errors."""
import numpy as np
import pytest

from edgec.compiler.frontend import import_model
from edgec.compiler.data import DataError, load_calib_data
from edgec.passes.calibrate import (CalibrationError, calibrate, check_data, entropy_threshold,
                                    percentile_range)
from edgec.passes.int8_layers import find_layers, layer_names, prepare


@pytest.fixture
def prepared(tiny_cnn):
    model, x = tiny_cnn
    rm = import_model(model, x)
    mod = prepare(rm)
    return rm, mod, find_layers(mod, layer_names(rm))


def test_minmax_of_model_input_is_data_range(prepared):
    rm, mod, layers = prepared
    data = np.random.default_rng(1).standard_normal((10, 1, 8, 8)).astype("float32")
    ranges = calibrate(mod, {layer.name: layer.input for layer in layers}, data, rm.inputs[0])
    assert ranges["conv1"] == (float(data.min()), float(data.max()))
    assert ranges["conv2"][0] >= 0.0  # after relu
    again = calibrate(mod, {layer.name: layer.input for layer in layers}, data, rm.inputs[0])
    assert again == ranges


def test_percentile_clips_outliers(prepared):
    rm, mod, layers = prepared
    data = np.random.default_rng(2).standard_normal((20, 1, 8, 8)).astype("float32")
    data[3, 0, 0, 0] = 50.0
    ranges = calibrate(mod, {"x": layers[0].input}, data, rm.inputs[0], "percentile", 99.9)
    assert ranges["x"][1] < 10.0 and ranges["x"][0] >= float(data.min())


def test_percentile_range_matches_numpy():
    x = np.random.default_rng(0).standard_normal(200_000)
    edges = np.linspace(-5, 5, 4097)
    lo, hi = percentile_range(np.histogram(x, edges)[0], edges, 99.0, x.min(), x.max())
    assert abs(hi - np.percentile(x, 99.0)) < 0.01 and abs(lo - np.percentile(x, 1.0)) < 0.01


def test_entropy_threshold_ignores_far_outliers():
    x = np.abs(np.random.default_rng(0).standard_normal(100_000))
    x[:5] = 100.0
    hist = np.histogram(x, bins=2048, range=(0, 100.0))[0]
    t = entropy_threshold(hist, 100.0)
    assert 2.0 < t < 20.0


def test_check_data_errors():
    spec = type("S", (), {"shape": (1, 1, 8, 8), "name": "x"})()
    assert check_data(np.zeros((1, 8, 8)), spec).shape == (1, 1, 8, 8)  # one unbatched sample
    with pytest.raises(CalibrationError, match="needs calibration data"):
        check_data(None, spec)
    with pytest.raises(CalibrationError, match="empty"):
        check_data(np.zeros((0, 1, 8, 8)), spec)
    bad = np.zeros((5, 1, 8, 8))
    bad[2, 0, 1, 1] = np.inf
    with pytest.raises(CalibrationError, match="first at index 2"):
        check_data(bad, spec)


def test_load_calib_data(tmp_path):
    x = np.arange(24, dtype="float32").reshape(6, 1, 2, 2)
    np.save(tmp_path / "a.npy", x)
    np.savez(tmp_path / "b.npz", x=x, y=np.zeros(6))
    assert load_calib_data(str(tmp_path / "a.npy"), 4).shape == (4, 1, 2, 2)
    assert np.array_equal(load_calib_data(str(tmp_path / "b.npz")), x)
    with pytest.raises(DataError, match="not found"):
        load_calib_data(str(tmp_path / "missing.npy"))
    with pytest.raises(DataError, match="valid: mnist"):
        load_calib_data("imagenet")
    np.savez(tmp_path / "c.npz", a=x, b=x)
    with pytest.raises(DataError, match="expected x"):
        load_calib_data(str(tmp_path / "c.npz"))
