"""Surgery for channel pruning: apply a PrunePlan to a RelaxModel.

Every weight (``params``), batch-norm statistic (Relax constants) and shape the
analysis tied to a pruned group is sliced, so the module that gets built really
is smaller and does fewer MACs: new weight parameters with the smaller shapes,
sliced constants, reshape targets and depthwise ``groups`` rewritten; every
other binding is re-emitted and its shape re-inferred by the block builder.
"""
from __future__ import annotations

import numpy as np

from edgec.compiler.tvm_compat import relax
from edgec.passes.channel_groups import layout_indices
from edgec.passes.channel_walk import analyze
from edgec.passes.count_macs import count_macs
from edgec.passes.prune_plan import PrunePlan, resolve
from edgec.passes.kernels.conv2d_nchwc import conv_params  # an unset out_dtype: the input's


def slice_tensors(model, cg, keep: dict) -> tuple:
    """Sliced copies: ({param name: array}, {const key: array}) of what ``keep`` touches."""
    params, consts = {}, {}
    for s in cg.slices:
        idx = layout_indices(s.layout, keep, cg)
        if idx is None:
            continue
        store, source = (params, model.params) if s.kind == "param" else (consts, None)
        cur = store.get(s.name)
        if cur is None:
            cur = np.asarray(source[s.name]) if source is not None else cg.constants[s.name].value.numpy()
        store[s.name] = take(cur, idx, s.axis)
    return params, consts


def take(array, idx, axis: int):
    """``np.take`` where an index -1 takes a zero slice (a padded channel)."""
    if (idx >= 0).all():
        return np.take(array, idx, axis=axis)
    shape = list(array.shape)
    shape[axis] = 1
    array = np.concatenate([array, np.zeros(shape, array.dtype)], axis=axis)
    return np.take(array, np.where(idx < 0, array.shape[axis] - 1, idx), axis=axis)


@relax.expr_functor.mutator
class _Surgeon(relax.PyExprMutator):
    """Re-emits ``main`` with sliced constants, reshape targets and depthwise groups."""

    def __init__(self, mod, consts: dict, reshapes: dict, depthwise: set):
        super().__init__(mod)
        self.consts, self.reshapes, self.depthwise = consts, reshapes, depthwise

    def visit_generic_const_(self, op):
        new = self.consts.get(op)
        return relax.const(new) if new is not None else op

    def visit_call_(self, op):
        if op in self.reshapes:
            data = self.visit_expr(op.args[0])
            old_in = [int(d) for d in op.args[0].ty.shape.values]
            new_in = [int(d) for d in data.ty.shape.values]
            shape = [int(d) for d in op.ty.shape.values]
            axis = self.reshapes[op]
            shape[axis] = shape[axis] * int(np.prod(new_in)) // int(np.prod(old_in))
            return self.builder_.normalize(relax.op.reshape(data, shape))
        if op in self.depthwise:
            data, weight = self.visit_expr(op.args[0]), self.visit_expr(op.args[1])
            a, p = op.attrs, conv_params(op)
            return self.builder_.normalize(relax.op.nn.conv2d(
                data, weight, strides=p["strides"], padding=p["padding"], dilation=p["dilation"],
                groups=int(weight.ty.shape.values[0]), data_layout=a.data_layout,
                kernel_layout=a.kernel_layout, out_layout=a.out_layout, out_dtype=p["out_dtype"]))
        return super().visit_call_(op)


def prune_channels(model, plan: PrunePlan, func: str = "main"):
    """The pruned RelaxModel for ``plan`` (a copy; ``model`` is not changed).

    Raises PlanError when the plan names groups the model does not have, keeps zero
    channels, or disagrees with the model's widths.
    """
    cg = analyze(model.mod, func)
    keep = resolve(plan, model, cg)
    return resize_groups(model, cg, keep, func) if keep else model


def resize_groups(model, cg, keep: dict, func: str = "main"):
    """``model`` with each group root ``r`` of ``cg`` cut to the channels ``keep[r]`` lists
    (-1: a zero channel, see ``passes.pad_channels``); a copy."""
    new_params, new_consts = slice_tensors(model, cg, keep)
    consts = {cg.constants[k]: v for k, v in new_consts.items()}
    f = model.mod[func]
    n_in = int(f.attrs["num_input"]) if f.attrs and "num_input" in f.attrs else len(f.params)
    surgeon = _Surgeon(model.mod, consts, cg.reshapes, cg.depthwise)
    params_out, new_vars = {}, list(f.params[:n_in])
    for p in f.params[n_in:]:
        value = new_params.get(p.name, model.params[p.name])
        params_out[p.name] = value
        if p.name in new_params:
            v = relax.Var(p.name, relax.TensorType(value.shape, str(p.ty.dtype)))
            surgeon.set_var_remap(p, v)
            p = v
        new_vars.append(p)
    body = surgeon.visit_expr(f.body)
    new_f = relax.Function(new_vars, body, None, f.is_pure, f.attrs)
    mod = model.mod.__class__(dict(model.mod.functions), attrs=model.mod.attrs)
    mod[func] = new_f
    mod = relax.transform.Normalize()(mod)
    return model.with_module(mod, params_out)


def prune_summary(before, after, plan: PrunePlan) -> dict:
    """The pipeline's record: MACs and weight bytes before/after, and the plan's summary."""
    return {"name": "prune_channels", "macs_before": count_macs(before.mod),
            "macs_after": count_macs(after.mod), "weight_bytes_before": before.weight_bytes,
            "weight_bytes_after": after.weight_bytes, **plan.summary()}
