"""The INT8 phase of the pipeline: choose the plan, rank layers, run the pass.

The plan comes from the model's own QDQ nodes (ONNX Runtime's quantizer), a
scale table (QAT or an earlier calibration), or calibration, in that order.
"""
from __future__ import annotations

from edgec.passes.int8_kernels import kernel_for
from edgec.passes.quantize_int8 import quantize


def quantize_phase(model, config, target, calib_data=None, quiet=True):
    """The pipeline's quantize phase: (RelaxModel with bound int8 weights, summary).

    The plan is ``config.int8_scales`` (a scale table) or calibration on
    ``calib_data``; ``config.int8_keep_fp32`` names layers, or gives a number N of
    the most sensitive layers (measured on the calibration data) to keep in FP32.
    """
    from edgec.passes.quant_scheme import scheme_for_target

    scheme = scheme_for_target(target, config.int8_activation, config.int8_reduce_range,
                               config.calib_method, config.calib_percentile)
    mod, layers, plan = _plan(model, config, scheme, calib_data, quiet)
    keep, rows = config.int8_keep_fp32, []
    plan = plan if isinstance(keep, int) else plan.with_keep_fp32(keep)
    plan.check_layers([layer.name for layer in layers])
    if isinstance(keep, int):
        if keep > 0 and calib_data is None:
            from edgec.passes.calibrate import CalibrationError

            raise CalibrationError("int8_keep_fp32 N ranks layers on calibration data; give it")
        rows = _ranked(mod, layers, plan, calib_data, model, keep)
        keep = tuple(r["layer"] for r in rows[:keep])
    plan = plan.with_keep_fp32(keep)
    kernel = kernel_for(target, scheme) if config.int8_kernel == "auto" else None
    qmod = quantize(mod, layers, plan, kernel)
    from edgec.passes.int8_layers import fp32_ops

    info = {**plan.summary(), "layers": [layer.name for layer in layers], "sensitivity": rows,
            "kernel": f"packed-{kernel.name}" if kernel else "nchw",
            "fp32_ops": fp32_ops(mod, layers)}
    return model.with_module(qmod, params={}), info


def _plan(model, config, scheme, calib_data, quiet):
    """(prepared module, layers, plan): from the model's own QDQ nodes, a scale table,
    or calibration, in that order of precedence."""
    from edgec.passes.calibrate import calibration_plan, check_data
    from edgec.passes.import_qdq import has_qdq, strip_qdq
    from edgec.passes.int8_layers import find_layers, layer_names, prepare
    from edgec.passes.quant_scheme import QuantPlan

    names, plan = None, None
    if has_qdq(model):
        model, names, plan = strip_qdq(model, scheme)
    mod = prepare(model)
    layers = find_layers(mod, names if names is not None else layer_names(model))
    if config.int8_scales:
        table = QuantPlan.load(config.int8_scales)
        plan = QuantPlan(scheme, table.ranges, table.keep_fp32, table.source, table.extra)
    elif plan is None:
        data = check_data(calib_data, model.inputs[0])[: config.calib_samples]
        plan = calibration_plan(mod, layers, data, model.inputs[0], scheme, quiet)
    return mod, layers, plan


def _ranked(mod, layers, plan, data, model, keep):
    if keep <= 0:
        return []
    from edgec.passes.calibrate import check_data
    from edgec.passes.sensitivity import layer_sensitivity

    data = check_data(data, model.inputs[0])[:64]
    return [r.to_json() for r in layer_sensitivity(mod, layers, plan, data, model.inputs[0])]


def quantize_model(model, scheme, calib_data=None, plan=None, keep_fp32=(), quiet=True,
                   kernel=None):
    """Quantize a ``RelaxModel``: returns (bound int8 module, the plan used).

    The plan comes from ``plan`` (a scale table, e.g. from QAT) or, without one,
    from calibrating on ``calib_data``. ``keep_fp32`` names layers left in FP32.
    """
    from edgec.passes.calibrate import calibration_plan
    from edgec.passes.int8_layers import find_layers, layer_names, prepare

    mod = prepare(model)
    layers = find_layers(mod, layer_names(model))
    if plan is None:
        plan = calibration_plan(mod, layers, calib_data, model.inputs[0], scheme, quiet)
    plan = plan.with_keep_fp32(keep_fp32)
    return quantize(mod, layers, plan, kernel), plan
