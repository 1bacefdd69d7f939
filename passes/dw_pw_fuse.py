"""Fuse each blocked depthwise conv with the 1x1 conv that reads it (FP32, NCHWc).

mobilenet_v2's blocks run 1x1 expand -> 3x3 depthwise (+ bias, ReLU6) -> 1x1 project.
Run apart, the depthwise conv writes its whole output (144 x 56 x 56 floats, 1.8 MB)
and the project conv reads it back. Row y of a 1x1 conv's output needs only row y of
its input, so one kernel can compute the depthwise conv a row at a time into a
cache-resident buffer and the 1x1 conv's row from it, recomputing nothing
(``nchwc_schedule.schedule_dw_pw``: rows in parallel, the 1x1's register tile inside).

``fuse_dw_pw`` rewrites the Relax graph after ConvertLayout: a blocked depthwise conv2d
-> elementwise ops (add, subtract, multiply, divide, maximum, minimum with a second
operand from outside the chain, relu: a bias, an unfolded batch norm, ReLU/ReLU6) -> a
blocked 1x1 stride-1 conv2d, each intermediate used once, becomes one ``call_tir`` whose
PrimFunc is marked out-elementwise-fusable (a conv's pattern), so FuseOps still fuses the
1x1 conv's bias, residual add and activation into it.
"""
from __future__ import annotations

from edgec.compiler.tvm_compat import relax, tvm
from edgec.passes.kernels.conv2d_nchwc import conv_params, dw_pw_nchwc

MIN_ROWS = 14  # the fused kernel parallelizes over output rows only (see schedule_dw_pw)
_EWISE = {"relax.add": "add", "relax.subtract": "subtract", "relax.multiply": "multiply",
          "relax.divide": "divide", "relax.maximum": "maximum", "relax.minimum": "minimum",
          "relax.nn.relu": "relu"}
_OUT_EWISE_FUSABLE = 4  # relay.OpPatternKind.kOutEWiseFusable, FuseOps' pattern of a conv


def fuse_dw_pw(mod: tvm.IRModule, min_rows: int = MIN_ROWS) -> tuple[tvm.IRModule, int]:
    """``mod`` with every fusable depthwise -> 1x1 pair as one kernel; returns the count."""
    fused = 0
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, relax.Function):
            continue
        pairs = _pairs(func, min_rows)
        if pairs:
            mod = _Fuser(mod, pairs).rewrite(gv)
            fused += len(pairs)
    if fused:
        mod = relax.transform.DeadCodeElimination()(mod)
    return mod, fused


def _pairs(func, min_rows) -> dict:
    """{1x1 conv call: (depthwise call, [elementwise calls in order])}."""
    bound, users = relax.analysis.get_var2val(func), {}
    for block in func.body.blocks:
        if isinstance(block, relax.DataflowBlock):
            users.update(relax.analysis.udchain(block))
    pairs = {}
    for value in bound.values():
        if not _is_pointwise(value, min_rows):
            continue
        chain, var = [], value.args[0]
        while isinstance(var, relax.DataflowVar) and len(users.get(var, [])) == 1:
            call = bound[var]
            if _op(call) in _EWISE and _same_shape(call.args[0], call):
                chain.append(call)
                var = call.args[0]
                continue
            if _is_depthwise(call, value.attrs.data_layout):
                pairs[value] = (call, chain[::-1])
            break
    return pairs


def _op(call) -> str:
    return getattr(getattr(call, "op", None), "name", "") if isinstance(call, relax.Call) else ""


def _same_shape(a, b) -> bool:
    return [int(d) for d in a.ty.shape] == [int(d) for d in b.ty.shape]


def _is_pointwise(call, min_rows) -> bool:
    if _op(call) != "relax.nn.conv2d" or str(call.args[0].ty.dtype) != "float32":
        return False
    a, w = call.attrs, call.args[1].ty.shape
    p = conv_params(call)
    return (a.data_layout.startswith("NCHW") and a.data_layout.endswith("c")
            and len(w) == 5 and p["groups"] == 1
            and [int(w[2]), int(w[3])] == [1, 1] and p["strides"] == [1, 1]
            and p["padding"] == [0, 0, 0, 0] and p["out_dtype"] == "float32"
            and int(call.ty.shape[2]) >= min_rows)


def _is_depthwise(call, layout) -> bool:
    if _op(call) != "relax.nn.conv2d":
        return False
    a, data = call.attrs, call.args[0]
    channels = int(data.ty.shape[1]) * int(data.ty.shape[4]) if len(data.ty.shape) == 5 else 0
    return (a.data_layout == a.out_layout == layout and int(a.groups) == channels
            and conv_params(call)["out_dtype"] == "float32"
            and len(call.args[1].ty.shape) == 5 and int(call.args[1].ty.shape[1]) == 1)


@relax.expr_functor.mutator
class _Fuser(relax.PyExprMutator):
    def __init__(self, mod, pairs):
        super().__init__(mod)
        self.mod, self.pairs = mod, pairs

    def rewrite(self, gv):
        self.builder_.update_func(gv, self.visit_expr(self.mod[gv]))
        return self.builder_.get()

    def visit_call_(self, op):
        pair = self.pairs.get(op)
        if pair is None:
            return super().visit_call_(op)
        dw, chain = pair
        sides = [c.args[1] for c in chain if len(c.args) > 1]
        args = [self.visit_expr(e) for e in (dw.args[0], dw.args[1], op.args[1], *sides)]
        call = self.builder_.call_te(dw_pw_nchwc, *args, dw_params=conv_params(dw),
                                     ops=[_EWISE[_op(c)] for c in chain],
                                     primfunc_name_hint="conv2d_nchwc_dw_pw")
        gv = call.args[0]
        self.builder_.update_func(gv, self.builder_.get()[gv].with_attr(
            "op_pattern", _OUT_EWISE_FUSABLE))
        return call


@tvm.ir.transform.module_pass(opt_level=0, name="FuseDwPw")
class FuseDwPw:
    """``fuse_dw_pw`` as a module pass: ``FuseDwPw(min_rows)(mod)`` (the layout step calls
    ``fuse_dw_pw`` itself, for the count of fused pairs it records)."""

    def __init__(self, min_rows: int = MIN_ROWS):
        self.min_rows = min_rows

    def transform_module(self, mod, _ctx):
        mod, _ = fuse_dw_pw(mod, self.min_rows)
        return mod
