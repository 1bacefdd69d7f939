"""The pipeline, top to bottom: one function, a comment per phase.

frontend -> passes (prune, quantize, split) -> bind -> lower -> apply tuning -> build.
Nothing else decides the order of phases. Each phase can be skipped from the
config, and ``dump_ir`` writes the IR after every phase.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from edgec.compiler.config import PipelineConfig
from edgec.passes.graph import RelaxModel, bind
from edgec.compiler.tvm_compat import relax, tvm
from edgec.compiler.phases import native_output_captured, phase
from edgec.passes.conv_layout import block_for
from edgec.passes.layout_fallback import blocked_layout
from edgec.passes.simplify import Simplify
from edgec.targets import get_target


@dataclass
class PipelineResult:
    """What the pipeline produced: the built executable and what it did."""

    executable: object
    lowered: tvm.IRModule
    target: object
    passes: list = field(default_factory=list)
    tuning: dict = field(default_factory=dict)
    model: RelaxModel | None = None  # the model after the compression passes


def run(model: RelaxModel, config: PipelineConfig, calib_data=None, quiet: bool = True,
        lower_only: bool = False) -> PipelineResult:
    """Compile ``model`` as ``config`` says; returns the executable and a summary.

    calib_data: input samples (N, *input shape[1:]) for INT8 calibration.
    lower_only: stop before applying tuning and building (``executable`` is None); the
    tuner tunes exactly this module, so its records match what the build looks up.
    A phase that fails raises one ``phases.CompileError`` line; TVM's C++ warnings stay
    off the terminal.
    """
    with native_output_captured():
        return _run(model, config, calib_data, quiet, lower_only)


def _run(model, config, calib_data, quiet, lower_only) -> PipelineResult:
    target = get_target(config.target)
    tvm_target = target.tvm_target()
    dump = _dumper(config.dump_ir)
    passes: list = []
    dump("00_imported", model.mod)

    # passes: compression on the named-weight model (prune -> quantize -> split).
    # Each later issue adds its phase here, guarded by its config field.
    if config.prune or config.prune_plan:
        from edgec.passes.prune_channels import prune_for_config

        with phase("prune"):
            model, record = prune_for_config(model, config, target)
        passes.append(record)
        dump("01_pruned", model.mod)

    # quantize: conv2d/matmul -> int8 x int8 -> int32 (weights bound as int8 constants).
    from edgec.passes.import_qdq import has_qdq  # an ONNX QDQ model is quantized as it says

    quantized = config.int8 or has_qdq(model)
    block = block_for(config.conv_layout, target.vector_bits)
    blocked = bool(block) and config.fuse and not quantized  # INT8 kernels pack their own layout
    if blocked and config.pad_channels:
        # pad channel groups to the blocked layout's vector width (24 -> 32 on AVX-512)
        from edgec.passes.pad_channels import pad_channels

        with phase("layout", "--no-pad-channels or --conv-layout NCHW"):
            model, record = pad_channels(model, block)
        if record is not None:
            passes.append(record)
            dump("03_padded", model.mod)
    if quantized:
        from edgec.passes.int8_phase import quantize_phase

        with phase("quantize"):
            model, info = quantize_phase(model, config, target, calib_data, quiet)
        passes.append({"name": "quantize_int8", **info})
        dump("05_quantized", model.mod)

    # split early exits (last compression pass): binds the weights itself, so each
    # stage function owns the constants it reads and the bind below is a no-op.
    if config.early_exit:
        from edgec.passes.split_early_exits import split_model

        with phase("split"):
            model, summary = split_model(model, config.exit_plan())
        passes.append(summary)
        dump("09_split_early_exits", model.mod)

    # bind: weights become constants, so lowering can fold and prepack them.
    with phase("lower"):
        mod = bind(model)
    dump("10_bound", mod)

    # lower: fold batch norms into convs, constant-fold, legalize and fuse.
    with phase("lower"):
        mod = Simplify(config.fold_batchnorm)(mod)
    dump("20_simplified", mod)
    layout_record = None
    if blocked:
        # blocked conv layout: FP32 convs in NCHW[b]c, their neighbours follow
        with phase("layout"):
            mod, layout_record = blocked_layout(mod, block, config.winograd)
        passes.append(layout_record)
        dump("25_conv_layout", mod)
    if config.fuse:
        with phase("lower"), tvm_target:
            mod = relax.get_pipeline("zero")(mod)
        dump("30_fused", mod)
        if layout_record is not None:  # distinct Winograd kernels (weights transformed)
            layout_record["winograd_kernels"] = sum("winograd" in gv.name_hint
                                                    for gv in mod.functions)
        if config.prepack_weights:
            # prepack (1/2): mark the kernels' weight buffers layout-free, so MetaSchedule's
            # RewriteLayout postproc may give them the layout the schedule reads best
            mod = relax.transform.AttachAttrLayoutFreeBuffers()(mod)
            dump("35_layout_free", mod)

    # apply tuning: MetaSchedule records from tuning_logs/<target>, matched by workload.
    if lower_only:
        return PipelineResult(None, mod, target, passes, {}, model)
    tuning = {"applied": False, "logs": [], "summary": "tuning not applied"}
    if config.tuning_logs and config.fuse:
        from edgec.compiler.tune.apply import apply_tuning

        with phase("tune"):
            mod, tuning = apply_tuning(mod, target, config.tuning_logs,
                                       config.transfer_schedules)
        dump("40_tuned", mod)
    if layout_record is not None:
        # blocked convs without a tuned record get the heuristic register tile
        from edgec.passes.nchwc_schedule import apply_default_schedules

        with phase("lower"):
            mod, layout_record["default_tiles"] = apply_default_schedules(mod)
    if config.fuse and not config.prepack_weights:
        # so do 2-D matmuls (a classifier): vector-wide column blocks, weights read by rows
        from edgec.passes.matmul_schedule import apply_default_matmuls

        with phase("lower"):
            mod, tuning["default_matmuls"] = apply_default_matmuls(mod, target.vector_bits // 32)
    if config.prepack_weights and config.fuse:
        # prepack (2/2): each layout rewrite becomes its own function, and FoldConstant runs
        # it on the bound weights now: the library stores the weights already rewritten
        kernels = _prim_names(mod)
        mod = relax.transform.SplitLayoutRewritePreproc()(mod)
        packed = {n for n in _prim_names(mod) if n.endswith("_prepacked")}
        rewrites = _prim_names(mod) - kernels - packed
        mod = tvm.transform.Sequential([relax.transform.FoldConstant(),
                                        relax.transform.DeadCodeElimination()])(mod)
        passes.append({"name": "prepack_weights", "kernels_prepacked": len(packed),
                       "weight_rewrites_folded": len(rewrites - _prim_names(mod)),
                       "weight_rewrites_at_run_time": len(rewrites & _prim_names(mod))})
        dump("45_prepacked", mod)

    # build: tvm.compile for the target (finalize passes + codegen).
    with phase("build"), tvm_target:
        executable = tvm.compile(mod, target=tvm_target)
    return PipelineResult(executable, mod, target, passes, tuning, model)


def _prim_names(mod) -> set:
    return {gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


def _dumper(directory):
    if not directory:
        return lambda name, mod: None
    os.makedirs(directory, exist_ok=True)

    def dump(name, mod):
        with open(os.path.join(directory, f"{name}.py"), "w", encoding="utf-8") as f:
            f.write(mod.script(show_meta=False))

    return dump
