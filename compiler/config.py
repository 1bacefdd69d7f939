"""PipelineConfig: the one frozen, validated description of a compile.

The CLI and the Python API both build it; nothing else takes a long list of
keyword arguments. Later compression phases add their fields here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from edgec.compiler.errors import EdgecError


class ConfigError(EdgecError):
    """A PipelineConfig field has an invalid value."""


@dataclass(frozen=True)
class PipelineConfig:
    """What the pipeline does, phase by phase.

    target: a name from ``edgec targets`` (``host`` is detected).
    fold_batchnorm: fold inference batch norms into the preceding conv weights.
    fuse: run TVM's legalize + operator fusion (off only for debugging).
    tuning_logs: MetaSchedule database directory to apply ("auto": the committed
      ``tuning_logs/`` for the target; None: do not apply tuning).
    dump_ir: a directory to write the IR after each phase into (None: don't).
    early_exit: split a multi-exit model (outputs: exit logits..., final logits)
      into stages with a ``main`` that returns at the first confident exit.
    exit_thresholds: one value in [0, 1] per exit (baked, or the defaults of the input).
    exit_criterion: "max_prob" or "entropy" (see ``edgec.passes.exit_plan``).
    thresholds_as_input: the library takes an ``exit_thresholds`` input at run time.
    """

    target: str = "host"
    fold_batchnorm: bool = True
    fuse: bool = True
    tuning_logs: str | None = "auto"
    dump_ir: str | None = None
    early_exit: bool = False
    exit_thresholds: tuple | None = None
    exit_criterion: str = "max_prob"
    thresholds_as_input: bool = False

    def __post_init__(self):
        from edgec.targets import get_target

        get_target(self.target)  # raises UnknownTargetError listing known targets
        for flag in ("fold_batchnorm", "fuse"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        if self.exit_thresholds is not None:
            object.__setattr__(self, "exit_thresholds", tuple(self.exit_thresholds))
        if self.early_exit:
            self.exit_plan()  # raises ExitPlanError naming the valid range / criteria
        elif self.exit_thresholds is not None or self.thresholds_as_input:
            raise ConfigError("exit thresholds are set but early_exit is off; enable early_exit")

    def exit_plan(self):
        """The ExitPlan these fields describe (exit points are found in the model)."""
        from edgec.passes.exit_plan import ExitPlan

        return ExitPlan(None, self.exit_criterion, self.exit_thresholds, self.thresholds_as_input)

    def to_json(self) -> dict:
        return asdict(self)
