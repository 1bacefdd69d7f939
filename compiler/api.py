"""The Python API: ``compile`` a model into a deployable artifact."""
from __future__ import annotations

from edgec.compiler.build import build
from edgec.compiler.config import PipelineConfig
from edgec.compiler.frontend import import_model


def compile(model, example_inputs=None, *, target=None, config=None, output="model.so",
            input_specs=None, calib_data=None) -> dict:  # noqa: A001  (edgec.compiler.compile is the API)
    """Import ``model``, run the pipeline, write ``output`` (.so) and its .json manifest.

    model: a torch.nn.Module (with ``example_inputs``), or a .pt2/.onnx path.
    target: a target name (overrides ``config.target``). Returns the manifest.
    calib_data: samples for INT8 calibration (``config.int8``), shape (N, *input[1:]).
    """
    config = config or PipelineConfig()
    if target is not None and target != config.target:
        from dataclasses import replace

        config = replace(config, target=target)
    relax_model = import_model(model, example_inputs, input_specs)
    return build(relax_model, config, output, calib_data)
