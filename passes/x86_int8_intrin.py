"""An AVX2 u8 x s8 -> s32 dot-product tensor intrinsic (no VNNI, no AVX-512 needed).

TVM registers ``dot_16x4_vnni`` / ``dot_16x4_avx512`` only; MetaSchedule never
tensorizes int8 on an AVX2-only CPU. ``dot_8x4_avx2`` computes, for 8 output
channels at once, ``C[i] += sum_k A[k] * B[i, k]`` over 4 input channels:

    vpbroadcastd  A (4 x u8)            -> 32 x u8
    vpmaddubsw    A, B (8 x 4 x s8)     -> 16 x s16  (pairs summed, saturating)
    vpmaddwd      ., ones               -> 8 x s32   (pairs summed)
    vpaddd        C, .                  -> C

It matches packed layouts only: data NCHW[4c] (4 input channels innermost)
and weights blocked ``[.., 8 oc, 4 ic]``. ``vpmaddubsw`` saturates when
``2 * 255 * |w|`` exceeds 32767: use 7-bit weights (``reduce_range``).
"""
from __future__ import annotations

from tvm.script import tirx as T

from edgec.compiler.tvm_compat import s_tir

AVX2_DOT_8x4 = "dot_8x4_avx2"


@T.prim_func(s_tir=True)
def dot_8x4_desc(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((8, 4), "int8", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:4], B[0:8, 0:4])
        T.writes(C[0:8])
        for i in T.serial(0, 8):
            for k in T.serial(0, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def dot_8x4_avx2_impl(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((8, 4), "int8", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:4], B[0:8, 0:4])
        T.writes(C[0:8])
        # T.let: a plain assignment is a mutable local buffer in TVM 0.27's TVMScript, a
        # heap workspace per tile once lowered (see tvm_compat.fix_vnni_intrinsic)
        a_i32: T.let = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
        a_u8x32: T.let = T.reinterpret(T.broadcast(a_i32, 8), dtype="uint8x32")
        b_i8x32: T.let = B.vload([0, 0], dtype="int8x32")
        pairs: T.let = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"), a_u8x32, b_i8x32,
            dtype="int16x16")
        C[T.ramp(T.int32(0), 1, 8)] += T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), pairs, T.int16x16(1),
            dtype="int32x8")


def register(override: bool = True) -> str:
    """Register ``dot_8x4_avx2`` (idempotent); returns its name."""
    s_tir().TensorIntrin.register(AVX2_DOT_8x4, dot_8x4_desc, dot_8x4_avx2_impl, override=override)
    return AVX2_DOT_8x4
