"""Winograd F(2x2, 3x3) for blocked (NCHW[b]c) 3x3 stride-1 convs: 2.25x fewer multiplies.

A direct conv on this CPU runs near its FP32 peak already (87% for tuned resnet18); to go
faster it must multiply less. Winograd's minimal filtering computes each 2x2 output tile
from a 4x4 input tile with 16 multiplies per channel pair instead of 36:

    V = B^T d B    (input tile transform, adds only)
    U = G g G^T    (weight transform: done once, at compile time)
    M = U . V      (16 independent channel GEMMs: the work)
    Y = A^T M A    (output transform, adds only; bias, residual, ReLU follow inline)

In the blocked layout the GEMM ``M[p, o, ty, tx, ob] = sum_ic V[p, ic/b, ty, tx, ic%b] *
U[p, o, ic, ob]`` has the loop nest of a 1x1 blocked conv (p, a Winograd position, in the
batch slot): ``nchwc_schedule``'s register tile schedules it and MetaSchedule tunes the tile
like a direct conv's. Both transforms are written as explicit adds and subtracts (no
multiplies by 0 or 1 left for LLVM, which may not drop ``x * 0.0`` without fast-math).

Worth it where the GEMM has enough tiles to reuse the 16/9-times larger transformed
weights: ``use_winograd`` takes output maps of at least ``MIN_PIXELS`` (resnet18's 56x56,
28x28 and 14x14 stages, not 7x7, where the weights dominate and a direct conv wins).
"""
from __future__ import annotations

import functools

from edgec.compiler.tvm_compat import tvm
from edgec.passes.kernels.conv2d_nchwc import RULE

MIN_PIXELS = 7 * 7
MIN_CHANNELS = 16
BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))  # B^T, F(2x2, 3x3)
AT = ((1, 1, 1, 0), (0, 1, -1, -1))  # A^T
G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def use_winograd(data_shape, kernel_shape, strides, dilation, groups) -> bool:
    """Whether a blocked conv (data [N, C/b, H, W, b], kernel [O/b, C, KH, KW, b]) is a
    Winograd F(2x2, 3x3) candidate: batch 1, 3x3, stride 1, no dilation, no groups, an
    output of at least MIN_PIXELS and MIN_CHANNELS input channels."""
    n, cc, h, w, b = (int(x) for x in data_shape)
    kh, kw = [int(x) for x in kernel_shape][2:4]
    return (n == 1 and groups == 1 and (kh, kw) == (3, 3) and list(strides) == [1, 1]
            and list(dilation) == [1, 1] and h * w >= MIN_PIXELS and cc * b >= MIN_CHANNELS)


def _signed_sum(terms):
    """sum of (coefficient in {-1, 1}, expr) pairs, built from adds and subtracts only."""
    out = None
    for c, e in terms:
        out = (e if c > 0 else -e) if out is None else (out + e if c > 0 else out - e)
    return out


def _transform(mat, tile):
    """mat . tile . mat^T of a 4x4 tile of exprs, as a flat list (row-major), for a matrix
    of 0 and +-1 (B^T, A^T): adds and subtracts of the nonzero terms only."""
    rows = range(len(mat))
    return [_signed_sum([(mat[i][e] * mat[j][k], tile[e][k]) for e in range(4)
                         for k in range(4) if mat[i][e] * mat[j][k]]) for i in rows for j in rows]


def _select(index, exprs):
    """exprs[index] for a loop variable ``index`` (resolved once the loop is unrolled)."""
    return functools.reduce(lambda acc, k: tvm.tirx.if_then_else(index == k, exprs[k], acc),
                            range(len(exprs) - 2, -1, -1), exprs[-1])


def weight_transform(kernel):
    """U[p, o, ic, ob] = (G g G^T)[p // 4, p % 4] of the blocked kernel [O/b, C, 3, 3, b]."""
    from tvm import te

    oc, ic, _, _, b = (int(x) for x in kernel.shape)

    def u(p, o, c, ob):
        terms = [[G[i][kh] * G[j][kw] for kh in range(3) for kw in range(3)]
                 for i in range(4) for j in range(4)]
        per_p = []
        for coeffs in terms:
            acc = None
            for k, cf in enumerate(coeffs):
                if cf:
                    e = kernel[o, c, k // 3, k % 3, ob] * tvm.tirx.const(cf, kernel.dtype)
                    acc = e if acc is None else acc + e
            per_p.append(acc)
        return _select(p, per_p)

    return te.compute((16, oc, ic, b), u, name="winograd_weight")


def conv2d_nchwc_winograd(data, weight, padding, out_dtype):
    """TE compute: data [1, C/b, H, W, b], transformed weight [16, O/b, C, b] (see
    ``weight_transform``) -> [1, O/b, OH, OW, b] for a 3x3 stride-1 conv with ``padding``."""
    from tvm import te, topi

    n, cc, h, w, b = (int(x) for x in data.shape)
    _, oc, _, _ = (int(x) for x in weight.shape)
    top, left, bottom, right = (int(p) for p in padding)
    oh, ow = h + top + bottom - 2, w + left + right - 2
    nh, nw = (oh + 1) // 2, (ow + 1) // 2
    # pad to whole 4x4 input tiles (rows/columns past the conv's padding are zeros too)
    pad = topi.nn.pad(data, (0, 0, top, left, 0),
                      (0, 0, 2 * nh + 2 - h - top, 2 * nw + 2 - w - left, 0), name="data_pad")

    def v(p, c, ty, tx, cb):
        d = [[pad[0, c, ty * 2 + e, tx * 2 + k, cb] for k in range(4)] for e in range(4)]
        return _select(p, _transform(BT, d))

    data_t = te.compute((16, cc, nh, nw, b), v, name="winograd_data")
    ric, rib = te.reduce_axis((0, cc), "icc"), te.reduce_axis((0, b), "icb")
    bgemm = te.compute(
        (16, oc, nh, nw, b),
        lambda p, o, ty, tx, ob: te.sum(
            data_t[p, ric, ty, tx, rib].astype(out_dtype)
            * weight[p, o, ric * b + rib, ob].astype(out_dtype), axis=[ric, rib]),
        name="winograd_bgemm", attrs={"schedule_rule": RULE})

    def y(i, o, yy, xx, ob):
        ty, tx, vh, vw = yy // 2, xx // 2, yy % 2, xx % 2
        m = [[bgemm[a * 4 + c, o, ty, tx, ob] for c in range(4)] for a in range(4)]
        return _select(vh * 2 + vw, _transform(AT, m))

    return te.compute((n, oc, oh, ow, b), y, name="winograd_out")
