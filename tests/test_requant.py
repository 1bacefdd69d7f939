"""passes/requant.py: the requantize's two forms against numpy on the values where rounding
is delicate: exact halves (half to even, both signs), values far past the clip bounds
(|y| up to 2^31, where the one-add rounding of ``te_form`` would be wrong unclamped), odd
zero points, uint8 and int8, ReLU6-like bounds. ``te_form`` runs vectorized on the host,
as in a kernel's epilogue; ``relax_form`` through Relax's legalization."""
import numpy as np
import pytest

from edgec.compiler.tvm_compat import relax, s_tir, tvm
from edgec.passes.requant import Requant
from tvm import te

N = 64  # one vectorized loop of 16 lanes, four times


def accumulators() -> np.ndarray:
    """int32 accumulators whose products with the scales below hit every case."""
    ties = np.arange(-9, 10, dtype=np.int64) * 2 + 1  # odd: acc * 0.5 is an exact half
    far = np.array([2 ** 31 - 1, -(2 ** 31), 2 ** 30, -(2 ** 30), 2 ** 23 + 1, -(2 ** 23) - 3,
                    511, -511, 255, -256, 254, 0, 1, -1])
    rng = np.random.default_rng(0)
    fill = rng.integers(-4000, 4000, N - len(ties) - len(far))
    return np.concatenate([ties, far, fill]).astype(np.int32)


def reference(acc, rq: Requant) -> np.ndarray:
    """The requantize as written down: float32(acc + bias) * scale, round half to even,
    + zp, clip, cast (int64 sum, wrapped to int32 as the kernels add)."""
    s = (acc.astype(np.int64) + rq.bias.astype(np.int64)).astype(np.int32)
    y = s.astype(np.float32) * rq.scale
    y = np.round(y).astype(np.float64) + rq.zp
    return np.clip(y, rq.lo, rq.hi).astype(rq.dtype)


CASES = {
    "int8_halves": Requant(np.zeros(N, "int32"), np.full(N, 0.5, "float32"), "int8", 0, -128.0, 127.0),
    "int8_relu6": Requant(np.zeros(N, "int32"), np.full(N, 0.5, "float32"), "int8", 0, 0.0, 96.0),
    "uint8_odd_zp": Requant(np.zeros(N, "int32"), np.full(N, 0.5, "float32"), "uint8", 3, 0.0, 255.0),
    "uint8_zp_131_clip": Requant(np.full(N, 7, "int32"), np.full(N, 0.5, "float32"), "uint8", 131,
                                 40.0, 250.0),
    "int8_scales": Requant(np.arange(N, dtype="int32") - 30,
                           np.geomspace(1e-4, 3.0, N).astype("float32"), "int8", -5, -128.0, 127.0),
}


def _te_requant(rq: Requant):
    acc = te.placeholder((N,), "int32", name="acc")
    bias = te.placeholder((N,), "int32", name="bias")
    scale = te.placeholder((N,), "float32", name="scale")
    out = te.compute((N,), lambda i: rq.te_form(acc[i], i, bias, scale), name="out")
    sch = s_tir().Schedule(te.create_prim_func([acc, bias, scale, out]))
    (i,) = sch.get_loops(sch.get_sblock("out"))
    _, lanes = sch.split(i, [None, 16])
    sch.vectorize(lanes)
    return tvm.compile(sch.mod, target="llvm")


@pytest.mark.parametrize("case", list(CASES))
def test_te_form_matches_numpy(case):
    rq = CASES[case]
    acc = accumulators()
    f = _te_requant(rq)
    dev = tvm.cpu()
    out = tvm.runtime.empty((N,), rq.dtype, dev)
    f(*(tvm.runtime.tensor(a, dev) for a in (acc, rq.bias, rq.scale)), out)
    np.testing.assert_array_equal(out.numpy(), reference(acc, rq))


@pytest.mark.parametrize("case", list(CASES))
def test_relax_form_matches_numpy(case):
    rq = CASES[case]
    acc = accumulators()
    bb = relax.BlockBuilder()
    x = relax.Var("acc", relax.TensorType((N,), "int32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(rq.relax_form(bb, x, (-1,)))
        bb.emit_func_output(y)
    mod = relax.transform.LegalizeOps()(bb.get())
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(acc, tvm.cpu())).numpy()
    np.testing.assert_array_equal(out, reference(acc, rq))


def test_the_halves_round_to_even():
    """The case list does hold exact halves of both signs (the point of the test)."""
    y = accumulators()[:19].astype(np.float32) * np.float32(0.5)
    assert np.all(y % 1 == 0.5) and (y < 0).any() and (y > 0).any()
    assert list(np.round(y[:4])) == [-8.0, -8.0, -6.0, -6.0]  # -8.5 -7.5 -6.5 -5.5
