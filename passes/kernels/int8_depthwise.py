"""INT8 depthwise conv2d: output pixels in int32 vector lanes, requantize fused.

Relax legalizes an int8 ``conv2d(groups=C)`` to a plain NCHW loop nest that LLVM
barely vectorizes: mobilenet_v2's 17 depthwise convs were most of its INT8 time (a
144-channel 56x56 one 1.2-1.6 ms on a 2-core Xeon with VNNI). There is no dot product to
use (one input channel per output channel), so these kernels keep NCHW, the layout their
neighbours read and write, and put consecutive output pixels of one channel in the
vector lanes: per tap one vector load, one broadcast weight, one multiply-add in int32;
the requantize (``requant.Requant.te_form``: bias, float scale, round, zero point,
clip/ReLU6, one scalar per channel) on the same lanes; stored as bytes.

- Wide outputs (>= 32 columns) or stride 2: one output row per vector loop
  (``dw_compute``). Its input is padded with the zero point (the image of 0.0) and split
  by column phase modulo the stride (``pad_split_func``: column ``k * s + p`` goes to
  ``[p, k]``), so every tap's loads are contiguous for a strided conv too.
- Narrow stride-1 outputs (14x14, 7x7 ...): the whole padded plane of a channel at its
  padded width (``plane_compute``), so that a vector spans rows: a tap at (i, j) is the
  load at offset ``i * WP + j``; the WP - WO extra columns are computed and dropped.

Integer sums are exact and the requantize is the same expression in the same order as
the plain path's Relax ops, so the result is bit-exact against it.
"""
from __future__ import annotations

import math

import numpy as np

from tvm import te
from tvm.script import tirx as T

from edgec.compiler.tvm_compat import relax, s_tir
from edgec.passes.kernels.common import MACS_ATTR, add_kernel, hand_scheduled

# Below this many multiply-accumulates the kernel runs on one thread (waking the pool
# costs more than the second thread saves on the smallest layers).
PARALLEL_MACS = 1 << 20
# Output pixels per vector of a row: a 56-wide row is one vector of 56 int32 lanes (LLVM
# splits it into zmm registers); see ``_lanes``.
MAX_LANES = 64
# Stride-1 convs with output rows narrower than this run over each channel's whole padded
# plane (``plane_compute``): a 14- or 7-wide row makes short, odd vectors and per-row
# overhead (384x14x14: 278 us a call on one thread as rows).
PLANE_WIDTH = 32
# column strides the pad/split kernel handles (depthwise convs in CNNs: 1 and 2)
STRIDES = (1, 2)


def is_depthwise(wq: np.ndarray, groups: int, strides=(1, 1)) -> bool:
    """An OIHW conv weight of a depthwise conv with channel multiplier 1 and a column
    stride this kernel handles."""
    return (wq.ndim == 4 and groups > 1 and wq.shape[0] == groups and wq.shape[1] == 1
            and int(strides[1]) in STRIDES)


def split_width(width: int, stride: int) -> int:
    """Columns per phase of a ``width``-wide padded row split by ``stride``."""
    return -(-width // stride)


def pad_split_func(shape, dtype: str, padding, stride: int, pad_value: int, flat: bool = False):
    """PrimFunc ``(x: NCHW) -> (N, C, H + top + bottom, stride, ceil(WP / stride))``:
    ``y[n, c, r, p, k] = padded[n, c, r, k * stride + p]``, padded with ``pad_value``;
    ``flat``: the same bytes as (N, C, HP * stride * WK), one plane per channel.

    Rows are serial (the copy is memory bound; a thread pool costs more than it saves on
    these sizes); inside a row each phase is a vectorized copy of its interior columns
    and scalar stores of its pad columns, so no lane ever reads outside the input.
    Stride 2 on even widths reads column pairs as uint16 words (96x112x112: 0.44 ms as a
    byte gather).
    """
    if stride not in STRIDES:
        raise ValueError(f"pad_split: stride {stride} (supported: {STRIDES})")
    n_, c_, h_, w_ = (int(d) for d in shape)
    top, left, bottom, right = (int(p) for p in padding)
    hp, wp = h_ + top + bottom, w_ + left + right
    s, wk = int(stride), split_width(wp, stride)
    # per phase p: the first and one past the last k whose column k*s+p-left is inside
    spans = []
    for p in range(s):
        lo = max(0, -(-(left - p) // s))
        hi = max(lo, min(wk, (left + w_ - 1 - p) // s + 1))
        spans.append((lo, hi))
    pad = T.Cast(dtype, pad_value)
    # a stride-2 load of bytes is a gather: for rows of even width read two columns as
    # one uint16 (little endian: the even column is the low byte) and shift instead
    pairs = s == 2 and w_ % 2 == 0

    @T.macro
    def phase(x, x16, y, n, c, h, p, lo, hi):
        if h >= 0 and h < h_:
            for k in range(lo):
                y[n, c, h + top, p, k] = pad
            if pairs and hi > lo:  # stride 2, even rows: two columns per uint16, no gather
                for k in T.vectorized(hi - lo):
                    y[n, c, h + top, p, k + lo] = T.Cast(dtype, x16[
                        ((n * c_ + c) * h_ + h) * (w_ // 2) + k + lo + (p - left) // 2]
                        >> T.uint16(8 * ((p - left) % 2)))
            if not pairs and hi > lo:  # (Python bools: a phase with no interior column,
                for k in T.vectorized(hi - lo):  # e.g. a 1x1 map's, has no loop at all)
                    y[n, c, h + top, p, k + lo] = x[n, c, h, (k + lo) * s + p - left]
            for k in range(wk - hi):
                y[n, c, h + top, p, k + hi] = pad
        else:
            for k in T.vectorized(wk):
                y[n, c, h + top, p, k] = pad

    out_shape = (n_, c_, hp * s * wk) if flat else (n_, c_, hp, s, wk)

    @T.prim_func(s_tir=True)
    def pad_split(x: T.Buffer((n_, c_, h_, w_), dtype), out: T.Buffer(out_shape, dtype)):
        T.func_attr({"tirx.noalias": True})
        with T.sblock("root"):  # Relax's analyses expect a root block
            x16 = T.decl_buffer((n_ * c_ * h_ * w_ // 2,), "uint16", data=x.data)
            y = T.decl_buffer((n_, c_, hp, s, wk), dtype, data=out.data)
            for row in T.serial(n_ * c_ * hp):
                n: T.let = row // (c_ * hp)
                c: T.let = row // hp % c_
                h: T.let = row % hp - top
                phase(x, x16, y, n, c, h, 0, spans[0][0], spans[0][1])
                if s > 1:  # a Python bool: resolved as the function is parsed
                    phase(x, x16, y, n, c, h, 1, spans[-1][0], spans[-1][1])

    return hand_scheduled(pad_split)


def dw_compute(split_shape, w_shape, stride, dilation, data_dtype, out_hw, requant=None):
    """TE PrimFunc: phase-split data (N, C, HP, S, WK) x weight (C, KH, KW) -> NCHW
    (N, C, HO, WO): int32, or requantized by ``requant`` (then it also takes its (C,)
    bias and scale)."""
    n, c, _, s, _ = split_shape
    dh, dw = dilation
    ho, wo = out_hw
    x = te.placeholder(split_shape, data_dtype, name="data")
    w = te.placeholder(w_shape, "int8", name="weight")

    def tap(b, ch, y, xx, i, j):  # column xx*s + j*dw of the padded row: phase (j*dw) % s
        return x[b, ch, y * stride[0] + i * dh, (j * dw) % s, xx + (j * dw) // s]

    out, args = _taps_and_epilogue((n, c, ho, wo), tap, w, requant)
    return te.create_prim_func([x, *args, out])


def plane_compute(flat_shape, w_shape, dilation, data_dtype, out_hw, wp, requant=None):
    """TE PrimFunc of a stride-1 depthwise conv over each channel's padded plane at the
    padded width: flat data (N, C, F) x weight (C, KH, KW) -> NCHW (N, C, HO, WO).
    ``dw[y, x]`` for x < WP reads the taps at (y + i * dh) * WP + x + j * dw: with (y, x)
    fused, every tap is one contiguous load; the columns x >= WO are computed and
    dropped."""
    n, c, _ = flat_shape
    dh, dw = dilation
    ho, wo = out_hw
    x = te.placeholder(flat_shape, data_dtype, name="data")
    w = te.placeholder(w_shape, "int8", name="weight")

    def tap(b, ch, y, xx, i, j):
        return x[b, ch, (y + i * dh) * wp + xx + j * dw]

    plane, args = _taps_and_epilogue((n, c, ho, wp), tap, w, requant)
    out = te.compute((n, c, ho, wo), lambda b, ch, y, xx: plane[b, ch, y, xx], name="unpack")
    return te.create_prim_func([x, *args, out])


def _taps_and_epilogue(shape, tap, w, requant):
    """The ``dw`` block of both computes: per output pixel the KH*KW taps written out
    (no reduction axis: the block stays data parallel, its pixel loop vectorizes and the
    sum stays in registers), int32, then ``requant``'s epilogue if given. Returns (the
    block's tensor, its inputs after the data: weight [, bias, scale])."""
    _, kh, kw = (int(d) for d in w.shape)

    def acc(b, ch, y, xx):
        total = None
        for i in range(kh):
            for j in range(kw):
                t = tap(b, ch, y, xx, i, j).astype("int32") * w[ch, i, j].astype("int32")
                total = t if total is None else total + t
        return total

    if requant is None:
        return te.compute(shape, acc, name="dw"), [w]
    bias = te.placeholder((shape[1],), "int32", name="bias")
    scale = te.placeholder((shape[1],), "float32", name="scale")
    out = te.compute(shape, lambda b, ch, y, xx: requant.te_form(
        acc(b, ch, y, xx), ch, bias, scale), name="dw")
    return out, [w, bias, scale]


def scheduled_plane(flat_shape, w_shape, dilation, data_dtype, out_hw, wp, requant=None):
    """Channels in parallel (when it pays); per channel the plane (HO x WP) in vectors of
    32 or 16 lanes where they divide it, then each output row copied out."""
    sch = s_tir().Schedule(plane_compute(flat_shape, w_shape, dilation, data_dtype, out_hw, wp,
                                       requant))
    block = sch.get_sblock("dw")
    n, c, y, x = sch.get_loops(block)
    chan = sch.fuse(n, c)
    if flat_shape[0] * flat_shape[1] * out_hw[0] * wp * w_shape[1] * w_shape[2] \
            >= PARALLEL_MACS:
        sch.parallel(chan)
    _, pi = sch.split(sch.fuse(y, x), [None, _lanes(out_hw[0] * wp, 32, (32, 16))])
    sch.vectorize(pi)
    unpack = sch.get_sblock("unpack")
    sch.reverse_compute_at(unpack, chan)
    if out_hw[1] > 1:  # a 1-wide row: TVM 0.27 cannot lower an extent-1 vectorized loop
        sch.vectorize(sch.get_loops(unpack)[-1])  # here ("VectorizeLoop before LiftStorageAlloc")
    return hand_scheduled(sch.mod["main"])


def _lanes(total: int, most: int, prefer=()) -> int:
    """Vector lanes dividing ``total``: the first of ``prefer`` that does, else the
    largest multiple of 8 up to ``most``, else the largest divisor up to ``most``. Measured
    on one thread, 2-core Xeon: a 56-wide row is fast in 56 lanes (144x56x56: 0.22 ms,
    28 lanes 0.50 ms, 14 lanes 0.89 ms); a 14x16 plane fast in 32 (384x14x14: 0.029 ms)
    and 12x slower in 56."""
    for v in prefer:
        if total % v == 0:
            return v
    fits = [v for v in range(min(total, most), 0, -1) if total % v == 0]
    return next((v for v in fits if v % 8 == 0), fits[0])


def scheduled_dw(split_shape, w_shape, stride, dilation, data_dtype, out_hw, requant=None):
    """The hand-scheduled depthwise PrimFunc: output rows in parallel (when it pays), each
    row's pixels in vector lanes."""
    sch = s_tir().Schedule(dw_compute(split_shape, w_shape, stride, dilation, data_dtype,
                                    out_hw, requant))
    block = sch.get_sblock("dw")
    n, c, y, x = sch.get_loops(block)
    row = sch.fuse(n, c, y)
    if split_shape[0] * split_shape[1] * out_hw[0] * out_hw[1] * w_shape[1] * w_shape[2] \
            >= PARALLEL_MACS:
        sch.parallel(row)
    _, xi = sch.split(x, [None, _lanes(out_hw[1], MAX_LANES)])
    sch.vectorize(xi)
    return hand_scheduled(sch.mod["main"])


def emit_depthwise_conv(bb, x, wq: np.ndarray, strides, dilation, requant=None,
                        padding=(0, 0, 0, 0), pad_value: int = 0):
    """Emit pad_split(x) -> depthwise kernel. ``x`` is NCHW int8/uint8, ``wq`` (C, 1, KH,
    KW) int8, padded by ``padding`` (top, left, bottom, right) with ``pad_value`` (the zero
    point). Returns NCHW: int32, or ``requant``'s dtype (done in the epilogue)."""
    dtype = str(x.ty.dtype)
    n, c, h, w = (int(d) for d in x.ty.shape.values)
    (sh, sw), (dh, dw) = [int(v) for v in strides], [int(v) for v in dilation]
    top, left, bottom, right = (int(p) for p in padding)
    _, _, kh, kw = wq.shape
    hp, wp = h + top + bottom, w + left + right
    ho, wo = (hp - (kh - 1) * dh - 1) // sh + 1, (wp - (kw - 1) * dw - 1) // sw + 1
    if (sh, sw) == (1, 1) and wo < PLANE_WIDTH:
        # the plane at its padded width, widened (at most doubled) so that 16 lanes
        # divide it (192x28x28: 0.60 ms in 24 lanes, 0.07 ms widened to 32 lanes; a 5x5
        # on 672x14x14, padded width 18: 1.33 ms a call in 28 lanes, 0.36 ms widened to
        # 24 in 16 lanes, efficientnet_b0's INT8 19.3 -> 15.7 ms, AVX-512 Xeon, 2 threads);
        # the last row's dropped columns read (KW - 1) * dw past the plane, so one more
        # pad row at the bottom keeps them in bounds
        step = 16 // math.gcd(ho, 16)
        wider = -(-wp // step) * step
        if wider - wp <= wp:
            right, wp = right + wider - wp, wider
        extra = 1 if (kw - 1) * dw else 0
        hp += extra
        padding = (top, left, bottom + extra, right)
        split = pad_split_func((n, c, h, w), dtype, padding, 1, pad_value, flat=True)
        pgv = add_kernel(bb, split, f"pad_plane_{n}x{c}x{h}x{w}")
        xs = bb.emit(relax.call_tir(pgv, [x], relax.TensorType((n, c, hp * wp), dtype)))
        func = scheduled_plane((n, c, hp * wp), (c, kh, kw), (dh, dw), dtype, (ho, wo), wp,
                               requant)
    else:
        split = pad_split_func((n, c, h, w), dtype, padding, sw, pad_value)
        split_shape = (n, c, hp, sw, split_width(wp, sw))
        pgv = add_kernel(bb, split, f"pad_split_{n}x{c}x{h}x{w}_s{sw}")
        xs = bb.emit(relax.call_tir(pgv, [x], relax.TensorType(split_shape, dtype)))
        func = scheduled_dw(split_shape, (c, kh, kw), (sh, sw), (dh, dw), dtype, (ho, wo),
                            requant)
    name = f"dwconv2d_int8_{n}x{c}x{h}x{w}_{kh}x{kw}s{sh}"
    args = [xs, relax.const(np.ascontiguousarray(wq[:, 0]), "int8")]
    if requant is not None:
        name += "_requant"
        args += [requant.bias_const((-1,)), requant.scale_const((-1,))]
    gv = add_kernel(bb, func.with_attr(MACS_ATTR, n * c * ho * wo * kh * kw), name)
    out_dtype = requant.dtype if requant is not None else "int32"
    return bb.emit(relax.call_tir(gv, args, relax.TensorType((n, c, ho, wo), out_dtype)))
