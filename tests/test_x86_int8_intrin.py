"""The AVX2 dot_8x4 tensor intrinsic: tensorizes a packed u8 x s8 matmul, bit-exact, and the
generated code uses vpmaddubsw + vpmaddwd (no VNNI needed)."""
import re

import numpy as np
import tvm
from tvm import s_tir, te

from edgec.passes.x86_int8_intrin import register
from edgec.targets import get_target


def _packed_matmul(m, n, k):
    a = te.placeholder((m, k), "uint8", name="A")
    b = te.placeholder((n // 8, k // 4, 8, 4), "int8", name="B")
    r = te.reduce_axis((0, k), "k")
    c = te.compute((m, n), lambda i, j: te.sum(
        a[i, r].astype("int32") * b[j // 8, r // 4, j % 8, r % 4].astype("int32"), axis=r), name="C")
    return te.create_prim_func([a, b, c])


def test_dot_8x4_avx2_tensorizes_and_is_exact():
    name = register()
    m, n, k = 4, 16, 64
    sch = s_tir.Schedule(_packed_matmul(m, n, k))
    block = sch.get_sblock("C")
    i, j, r = sch.get_loops(block)
    jo, ji = sch.split(j, [None, 8])
    ro, ri = sch.split(r, [None, 4])
    sch.reorder(i, jo, ro, ji, ri)
    sch.decompose_reduction(block, ro)
    sch.tensorize(ji, name)
    assert "llvm.x86.avx2.pmadd.ub.sw" in sch.mod.script()
    lib = tvm.compile(sch.mod, target=get_target("x86-avx2").tvm_target())
    asm = "".join(x.inspect_source("asm") for x in [lib.mod, *lib.mod.imports])
    assert re.search(r"\bvpmaddubsw\b", asm) and re.search(r"\bvpmaddwd\b", asm)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (m, k)).astype("uint8")
    b = rng.integers(-64, 64, (n, k)).astype("int8")  # 7-bit weights: no int16 saturation
    packed = b.reshape(n // 8, 8, k // 4, 4).transpose(0, 2, 1, 3).copy()
    c = tvm.runtime.tensor(np.zeros((m, n), "int32"))
    lib(tvm.runtime.tensor(a), tvm.runtime.tensor(packed), c)
    np.testing.assert_array_equal(c.numpy(), a.astype(np.int64) @ b.astype(np.int64).T)
