"""The edge-classifier scenario: a list of stages, run in order, each cached.

A ``Stage`` turns the results of earlier stages into a torch model and/or a
compiled artifact (``run(ctx, workdir) -> Outcome``). The driver caches each
stage under ``OUT/cache/<slug>-<key>``; the key hashes the stage's parameters,
the data, the seed, the source of the code it runs, the versions, and the keys
of the stages it builds on, so a second run reuses trained models and built
libraries (``cache_hit``) unless ``fresh``. Every stage is then measured the same
way (``demo_measure``): size, test accuracy (by running the compiled artifact
when there is one), the power proxy, and latency in one interleaved benchmark.

The driver is ``demo_cache``, the stages ``demo_stages``. A compression stage
plugs in as one function there. Until its pass and
training code exist in this build it is reported as "not available in this
build", with the modules it needs, and no numbers.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import time
from dataclasses import dataclass, field

from edgec.compiler.errors import EdgecError

STAGE_EAGER = "dense FP32 (PyTorch eager)"
STAGE_DENSE = "dense FP32 edgec"
NOT_AVAILABLE = "not available in this build"
OVER_BUDGET = "over the accuracy budget"
SKIPPED = "skipped (an earlier stage missed the accuracy budget)"
# Code a stage's result depends on (its own function is hashed too): the stage and
# measuring modules, and what training or building runs.
DEMO_CODE = ("edgec.compiler.demo_stages", "edgec.compiler.demo_measure",
             "edgec.compiler.demo_compress", "edgec.compiler.demo_exits", "edgec.compiler.cli_exits",
             "edgec.compiler.exit_pricing")
TRAIN_CODE = DEMO_CODE + ("edgec.compiler.zoo", "edgec.compiler.train")
BUILD_CODE = DEMO_CODE + (
    "edgec.compiler.api", "edgec.compiler.frontend", "edgec.passes.graph",
    "edgec.compiler.pipeline", "edgec.compiler.build", "edgec.compiler.config",
    "edgec.compiler.artifact", "edgec.compiler.power", "edgec.passes", "edgec.targets")


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
    board: object = None  # a demo_board.Board: artifacts run there, not here

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


def check_target(name: str, board: bool = False) -> None:
    """The demo runs what it builds: without a board (``--tracker``), the target must be
    this machine's architecture and ISA."""
    from edgec.compiler.runtime import host_arch
    from edgec.targets import cpu_flags, get_target

    target = get_target(name)  # unknown names: UnknownTargetError listing the known ones
    if board:
        return  # the board's architecture is checked when it is first reached
    if target.arch != host_arch():
        raise DemoError(f"target {target.name!r} builds {target.arch} libraries but this machine "
                        f"is {host_arch()}: the demo runs every stage to measure accuracy and "
                        "latency; give the board with --tracker HOST:PORT [--key KEY], or use "
                        "--target host")
    flags = {f.replace("_", "") for f in cpu_flags()}
    lacking = [f for f in target.features if f.replace("_", "") not in flags]
    if flags and lacking:
        raise DemoError(f"target {target.name!r} needs CPU features {lacking} this CPU lacks; "
                        "use --target host")


def data_digest(data) -> str:
    h = hashlib.sha256()
    for split in (data.train, data.val, data.test):
        h.update(split.x.tobytes())
        h.update(split.y.tobytes())
    return h.hexdigest()[:16]


def model_digest(spec: str | None) -> str:
    """What identifies the dense model: its .pt2 bytes or its factory's module source."""
    from edgec.compiler.artifact import file_digest

    if spec is None:
        return "MnistCNN"
    if spec.endswith(".pt2"):
        return file_digest(spec) if os.path.isfile(spec) else spec
    module = spec.partition(":")[0]
    found = module_exists(module) and importlib.util.find_spec(module).origin
    return spec + ":" + (file_digest(found) if found and os.path.isfile(found) else "")


def run(config: RunConfig, compress=None) -> DemoRun:
    """Run the scenario: stages in order (cached), then one benchmark of them all."""
    from edgec.compiler import demo_stages
    from edgec.compiler.demo_cache import run_stages
    from edgec.compiler.demo_measure import benchmark, best_artifact
    from edgec.compiler.data import load_dataset

    check_target(config.target, board=bool(config.tracker))
    t0 = time.perf_counter()
    data = load_dataset(config.data, config.seed)
    ctx = Context(config, data, digests={"data": data_digest(data),
                                         "model": model_digest(config.model)})
    if config.tracker:  # reached before any training: fail fast
        from edgec.compiler.demo_board import open_board

        ctx.board = open_board(config.tracker, config.key, config.target,
                               timeout=config.board_timeout)
    plan = demo_stages.stages(config) if compress is None else demo_stages.stages(config, compress)
    stopped = run_stages(plan, ctx)
    bench = benchmark(ctx)
    result = DemoRun(config, list(ctx.records.values()), bench, stopped,
                     round(time.perf_counter() - t0, 1), best_artifact(ctx))
    result.artifacts = _publish(result)
    result.data = {"name": data.name, "train": len(data.train), "val": len(data.val),
                   "test": len(data.test), "input_shape": list(data.input_shape),
                   "classes": data.num_classes}
    return result


def _publish(result: DemoRun) -> dict:
    """Copy each stage's artifact to OUT/artifacts/, and the best one to OUT/model.so."""
    out = {}
    folder = os.path.join(result.config.out, "artifacts")
    pairs = [(r.artifact, os.path.join(folder, r.stage.slug + ".so")) for r in result.records
             if r.artifact]
    if result.best is not None:
        pairs.append((result.best.artifact, os.path.join(result.config.out, "model.so")))
    for src, dst in pairs:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        for a, b in ((src, dst), (src[:-3] + ".json", dst[:-3] + ".json")):
            shutil.copyfile(a, b + ".tmp")
            os.replace(b + ".tmp", b)
        out[dst] = src
    return out
