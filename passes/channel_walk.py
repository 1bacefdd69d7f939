"""The walk behind ``channel_groups.analyze``: bindings in order, one rule per operator
family (the rules are in ``channel_ops``)."""
from __future__ import annotations

from edgec.compiler.tvm_compat import is_tensor_constant, relax
from edgec.passes.channel_groups import ChannelGroups, Layout, Slice
from edgec.passes.channel_ops import OpRules, Act, shape_of, View

UNARY = {"relax.nn.relu", "relax.clip", "relax.nn.gelu", "relax.nn.silu", "relax.sigmoid",
         "relax.tanh", "relax.zeros_like", "relax.ones_like", "relax.nn.leakyrelu",
         "relax.nn.gelu_tanh", "relax.exp", "relax.negative",
         "relax.astype", "relax.nn.hardswish", "relax.nn.hardsigmoid"}
POOL = {"relax.nn.max_pool2d", "relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d"}
BINARY = {"relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum",
          "relax.minimum"}
REDUCE = {"relax.mean", "relax.sum", "relax.max", "relax.min"}



class Walker(OpRules):
    """Walks one Relax function's bindings in order, building a ChannelGroups."""

    def __init__(self, func):
        self.func = func
        self.cg = ChannelGroups({}, {}, {}, {}, [], [], {}, set(), {})
        self.env, self.const_keys, self.by_axis, self.pinned = {}, {}, {}, {}

    def run(self) -> ChannelGroups:
        f = self.func
        n = int(f.attrs["num_input"]) if f.attrs and "num_input" in f.attrs else len(f.params)
        for p in f.params[n:]:
            ndim = len(shape_of(p) or ())
            self.env[p] = View("param", p.name, tuple((i, i) for i in range(ndim)))
        for block in f.body.blocks:
            for b in block.bindings:
                if isinstance(b, relax.VarBinding):
                    self.env[b.var] = self.value(b.var, b.value)
                else:
                    self.unknown([b.value], "match_cast")
        self.unknown([f.body.body], "the model output", "reaches")
        for s in self.cg.slices:
            if (s.kind, s.name) in self.pinned:
                self.poison(Act(s.layout, 0), f"{s.name} is also {self.pinned[s.kind, s.name]}")
        return self.cg

    # ---- bookkeeping ------------------------------------------------------------------
    def new_space(self, size, producer=None, reason=None) -> int:
        s = len(self.cg.parent)
        self.cg.parent[s], self.cg.sizes[s] = s, size
        if producer:
            self.cg.producers[s] = [producer]
        if reason:
            self.cg.reasons[s] = [reason]
        return s

    def fresh(self, var, axis, reason):
        shape = shape_of(var)
        if shape is None or axis >= len(shape):
            return None
        return Act(Layout(((self.new_space(shape[axis], reason=reason), shape[axis]),)), axis)

    def poison(self, info, reason):
        if isinstance(info, tuple):
            for i in info:
                self.poison(i, reason)
        elif isinstance(info, Act):
            for s, _ in info.layout.segments:
                self.cg.reasons.setdefault(self.cg.group_of(s), []).append(reason)

    def pin(self, info, why):
        if isinstance(info, tuple):
            for i in info:
                self.pin(i, why)
        elif isinstance(info, View):
            self.pinned.setdefault((info.kind, info.name), why)

    def unknown(self, args, what, verb="consumed by"):
        for a in args:
            info = self.info(a)
            self.poison(info, f"{verb} {what}")
            self.pin(info, f"{'used by' if verb == 'consumed by' else verb} {what}")
        return None

    def union(self, a: int, b: int) -> bool:
        ra, rb = self.cg.group_of(a), self.cg.group_of(b)
        if ra != rb:
            if self.cg.sizes[ra] != self.cg.sizes[rb]:
                return False
            self.cg.parent[rb] = ra
        return True

    def unify(self, la: Layout, lb: Layout) -> bool:
        if la == lb:
            return True
        if la.block != lb.block or [n for _, n in la.segments] != [n for _, n in lb.segments]:
            return False
        return all(self.union(a, b) for (a, _), (b, _) in zip(la.segments, lb.segments))

    def add_slice(self, view: View, view_axis: int, layout: Layout, role: str) -> bool:
        axes = dict(view.axes)
        if view_axis not in axes:
            return False
        key = (view.kind, view.name, axes[view_axis])
        old = self.by_axis.get(key)
        if old is not None:
            if not self.unify(old.layout, layout):
                self.poison(Act(old.layout, 0), f"{view.name} shared across channel groups")
                return False
            return True
        self.by_axis[key] = s = Slice(view.kind, view.name, axes[view_axis], layout, role)
        self.cg.slices.append(s)
        return True

    def info(self, expr):
        if isinstance(expr, relax.Var):
            return self.env.get(expr)
        if is_tensor_constant(expr):  # not an IntImm argument (arange, slice_scatter)
            key = self.const_keys.setdefault(expr, f"c{len(self.const_keys)}")
            self.cg.constants[key] = expr
            ndim = len(shape_of(expr) or ())
            return View("const", key, tuple((i, i) for i in range(ndim)))
        if isinstance(expr, relax.Tuple):
            return tuple(self.info(f) for f in expr.fields)
        return None

    # ---- dispatch ---------------------------------------------------------------------
    def value(self, var, expr):
        if isinstance(expr, relax.TupleGetItem):
            t = self.info(expr.tuple_value)
            return t[expr.index] if isinstance(t, tuple) and expr.index < len(t) else None
        if not isinstance(expr, relax.Call):
            return self.info(expr)
        name = getattr(expr.op, "name", None)
        args = list(expr.args)
        if name in UNARY or (name in POOL and expr.attrs.layout == "NCHW"):
            x = self.info(args[0])
            if name in POOL and isinstance(x, Act) and x.axis != 1:
                return self.unknown(args, name)
            if not isinstance(x, Act):
                self.pin(x, f"used by {name}")
            return x if isinstance(x, Act) else None
        handler = {"relax.nn.conv2d": self.conv2d, "relax.matmul": self.matmul,
                   "relax.nn.batch_norm": self.batch_norm, "relax.reshape": self.reshape,
                   "relax.permute_dims": self.permute, "relax.concat": self.concat}.get(name)
        if name in BINARY:
            handler = self.binary
        elif name in REDUCE:
            handler = self.reduce
        if handler is None:
            return self.unknown(args, name or "a function call")
        return handler(var, expr, args)


def analyze(mod, func: str = "main") -> ChannelGroups:
    """Find the channel groups of ``mod[func]`` (weights as parameters after ``num_input``)."""
    return Walker(mod[func]).run()
