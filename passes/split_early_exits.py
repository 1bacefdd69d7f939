"""Split a multi-exit model into stages and a ``main`` that leaves at the first confident exit.

Input: a module whose ``main(inputs...)`` (weights bound as constants) returns
``(exit logits..., final logits)`` in one dataflow block. The cut is op-agnostic:
stage k holds every binding the k-th exit needs that no earlier exit needed, so
it works after pruning or INT8 rewrites as well. Each stage is its own Relax
function with one dataflow block (fusion and tuning work inside it):

    stage_k(carried...) -> (exit_k logits, score_k, features for later stages...)
    stage_final(carried...) -> final logits

``main`` calls stage 0, compares its 0-d score with threshold 0 (``R.greater``, a
0-d bool) and branches with ``relax.If`` outside any dataflow block; the compiled
library decides by itself. It returns ``(logits, exit index int32)``, where
index K (the number of early exits) means the final head.
"""
from __future__ import annotations

import math

from edgec.compiler.errors import EdgecError
from edgec.compiler.tvm_compat import relax, tvm
from edgec.passes.exit_plan import THRESHOLDS_INPUT, ExitPlan, ExitPlanError
from edgec.passes.graph import TensorSpec, bind, substitute


class SplitError(EdgecError):
    """The module cannot be split into exit stages."""


def _graph(func):
    """(bindings [(var, value)], output exprs) of a single-output-tuple function."""
    body = func.body
    bindings = []
    for block in body.blocks:
        for b in block.bindings:
            if not isinstance(b, relax.VarBinding):
                raise SplitError(f"cannot split a {type(b).__name__}; main must hold plain bindings")
            bindings.append((b.var, b.value))
    defs = dict(bindings)
    out = body.body
    while isinstance(out, relax.Var) and isinstance(defs.get(out), (relax.Tuple, relax.Var)):
        out = defs[out]
    fields = list(out.fields) if isinstance(out, relax.Tuple) else [out]
    return bindings, fields


def _stage_of(bindings, outputs) -> dict:
    """Map each needed binding var to the first output (stage) that needs it."""
    defs = dict(bindings)
    stage = {}
    for k, out in enumerate(outputs):
        todo = [out] if isinstance(out, relax.Var) else list(relax.analysis.free_vars(out))
        while todo:
            v = todo.pop()
            if v in stage or v not in defs:
                continue
            stage[v] = k
            todo += list(relax.analysis.free_vars(defs[v]))
    return stage


def _plan_stages(func, outputs, bindings):
    """Per stage: its bindings, the outer vars it reads, the vars later stages need."""
    stage = _stage_of(bindings, outputs)
    n = len(outputs)
    own = [[(v, e) for v, e in bindings if stage.get(v) == k] for k in range(n)]
    reads, order = [], list(func.params) + [v for v, _ in bindings]
    for k in range(n):
        used = [u for _, e in own[k] for u in relax.analysis.free_vars(e)]
        used += [outputs[k]] if isinstance(outputs[k], relax.Var) else []
        inner = {v for v, _ in own[k]}
        outer = {u for u in used if u not in inner}
        reads.append([v for v in order if v in outer])
    exports = [[v for v, _ in own[k] if any(v in reads[j] for j in range(k + 1, n))]
               for k in range(n)]
    return own, reads, exports


def _score(bb, logits, criterion):
    """0-d confidence in [0, 1]: the least confident sample of the batch."""
    classes = int(logits.ty.shape.values[-1])
    if criterion == "max_prob":
        per_sample = bb.emit(relax.op.max(relax.op.nn.softmax(logits, axis=-1), axis=-1))
    else:
        logp = bb.emit(relax.op.nn.log_softmax(logits, axis=-1))
        ent = bb.emit(relax.op.negative(relax.op.sum(relax.op.multiply(relax.op.exp(logp), logp),
                                                     axis=-1)))
        norm = relax.const(1.0 / math.log(classes), str(logits.ty.dtype))
        per_sample = bb.emit(relax.op.subtract(relax.const(1.0, str(logits.ty.dtype)),
                                               relax.op.multiply(ent, norm)))
    score = relax.op.min(per_sample)
    if str(logits.ty.dtype) != "float32":  # thresholds are float32 whatever the logits are
        score = relax.op.astype(score, "float32")
    return bb.emit(score, name_hint="score")


def _emit_stage(bb, name, own, reads, exports, out, criterion):
    params = [relax.Var(v.name, v.ty) for v in reads]
    with bb.function(name, params):
        with bb.dataflow():
            vmap = dict(zip(reads, params))
            for var, value in own:
                vmap[var] = bb.emit(substitute(value, vmap), name_hint=var.name)
            logits = vmap.get(out, out)
            if criterion is None:
                result = bb.emit_output(logits)
            else:
                fields = [logits, _score(bb, logits, criterion)] + [vmap[v] for v in exports]
                result = bb.emit_output(relax.Tuple(fields))
        bb.emit_func_output(result)


class _MainBuilder:
    """Builds ``main``: nested ``If``s over the stage calls."""
    def __init__(self, mod, plan, n_stages, thr_param):
        self.bb, self.mod, self.plan = relax.BlockBuilder(mod), mod, plan
        self.n, self.thr = n_stages, thr_param

    def bind(self, binds, name, value):
        value = self.bb.normalize(value)
        var = relax.Var(name, value.ty)
        binds.append(relax.VarBinding(var, value))
        return var

    def threshold(self, binds, k):
        if self.thr is not None:
            idx = relax.const(k, "int64")
            return self.bind(binds, f"threshold{k}", relax.op.take(self.thr, idx, axis=0))
        return relax.const(self.plan.thresholds[k], "float32")

    def chain(self, k, env, reads, exports):
        binds = []
        gv = self.mod.get_global_var(f"stage{k}")
        s = self.bind(binds, f"stage{k}_out", relax.Call(gv, [env[v] for v in reads[k]]))
        if k == self.n - 1:
            result = relax.Tuple([s, relax.const(k, "int32")])
            return relax.SeqExpr([relax.BindingBlock(binds)], result)
        logits = self.bind(binds, f"logits{k}", relax.TupleGetItem(s, 0))
        score = self.bind(binds, f"score{k}", relax.TupleGetItem(s, 1))
        cond = self.bind(binds, f"exit{k}", relax.op.greater(score, self.threshold(binds, k)))
        env = dict(env)
        for i, v in enumerate(exports[k]):
            env[v] = self.bind(binds, v.name, relax.TupleGetItem(s, 2 + i))
        taken = relax.SeqExpr([], relax.Tuple([logits, relax.const(k, "int32")]))
        rest = self.chain(k + 1, env, reads, exports)
        result = self.bind(binds, f"result{k}", relax.If(cond, taken, rest))
        return relax.SeqExpr([relax.BindingBlock(binds)], result)


def split_early_exits(mod: tvm.IRModule, plan: ExitPlan) -> tvm.IRModule:
    """Split ``mod`` (weights bound) by ``plan`` into stage functions and an exiting ``main``."""
    func = mod["main"]
    if func.attrs and "num_input" in func.attrs and int(func.attrs["num_input"]) != len(func.params):
        raise SplitError("bind the weights before splitting (graph.bind): stages own their weights")
    bindings, fields = _graph(func)
    plan = plan.resolve(len(fields))
    outputs = [fields[p] for p in plan.exit_points] + [fields[-1]]
    _check_outputs(outputs, plan)
    own, reads, exports = _plan_stages(func, outputs, bindings)
    # start from ``mod`` so the functions its bindings call keep their GlobalVars (the
    # INT8 pass adds packed-kernel PrimFuncs); ``main`` is replaced below
    bb = relax.BlockBuilder(mod)
    criteria = plan.criteria_list(plan.num_exits) + [None]
    for k, out in enumerate(outputs):
        _emit_stage(bb, f"stage{k}", own[k], reads[k], exports[k], out, criteria[k])
    staged = bb.get()
    params = [relax.Var(p.name, p.ty) for p in func.params]
    thr = relax.Var(THRESHOLDS_INPUT, relax.TensorType([plan.num_exits], "float32")) \
        if plan.thresholds_as_input else None
    builder = _MainBuilder(staged, plan, len(outputs), thr)
    body = builder.chain(0, dict(zip(func.params, params)), reads, exports)
    ret = relax.TupleType([outputs[-1].ty, relax.TensorType([], "int32")])
    main = relax.Function(params + ([thr] if thr is not None else []), body, ret)
    staged["main"] = main.with_attr("global_symbol", "main")
    return relax.transform.Normalize()(staged)


def _check_outputs(outputs, plan):
    final = outputs[-1].ty
    for p, out in zip(plan.exit_points, outputs[:-1]):
        ty = out.ty
        if not isinstance(ty, relax.TensorType) or _sig(ty) != _sig(final):
            raise SplitError(f"exit output {p} is {ty}, the final output is {final}; every exit "
                             "must give logits of the final head's shape and dtype")
    if not isinstance(final, relax.TensorType) or final.ndim != 2:
        raise ExitPlanError(f"the final output is {final}; early exit needs (batch, classes) logits")


def _sig(ty) -> tuple:
    return (str(ty.dtype), tuple(int(d) for d in ty.shape.values))


def stage_names(mod) -> list:
    """The stage functions of a split module, in order."""
    names = sorted((gv.name_hint for gv in mod.get_global_vars() if gv.name_hint.startswith("stage")),
                   key=lambda s: int(s[5:]))
    return names


def split_model(model, plan: ExitPlan):
    """Bind ``model``'s weights and split it; returns (RelaxModel, pass summary for the manifest).

    The weights are bound here, not after the pass: each stage function then
    owns the constants it reads, and the pipeline's later bind has nothing left.
    """
    from dataclasses import replace


    mod = split_early_exits(bind(model), plan)
    ret = model.mod["main"].ret_ty
    plan = plan.resolve(len(ret.fields) if isinstance(ret, relax.TupleType) else 1)
    inputs = tuple(model.inputs)
    if plan.thresholds_as_input:
        inputs += (TensorSpec(THRESHOLDS_INPUT, (plan.num_exits,), "float32"),)
    summary = {"name": "split_early_exits", "plan": plan.to_json(), "num_exits": plan.num_exits,
               "stages": stage_names(mod), "weights_bound": True,
               "outputs": ["logits", "exit_index"]}
    return replace(model, mod=mod, params={}, inputs=inputs), summary


@tvm.ir.transform.module_pass(opt_level=0, name="SplitEarlyExits")
class SplitEarlyExits:
    """The split as a module pass (``SplitEarlyExits(plan)(mod)``)."""
    def __init__(self, plan: ExitPlan):
        self.plan = plan

    def transform_module(self, mod, _ctx):
        return split_early_exits(mod, self.plan)
