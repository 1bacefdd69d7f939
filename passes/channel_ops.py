"""Channel rules of the operators ``channel_walk.Walker`` follows, one method each.

Values are described as ``Act`` (an activation whose channel axis follows a layout),
``View`` (a weight or constant seen through reshape/permute_dims), a tuple of
those, or None (opaque). A rule that cannot follow an activation poisons its
spaces (marks them unprunable with a reason); one that cannot follow a weight pins
it (any slice of a pinned tensor poisons its layout at the end).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgec.compiler.tvm_compat import relax
from edgec.passes.channel_groups import Layout


@dataclass(frozen=True)
class Act:
    layout: Layout
    axis: int


@dataclass(frozen=True)
class View:
    kind: str
    name: str
    axes: tuple  # ((view_axis, tensor_axis), ...)


def shape_of(expr):
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    try:
        return tuple(int(d) for d in ty.shape.values)
    except (TypeError, AttributeError):
        return None


def _width(layout: Layout) -> int:
    return layout.block * sum(n for _, n in layout.segments)



class OpRules:
    """The per-operator handlers, mixed into ``Walker`` (which supplies ``info``,
    ``fresh``, ``poison``, ``pin``, ``unknown``, ``unify`` and ``add_slice``)."""

    def conv2d(self, var, call, args):
        data, w, a = self.info(args[0]), self.info(args[1]), call.attrs
        wshape, oshape = shape_of(args[1]), shape_of(var)
        nchw = (a.data_layout, a.kernel_layout, a.out_layout) == ("NCHW", "OIHW", "NCHW")
        if not nchw or not isinstance(w, View) or len(dict(w.axes)) != 4 or not oshape:
            return self.unknown(args, "conv2d with a non-NCHW layout or non-weight kernel")
        (o, ig, kh, kw), (n, _, h, wd) = wshape, oshape
        coef, groups = n * h * wd * kh * kw, int(a.groups)
        din = data if isinstance(data, Act) and data.axis == 1 and data.layout.block == 1 else None
        if isinstance(data, Act) and din is None:
            self.poison(data, "conv2d input with a flattened channel axis")
        if groups == 1:
            out = Layout(((self.new_space(o, producer=w.name), o),))
            self.add_slice(w, 0, out, "producer")
            if din is not None and self.add_slice(w, 1, din.layout, "consumer"):
                self.cg.mac_terms.append((coef, out, din.layout))
            else:
                self.poison(din, "conv2d input that cannot be sliced")
                self.cg.mac_terms.append((coef * ig, out, None))
            return Act(out, 1)
        if din is not None and ig == 1 and o == groups == _width(din.layout):
            self.add_slice(w, 0, din.layout, "member")
            self.cg.mac_terms.append((coef, din.layout, None))
            self.cg.depthwise.add(call)
            return Act(din.layout, 1)
        self.poison(data, f"grouped conv2d (groups={groups})")
        self.pin(w, f"a grouped conv2d weight (groups={groups})")
        self.cg.mac_terms.append((coef * ig * o, None, None))
        s = self.new_space(o, producer=w.name, reason=f"output of grouped conv2d (groups={groups})")
        return Act(Layout(((s, o),)), 1)

    def matmul(self, var, call, args):
        x, w = self.info(args[0]), self.info(args[1])
        wshape, oshape = shape_of(args[1]), shape_of(var)
        if not isinstance(w, View) or not wshape or len(wshape) != 2 or len(dict(w.axes)) != 2:
            return self.unknown(args, "matmul without a 2-D weight")
        k, n = wshape
        rows = int(np.prod(oshape[:-1]))
        out = Layout(((self.new_space(n, producer=w.name), n),))
        self.add_slice(w, 1, out, "producer")
        xshape = shape_of(args[0]) or ()
        if (isinstance(x, Act) and x.axis == len(xshape) - 1
                and self.add_slice(w, 0, x.layout, "consumer")):
            self.cg.mac_terms.append((rows, out, x.layout))
        else:
            self.poison(x, "matmul over a non-channel axis")
            self.cg.mac_terms.append((rows * k, out, None))
        return Act(out, len(oshape) - 1)

    def batch_norm(self, var, call, args):
        x, axis = self.info(args[0]), int(call.attrs.axis)
        stats = [self.info(a) for a in args[1:5]]
        ndim = len(shape_of(args[0]) or ())
        ok = isinstance(x, Act) and axis % max(ndim, 1) == x.axis
        ok = ok and all(isinstance(v, View) and len(dict(v.axes)) == 1 for v in stats)
        if not ok or not all(self.add_slice(v, 0, x.layout, "bn" if i == 0 else "member")
                             for i, v in enumerate(stats)):
            return self.unknown(args, "batch_norm over a non-channel axis")
        return (x, None, None)

    def binary(self, var, call, args):
        x, y = self.info(args[0]), self.info(args[1])
        if isinstance(x, Act) and isinstance(y, Act):
            # spatial broadcasting (squeeze-excite scales) keeps channels aligned
            xs, ys = shape_of(args[0]), shape_of(args[1])
            if (x.axis == y.axis and xs and ys and len(xs) == len(ys) and xs[x.axis] == ys[x.axis]
                    and shape_of(var) in (xs, ys) and self.unify(x.layout, y.layout)):
                return x if shape_of(var) == xs else y
            return self.unknown(args, f"{call.op.name} of differently shaped activations")
        if isinstance(y, Act):
            x, y, args = y, x, args[::-1]
        if not isinstance(x, Act):
            self.pin((x, y), f"used by {call.op.name}")
            return None
        xs, ys = shape_of(args[0]), shape_of(args[1])
        if xs is None or shape_of(var) != xs:
            return self.unknown(args, f"{call.op.name} that broadcasts the activation")
        pos = x.axis - (len(xs) - len(ys)) if ys is not None else -1
        if ys is None or pos < 0 or ys[pos] == 1:
            if ys is not None and len(ys) > len(xs):
                return self.unknown(args, call.op.name)
            return x
        if isinstance(y, View) and ys[pos] == xs[x.axis] and self.add_slice(y, pos, x.layout, "member"):
            return x
        return self.unknown(args, f"{call.op.name} with a per-channel tensor we cannot slice")

    def reshape(self, var, call, args):
        x, ishape, oshape = self.info(args[0]), shape_of(args[0]), shape_of(var)
        if isinstance(x, View):
            src = [i for i, d in enumerate(ishape) if d != 1]
            dst = [i for i, d in enumerate(oshape) if d != 1]
            axes = dict(x.axes)
            if len(src) == 1 and len(dst) == 1 and src[0] in axes:
                self.cg.reshapes[call] = dst[0]
                return View(x.kind, x.name, ((dst[0], axes[src[0]]),))
            self.pin(x, "reshaped in a way we cannot follow")
            return None
        if not isinstance(x, Act) or ishape is None or oshape is None:
            return self.unknown(args, "reshape")
        ax = x.axis
        if ishape == oshape:
            self.cg.reshapes[call] = ax  # its static target shape still follows the width
            return x
        if oshape[:ax] == ishape[:ax] and len(oshape) == ax + 1:
            block = x.layout.block * int(np.prod(ishape[ax + 1:], dtype=np.int64))
            self.cg.reshapes[call] = ax
            return Act(Layout(x.layout.segments, block), ax)
        if ax == len(ishape) - 1 and oshape and oshape[-1] == ishape[-1]:
            # channels last, only the leading axes regrouped: a linear layer on tokens or
            # NHWC pixels (ConvNeXt's and the transformers' MLPs flatten to 2-D and back)
            self.cg.reshapes[call] = len(oshape) - 1
            return Act(x.layout, len(oshape) - 1)
        return self.unknown(args, "reshape that splits or merges the channel axis")

    def permute(self, var, call, args):
        x = self.info(args[0])
        if not isinstance(x, View):
            return self.unknown(args, "permute_dims of an activation")
        ndim = len(shape_of(args[0]))
        perm = [int(a) for a in call.attrs.axes] if call.attrs.axes is not None else list(range(ndim))[::-1]
        axes = dict(x.axes)
        return View(x.kind, x.name, tuple((i, axes[p]) for i, p in enumerate(perm) if p in axes))

    def reduce(self, var, call, args):
        x, shape = self.info(args[0]), shape_of(args[0])
        if not isinstance(x, Act) or call.attrs.axis is None or x.layout.block != 1:
            return self.unknown(args, f"{call.op.name} over all axes")
        axes = {int(a) % len(shape) for a in call.attrs.axis}
        if x.axis in axes:
            return self.unknown(args, f"{call.op.name} over the channel axis")
        axis = x.axis if call.attrs.keepdims else x.axis - sum(a < x.axis for a in axes)
        return Act(x.layout, axis)

    def concat(self, var, call, args):
        parts, oshape = self.info(args[0]), shape_of(var)
        axis = int(call.attrs.axis) % len(oshape) if oshape else -1
        if not isinstance(parts, tuple) or not all(
                isinstance(p, Act) and p.axis == axis and p.layout.block == 1 for p in parts):
            return self.unknown(args, "concat along a non-channel axis")
        return Act(Layout(tuple(s for p in parts for s in p.layout.segments)), axis)
