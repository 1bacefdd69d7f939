"""The blocked conv layout with a way back: convs TVM cannot block run in NCHW alone.

``convert_conv_layout`` hands each conv to Relax's ``ConvertLayout``, whose layout rules
then move every neighbour into the blocked layout. Some neighbours' rules fail on a
blocked tensor inside TVM (0.27: ``conv2d_transpose`` after a blocked conv, "Layouts must
have the same size"; a channel ``split`` feeding grouped convs of mixed kernel sizes,
whose inferred shapes no longer match), and a whole compile died on one conv.

``blocked_layout`` runs the conversion; when it fails it finds the convs whose blocking
causes the failure (a binary search over the convs in program order: each try is one
ConvertLayout + legalize, a fraction of a second to a few seconds), leaves those in NCHW
and blocks the rest. The pass record counts them and keeps the first failure's message,
so a user sees what ran plain and why. Only if no conv can be blocked does the whole
model stay NCHW (``layout: "NCHW"`` in the record).
"""
from __future__ import annotations

from edgec.compiler.tvm_compat import relax, tvm
from edgec.passes.conv_layout import conv_key, convert_conv_layout


def blocked_layout(mod: tvm.IRModule, block: int, winograd: bool = True,
                   legalize: dict | None = None):
    """``mod`` with its FP32 convs in NCHW[block]c where TVM can block them; returns
    ``(mod, record)`` for the manifest's pass list. legalize: more LegalizeOps functions
    (``fast_math.legalize_map()``) for the legalization that ends the conversion."""
    convs = conv_keys(mod)
    excluded: list = []
    failure = None
    while True:
        converted = _try(mod, block, winograd, excluded, legalize)
        if not isinstance(converted, Exception):
            break
        failure = failure or converted
        remaining = [c for c in convs if c not in excluded]
        if not remaining or isinstance(_try(mod, block, winograd, convs, legalize), Exception):
            # not a conv's doing (or nothing left to exclude): the model stays NCHW
            return mod, {"name": "conv_layout", "layout": "NCHW", "nchw_convs": len(convs),
                         "fallback_reason": _first_line(failure)}
        excluded.append(_culprit(mod, block, winograd, excluded, remaining, legalize))
    out, blocks, fused = converted
    record = {"name": "conv_layout", "layout": f"NCHW{block}c",
              "narrow_convs": sum(b < block for b in blocks), "dw_pw_fused": sum(fused)}
    if excluded:
        record["nchw_convs"] = len(excluded)
        record["fallback_reason"] = _first_line(failure)
    return out, record


def conv_keys(mod) -> list:
    """The ``conv_key`` of every conv2d in ``mod``'s Relax functions, in program order."""
    keys = []

    def visit(expr):
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.nn.conv2d":
            key = conv_key(expr)
            if key not in keys:
                keys.append(key)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return keys


def _try(mod, block, winograd, excluded, legalize=None):
    """(module, blocks, fused) of one conversion, or the exception it raised."""
    blocks, fused = [], []
    try:
        out = convert_conv_layout(mod, block, winograd, blocks, fused, exclude=set(excluded),
                                  legalize=legalize)
    except Exception as e:  # noqa: BLE001 (TVM raises InternalError, ValueError, ...)
        return e
    return out, blocks, fused


def _culprit(mod, block, winograd, excluded, remaining, legalize=None):
    """The first conv (program order) whose blocking makes the conversion fail: blocking
    remaining[:hi] fails and remaining[:lo] does not; halve until they are adjacent."""
    lo, hi = 0, len(remaining)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        trial = excluded + remaining[mid:]
        if isinstance(_try(mod, block, winograd, trial, legalize), Exception):
            hi = mid
        else:
            lo = mid
    return remaining[hi - 1]


def _first_line(e) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = lines[-1] if lines else type(e).__name__
    return text[:300]
