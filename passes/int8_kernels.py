"""Packed int8 conv2d and matmul kernels for x86 AVX2, tensorized with ``dot_8x4_avx2``.

Relax's conv2d legalizes to a plain NCHW loop nest that LLVM vectorizes by
widening u8/s8 to s16 (vpmovzxbw + vpmaddwd). This kernel instead takes data
packed NCHW[4c] and weights packed OIHW[8o][4i] at compile time, so each
``vpmaddubsw`` multiplies 4 input channels for 8 output channels at once. The
schedule is fixed (no tuning needed): output rows in parallel, a block of
output pixels unrolled per weight tile, the 8x4 dot product tensorized.

Needs 7-bit weights (``reduce_range``): vpmaddubsw saturates int16 pair sums.
"""
from __future__ import annotations

import numpy as np

from edgec.compiler.tvm_compat import relax

OC_BLOCK, IC_BLOCK = 8, 4


# The multiply-accumulates one call of a packed kernel does (the power proxy reads it).
MACS_ATTR = "edgec.macs"

def packable(wq: np.ndarray, groups: int = 1) -> bool:
    """Whether an OIHW conv weight (or a (K, N) matmul weight) fits the packed kernels.

    A conv's input channels need not divide by 4: ``channel_pad`` pads them (a stem's
    3 RGB channels run packed as 4, the 4th with zero weights).
    """
    if wq.ndim == 2:
        return wq.shape[0] % IC_BLOCK == 0 and wq.shape[1] % OC_BLOCK == 0
    return groups == 1 and wq.shape[0] % OC_BLOCK == 0


def channel_pad(wq: np.ndarray) -> int:
    """Input channels to add so an OIHW weight's input channels divide by 4."""
    return -wq.shape[1] % IC_BLOCK


def pack_weight(wq: np.ndarray) -> np.ndarray:
    """OIHW -> (O/8, I/4, KH, KW, 8, 4), input channels zero-padded to a multiple of 4."""
    wq = np.pad(wq, [(0, 0), (0, channel_pad(wq)), (0, 0), (0, 0)])
    o, i, kh, kw = wq.shape
    return np.ascontiguousarray(
        wq.reshape(o // 8, 8, i // 4, 4, kh, kw).transpose(0, 2, 4, 5, 1, 3))


def _compute(data_shape, w_shape, strides, dilation):
    from tvm import te

    n, ci4, hp, wp, _ = data_shape
    co8, _, kh, kw, _, _ = w_shape
    (sh, sw), (dh, dw) = strides, dilation
    ho, wo = (hp - (kh - 1) * dh - 1) // sh + 1, (wp - (kw - 1) * dw - 1) // sw + 1
    x = te.placeholder(data_shape, "uint8", name="data")
    w = te.placeholder(w_shape, "int8", name="weight")
    ico, ici = te.reduce_axis((0, ci4), "ico"), te.reduce_axis((0, IC_BLOCK), "ici")
    rh, rw = te.reduce_axis((0, kh), "kh"), te.reduce_axis((0, kw), "kw")
    out = te.compute((n, co8, ho, wo, OC_BLOCK), lambda b, oc, y, xx, oci: te.sum(
        x[b, ico, y * sh + rh * dh, xx * sw + rw * dw, ici].astype("int32")
        * w[oc, ico, rh, rw, oci, ici].astype("int32"), axis=[ico, rh, rw, ici]), name="conv")
    return te.create_prim_func([x, w, out]), (n, co8, ho, wo, OC_BLOCK)


def _pixel_block(width: int) -> int:
    return next(b for b in (8, 7, 6, 4, 2, 1) if width % b == 0)


def scheduled_conv(data_shape, w_shape, strides, dilation):
    """The tensorized PrimFunc and its output shape."""
    from tvm import s_tir

    from edgec.passes.x86_int8_intrin import register

    intrin = register()
    func, out_shape = _compute(data_shape, w_shape, strides, dilation)
    sch = s_tir.Schedule(func)
    block = sch.get_sblock("conv")
    n, oc, y, x, oci, ico, kh, kw, ici = sch.get_loops(block)
    xo, xi = sch.split(x, [None, _pixel_block(out_shape[3])])
    sch.reorder(n, oc, y, xo, ico, kh, kw, xi, oci, ici)
    sch.parallel(sch.fuse(n, oc, y))
    sch.decompose_reduction(block, ico)
    sch.tensorize(oci, intrin)
    sch.unroll(xi)
    # opaque: FuseOps must not merge this scheduled kernel with its neighbours
    return sch.mod["main"].with_attr("op_pattern", 8), out_shape


def emit_packed_conv(bb, x, wq: np.ndarray, strides, dilation):
    """Emit pack(x) -> tensorized conv -> unpack; ``x`` is padded NCHW uint8. Returns int32 NCHW.

    ``x`` carries ``channel_pad(wq)`` extra input channels (any value: their weights are 0).
    """
    n, c, h, w = (int(d) for d in x.ty.shape.values)
    packed = bb.emit(relax.op.permute_dims(
        relax.op.reshape(x, (n, c // IC_BLOCK, IC_BLOCK, h, w)), [0, 1, 3, 4, 2]))
    wp = pack_weight(wq)
    func, out_shape = scheduled_conv((n, c // IC_BLOCK, h, w, IC_BLOCK), wp.shape,
                                     [int(s) for s in strides], [int(d) for d in dilation])
    name = f"conv2d_int8_avx2_{n}x{c}x{h}x{w}_{wq.shape[0]}x{wq.shape[2]}"
    out_channels = out_shape[1] * out_shape[4]  # each output reads wp.size / out_channels
    # the MACs done, the padded channels' included: what the power proxy should count
    macs = int(np.prod(out_shape)) * (wp.size // out_channels)
    gv = bb.add_func(func.with_attr("global_symbol", name).with_attr(MACS_ATTR, macs), name)
    out = bb.emit(relax.call_tir(gv, [packed, relax.const(wp, "int8")],
                                 relax.TensorType(out_shape, "int32")))
    nb, co8, ho, wo, _ = out_shape
    return bb.emit(relax.op.reshape(relax.op.permute_dims(out, [0, 1, 4, 2, 3]),
                                    (nb, co8 * OC_BLOCK, ho, wo)))



def scheduled_matmul(m, k, n):
    """(M, K) u8 x packed (N/8, K/4, 8, 4) s8 -> (M, N) s32, tensorized."""
    from tvm import s_tir, te

    from edgec.passes.x86_int8_intrin import register

    intrin = register()
    a = te.placeholder((m, k), "uint8", name="data")
    b = te.placeholder((n // OC_BLOCK, k // IC_BLOCK, OC_BLOCK, IC_BLOCK), "int8", name="weight")
    r = te.reduce_axis((0, k), "k")
    c = te.compute((m, n), lambda i, j: te.sum(
        a[i, r].astype("int32") * b[j // 8, r // 4, j % 8, r % 4].astype("int32"), axis=r),
        name="matmul")
    sch = s_tir.Schedule(te.create_prim_func([a, b, c]))
    block = sch.get_sblock("matmul")
    i, j, kk = sch.get_loops(block)
    jo, ji = sch.split(j, [None, OC_BLOCK])
    ko, ki = sch.split(kk, [None, IC_BLOCK])
    sch.reorder(i, jo, ko, ji, ki)
    if m * n // OC_BLOCK >= 8 and m * n * k >= 1 << 18:  # small GEMVs: threads cost more
        sch.parallel(sch.fuse(i, jo))
    sch.decompose_reduction(block, ko)
    sch.tensorize(ji, intrin)
    return sch.mod["main"].with_attr("op_pattern", 8)


def emit_packed_matmul(bb, x, wq: np.ndarray):
    """Emit ``x (..., K) u8 @ wq (K, N) s8`` with the packed kernel; returns int32 (..., N)."""
    shape = [int(d) for d in x.ty.shape.values]
    k, n = wq.shape
    m = int(np.prod(shape[:-1]))
    wp = np.ascontiguousarray(wq.T.reshape(n // 8, 8, k // 4, 4).transpose(0, 2, 1, 3))
    name = f"matmul_int8_avx2_{m}x{k}x{n}"
    func = scheduled_matmul(m, k, n).with_attr("global_symbol", name)
    gv = bb.add_func(func.with_attr(MACS_ATTR, m * k * n), name)
    flat = bb.emit(relax.op.reshape(x, (m, k))) if len(shape) != 2 else x
    out = bb.emit(relax.call_tir(gv, [flat, relax.const(wp, "int8")],
                                 relax.TensorType((m, n), "int32")))
    return bb.emit(relax.op.reshape(out, (*shape[:-1], n))) if len(shape) != 2 else out
