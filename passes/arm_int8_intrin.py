"""ARM s8 x s8 -> s32 tensor intrinsics of the packed int8 kernels (``int8_kernels``).

- ``dot_4x4_i8i8s32_sdot`` (``+dotprod``) and ``dot_4x4_i8i8s32_neon`` (NEON): TVM's
  descriptions, re-registered with their temporaries bound by ``T.let``. TVM's impls
  assign them plainly, which TVM 0.27 lowers to a heap workspace per tile
  (``tvm_compat.fix_vnni_intrinsic`` has the story; tests/test_kernel_allocations.py).
- ``dot_4x8_i8i8s32_neon`` (ours, NEON over 8 input channels, no dot product needed).

TVM's ``dot_4x4_i8i8s32_neon`` multiplies 4 input channels for 4 output channels and
reduces them to the 4 accumulators at once: smull, smull2, saddlp, saddlp, addp, add --
six instructions for 16 multiply-accumulates, twice the FMLAs an FP32 conv needs for the
same work (resnet18 on the emulated Cortex-A72: 884 M instructions INT8 against 436 M FP32).
``dot_4x8_neon`` takes two blocks of 4 input channels (data NCHW[4c]: a pixel's words in
two channel planes; weights (O/4, I/4, KH, KW, 4, 4): two 16-byte tiles, a kernel's taps
apart) and sums their products in int16 before widening:

    smull   lo, a0, b0.lo        smull2  hi, a0, b0        (int16 products)
    smlal   lo, a1, b1.lo        smlal2  hi, a1, b1        (+ the second block's)
    saddlp  lo, hi -> int32; addp; add C                     (one reduction for both)

eight instructions for 32. Two int8 products fit int16 as long as no weight is -128
(|a * b| <= 128 * 127, twice that 32512 < 32767); edgec's weights are symmetric in
[-127, 127], and ``pairs_ok`` checks an imported model's.
"""
from __future__ import annotations

import numpy as np
from tvm.script import tirx as T

from edgec.compiler.tvm_compat import import_tensor_intrinsics, s_tir

SDOT_4x4, NEON_DOT_4x4 = "dot_4x4_i8i8s32_sdot", "dot_4x4_i8i8s32_neon"  # TVM's names
NEON_DOT_4x8 = "dot_4x8_i8i8s32_neon"
NEON_DOT_4x16 = "dot_4x16_i8i8s32_neon"
# A: data (N, C/4, H, W, 4)[n, c4:c4+2, y, x, :] -- two channel blocks of a pixel, the conv's
# kernel-row and -column axes between them and the channels; B: weights (O/4, I/4, KH, KW,
# 4, 4)[o, c4:c4+2, kh, kw, :, :]. Tensorize matches trailing axes, so both keep those unit
# axes (any strides: the map's and the kernel's sizes).
A_STRIDES = [T.int32(), T.int32(), T.int32(), 1]
B_STRIDES = [T.int32(), T.int32(), T.int32(), 4, 1]


def _dot_desc(blocks: int):
    """The description of ``blocks`` blocks of 4 input channels x 4 outputs per call."""
    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (blocks, 1, 1, 4), "int8", offset_factor=1, strides=A_STRIDES)
        B = T.match_buffer(b, (blocks, 1, 1, 4, 4), "int8", offset_factor=1, strides=B_STRIDES)
        C = T.match_buffer(c, (4,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:4], A[0:blocks, 0, 0, 0:4], B[0:blocks, 0, 0, 0:4, 0:4])
            T.writes(C[0:4])
            for i, j, k in T.grid(4, blocks, 4):
                with T.sblock("update"):
                    vi, vj, vk = T.axis.remap("SRR", [i, j, k])
                    C[vi] = C[vi] + T.cast(A[vj, 0, 0, vk], "int32") * T.cast(
                        B[vj, 0, 0, vi, vk], "int32")

    return desc


dot_4x8_desc, dot_4x16_desc = _dot_desc(2), _dot_desc(4)


def _smull(a, b):
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"),
                                   a, b, dtype="int16x8")


def _mul_low(a, b):
    """int16 products of the low 8 bytes of two 16-byte vectors (smull)."""
    return _smull(T.vectorlow(a, dtype="int8x8"), T.vectorlow(b, dtype="int8x8"))


def _mul_high(a, b):
    """... of the high 8 bytes (smull2: with the data word broadcast to all 16 bytes, no
    ``ext`` moves the weights' high half down first, as an 8-byte broadcast needed)."""
    return _smull(T.vectorhigh(a, dtype="int8x8"), T.vectorhigh(b, dtype="int8x8"))


def _saddlp(x):
    return T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.saddlp.v4i32.v8i16"), x, dtype="int32x4")


def _addp(lo, hi):
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.addp.v4i32"),
                                   lo, hi, dtype="int32x4")


def _broadcast(word, copies: int, dtype: str):
    """4 bytes (a pixel's channels of one block) as one 32-bit word, ``copies`` times."""
    return T.reinterpret(T.broadcast(T.reinterpret(word, dtype="int32"), copies), dtype=dtype)


@T.prim_func(s_tir=True)
def sdot_4x4_impl(
    A: T.Buffer((4,), "int8", offset_factor=1),
    B: T.Buffer((4, 4), "int8", offset_factor=1),
    C: T.Buffer((4,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:4], A[0:4], B[0:4, 0:4])
        T.writes(C[0:4])
        a: T.let = _broadcast(A.vload([0], "int8x4"), 4, "int8x16")
        C[T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
            C.vload([0], dtype="int32x4"), a, B.vload([0, 0], dtype="int8x16"), dtype="int32x4")


@T.prim_func(s_tir=True)
def neon_4x4_impl(
    A: T.Buffer((4,), "int8", offset_factor=1),
    B: T.Buffer((4, 4), "int8", offset_factor=1),
    C: T.Buffer((4,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:4], A[0:4], B[0:4, 0:4])
        T.writes(C[0:4])
        a: T.let = _broadcast(A.vload([0], "int8x4"), 4, "int8x16")
        b: T.let = B.vload([0, 0], dtype="int8x16")
        C[T.ramp(T.int32(0), 1, 4)] += _addp(_saddlp(_mul_low(a, b)), _saddlp(_mul_high(a, b)))


@T.prim_func(s_tir=True)
def dot_4x8_neon_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (2, 1, 1, 4), "int8", offset_factor=1, strides=A_STRIDES)
    B = T.match_buffer(b, (2, 1, 1, 4, 4), "int8", offset_factor=1, strides=B_STRIDES)
    C = T.match_buffer(c, (4,), "int32", offset_factor=1)
    with T.sblock("root"):
        T.reads(C[0:4], A[0:2, 0, 0, 0:4], B[0:2, 0, 0, 0:4, 0:4])
        T.writes(C[0:4])
        # T.let throughout: a plain assignment is a mutable local buffer in TVM 0.27's
        # TVMScript, a heap workspace once lowered (tvm_compat.fix_vnni_intrinsic)
        a0: T.let = _broadcast(A.vload([0, 0, 0, 0], "int8x4"), 4, "int8x16")
        a1: T.let = _broadcast(A.vload([1, 0, 0, 0], "int8x4"), 4, "int8x16")
        b0: T.let = B.vload([0, 0, 0, 0, 0], dtype="int8x16")
        b1: T.let = B.vload([1, 0, 0, 0, 0], dtype="int8x16")
        lo: T.let = _mul_low(a0, b0) + _mul_low(a1, b1)  # LLVM: smull + smlal
        hi: T.let = _mul_high(a0, b0) + _mul_high(a1, b1)
        C[T.ramp(T.int32(0), 1, 4)] += _addp(_saddlp(lo), _saddlp(hi))


@T.prim_func(s_tir=True)
def dot_4x16_neon_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (4, 1, 1, 4), "int8", offset_factor=1, strides=A_STRIDES)
    B = T.match_buffer(b, (4, 1, 1, 4, 4), "int8", offset_factor=1, strides=B_STRIDES)
    C = T.match_buffer(c, (4,), "int32", offset_factor=1)
    with T.sblock("root"):
        T.reads(C[0:4], A[0:4, 0, 0, 0:4], B[0:4, 0, 0, 0:4, 0:4])
        T.writes(C[0:4])
        a0: T.let = _broadcast(A.vload([0, 0, 0, 0], "int8x4"), 4, "int8x16")
        a1: T.let = _broadcast(A.vload([1, 0, 0, 0], "int8x4"), 4, "int8x16")
        a2: T.let = _broadcast(A.vload([2, 0, 0, 0], "int8x4"), 4, "int8x16")
        a3: T.let = _broadcast(A.vload([3, 0, 0, 0], "int8x4"), 4, "int8x16")
        b0: T.let = B.vload([0, 0, 0, 0, 0], dtype="int8x16")
        b1: T.let = B.vload([1, 0, 0, 0, 0], dtype="int8x16")
        b2: T.let = B.vload([2, 0, 0, 0, 0], dtype="int8x16")
        b3: T.let = B.vload([3, 0, 0, 0, 0], dtype="int8x16")
        # two pairs, each summed in int16 as in dot_4x8; the pairs widen and add in int32
        # (LLVM: saddlp + sadalp), one addp for all four blocks
        lo0: T.let = _mul_low(a0, b0) + _mul_low(a1, b1)
        hi0: T.let = _mul_high(a0, b0) + _mul_high(a1, b1)
        lo1: T.let = _mul_low(a2, b2) + _mul_low(a3, b3)
        hi1: T.let = _mul_high(a2, b2) + _mul_high(a3, b3)
        C[T.ramp(T.int32(0), 1, 4)] += _addp(_saddlp(lo0) + _saddlp(lo1),
                                             _saddlp(hi0) + _saddlp(hi1))


def pairs_ok(wq: np.ndarray) -> bool:
    """Whether int16 holds two products of these int8 weights with any int8 data."""
    return bool(wq.min(initial=0) > -128)


def register() -> None:
    """Register the four (idempotent): TVM's two 4 x 4 ones over their own descriptions."""
    import_tensor_intrinsics()  # TVM's originals first: their descriptions are kept
    intrin = s_tir().TensorIntrin
    for name, impl in ((SDOT_4x4, sdot_4x4_impl), (NEON_DOT_4x4, neon_4x4_impl)):
        intrin.register(name, intrin.get(name).desc, impl, override=True)
    intrin.register(NEON_DOT_4x8, dot_4x8_desc, dot_4x8_neon_impl, override=True)
    intrin.register(NEON_DOT_4x16, dot_4x16_desc, dot_4x16_neon_impl, override=True)
