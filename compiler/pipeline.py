"""The pipeline: a list of named steps, run in order. Nothing else decides their order.

    compress (named weights)   prune -> pad -> quantize -> split        compiler/compress.py
    lower (bound module)       bind -> simplify -> layout -> fuse       compiler/lower.py
    kernels                    tune -> conv_tiles -> matmul_tiles -> prepack -> loops
    build                      tvm.compile for the target

Each step runs when the config asks for it (``when``), inside its error phase (a failure
becomes one ``phases.CompileError`` line), and writes the IR after it to ``dump_ir`` as
``NN_<step>.py``. The frontend runs before (``frontend.import_model``); exporting the
library and its manifest after (``build.build``). The tuner stops after ``fuse``
(``lower_only``), so it tunes exactly the module the build applies its records to.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

from edgec.compiler import compress, lower
from edgec.compiler.config import PipelineConfig
from edgec.compiler.phases import native_output_captured, phase
from edgec.compiler.tvm_compat import tvm
from edgec.passes.conv_layout import block_for
from edgec.passes.graph import RelaxModel
from edgec.passes.import_qdq import has_qdq
from edgec.targets import get_target


@dataclass
class State:
    """What the steps share: the model (until bound), the module (after), their records."""

    config: PipelineConfig
    model: RelaxModel
    calib_data: object = None
    quiet: bool = True
    target: object = None
    block: int | None = None  # the blocked layout's channel block (None: plain NCHW)
    quantized: bool = False
    mod: tvm.IRModule | None = None
    passes: list = field(default_factory=list)
    layout: dict | None = None  # the blocked-layout record (later steps add counts to it)
    tuning: dict = field(default_factory=lambda: {"applied": False, "logs": [],
                                                  "summary": "tuning not applied"})
    executable: object = None

    def __post_init__(self):
        c = self.config
        self.target = get_target(c.target)
        self.quantized = c.int8 or has_qdq(self.model)  # a QDQ model is quantized as it says
        block = block_for(c.conv_layout, self.target.vector_bits)
        # INT8 kernels pack their own layout; the blocked FP32 one needs fusion
        self.block = block if block and c.fuse and not self.quantized else None


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable
    when: Callable = lambda s: True
    phase: str = "lower"  # the error contract's phase (phases.PHASES)
    hint: str | None = None
    dumps: bool = True  # writes its IR to dump_ir


STEPS = (
    Step("prune", compress.prune, lambda s: s.config.prune_options.on, "prune"),
    Step("pad", compress.pad, lambda s: bool(s.block) and s.config.pad_channels, "layout",
         "--no-pad-channels or --conv-layout NCHW"),
    Step("quantize", compress.quantize, lambda s: s.quantized, "quantize"),
    Step("split", compress.split, lambda s: s.config.early_exit, "split"),
    Step("bind", lower.bind),
    Step("simplify", lower.simplify),
    Step("layout", lower.layout, lambda s: bool(s.block), "layout"),
    Step("fuse", lower.fuse, lambda s: s.config.fuse),
    Step("tune", lower.tune, lambda s: bool(s.config.tuning_logs) and s.config.fuse, "tune"),
    Step("conv_tiles", lower.conv_tiles, lambda s: s.layout is not None),
    Step("matmul_tiles", lower.matmul_tiles,
         lambda s: s.config.fuse and not s.config.prepack_weights),
    Step("prepack", lower.prepack, lambda s: s.config.fuse and s.config.prepack_weights),
    Step("loops", lower.loops, lambda s: s.config.fuse),
    Step("build", lower.build, phase="build", dumps=False),
)
LOWERED = "fuse"  # the last step of ``lower_only``


@dataclass
class PipelineResult:
    """What the pipeline produced: the built executable and what it did."""

    executable: object
    lowered: tvm.IRModule
    target: object
    passes: list = field(default_factory=list)
    tuning: dict = field(default_factory=dict)
    model: RelaxModel | None = None  # the model after the compression passes
    seconds: dict = field(default_factory=dict)  # wall time of each step that ran


def run(model: RelaxModel, config: PipelineConfig, calib_data=None, quiet: bool = True,
        lower_only: bool = False) -> PipelineResult:
    """Compile ``model`` as ``config`` says; returns the executable and what each step did.

    calib_data: input samples (N, *input shape[1:]) for INT8 calibration.
    lower_only: stop after ``fuse`` (``executable`` None, ``tuning`` empty).
    TVM's C++ warnings stay off the terminal (``phases.native_output_captured``).
    """
    state = State(config, model, calib_data, quiet)
    dump = _dumper(config.dump_ir)
    dump("00_imported", model.mod)
    seconds = {}
    with native_output_captured():
        for i, step in enumerate(STEPS, 1):
            if step.when(state):
                start = time.perf_counter()
                with phase(step.phase, step.hint):
                    step.run(state)
                seconds[step.name] = round(time.perf_counter() - start, 2)
                if step.dumps:
                    dump(f"{i:02d}_{step.name}", state.model.mod if state.mod is None else state.mod)
            if lower_only and step.name == LOWERED:
                return PipelineResult(None, state.mod, state.target, state.passes, {}, state.model,
                                      seconds)
    return PipelineResult(state.executable, state.mod, state.target, state.passes, state.tuning,
                          state.model, seconds)


def _dumper(directory):
    if not directory:
        return lambda name, mod: None
    os.makedirs(directory, exist_ok=True)

    def dump(name, mod):
        with open(os.path.join(directory, f"{name}.py"), "w", encoding="utf-8") as f:
            f.write(mod.script(show_meta=False))

    return dump
