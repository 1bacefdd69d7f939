"""The pipeline's lowering steps, on the bound module: from Relax graph to compiled
executable. TVM's own passes do most of it (``tvm.compile`` alone does not fuse);
edgec's add the blocked conv layout, the default register tiles and applying tuning.

Every step is ``fn(state) -> None`` and replaces ``state.mod`` (``pipeline.State``).
"""
from __future__ import annotations

from edgec.compiler.tune.apply import apply_tuning
from edgec.compiler.tvm_compat import relax, tvm
from edgec.passes.graph import bind as bind_weights
from edgec.passes.fast_math import legalize_map
from edgec.passes.layout_fallback import blocked_layout
from edgec.passes.loop_schedule import apply_default_loops
from edgec.passes.matmul_schedule import apply_default_matmuls
from edgec.passes.nchwc_schedule import apply_default_schedules
from edgec.passes.simplify import Simplify


def bind(state) -> None:
    """Weights become constants, so lowering can fold and prepack them."""
    state.mod = bind_weights(state.model)


def simplify(state) -> None:
    """Batch norms folded into convs, inference ops decomposed, constants folded."""
    state.mod = Simplify(state.config.fold_batchnorm)(state.mod)


def layout(state) -> None:
    """FP32 convs in the blocked NCHW[b]c layout, their neighbours following; a conv TVM
    cannot block stays NCHW (``layout_fallback``), and the record says which."""
    state.mod, state.layout = blocked_layout(state.mod, state.block,
                                             state.config.kernels.winograd, _fast_math(state))
    state.passes.append(state.layout)


def fuse(state) -> None:
    """Legalize and fuse (Relax's "zero" pipeline). With prepacking, the kernels' weight
    buffers are marked layout-free, so MetaSchedule's RewriteLayout may give them the
    layout the schedule reads best."""
    legalize = _fast_math(state)
    if legalize:  # before the zero pipeline's LegalizeOps, which then finds nothing left
        state.mod = relax.transform.LegalizeOps(legalize)(state.mod)
    with state.target.tvm_target():
        state.mod = relax.get_pipeline("zero")(state.mod)
    if state.layout is not None:  # distinct Winograd kernels (weights transformed)
        state.layout["winograd_kernels"] = sum("winograd" in gv.name_hint
                                               for gv in state.mod.functions)
    if state.config.kernels.prepack_weights:
        state.mod = relax.transform.AttachAttrLayoutFreeBuffers()(state.mod)


def _fast_math(state) -> dict | None:
    """The fast-math legalizations (``passes.fast_math``) if the config asks for them."""
    return legalize_map() if state.config.kernels.fast_math else None


def tune(state) -> None:
    """MetaSchedule records from the target's tuning log, matched by workload."""
    c = state.config
    state.mod, state.tuning = apply_tuning(state.mod, state.target, c.tuning_logs,
                                           c.transfer_schedules)


def conv_tiles(state) -> None:
    """Blocked convs that tuning left unscheduled get the heuristic register tile."""
    state.mod, state.layout["default_tiles"] = apply_default_schedules(state.mod)


def matmul_tiles(state) -> None:
    """So do 2-D matmuls (a classifier): vector-wide column blocks, weights read by rows."""
    lanes = state.target.vector_bits // 32
    state.mod, state.tuning["default_matmuls"], skipped = apply_default_matmuls(state.mod, lanes)
    if skipped:
        state.tuning["default_matmuls_skipped"] = skipped


def loops(state) -> None:
    """Every other kernel still on TVM's plain loop nest (pools, means, concats, layout
    transforms, elementwise ops): parallel outer loops, a vector inner loop."""
    lanes = max(1, state.target.vector_bits // 32)
    state.mod, state.tuning["default_loops"] = apply_default_loops(state.mod, lanes)


def prepack(state) -> None:
    """Each weight layout rewrite becomes its own function, and FoldConstant runs it on the
    bound weights now: the library stores the weights already rewritten."""
    kernels = _prim_names(state.mod)
    mod = relax.transform.SplitLayoutRewritePreproc()(state.mod)
    packed = {n for n in _prim_names(mod) if n.endswith("_prepacked")}
    rewrites = _prim_names(mod) - kernels - packed
    state.mod = tvm.transform.Sequential([relax.transform.FoldConstant(),
                                          relax.transform.DeadCodeElimination()])(mod)
    left = _prim_names(state.mod)
    state.passes.append({"name": "prepack_weights", "kernels_prepacked": len(packed),
                         "weight_rewrites_folded": len(rewrites - left),
                         "weight_rewrites_at_run_time": len(rewrites & left)})


def build(state) -> None:
    """``tvm.compile`` for the target: TVM's finalizing passes and code generation."""
    tvm_target = state.target.tvm_target()
    with tvm_target:
        state.executable = tvm.compile(state.mod, target=tvm_target)


def _prim_names(mod) -> set:
    return {gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
