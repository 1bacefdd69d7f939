"""Quantize a model in one call (calibrate, then realize): the entry point of the torch-side
helpers and the tests; the pipeline's step is ``compiler/compress.quantize``."""
from __future__ import annotations

from edgec.passes.calibrate import calibration_plan
from edgec.passes.int8_layers import find_layers, layer_names, prepare
from edgec.passes.quantize_int8 import quantize


def quantize_model(model, scheme, calib_data=None, plan=None, keep_fp32=(), quiet=True,
                   kernel=None, **options):
    """Quantize a ``RelaxModel``: returns (bound int8 module, the plan used).

    The plan comes from ``plan`` (a scale table, e.g. from QAT) or, without one,
    from calibrating on ``calib_data``. ``keep_fp32`` names layers left in FP32.
    ``options``: ``quantize``'s (depthwise, pad_out, blocked).
    """
    mod = prepare(model)
    layers = find_layers(mod, layer_names(model))
    if plan is None:
        plan = calibration_plan(mod, layers, calib_data, model.inputs[0], scheme, quiet)
    plan = plan.with_keep_fp32(keep_fp32)
    return quantize(mod, layers, plan, kernel, **options), plan
