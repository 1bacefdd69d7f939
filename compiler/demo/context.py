"""What the demo's stages share: the run's config, a stage, its outcome and record, the
context stages see, and the finished run. Every other demo module imports these; this
module imports none of them.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field

from edgec.compiler.errors import EdgecError

STAGE_EAGER = "dense FP32 (PyTorch eager)"
STAGE_DENSE = "dense FP32 edgec"
NOT_AVAILABLE = "not available in this build"
OVER_BUDGET = "over the accuracy budget"
STAGE_PRUNED = "pruned"
STAGE_INT8 = "pruned + INT8"
STAGE_EXITS = "pruned + INT8 + early exit"
SKIPPED = "skipped (an earlier stage missed the accuracy budget)"
# Code a stage's result depends on (its own function is hashed too): the stage and
# measuring modules, and what training or building runs.
DEMO_CODE = ("edgec.compiler.demo.stages", "edgec.compiler.demo.measure", "edgec.compiler.demo.build",
             "edgec.compiler.demo.model",
             "edgec.compiler.demo.compress", "edgec.compiler.demo.exits", "edgec.compiler.cli.exits",
             "edgec.compiler.exit_calibration",
             "edgec.compiler.demo.exit_pricing")
TRAIN_CODE = DEMO_CODE + ("edgec.compiler.zoo", "edgec.compiler.train")
BUILD_CODE = DEMO_CODE + (
    "edgec.compiler.api", "edgec.compiler.frontend", "edgec.passes.graph",
    "edgec.compiler.pipeline", "edgec.compiler.build", "edgec.compiler.config",
    "edgec.compiler.deploy.artifact", "edgec.compiler.demo.power", "edgec.passes", "edgec.targets")


@dataclass(frozen=True)
class RunConfig:
    """One ``edgec demo`` or ``edgec optimize`` run.

    model: None for the demo's MnistCNN teacher, else ``module:factory`` or a .pt2.
    epochs: training epochs of the dense model (None: 2 with ``quick``, 8 without).
    accuracy_budget: points a compressed stage may lose against dense edgec
      before the run stops (None: report only, as the demo does).
    """

    target: str = "host"
    out: str = "edgec-demo"
    data: str = "mnist"
    model: str | None = None
    quick: bool = False
    fresh: bool = False
    epochs: int | None = None
    seed: int = 0
    quiet: bool = False
    power_cmd: str | None = None
    accuracy_budget: float | None = None
    prune: float | None = None  # fraction of channels to prune (None: the demo's 0.5)
    tune_trials: int = 0  # MetaSchedule trials per compiled stage (0: committed logs only)
    command: str = ""
    mode: str = "demo"
    tracker: str | None = None  # HOST:PORT: measure and time the artifacts on a board
    key: str | None = None  # the board's key at the tracker
    board_timeout: float = 120.0  # seconds the board may stay silent in any one RPC step

    @property
    def train_epochs(self) -> int:
        return self.epochs if self.epochs is not None else (2 if self.quick else 8)

    @property
    def bench_rounds(self) -> tuple:
        """(rounds, samples per round) of the interleaved benchmark."""
        return (7, 5) if self.quick else (15, 7)


@dataclass
class Outcome:
    """What a stage made: a torch model, an artifact (file name in its workdir), JSON info."""

    model: object = None
    artifact: str | None = None
    info: dict = field(default_factory=dict)
    compiled: object = None  # the RelaxModel after the passes (this run only, not cached)


@dataclass(frozen=True)
class Stage:
    """One step of the scenario.

    run: ``fn(ctx, workdir) -> Outcome`` (None: not wired into the demo yet);
    requires: modules it needs (its pass, its training code); code: modules whose
    source joins its cache key; after: stages whose results it uses.
    """

    name: str
    slug: str
    run: object = None
    requires: tuple = ()
    code: tuple = ()
    after: tuple = ()
    params: tuple = ()  # (name, value) pairs that change its result

    def missing(self) -> list:
        """Required modules this build lacks (empty when the stage can run)."""
        return [m for m in self.requires if not module_exists(m)]


@dataclass
class StageRecord:
    """A stage's result in this run; ``meta`` is what its stage.json holds."""

    stage: Stage
    status: str
    missing: list = field(default_factory=list)
    key: str = ""
    workdir: str | None = None
    cache_hit: bool = False
    model: object = None
    artifact: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def metrics(self) -> dict:
        return self.meta.get("metrics", {})


@dataclass
class Context:
    """What stages see: the run's config, the data set and the records so far."""

    config: RunConfig
    data: object
    records: dict = field(default_factory=dict)
    digests: dict = field(default_factory=dict)
    board: object = None  # a demo.board.Board: artifacts run there, not here

    @property
    def cache_dir(self) -> str:
        return os.path.join(self.config.out, "cache")

    def model(self, stage_name: str):
        """The torch model an earlier stage produced."""
        return self.records[stage_name].model

    def example(self):
        import torch

        return torch.zeros((1, *self.data.input_shape), dtype=torch.float32)


def module_exists(name: str) -> bool:
    """Whether ``name`` can be imported in this build (its parent packages exist)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


class DemoError(EdgecError):
    """The demo or optimize run cannot go ahead as asked."""


@dataclass
class DemoRun:
    """A finished run: every stage's record, the benchmark, and where the results went."""

    config: RunConfig
    records: list
    benchmark: dict | None
    stopped: str | None
    seconds: float
    best: StageRecord | None = None
    artifacts: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
