"""Multiply-accumulates of a Relax module's conv2d and matmul calls (static shapes)."""
from __future__ import annotations

import numpy as np

from edgec.compiler.tvm_compat import relax


def _dims(expr):
    shape = getattr(expr.ty, "shape", None)
    return [int(d) for d in shape.values] if shape is not None else None


def call_macs(call) -> int:
    """MACs of one conv2d (NCHW/OIHW) or matmul call; 0 for other calls."""
    name = getattr(call.op, "name", "")
    if name == "relax.nn.conv2d":
        w, out = _dims(call.args[1]), _dims(call)
        if w is None or out is None:
            return 0
        return int(np.prod(out, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))
    if name == "relax.matmul":
        a, out = _dims(call.args[0]), _dims(call)
        if a is None or out is None:
            return 0
        return int(np.prod(out, dtype=np.int64) * a[-1])
    return 0


def count_macs(mod) -> int:
    """Total MACs of every conv2d and matmul in every Relax function of ``mod``."""
    total = 0

    def visit(e):
        nonlocal total
        if isinstance(e, relax.Call):
            total += call_macs(e)

    for _, f in mod.functions.items():
        if isinstance(f, relax.Function):
            relax.analysis.post_order_visit(f, visit)
    return total
