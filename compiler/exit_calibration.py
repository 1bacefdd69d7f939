"""Exit thresholds from data: compile the unsplit model for this machine, run it over a
split, and let ``passes.exit_thresholds`` choose the thresholds that minimise expected
MACs within an accuracy budget (``edgec compile --calibrate-exits``, the demo)."""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from edgec.compiler.config import PipelineConfig
from edgec.compiler.deploy.runtime import flatten_outputs
from edgec.compiler.errors import EdgecError
from edgec.compiler.pipeline import run
from edgec.compiler.tvm_compat import VirtualMachine, tensor, tvm
from edgec.passes.exit_plan import ExitPlan
from edgec.passes.exit_thresholds import calibrate, exit_macs
from edgec.passes.graph import bind
from edgec.passes.split_early_exits import split_early_exits


def all_output_logits(relax_model, split, quiet: bool = False, config=None,
                      calib_data=None) -> list:
    """Every output of the (unsplit) model over ``split``, compiled for this machine
    (as ``config`` says, e.g. INT8 with ``calib_data``; default FP32, untuned)."""
    spec = relax_model.inputs[0]
    if tuple(split.x.shape[1:]) != tuple(spec.shape[1:]):
        raise EdgecError(f"calibration data has samples of shape {list(split.x.shape[1:])}; the "
                         f"model input {spec.name!r} takes {list(spec.shape[1:])}")
    config = config or PipelineConfig(tuning_logs=None)
    vm = VirtualMachine(run(relax_model, config, calib_data).executable, tvm.cpu())
    b = int(spec.shape[0])
    outs = []
    for i in tqdm(range(0, len(split) - len(split) % b, b), desc="calibrate", disable=quiet,
                  leave=False):
        outs.append(flatten_outputs(vm["main"](tensor(split.x[i:i + b].astype(spec.dtype)))))
    return [np.concatenate(col) for col in zip(*outs)]


def calibrate_relax_model(relax_model, split, budget: float, criterion: str = "max_prob",
                          quiet: bool = False):
    """Thresholds for ``relax_model`` minimising expected MACs on ``split`` within ``budget``."""
    costs = exit_macs(split_early_exits(bind(relax_model), ExitPlan(thresholds_as_input=True)))
    logits = all_output_logits(relax_model, split, quiet)
    n = len(logits[0])
    return calibrate(logits, split.y[:n], costs, budget, criterion)
