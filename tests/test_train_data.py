import numpy as np
import pytest

from edgec.compiler.data import DataError, from_npz, load_dataset, mnist, split_arrays
from edgec.compiler.train.fit import evaluate, fit
from edgec.compiler.zoo import MnistCNN


def test_mnist_split_is_fixed_stratified_and_disjoint():
    a, b = mnist(seed=0), mnist(seed=0)
    assert len(a.train) == 3500 and len(a.val) == 500 and len(a.test) == 1000
    np.testing.assert_array_equal(a.test.y, b.test.y)
    assert np.bincount(a.test.y).tolist() == [100] * 10
    assert a.input_shape == (1, 28, 28) and a.num_classes == 10
    assert a.train.x.dtype == np.float32
    # no test image also appears in train
    train_rows = {r.tobytes() for r in a.train.x[:, 0, 14]}
    assert sum(r.tobytes() in train_rows for r in a.test.x[:50, 0, 14]) < 5


def test_npz_and_errors(tmp_path):
    x = np.random.default_rng(0).standard_normal((40, 1, 4, 4)).astype(np.float32)
    y = np.arange(40) % 2
    np.savez(tmp_path / "d.npz", x=x, y=y)
    d = from_npz(str(tmp_path / "d.npz"))
    assert len(d.train) + len(d.val) + len(d.test) == 40
    np.savez(tmp_path / "bad.npz", a=x)
    with pytest.raises(DataError, match="expected x and y"):
        from_npz(str(tmp_path / "bad.npz"))
    with pytest.raises(DataError, match="unknown data 'cifar'; valid: mnist"):
        load_dataset("cifar")
    with pytest.raises(DataError, match="at least 10 samples"):
        split_arrays("t", x[:3], y[:3])


def test_fit_learns_real_digits():
    data = mnist()
    model = MnistCNN(c1=8, c2=16, hidden=32)
    before = evaluate(model, data.val)
    fit(model, data.train.head(2000), epochs=2, lr=3e-3, quiet=True)
    after = evaluate(model, data.val)
    assert after > 80.0 and after > before + 30
