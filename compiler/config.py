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
    """

    target: str = "host"
    fold_batchnorm: bool = True
    fuse: bool = True
    tuning_logs: str | None = "auto"
    dump_ir: str | None = None

    def __post_init__(self):
        from edgec.targets import get_target

        get_target(self.target)  # raises UnknownTargetError listing known targets
        for flag in ("fold_batchnorm", "fuse"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{flag} must be true or false, got {getattr(self, flag)!r}")

    def to_json(self) -> dict:
        return asdict(self)
