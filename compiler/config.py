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
    prune: fraction of each prunable channel group to remove, in [0, 1) (0: off).
    prune_criterion: channel importance, one of l1, l2, bn_scale.
    prune_plan: a JSON PrunePlan to apply instead of planning (None: plan from ``prune``).
    prune_multiple: round kept channel counts up to this multiple (None: from the
      target's vector width, fp32 lanes).
    """

    target: str = "host"
    fold_batchnorm: bool = True
    fuse: bool = True
    tuning_logs: str | None = "auto"
    dump_ir: str | None = None
    prune: float = 0.0
    prune_criterion: str = "l1"
    prune_plan: str | None = None
    prune_multiple: int | None = None

    def __post_init__(self):
        from edgec.targets import get_target

        get_target(self.target)  # raises UnknownTargetError listing known targets
        for flag in ("fold_batchnorm", "fuse"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        self._check_prune()

    def _check_prune(self):
        from edgec.passes.prune_plan import CRITERIA

        if isinstance(self.prune, bool) or not isinstance(self.prune, (int, float)) \
                or not 0.0 <= self.prune < 1.0:
            raise ConfigError(f"prune must be a fraction in [0, 1), got {self.prune!r}")
        if self.prune_criterion not in CRITERIA:
            raise ConfigError(f"unknown prune_criterion {self.prune_criterion!r}; "
                              f"valid: {', '.join(CRITERIA)}")
        if self.prune_multiple is not None and (not isinstance(self.prune_multiple, int)
                                                or self.prune_multiple < 1):
            raise ConfigError(f"prune_multiple must be a positive integer or None, "
                              f"got {self.prune_multiple!r}")

    def to_json(self) -> dict:
        return asdict(self)
