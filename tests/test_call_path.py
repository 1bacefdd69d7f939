"""The Python call path (compiler/call_path.py): staged inputs, DLPack outputs, the same
bits as wrapping every input with tvm.runtime.tensor and .numpy() on every output."""
import numpy as np
import pytest
import torch

from conftest import seeded
from edgec.compiler import PipelineConfig, compile, load
from edgec.compiler.deploy.call_path import ALIGNMENT, COPY_OUTPUT_BYTES, ZERO_COPY_INPUT_BYTES
from edgec.compiler.errors import InputError
from edgec.compiler.deploy.runtime import check_inputs, flatten_outputs
from edgec.compiler.train.exits import add_exits
from edgec.compiler.tvm_compat import tensor, tvm
from edgec.compiler.zoo import MnistCNN

WIDE = 2048  # float32 elements: 8 KB, above both the copy and the zero-copy thresholds


class AddOne(torch.nn.Module):
    def forward(self, x):
        return x + 1


class PassThrough(torch.nn.Module):
    """Returns its input as it came, next to a computed output."""

    def forward(self, x):
        return x, x * 2


def _reference(model, *arrays):
    """The call path before issue #25: fresh tensors in, .numpy() out."""
    return flatten_outputs(model._vm["main"](*[tensor(a) for a in arrays]))


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("wide") / "wide.so")
    compile(AddOne(), (torch.zeros(1, WIDE),), output=path)
    return load(path)


@pytest.fixture(scope="module")
def exits(tmp_path_factory):
    torch.manual_seed(0)
    model = add_exits(seeded(MnistCNN(c1=4, c2=8, hidden=16)), after=["bn1"])
    path = str(tmp_path_factory.mktemp("exits") / "exits.so")
    compile(model, (torch.randn(1, 1, 28, 28),), output=path, config=PipelineConfig(
        early_exit=True, thresholds_as_input=True, exit_thresholds=(0.5,)))
    return load(path)


def test_thresholds_above_sizes_used_here():
    assert WIDE * 4 > max(COPY_OUTPUT_BYTES, ZERO_COPY_INPUT_BYTES) and ALIGNMENT == 64


def test_same_bits_as_the_reference_path_and_no_tensor_per_call(exits, monkeypatch):
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((6, 1, 1, 28, 28)).astype("float32")
    for thr in (np.array([0.0], "float32"), np.array([1.0], "float32")):
        for x in xs:
            got = exits(x, thr)
            want = _reference(exits, x, thr)
            assert len(got) == len(want) == 2
            for g, w in zip(got, want):
                assert g.dtype == w.dtype and g.shape == w.shape
                np.testing.assert_array_equal(g, w)
            assert exits.exit_taken == int(want[1]) == (0 if thr[0] == 0.0 else 1)

    def no_tensor(*a, **k):
        raise AssertionError("tvm.runtime.tensor called on the fast path")

    monkeypatch.setattr(tvm.runtime, "tensor", no_tensor)
    exits(xs[0])  # default thresholds: staged, nothing allocated by the call path


def test_default_thresholds_come_back_after_explicit_ones(exits):
    x = np.random.default_rng(1).standard_normal((1, 1, 28, 28)).astype("float32")
    default = int(exits(x)[1])
    assert int(exits(x, np.array([0.0], "float32"))[1]) == 0
    assert int(exits(x, np.array([1.0], "float32"))[1]) == 1
    assert int(exits(x)[1]) == default  # the manifest's 0.5 again, not the last one passed
    assert int(_reference(exits, x, np.array([0.5], "float32"))[1]) == default


def test_outputs_are_never_overwritten_by_later_calls(exits, wide):
    a, b = (np.full((1, WIDE), v, "float32") for v in (1.0, 5.0))
    first = wide(a)[0]
    second = wide(b)[0]
    assert (first == 2.0).all() and (second == 6.0).all()  # a large output is the VM's own tensor
    x = np.zeros((1, 1, 28, 28), "float32")
    index = exits(x, np.array([0.0], "float32"))[1]
    index[...] = 7  # the exit index is a copy, not the library's constant
    assert int(exits(x, np.array([0.0], "float32"))[1]) == 0


def test_unaligned_strided_and_aligned_inputs(wide):
    base = np.arange(WIDE + 64, dtype="float32")
    buf = np.empty(WIDE * 4 + 2 * ALIGNMENT, np.uint8)
    off = (-buf.ctypes.data) % ALIGNMENT
    aligned = buf[off:off + WIDE * 4].view("float32").reshape(1, WIDE)
    aligned[...] = base[:WIDE]
    unaligned = base[1:WIDE + 1].reshape(1, WIDE)  # 4 bytes off: staged, never zero-copy
    assert unaligned.ctypes.data % ALIGNMENT and aligned.ctypes.data % ALIGNMENT == 0
    strided = np.arange(2 * WIDE, dtype="float32")[::2].reshape(1, WIDE)
    for x in (aligned, unaligned, strided):
        np.testing.assert_array_equal(wide(x)[0], x + 1)
    np.testing.assert_array_equal(aligned[0], base[:WIDE])  # the caller's input untouched


def test_an_input_returned_as_is_is_a_copy(tmp_path):
    path = str(tmp_path / "pass.so")
    compile(PassThrough(), (torch.zeros(1, WIDE),), output=path)
    m = load(path)
    buf = np.empty(WIDE * 4 + ALIGNMENT, np.uint8)
    off = (-buf.ctypes.data) % ALIGNMENT
    x = buf[off:off + WIDE * 4].view("float32").reshape(1, WIDE)  # aligned: zero-copy input
    x[...] = 3.0
    same, double = m(x)
    assert not np.shares_memory(same, x) and (same == 3.0).all() and (double == 6.0).all()
    y = np.full((1, WIDE), 4.0, "float32")[:, ::-1]  # staged input
    kept = m(y)[0]
    m(np.zeros((1, WIDE), "float32")[:, ::-1])
    assert (kept == 4.0).all()  # not the staging buffer, which the last call overwrote


def test_other_forms_take_the_checked_path(exits):
    x = np.random.default_rng(2).standard_normal((1, 1, 28, 28)).astype("float32")
    want = exits(x)
    for got in (exits({"x": x}), exits(x=x), exits(x.tolist() and x.copy(order="F"))):
        np.testing.assert_array_equal(got[0], want[0])
    with pytest.raises(InputError, match=r"input 'x' has dtype float64, expected float32"):
        exits(x.astype("float64"))
    with pytest.raises(InputError, match=r"input 'x' has shape \[1, 28, 28\], expected"):
        exits(x[0])
    with pytest.raises(InputError, match="unknown input name"):
        exits(y=x)
    assert len(check_inputs(exits.manifest, (x, np.zeros(1, "float32")), {})) == 2
