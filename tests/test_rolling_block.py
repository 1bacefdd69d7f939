"""benchmarks/bench_rolling_block.py: both kernels of its comparison compute the block.

The benchmark times an inverted-residual block as one kernel (TVM's ``rolling_buffer``
over the expanded rows) against edgec's two; a ratio means something only if both equal
the block, so both are checked here against numpy on a small block, with the same
helpers the benchmark uses.
"""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import bench_rolling_block as rb  # noqa: E402
from edgec.compiler.tvm_compat import tvm  # noqa: E402
from edgec.targets import get_target  # noqa: E402

H = 8


@pytest.fixture(scope="module")
def block():
    target = get_target("host")
    lanes = target.vector_bits // 32
    p = rb.placeholders(H, lanes, 2 * lanes, lanes, lanes)
    rng = np.random.default_rng(0)
    vals = {k: (rng.standard_normal([int(d) for d in t.shape]) * 0.3).astype("float32")
            for k, t in p.items()}
    ref, unb = rb.reference(vals, H)
    dev = tvm.cpu()
    tv = {k: tvm.runtime.tensor(v, dev) for k, v in vals.items()}
    out = tvm.runtime.tensor(np.zeros([1, 1, H, H, lanes], "float32"), dev)
    return p, tv, out, ref, unb, target.tvm_target()


def test_expanded_rows_fold_to_three_and_chunks_run_in_parallel(block):
    p = block[0]
    func = rb.one_kernel_module(p, H, 2, 4, 4)["main"]
    script = func.script()
    # the expanded tensor: [1, chunks, channel blocks, 3 rows (of H / chunks + 2), W, lanes]
    lanes = int(p["x"].shape[4])
    assert f"expand = T.sblock_alloc_buffer((1, 2, 2, 3, {H}, {lanes}))" in script
    assert "T.parallel(2)" in script


@pytest.mark.parametrize("chunks", [1, 2, 4])
def test_one_kernel_with_rolling_buffer_equals_numpy(block, chunks):
    p, tv, out, ref, unb, target = block
    lib = rb.one_kernel(p, H, chunks, 4, 4, target)
    lib(*tv.values(), out)
    np.testing.assert_allclose(unb(out.numpy()), ref, rtol=1e-5, atol=1e-5)


def test_two_kernels_equal_numpy(block):
    p, tv, out, ref, unb, target = block
    expand, dwpw, mid_shape = rb.two_kernels(p, H, ((4, 1), (4, 1, 4)), target)
    mid = tvm.runtime.tensor(np.zeros(mid_shape, "float32"))
    consts = [tvm.runtime.tensor(np.array(v, "float32")) for v in (0.0, 6.0)]
    out.copyfrom(np.zeros(out.shape, "float32"))
    expand(tv["x"], tv["we"], tv["be"], mid)
    dwpw(mid, tv["wd"], tv["wp"], tv["bd"], *consts, tv["bp"], tv["x"], out)
    np.testing.assert_allclose(unb(out.numpy()), ref, rtol=1e-5, atol=1e-5)
