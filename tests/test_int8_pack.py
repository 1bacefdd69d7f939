"""The NCHW -> NCHW[4c] pack of int8 activations: exact (padding, channel padding, signed
data) against numpy, and vectorized (words built with vector zero-extends and shifts)."""
import re

import numpy as np
import pytest
import tvm

from edgec.passes.int8_pack import pack_func, pad_blocked_func
from edgec.targets import get_target


def _reference(x, padding, extra, pad_value):
    top, left, bottom, right = padding
    xp = np.pad(x, [(0, 0), (0, extra), (top, bottom), (left, right)], constant_values=pad_value)
    n, c, h, w = xp.shape
    return xp.reshape(n, c // 4, 4, h, w).transpose(0, 1, 3, 4, 2)


@pytest.mark.parametrize("shape, dtype, padding, extra, pad_value", [
    ((1, 16, 7, 9), "uint8", (0, 0, 0, 0), 0, 0),
    ((1, 3, 11, 10), "uint8", (3, 3, 3, 3), 1, 113),    # an RGB stem: rows, columns, a 4th channel
    ((2, 8, 5, 6), "int8", (1, 0, 2, 1), 0, -5),        # signed: bytes, not sign-extended words
    ((1, 6, 4, 4), "int8", (0, 1, 1, 0), 2, -128),
])
def test_pack_matches_numpy(shape, dtype, padding, extra, pad_value):
    lib = tvm.compile(tvm.IRModule({"main": pack_func(shape, dtype, padding, extra, pad_value)}),
                      target=get_target("x86-avx2").tvm_target())
    info = np.iinfo(dtype)
    x = np.random.default_rng(0).integers(info.min, info.max + 1, shape).astype(dtype)
    ref = _reference(x, padding, extra, pad_value)
    out = tvm.runtime.tensor(np.zeros(ref.shape, dtype), tvm.cpu())
    lib["main"](tvm.runtime.tensor(x, tvm.cpu()), out)
    np.testing.assert_array_equal(out.numpy(), ref)


def test_pack_is_vectorized():
    func = pack_func((1, 32, 8, 16), "uint8")
    assert "uint32" in func.script()  # stored as whole words through a uint32 view
    lib = tvm.compile(tvm.IRModule({"main": func}), target=get_target("x86-avx2").tvm_target())
    asm = "".join(m.inspect_source("asm") for m in [lib.mod, *lib.mod.imports])
    assert re.search(r"\bvpmovzxbd\b", asm) and re.search(r"\bvpslld\b", asm)


def test_pack_rejects_channels_that_do_not_pad_to_4():
    with pytest.raises(ValueError, match="multiple of 4"):
        pack_func((1, 6, 4, 4), "uint8", extra_channels=1)


@pytest.mark.parametrize("shape, padding, pad_value", [
    ((1, 2, 5, 6, 16), (1, 1, 1, 1), 7),
    ((1, 8, 6, 6, 16), (3, 0, 3, 0), 128),  # a 7x1 conv pads rows only (inception_v3)
    ((1, 3, 4, 5, 4), (0, 3, 0, 3), 0),     # a 1x7 conv: columns only
    ((2, 2, 3, 3, 8), (0, 2, 1, 0), 255),
])
def test_pad_blocked_matches_numpy(shape, padding, pad_value):
    """A blocked int8 tensor padded in H and W with the zero point; a side with no padding
    must build too (a vectorized loop of extent 0 failed TVM's vectorizer)."""
    top, left, bottom, right = padding
    lib = tvm.compile(tvm.IRModule({"main": pad_blocked_func(shape, "uint8", padding, pad_value)}),
                      target=get_target("x86-avx2").tvm_target())
    x = np.random.default_rng(0).integers(0, 256, shape).astype("uint8")
    ref = np.pad(x, [(0, 0), (0, 0), (top, bottom), (left, right), (0, 0)],
                 constant_values=pad_value)
    out = tvm.runtime.tensor(np.zeros(ref.shape, "uint8"), tvm.cpu())
    lib["main"](tvm.runtime.tensor(x, tvm.cpu()), out)
    np.testing.assert_array_equal(out.numpy(), ref)
