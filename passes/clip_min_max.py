"""``relax.clip(x, lo, hi)`` as ``minimum(maximum(x, lo), hi)``: a local rewrite, written as a
``relax.dpl`` pattern. Relax's ConvertLayout has no layout rule for clip (the ReLU6 of
every MobileNet), so a blocked tensor would be unblocked around each one; maximum and
minimum with scalar constants follow any layout.
"""
from __future__ import annotations

from edgec.compiler.tvm_compat import relax, tvm

dpl = relax.dpl
CLIP = dpl.is_op("relax.clip")(dpl.wildcard(), dpl.wildcard(), dpl.wildcard())


def clip_as_min_max(call: relax.Call, _matches=None) -> relax.Expr:
    """The rewrite of one matched clip (its bounds are PrimValues: numbers or Imm nodes)."""
    x, lo, hi = call.args
    dtype = str(x.ty.dtype)

    def const(bound):
        value = getattr(bound.value, "value", bound.value)
        return relax.const(float(value) if "float" in dtype else int(value), dtype)

    return relax.op.minimum(relax.op.maximum(x, const(lo)), const(hi))


@tvm.ir.transform.module_pass(opt_level=0, name="ClipAsMinMax")
class ClipAsMinMax:
    """Every Relax function's clips rewritten (``ClipAsMinMax()(mod)``)."""

    def transform_module(self, mod, _ctx):
        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                mod[gv] = dpl.rewrite_call(CLIP, clip_as_min_max, func)
        return mod
