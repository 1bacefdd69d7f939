"""INT8 depthwise conv2d on the blocked layout NCHW[b]c: the b channels of a pixel in
the int32 vector lanes, the zero-point border inside the kernel, requantize fused.

An int8 network packed to NCHW[b]c (b = 16 for AVX-512 VNNI, 8 for AVX2, 4 for ARM) can
stay packed through its depthwise convs with this kernel, instead of an unpack to NCHW,
``int8_depthwise``'s kernel (output pixels in the lanes, its pad/split pre-kernel) and a
pack after. Per output pixel and tap: one load of b bytes, widened to int32, times the
tap's b weights (LLVM makes the pair one ``vpdpwssd`` with VNNI), added in int32 lanes;
then ``requant.Requant.te_form`` on the same lanes, b bytes stored. A stride-2 conv needs
no column split: a pixel's b channels are contiguous at any column.

No pad kernel: a tap row outside the image reads a clamped row with its weight selected
to 0, plus ``pad_value * weight`` (both chosen once per row, hoisted out of the pixel
loop); the border columns (one at each end for a 3x3 pad 1) run apart with the same
per-tap selects, the interior columns without. Measured on a 2-core Xeon (block 16, one
thread): the interior loop compiles to the same code as over a padded copy, and the
blocked pad kernel that needed was 3-57 us a layer (96x112x112 s2: 57 us pad + 100 us
conv, 99 us with the border inside; 144x56x56 s1: 13 + 127 us, 127 us).

Against ``int8_depthwise`` (its pad pre-kernel + NCHW kernel) on mobilenet_v2's
depthwise convs: 1.5-5x faster on one thread, 1.7-7x on two (rows in parallel from
``PARALLEL_MACS``; 144x56x56 s1: 198 -> 121 us, two threads 118 -> 63 us).

Integer sums are exact and the requantize is the same expression as ``int8_depthwise``'s
and the plain path's, so the result is bit-exact against them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tvm import tirx
from tvm.script import tirx as T

from edgec.compiler.tvm_compat import relax
from edgec.passes.kernels.common import MACS_ATTR, add_kernel, hand_scheduled
from edgec.passes.kernels.int8_depthwise import STRIDES, is_depthwise
from edgec.passes.requant import INT32

# From this many multiply-accumulates the output rows run in parallel: lower than
# int8_depthwise.PARALLEL_MACS (1 M), a row of b-lane pixels being more work per task.
# Measured with 2 threads, block 16: 160x7x7 (71 K) 2.4 us serial, 2.6 us parallel;
# 240x14x14 s2 (106 K) 3.8 / 2.8 us; 576x7x7 (254 K) 8.8 / 6.7 us.
PARALLEL_MACS = 1 << 16
# Output pixels of a row computed as one unrolled group: their KH*KW weight vectors stay
# in registers and a stride-1 input vector is loaded once for up to KW pixels (one thread:
# 576x14x14 36 us in groups of 4, 30 us in 8; 144x56x56 131 / 122 us).
UNROLL = 8
INT, FLOAT = "int32", "float32"  # the accumulator's and the per-channel scale's dtypes


def is_blocked_depthwise(wq: np.ndarray, groups: int, strides) -> bool:
    """A depthwise conv (channel multiplier 1), stride 1 or 2 on both axes: the convs
    ``int8_depthwise`` takes, since the same networks (mobilenets) reach both."""
    return is_depthwise(wq, groups, strides) and int(strides[0]) in STRIDES


def pack_weight(wq: np.ndarray, block: int) -> np.ndarray:
    """(C, 1, KH, KW) int8 -> (ceil(C / block), KH, KW, block): a tap's weights for one
    channel block are one vector; zeros for the channels past C."""
    c, _, kh, kw = wq.shape
    w = np.zeros((-(-c // block) * block, kh, kw), "int8")
    w[:c] = wq[:, 0]
    return np.ascontiguousarray(w.reshape(-1, block, kh, kw).transpose(0, 2, 3, 1))


def _per_channel(values, channels: int, dtype: str) -> np.ndarray:
    """``values`` (C,) padded with zeros to ``channels``: a padded channel gets bias 0 and
    scale 0, so it comes out as the zero point (or 0.0)."""
    out = np.zeros(channels, dtype)
    out[:len(values)] = values
    return out


def interior(size: int, before: int, k: int, stride: int, dil: int, out: int):
    """Outputs [lo, hi) of one axis whose taps all fall inside the ``size`` input positions
    (``before``: the padding in front); lo <= hi <= out."""
    lo = min(out, -(-before // stride))
    hi = (size - 1 + before - (k - 1) * dil) // stride + 1
    return lo, max(lo, min(out, hi))


@dataclass(frozen=True)
class Geometry:
    """One blocked depthwise conv's sizes: input (H, W), kernel (KH, KW), strides,
    dilation, the padding before each axis (top, left) and the pad value."""

    in_hw: tuple
    kernel: tuple
    strides: tuple
    dilation: tuple
    before: tuple
    pad_value: int

    def taps(self, x, w, n, c, y, xx, lane, guard_cols: bool):
        """The int32 sum of output pixel (y, xx)'s taps, one lane, as a TIR expression.
        A tap outside the image reads an in-bounds pixel times weight 0 and adds
        ``pad_value * weight``; rows are always guarded (the guards depend on y only),
        columns when ``guard_cols`` (the border pixels)."""
        (h, wd), (kh, kw) = self.in_hw, self.kernel
        (sh, sw), (dh, dw), (top, left) = self.strides, self.dilation, self.before
        total = None
        for i in range(kh):
            r = y * sh + i * dh - top
            row_ok = tirx.all(r >= 0, r < h)
            r = tirx.max(tirx.min(r, h - 1), 0)
            for j in range(kw):
                col = xx * sw + j * dw - left
                ok = tirx.all(row_ok, col >= 0, col < wd) if guard_cols else row_ok
                col = tirx.max(tirx.min(col, wd - 1), 0) if guard_cols else col
                wv = w[c, i, j, lane]
                terms = [x[n, c, r, col, lane].astype(INT)
                         * tirx.Select(ok, wv, tirx.const(0, "int8")).astype(INT)]
                if self.pad_value:
                    terms.insert(0, tirx.Select(ok, tirx.const(0, INT),
                                                self.pad_value * wv.astype(INT)))
                for t in terms:
                    total = t if total is None else total + t
        return total


def blocked_dw_func(shape, geo: Geometry, dtype: str, out_hw, requant=None,
                    parallel: bool = False):
    """Hand-scheduled PrimFunc (x: (N, Cb, H, W, b), w: (Cb, KH, KW, b) [, bias, scale:
    (Cb * b,)]) -> (N, Cb, HO, WO, b), int32 or ``requant``'s dtype.

    One loop over the output rows (n, cb, y), ``parallel`` or serial; in a row, unrolled:
    the left border pixels, the interior in groups of ``UNROLL`` (a loop) and one group of
    the rest, the right border pixels; every pixel's b lanes one vector."""
    n_, cb_, _, w_, b_ = (int(d) for d in shape)
    ho, wo = out_hw
    x_lo, x_hi = interior(w_, geo.before[1], geo.kernel[1], geo.strides[1], geo.dilation[1],
                          wo)
    groups, rest = divmod(x_hi - x_lo, UNROLL)
    kind = T.parallel if parallel else T.serial

    def at(row, xx, lane):  # (n, cb, y, x, lane) of output row ``row``
        return row // (cb_ * ho), row // ho % cb_, row % ho, xx, lane

    def value(x, w, bias, scale, row, xx, lane, guard):
        n, c, y, _, _ = at(row, xx, lane)
        acc = geo.taps(x, w, n, c, y, xx, lane, guard)
        return acc if requant is None else requant.te_form(acc, c * b_ + lane, bias, scale)

    @T.macro
    def pixels(x, w, bias, scale, out, row, start, count, guard):
        for xi in T.unroll(count):
            for lane in T.vectorized(b_):
                out[at(row, start + xi, lane)] = value(x, w, bias, scale, row, start + xi, lane,
                                                       guard)

    @T.macro
    def body(x, w, bias, scale, out):
        for row in kind(n_ * cb_ * ho):
            pixels(x, w, bias, scale, out, row, 0, x_lo, True)
            for g in T.serial(groups):
                pixels(x, w, bias, scale, out, row, x_lo + g * UNROLL, UNROLL, False)
            pixels(x, w, bias, scale, out, row, x_lo + groups * UNROLL, rest, False)
            pixels(x, w, bias, scale, out, row, x_hi, wo - x_hi, True)

    w_buf, c_pad = T.Buffer((cb_, *geo.kernel, b_), "int8"), cb_ * b_
    out_shape = (n_, cb_, ho, wo, b_)
    if requant is None:
        @T.prim_func(s_tir=True)
        def dw_int32(x: T.Buffer(shape, dtype), w: w_buf, out: T.Buffer(out_shape, INT)):
            T.func_attr({"tirx.noalias": True})
            body(x, w, None, None, out)

        return hand_scheduled(dw_int32)

    @T.prim_func(s_tir=True)
    def dw_requant(x: T.Buffer(shape, dtype), w: w_buf, bias: T.Buffer((c_pad,), INT),
                   scale: T.Buffer((c_pad,), FLOAT), out: T.Buffer(out_shape, requant.dtype)):
        T.func_attr({"tirx.noalias": True})
        body(x, w, bias, scale, out)

    return hand_scheduled(dw_requant)


def emit_blocked_depthwise_conv(bb, x, wq: np.ndarray, strides, dilation, block: int,
                                requant=None, padding=(0, 0, 0, 0), pad_value: int = 0):
    """Emit the blocked depthwise kernel on ``x`` (N, Cb, H, W, block) uint8/int8, channel
    c at [n, c // block, h, w, c % block], Cb = ceil(C / block), the lanes past C
    arbitrary. ``wq`` (C, 1, KH, KW) int8; ``padding`` (top, left, bottom, right) with
    ``pad_value`` (the zero point); ``requant``'s bias/scale have length C. Returns
    (N, Cb, HO, WO, block): ``requant``'s dtype, or int32 when it is None."""
    dtype = str(x.ty.dtype)
    n, cb, h, w, b = (int(d) for d in x.ty.shape.values)
    c, _, kh, kw = wq.shape
    if b != block or -(-c // block) != cb:
        raise ValueError(f"blocked depthwise: input (N, {cb}, H, W, {b}) does not hold "
                         f"{c} channels in blocks of {block}")
    if getattr(requant, "residual", False):  # te_form would need the residual's tensor
        raise ValueError("blocked depthwise: no fused residual in its requantize")
    (sh, sw), (dh, dw) = [int(v) for v in strides], [int(v) for v in dilation]
    top, left, bottom, right = (int(p) for p in padding)
    ho = (h + top + bottom - (kh - 1) * dh - 1) // sh + 1
    wo = (w + left + right - (kw - 1) * dw - 1) // sw + 1
    macs = n * cb * b * ho * wo * kh * kw  # the padded lanes are computed too
    geo = Geometry((h, w), (kh, kw), (sh, sw), (dh, dw), (top, left), int(pad_value))
    func = blocked_dw_func((n, cb, h, w, b), geo, dtype, (ho, wo), requant,
                           parallel=macs >= PARALLEL_MACS)
    name = f"dwconv2d_int8_nchw{b}c_{n}x{c}x{h}x{w}_{kh}x{kw}s{sh}"
    args = [x, relax.const(pack_weight(wq, b), "int8")]
    if requant is not None:
        name += "_requant"
        args += [relax.const(_per_channel(np.clip(requant.bias, *INT32), cb * b, "int32")),
                 relax.const(_per_channel(requant.scale, cb * b, "float32"))]
    gv = add_kernel(bb, func.with_attr(MACS_ATTR, macs), name)
    out_dtype = requant.dtype if requant is not None else INT
    return bb.emit(relax.call_tir(gv, args, relax.TensorType((n, cb, ho, wo, b), out_dtype)))
