"""INT8 depthwise conv2d: channels in vector lanes, requantize fused, no tuning needed.

Relax legalizes an int8 ``conv2d(groups=C)`` to a plain NCHW loop nest that LLVM
barely vectorizes: mobilenet_v2's 17 depthwise convs took most of its INT8 time (a
96-channel 112x112 stride-2 one alone 6.9 ms on a Xeon with VNNI; FP32's blocked one
0.5 ms). There is no dot product to use here (one input channel per output channel),
so this kernel multiplies and adds in int32 vectors instead:

- the input is packed NCHW[4c] by ``int8_pack.pack_func`` (padding with the zero point,
  channels padded to a multiple of 4 with it), so 4 channels of a pixel are one word and
  a vector holds 4 channels x P consecutive output pixels;
- the weights are packed (C/4, KH, KW, 4) at compile time, zero-padded;
- per output tile (P pixels x 4 channels) the KH*KW taps accumulate in int32 lanes, the
  requantize (``requant.Requant.te_form``: bias, float scale, round, zero point,
  clip/ReLU6) runs on the same lanes, and each output row is written back NCHW, so the
  neighbouring ops see the layout they did before.

Integer sums are exact and the requantize is the same expression in the same order as
the plain path's Relax ops, so the result is bit-exact against it.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from edgec.compiler.tvm_compat import relax
from edgec.passes.int8_pack import pack_func
from edgec.passes.kernels.common import IC_BLOCK, MACS_ATTR, add_kernel, hand_scheduled

# Below this many multiply-accumulates the kernel runs on one thread (waking the pool
# costs more; the same threshold as the packed convs').
PARALLEL_MACS = 1 << 20


def is_depthwise(wq: np.ndarray, groups: int) -> bool:
    """An OIHW conv weight of a depthwise conv with channel multiplier 1."""
    return wq.ndim == 4 and groups > 1 and wq.shape[0] == groups and wq.shape[1] == 1


def pack_dw_weight(wq: np.ndarray) -> np.ndarray:
    """(C, 1, KH, KW) -> (C/4, KH, KW, 4), channels zero-padded to a multiple of 4."""
    c, _, kh, kw = wq.shape
    w = np.pad(wq[:, 0], [(0, -c % IC_BLOCK), (0, 0), (0, 0)])
    return np.ascontiguousarray(w.reshape(-1, IC_BLOCK, kh, kw).transpose(0, 2, 3, 1))


def dw_compute(data_shape, w_shape, strides, dilation, data_dtype, channels, requant=None):
    """TE PrimFunc: packed data (N, C/4, HP, WP, 4) x packed weight (C/4, KH, KW, 4) ->
    NCHW (N, channels, HO, WO): int32, or requantized by ``requant`` (then it also takes
    its (C/4*4,) bias and scale)."""
    from tvm import te

    n, cb, hp, wp, _ = data_shape
    _, kh, kw, _ = w_shape
    (sh, sw), (dh, dw) = strides, dilation
    ho, wo = (hp - (kh - 1) * dh - 1) // sh + 1, (wp - (kw - 1) * dw - 1) // sw + 1
    x = te.placeholder(data_shape, data_dtype, name="data")
    w = te.placeholder(w_shape, "int8", name="weight")

    def taps(b, c, y, xx, ci):
        # the KH*KW taps written out (no reduction axis): the block stays data parallel,
        # so its (pixel, channel) loops vectorize and the sum stays in registers
        terms = [x[b, c, y * sh + i * dh, xx * sw + j * dw, ci].astype("int32")
                 * w[c, i, j, ci].astype("int32") for i in range(kh) for j in range(kw)]
        total = terms[0]
        for t in terms[1:]:
            total = total + t
        return total

    acc = te.compute((n, cb, ho, wo, IC_BLOCK), taps, name="dw")
    args, last = [x, w], acc
    if requant is not None:
        bias = te.placeholder((cb * IC_BLOCK,), "int32", name="bias")
        scale = te.placeholder((cb * IC_BLOCK,), "float32", name="scale")
        last = te.compute((n, cb, ho, wo, IC_BLOCK), lambda b, c, y, xx, ci: requant.te_form(
            acc[b, c, y, xx, ci], c * IC_BLOCK + ci, bias, scale), name="requant")
        args += [bias, scale]
    out = te.compute((n, channels, ho, wo), lambda b, c, y, xx: last[
        b, c // IC_BLOCK, y, xx, c % IC_BLOCK], name="unpack")
    return te.create_prim_func([*args, out]), (n, channels, ho, wo)


def _pixel_block(width: int) -> int:
    """Output pixels per tile: 4 channels x P pixels int32 lanes (P = 4: one zmm)."""
    return next(b for b in (4, 8, 7, 6, 5, 3, 2, 1) if width % b == 0)


def scheduled_dw(data_shape, w_shape, strides, dilation, data_dtype, channels, requant=None):
    """The hand-scheduled PrimFunc and its output shape: output rows (of 4 channels) in
    parallel, per tile of P pixels the taps summed over int32 vectors of P x 4 lanes,
    the requantize on the same lanes, each row transposed to NCHW."""
    from tvm import s_tir

    func, out_shape = dw_compute(data_shape, w_shape, strides, dilation, data_dtype, channels,
                                 requant)
    sch = s_tir.Schedule(func)
    block = sch.get_sblock("dw")
    n, c, y, x, ci = sch.get_loops(block)
    xo, xi = sch.split(x, [None, _pixel_block(out_shape[3])])
    row = sch.fuse(n, c, y)
    macs = int(np.prod(out_shape)) * w_shape[1] * w_shape[2]
    if macs >= PARALLEL_MACS:
        sch.parallel(row)
    if requant is not None:
        rq = sch.get_sblock("requant")
        sch.reverse_compute_at(rq, xo)
        sch.vectorize(sch.fuse(*sch.get_loops(rq)[-2:]))
    unpack = sch.get_sblock("unpack")
    sch.reverse_compute_at(unpack, row)
    c_i, x_i = sch.get_loops(unpack)[-2:]
    sch.vectorize(x_i)
    sch.unroll(c_i)
    sch.vectorize(sch.fuse(xi, ci))
    return hand_scheduled(sch.mod["main"]), out_shape


def emit_depthwise_conv(bb, x, wq: np.ndarray, strides, dilation, requant=None,
                        padding=(0, 0, 0, 0), pad_value: int = 0):
    """Emit pack(x) -> depthwise kernel; ``x`` is NCHW int8/uint8, padded here by
    ``padding`` (top, left, bottom, right) with ``pad_value`` (the zero point). Returns
    NCHW: int32, or ``requant``'s dtype (done in the epilogue)."""
    dtype = str(x.ty.dtype)
    c = wq.shape[0]
    pack = pack_func(x.ty.shape.values, dtype, padding, -c % IC_BLOCK, pad_value)
    n, cb, h, w, _ = (int(d) for d in pack.params[1].shape)
    pgv = add_kernel(bb, pack, f"pack_nchw4c_{n}x{cb * IC_BLOCK}x{h}x{w}")
    packed = bb.emit(relax.call_tir(pgv, [x], relax.TensorType((n, cb, h, w, IC_BLOCK), dtype)))
    wp = pack_dw_weight(wq)
    func, out_shape = scheduled_dw((n, cb, h, w, IC_BLOCK), wp.shape,
                                   [int(s) for s in strides], [int(d) for d in dilation], dtype,
                                   c, requant)
    name = f"dwconv2d_int8_{n}x{c}x{h}x{w}_{wq.shape[2]}x{wq.shape[3]}s{int(strides[0])}"
    args = [packed, relax.const(wp, "int8")]
    if requant is not None:  # the padded channels' bias and scale: never written
        name += "_requant"
        pad = cb * IC_BLOCK - c
        requant = replace(requant, bias=np.pad(requant.bias, (0, pad)),
                          scale=np.pad(np.asarray(requant.scale, "float32"), (0, pad)))
        args += [requant.bias_const((-1,)), requant.scale_const((-1,))]
    macs = int(np.prod(out_shape)) * wq.shape[2] * wq.shape[3]
    gv = add_kernel(bb, func.with_attr(MACS_ATTR, macs), name)
    out_dtype = requant.dtype if requant is not None else "int32"
    return bb.emit(relax.call_tir(gv, args, relax.TensorType(out_shape, out_dtype)))
