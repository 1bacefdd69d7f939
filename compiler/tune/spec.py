"""What a tuning run is asked to do (``TuneSpec``), validated before any work starts."""
from __future__ import annotations

from dataclasses import dataclass

from edgec.compiler.config import KernelOptions
from edgec.compiler.errors import EdgecError


class TuneError(EdgecError):
    """Tuning could not run or produced no valid measurement."""


@dataclass(frozen=True)
class TuneSpec:
    """One tuning run.

    target: edgec target name; trials: new trials to run (with ``resume``: the total
    for this model's tasks, counting records already in the log); log_dir: None for
    ``tuning_logs/<target>``; tracker: "host:port" of an RPC tracker (None: measure
    on this machine) with ``rpc_key`` the board key (default: the target's); label:
    the model's name in the log's run history (default: its source); warm_start: a
    workload with no record first measures the log's schedules of its nearest similar
    workloads (``tune.measure.NoRepeatSearch``), so the search starts from them;
    kernels: tune the kernels a ``PipelineConfig`` with these options builds
    (``config.kernels``).
    """

    target: str = "host"
    trials: int = 64
    log_dir: str | None = None
    resume: bool = False
    tracker: str | None = None
    rpc_key: str | None = None
    trials_per_iter: int = 16
    seed: int = 0
    build_timeout: float = 60.0
    run_timeout: float = 60.0
    exit_when_stuck: bool = False  # CLI: a stuck board ends the process (tune.measure.BoundedRunner)
    quiet: bool = False
    label: str | None = None
    warm_start: bool = True
    kernels: KernelOptions = KernelOptions()

    def __post_init__(self):
        if not isinstance(self.trials, int) or self.trials < 0:
            raise TuneError(f"trials must be a non-negative integer, got {self.trials!r}")
        if not self.run_timeout > 0:
            raise TuneError(f"--timeout must be positive seconds, got {self.run_timeout!r}")
        if self.tracker is not None and not parse_tracker(self.tracker):
            raise TuneError(f"bad tracker {self.tracker!r}; expected HOST:PORT, e.g. 127.0.0.1:9190")


def parse_tracker(text: str):
    host, _, port = text.rpartition(":")
    return (host, int(port)) if host and port.isdigit() else None
