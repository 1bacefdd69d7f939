"""The walk behind ``channel_groups.analyze``: one handler per operator family.

Values are described as ``_Act`` (an activation whose channel axis follows a layout),
``_View`` (a weight or constant seen through reshape/permute_dims), a tuple of
those, or None (opaque). A handler that cannot follow an activation poisons its
spaces (marks them unprunable with a reason); one that cannot follow a weight pins
it (any slice of a pinned tensor poisons its layout at the end).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgec.compiler.tvm_compat import Constant, relax
from edgec.passes.channel_groups import ChannelGroups, Layout, Slice

UNARY = {"relax.nn.relu", "relax.clip", "relax.nn.gelu", "relax.nn.silu", "relax.sigmoid",
         "relax.tanh", "relax.zeros_like", "relax.ones_like", "relax.nn.leakyrelu",
         "relax.nn.gelu_tanh", "relax.exp", "relax.negative",
         "relax.astype", "relax.nn.hardswish", "relax.nn.hardsigmoid"}
POOL = {"relax.nn.max_pool2d", "relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d"}
BINARY = {"relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum",
          "relax.minimum"}
REDUCE = {"relax.mean", "relax.sum", "relax.max", "relax.min"}


@dataclass(frozen=True)
class _Act:
    layout: Layout
    axis: int


@dataclass(frozen=True)
class _View:
    kind: str
    name: str
    axes: tuple  # ((view_axis, tensor_axis), ...)


def _shape(expr):
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    try:
        return tuple(int(d) for d in ty.shape.values)
    except (TypeError, AttributeError):
        return None


def _width(layout: Layout) -> int:
    return layout.block * sum(n for _, n in layout.segments)


class Walker:
    """Walks one Relax function's bindings in order, building a ChannelGroups."""

    def __init__(self, func):
        self.func = func
        self.cg = ChannelGroups({}, {}, {}, {}, [], [], {}, set(), {})
        self.env, self.const_keys, self.by_axis, self.pinned = {}, {}, {}, {}

    def run(self) -> ChannelGroups:
        f = self.func
        n = int(f.attrs["num_input"]) if f.attrs and "num_input" in f.attrs else len(f.params)
        for p in f.params[n:]:
            ndim = len(_shape(p) or ())
            self.env[p] = _View("param", p.name, tuple((i, i) for i in range(ndim)))
        for block in f.body.blocks:
            for b in block.bindings:
                if isinstance(b, relax.VarBinding):
                    self.env[b.var] = self.value(b.var, b.value)
                else:
                    self.unknown([b.value], "match_cast")
        self.unknown([f.body.body], "the model output", "reaches")
        for s in self.cg.slices:
            if (s.kind, s.name) in self.pinned:
                self.poison(_Act(s.layout, 0), f"{s.name} is also {self.pinned[s.kind, s.name]}")
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
        shape = _shape(var)
        if shape is None or axis >= len(shape):
            return None
        return _Act(Layout(((self.new_space(shape[axis], reason=reason), shape[axis]),)), axis)

    def poison(self, info, reason):
        if isinstance(info, tuple):
            for i in info:
                self.poison(i, reason)
        elif isinstance(info, _Act):
            for s, _ in info.layout.segments:
                self.cg.reasons.setdefault(self.cg.group_of(s), []).append(reason)

    def pin(self, info, why):
        if isinstance(info, tuple):
            for i in info:
                self.pin(i, why)
        elif isinstance(info, _View):
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

    def add_slice(self, view: _View, view_axis: int, layout: Layout, role: str) -> bool:
        axes = dict(view.axes)
        if view_axis not in axes:
            return False
        key = (view.kind, view.name, axes[view_axis])
        old = self.by_axis.get(key)
        if old is not None:
            if not self.unify(old.layout, layout):
                self.poison(_Act(old.layout, 0), f"{view.name} shared across channel groups")
                return False
            return True
        self.by_axis[key] = s = Slice(view.kind, view.name, axes[view_axis], layout, role)
        self.cg.slices.append(s)
        return True

    def info(self, expr):
        if isinstance(expr, relax.Var):
            return self.env.get(expr)
        if isinstance(expr, Constant):
            key = self.const_keys.setdefault(expr, f"c{len(self.const_keys)}")
            self.cg.constants[key] = expr
            ndim = len(_shape(expr) or ())
            return _View("const", key, tuple((i, i) for i in range(ndim)))
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
            if name in POOL and isinstance(x, _Act) and x.axis != 1:
                return self.unknown(args, name)
            if not isinstance(x, _Act):
                self.pin(x, f"used by {name}")
            return x if isinstance(x, _Act) else None
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

    # ---- handlers ---------------------------------------------------------------------
    def conv2d(self, var, call, args):
        data, w, a = self.info(args[0]), self.info(args[1]), call.attrs
        wshape, oshape = _shape(args[1]), _shape(var)
        nchw = (a.data_layout, a.kernel_layout, a.out_layout) == ("NCHW", "OIHW", "NCHW")
        if not nchw or not isinstance(w, _View) or len(dict(w.axes)) != 4 or not oshape:
            return self.unknown(args, "conv2d with a non-NCHW layout or non-weight kernel")
        (o, ig, kh, kw), (n, _, h, wd) = wshape, oshape
        coef, groups = n * h * wd * kh * kw, int(a.groups)
        din = data if isinstance(data, _Act) and data.axis == 1 and data.layout.block == 1 else None
        if isinstance(data, _Act) and din is None:
            self.poison(data, "conv2d input with a flattened channel axis")
        if groups == 1:
            out = Layout(((self.new_space(o, producer=w.name), o),))
            self.add_slice(w, 0, out, "producer")
            if din is not None and self.add_slice(w, 1, din.layout, "consumer"):
                self.cg.mac_terms.append((coef, out, din.layout))
            else:
                self.poison(din, "conv2d input that cannot be sliced")
                self.cg.mac_terms.append((coef * ig, out, None))
            return _Act(out, 1)
        if din is not None and ig == 1 and o == groups == _width(din.layout):
            self.add_slice(w, 0, din.layout, "member")
            self.cg.mac_terms.append((coef, din.layout, None))
            self.cg.depthwise.add(call)
            return _Act(din.layout, 1)
        self.poison(data, f"grouped conv2d (groups={groups})")
        self.pin(w, f"a grouped conv2d weight (groups={groups})")
        self.cg.mac_terms.append((coef * ig * o, None, None))
        s = self.new_space(o, producer=w.name, reason=f"output of grouped conv2d (groups={groups})")
        return _Act(Layout(((s, o),)), 1)

    def matmul(self, var, call, args):
        x, w = self.info(args[0]), self.info(args[1])
        wshape, oshape = _shape(args[1]), _shape(var)
        if not isinstance(w, _View) or not wshape or len(wshape) != 2 or len(dict(w.axes)) != 2:
            return self.unknown(args, "matmul without a 2-D weight")
        k, n = wshape
        rows = int(np.prod(oshape[:-1]))
        out = Layout(((self.new_space(n, producer=w.name), n),))
        self.add_slice(w, 1, out, "producer")
        xshape = _shape(args[0]) or ()
        if (isinstance(x, _Act) and x.axis == len(xshape) - 1
                and self.add_slice(w, 0, x.layout, "consumer")):
            self.cg.mac_terms.append((rows, out, x.layout))
        else:
            self.poison(x, "matmul over a non-channel axis")
            self.cg.mac_terms.append((rows * k, out, None))
        return _Act(out, len(oshape) - 1)

    def batch_norm(self, var, call, args):
        x, axis = self.info(args[0]), int(call.attrs.axis)
        stats = [self.info(a) for a in args[1:5]]
        ndim = len(_shape(args[0]) or ())
        ok = isinstance(x, _Act) and axis % max(ndim, 1) == x.axis
        ok = ok and all(isinstance(v, _View) and len(dict(v.axes)) == 1 for v in stats)
        if not ok or not all(self.add_slice(v, 0, x.layout, "bn" if i == 0 else "member")
                             for i, v in enumerate(stats)):
            return self.unknown(args, "batch_norm over a non-channel axis")
        return (x, None, None)

    def binary(self, var, call, args):
        x, y = self.info(args[0]), self.info(args[1])
        if isinstance(x, _Act) and isinstance(y, _Act):
            # spatial broadcasting (squeeze-excite scales) keeps channels aligned
            xs, ys = _shape(args[0]), _shape(args[1])
            if (x.axis == y.axis and xs and ys and len(xs) == len(ys) and xs[x.axis] == ys[x.axis]
                    and _shape(var) in (xs, ys) and self.unify(x.layout, y.layout)):
                return x if _shape(var) == xs else y
            return self.unknown(args, f"{call.op.name} of differently shaped activations")
        if isinstance(y, _Act):
            x, y, args = y, x, args[::-1]
        if not isinstance(x, _Act):
            self.pin((x, y), f"used by {call.op.name}")
            return None
        xs, ys = _shape(args[0]), _shape(args[1])
        if xs is None or _shape(var) != xs:
            return self.unknown(args, f"{call.op.name} that broadcasts the activation")
        pos = x.axis - (len(xs) - len(ys)) if ys is not None else -1
        if ys is None or pos < 0 or ys[pos] == 1:
            if ys is not None and len(ys) > len(xs):
                return self.unknown(args, call.op.name)
            return x
        if isinstance(y, _View) and ys[pos] == xs[x.axis] and self.add_slice(y, pos, x.layout, "member"):
            return x
        return self.unknown(args, f"{call.op.name} with a per-channel tensor we cannot slice")

    def reshape(self, var, call, args):
        x, ishape, oshape = self.info(args[0]), _shape(args[0]), _shape(var)
        if isinstance(x, _View):
            src = [i for i, d in enumerate(ishape) if d != 1]
            dst = [i for i, d in enumerate(oshape) if d != 1]
            axes = dict(x.axes)
            if len(src) == 1 and len(dst) == 1 and src[0] in axes:
                self.cg.reshapes[call] = dst[0]
                return _View(x.kind, x.name, ((dst[0], axes[src[0]]),))
            self.pin(x, "reshaped in a way we cannot follow")
            return None
        if not isinstance(x, _Act) or ishape is None or oshape is None:
            return self.unknown(args, "reshape")
        ax = x.axis
        if ishape == oshape:
            self.cg.reshapes[call] = ax  # its static target shape still follows the width
            return x
        if oshape[:ax] == ishape[:ax] and len(oshape) == ax + 1:
            block = x.layout.block * int(np.prod(ishape[ax + 1:], dtype=np.int64))
            self.cg.reshapes[call] = ax
            return _Act(Layout(x.layout.segments, block), ax)
        return self.unknown(args, "reshape that splits or merges the channel axis")

    def permute(self, var, call, args):
        x = self.info(args[0])
        if not isinstance(x, _View):
            return self.unknown(args, "permute_dims of an activation")
        ndim = len(_shape(args[0]))
        perm = [int(a) for a in call.attrs.axes] if call.attrs.axes is not None else list(range(ndim))[::-1]
        axes = dict(x.axes)
        return _View(x.kind, x.name, tuple((i, axes[p]) for i, p in enumerate(perm) if p in axes))

    def reduce(self, var, call, args):
        x, shape = self.info(args[0]), _shape(args[0])
        if not isinstance(x, _Act) or call.attrs.axis is None or x.layout.block != 1:
            return self.unknown(args, f"{call.op.name} over all axes")
        axes = {int(a) % len(shape) for a in call.attrs.axis}
        if x.axis in axes:
            return self.unknown(args, f"{call.op.name} over the channel axis")
        axis = x.axis if call.attrs.keepdims else x.axis - sum(a < x.axis for a in axes)
        return _Act(x.layout, axis)

    def concat(self, var, call, args):
        parts, oshape = self.info(args[0]), _shape(var)
        axis = int(call.attrs.axis) % len(oshape) if oshape else -1
        if not isinstance(parts, tuple) or not all(
                isinstance(p, _Act) and p.axis == axis and p.layout.block == 1 for p in parts):
            return self.unknown(args, "concat along a non-channel axis")
        return _Act(Layout(tuple(s for p in parts for s in p.layout.segments)), axis)
