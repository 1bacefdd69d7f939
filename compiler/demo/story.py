"""The edge-classifier scenario: a list of stages, run in order, each cached.

A ``Stage`` turns the results of earlier stages into a torch model and/or a
compiled artifact (``run(ctx, workdir) -> Outcome``). The driver caches each
stage under ``OUT/cache/<slug>-<key>``; the key hashes the stage's parameters,
the data, the seed, the source of the code it runs, the versions, and the keys
of the stages it builds on, so a second run reuses trained models and built
libraries (``cache_hit``) unless ``fresh``. Every stage is then measured the same
way (``measure``): size, test accuracy (by running the compiled artifact
when there is one), the power proxy, and latency in one interleaved benchmark.

The driver is ``cache``, the stages ``stages``. A compression stage
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

from edgec.compiler.data import load_dataset
from edgec.compiler.demo import stages as demo_stages
from edgec.compiler.demo.cache import run_stages
from edgec.compiler.demo.context import Context, DemoError, DemoRun, RunConfig, module_exists
from edgec.compiler.demo.measure import benchmark, best_artifact
from edgec.compiler.deploy.artifact import file_digest
from edgec.compiler.deploy.runtime import host_arch
from edgec.targets import cpu_flags, get_target


def check_target(name: str, board: bool = False) -> None:
    """The demo runs what it builds: without a board (``--tracker``), the target must be
    this machine's architecture and ISA."""
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
    if spec is None:
        return "MnistCNN"
    if spec.endswith(".pt2"):
        return file_digest(spec) if os.path.isfile(spec) else spec
    module = spec.partition(":")[0]
    found = module_exists(module) and importlib.util.find_spec(module).origin
    return spec + ":" + (file_digest(found) if found and os.path.isfile(found) else "")


def run(config: RunConfig, compress=None) -> DemoRun:
    """Run the scenario: stages in order (cached), then one benchmark of them all."""
    check_target(config.target, board=bool(config.tracker))
    t0 = time.perf_counter()
    data = load_dataset(config.data, config.seed)
    ctx = Context(config, data, digests={"data": data_digest(data),
                                         "model": model_digest(config.model)})
    if config.tracker:  # reached before any training: fail fast
        from edgec.compiler.demo.board import open_board

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
