"""Multiply-accumulates of a Relax module's conv2d and matmul calls (static shapes): the one
MAC counter (pruning's record, exit costs and the demo's power proxy all count with it)."""
from __future__ import annotations

import re

import numpy as np

from edgec.compiler.tvm_compat import relax


def _dims(expr):
    shape = getattr(expr.ty, "shape", None)
    return [int(d) for d in shape.values] if shape is not None else None


CONVS = ("relax.nn.conv1d", "relax.nn.conv2d", "relax.nn.conv3d")


def call_macs(call) -> int:
    """MACs of one conv (1-D, 2-D, 3-D) or matmul call; 0 for other calls. A conv's weight may be in any
    layout (OIHW, blocked OIHW8o ...): each output element reads every weight axis but the
    output channels' (``O``, and its block ``o``), i.e. (I / groups) x KH x KW."""
    name = getattr(call.op, "name", "")
    if name in CONVS:
        w, out = _dims(call.args[1]), _dims(call)
        if w is None or out is None:
            return 0
        layout = str(call.attrs.kernel_layout)
        axes = re.findall(r"\d*([A-Za-z])", layout)
        reduce = [d for axis, d in zip(axes, w) if axis not in ("O", "o")]
        return int(np.prod(out, dtype=np.int64) * np.prod(reduce, dtype=np.int64))
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
