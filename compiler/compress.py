"""The pipeline's compression steps, on the model with named weights: prune, pad, quantize,
split. Each reads its own option group from the config (``prune_options``,
``int8_options``, ``exit_plan()``), makes or loads its plan (the decision),
and hands the plan to its pass (the surgery); it records what it did for the manifest.

Every step is ``fn(state) -> None``: it replaces ``state.model`` and appends its record
to ``state.passes`` (``pipeline.State``).
"""
from __future__ import annotations

from edgec.passes.calibrate import CalibrationError, calibration_plan, check_data
from edgec.passes.import_qdq import has_qdq, strip_qdq
from edgec.passes.int8_kernels import kernel_for
from edgec.passes.int8_layers import find_layers, fp32_ops, layer_names, prepare
from edgec.passes.pad_channels import pad_channels
from edgec.passes.prune_channels import prune_channels, prune_summary
from edgec.passes.prune_plan import PrunePlan, make_plan
from edgec.passes.quant_scheme import QuantPlan, scheme_for_target
from edgec.passes.quantize_int8 import BLOCKED_ATTR, int32_overflows, quantize as quantize_layers
from edgec.passes.sensitivity import layer_sensitivity
from edgec.passes.split_early_exits import split_model

SENSITIVITY_SAMPLES = 64  # calibration samples that rank layers for --int8-keep-fp32 N


def prune(state) -> None:
    """Structured channel pruning: the plan from ``--prune-plan`` or made for
    ``--prune RATIO`` (importance per channel group), applied to every weight it touches."""
    o, model = state.config.prune_options, state.model
    plan = (PrunePlan.load(o.plan) if o.plan else
            make_plan(model, o.ratio, o.criterion, multiple=o.multiple, target=state.target))
    state.model = prune_channels(model, plan)
    state.passes.append(prune_summary(model, state.model, plan))


def pad(state) -> None:
    """Channel groups padded to the blocked layout's vector width (24 -> 32 on AVX-512)."""
    state.model, record = pad_channels(state.model, state.block)
    if record is not None:
        state.passes.append(record)


def quantize(state) -> None:
    """INT8: conv2d/matmul become u8/s8 x s8 -> int32 with requantization. The plan comes
    from the model's own QDQ nodes, a scale table (``--int8-scales``) or calibration, in
    that order; ``--int8-keep-fp32`` names layers, or a number N of the most sensitive
    layers (ranked on the calibration data), to keep in FP32."""
    o, model = state.config.int8_options, state.model
    scheme = scheme_for_target(state.target, o.activation, o.reduce_range, o.calib_method,
                               o.calib_percentile)
    mod, layers, plan = _int8_plan(model, o, scheme, state.calib_data, state.quiet)
    keep, rows = o.keep_fp32, []
    plan = plan if isinstance(keep, int) else plan.with_keep_fp32(keep)
    plan.check_layers([layer.name for layer in layers])
    if isinstance(keep, int) and keep > 0:
        if state.calib_data is None:
            raise CalibrationError("int8_keep_fp32 N ranks layers on calibration data; give it")
        data = check_data(state.calib_data, model.inputs[0])[:SENSITIVITY_SAMPLES]
        rows = [r.to_json() for r in layer_sensitivity(mod, layers, plan, data, model.inputs[0])]
        keep = tuple(r["layer"] for r in rows[:keep])
    plan = plan.with_keep_fp32(() if isinstance(keep, int) else keep)
    overflow = int32_overflows(layers, plan)  # their bias would saturate int32: FP32
    plan = plan.with_keep_fp32(overflow)
    kernel = kernel_for(state.target, scheme) if o.kernel == "auto" else None
    state.model = model.with_module(
        quantize_layers(mod, layers, plan, kernel, depthwise=o.depthwise == "kernel",
                        pad_out=o.pad_out, blocked=o.blocked), params={})
    state.passes.append({"name": "quantize_int8", **plan.summary(),
                         "layers": [layer.name for layer in layers], "sensitivity": rows,
                         "kernel": f"packed-{kernel.name}" if kernel else "nchw",
                         "depthwise": o.depthwise if kernel else "plain",
                         "pad_out": bool(o.pad_out and kernel),
                         "blocked": bool(o.blocked and kernel),
                         "layers_blocked": int(state.model.mod.attrs.get(BLOCKED_ATTR, 0)
                                               if state.model.mod.attrs else 0),
                         "fp32_ops": fp32_ops(mod, layers),
                         "fp32_int32_overflow": overflow})


def _int8_plan(model, options, scheme, calib_data, quiet):
    """(prepared module, layers, plan) from the model's QDQ nodes, a scale table, or
    calibration, in that order of precedence."""
    names, plan = None, None
    if has_qdq(model):
        model, names, plan = strip_qdq(model, scheme)
    mod = prepare(model)
    layers = find_layers(mod, names if names is not None else layer_names(model))
    if options.scales:
        table = QuantPlan.load(options.scales)
        plan = QuantPlan(scheme, table.ranges, table.keep_fp32, table.source, table.extra)
    elif plan is None:
        data = check_data(calib_data, model.inputs[0])[: options.calib_samples]
        plan = calibration_plan(mod, layers, data, model.inputs[0], scheme, quiet)
    return mod, layers, plan


def split(state) -> None:
    """Early exits: the model splits at its exit heads; easy inputs leave at the first
    confident one. Binds the weights itself, so each stage owns the constants it reads."""
    state.model, summary = split_model(state.model, state.config.exit_plan())
    state.passes.append(summary)
