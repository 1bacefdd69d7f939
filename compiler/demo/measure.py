"""Measuring the demo's stages the same way: size, accuracy, power proxy, latency.

Accuracy of a compiled stage comes from running its artifact (the edgec
runtime, batch 1) over the whole test split, never from torch. Latency of every
stage comes from one interleaved ``compare`` run, each engine cycling through
the same fixed test images (so input-dependent models, such as early exits,
are timed on a mix of real inputs).
"""
from __future__ import annotations

import itertools
import os

import numpy as np
from tqdm import tqdm

from edgec.compiler.compare import Engine, compare, machine_info
from edgec.compiler.demo import board as demo_board
from edgec.compiler.demo.context import STAGE_DENSE, STAGE_EAGER
from edgec.compiler.demo.model import ExportedModule
from edgec.compiler.demo.power import power_per_stage, proxy_of
from edgec.compiler.deploy.artifact import read_manifest
from edgec.compiler.deploy.runtime import load
from edgec.compiler.frontend import import_model
from edgec.compiler.train.fit import accuracy, predict

BENCH_IMAGES = 64  # test images each engine cycles through while timed


def artifact_logits(so_path: str, split, quiet: bool = True, board=None) -> np.ndarray:
    """Output 0 of the compiled artifact for every sample of ``split`` (batch 1), run
    here or, given a ``demo.board.Board``, on the board."""
    if board is not None:
        return demo_board.board_outputs(board, so_path, split.x, "accuracy (artifact, on the board)", quiet)[0]
    model = load(so_path)
    out = [model(split.x[i:i + 1])[0].reshape(-1)
           for i in tqdm(range(len(split)), desc="test accuracy (artifact)", disable=quiet,
                         leave=False)]
    return np.stack(out)


def torch_logits(model, split) -> np.ndarray:
    """Output 0 of a torch model; exported programs have a fixed batch, so run those one by one."""
    batch = 1 if isinstance(model, ExportedModule) else 256
    return predict(model, split, batch_size=batch)


def measure(rec, ctx) -> dict:
    """Size, test accuracy and power proxy of one stage (cached with it)."""
    test, quiet = ctx.data.test, ctx.config.quiet
    if rec.artifact:
        manifest = read_manifest(rec.artifact)
        acc = accuracy(artifact_logits(rec.artifact, test, quiet, ctx.board), test.y)
        where = (f" on the board {ctx.board.description['where']} over RPC" if ctx.board
                 else "")
        return {"engine": "edgec",
                "accuracy": {"test_top1": acc, "n": len(test), "measured_by":
                             f"the compiled artifact (edgec runtime, batch 1){where} on every "
                             "test image"},
                "size": {"artifact_bytes": manifest["library_bytes"],
                         "weight_bytes": manifest["weights_bytes"], "artifact": "model.so"},
                "power_proxy": rec.meta["info"].get("power_proxy"),
                "tuning": manifest.get("tuning"), "passes": manifest.get("passes"),
                "target": manifest["target"]["name"]}
    acc = accuracy(torch_logits(rec.model, test), test.y)
    return {"engine": "pytorch eager",
            "accuracy": {"test_top1": acc, "n": len(test),
                         "measured_by": "the PyTorch model (eager, CPU) on every test image"},
            "size": {"artifact_bytes": os.path.getsize(os.path.join(rec.workdir, "model.pt")),
                     "weight_bytes": _state_bytes(rec.model), "artifact": "model.pt (torch.save)"},
            "power_proxy": _torch_proxy(rec.model, ctx)}


def _state_bytes(model) -> int:
    return int(sum(t.numel() * t.element_size() for t in model.state_dict().values()))


def _torch_proxy(model, ctx) -> dict:
    return proxy_of(import_model(model, (ctx.example(),)), ctx.config.target).to_json()


def runner(rec, images: np.ndarray):
    """A no-arg callable running one inference of the stage, cycling through ``images``."""
    if rec.artifact:
        from edgec.compiler.deploy.runtime import load
        from edgec.compiler.tvm_compat import tensor

        fn = load(rec.artifact)._vm["main"]
        inputs = itertools.cycle([tensor(np.ascontiguousarray(x[None])) for x in images])
        return lambda: fn(next(inputs))
    import torch

    model = rec.model.eval()
    inputs = itertools.cycle([torch.from_numpy(np.ascontiguousarray(x[None])) for x in images])

    def run():
        with torch.no_grad():
            return model(next(inputs))
    return run


def benchmark(ctx) -> dict | None:
    """Time every measured stage in one interleaved run (baseline: dense FP32 edgec)."""
    images = ctx.data.test.x[:BENCH_IMAGES]
    recs = [r for r in ctx.records.values() if r.status != "not available in this build"
            and (r.artifact or r.model is not None)]
    if not recs:
        return None
    if ctx.board is not None:
        return stages_benchmark(ctx, recs)
    engines = [Engine(r.stage.name, runner(r, images)) for r in recs]
    names = [e.name for e in engines]
    base = STAGE_DENSE if STAGE_DENSE in names else names[0]
    rounds, samples = ctx.config.bench_rounds
    import torch

    # Denormal floats made one run's trained eager model ~100x slower (64 ms vs 0.4-1.7 ms);
    # flushing them is the usual inference setting and only ever helps the PyTorch peer.
    flushed = torch.set_flush_denormal(True)
    try:
        result = compare(engines, rounds=rounds, samples=samples, baseline=base,
                         quiet=ctx.config.quiet)
    finally:
        torch.set_flush_denormal(False)
    result["images_cycled"] = len(images)
    result["pytorch_flush_denormal"] = bool(flushed)
    if ctx.config.power_cmd:
        result["power_readings"] = power_per_stage(engines, ctx.config.power_cmd)
    return result


def budget_violation(ctx, rec) -> str | None:
    """Why ``rec`` breaks the run's accuracy budget (None: it does not, or no budget)."""
    budget = ctx.config.accuracy_budget
    ref = ctx.records.get(STAGE_DENSE) or ctx.records.get(STAGE_EAGER)
    if budget is None or rec.status != "ok" or ref is None or ref is rec or ref.status != "ok":
        return None
    if rec.stage.name in (STAGE_DENSE, STAGE_EAGER):
        return None
    base = ref.metrics["accuracy"]["test_top1"]
    acc = rec.metrics["accuracy"]["test_top1"]
    if base - acc <= budget:
        return None
    return (f"stage '{rec.stage.name}' reaches {acc:.2f}% test accuracy, {base - acc:.2f} points "
            f"below '{ref.stage.name}' ({base:.2f}%), over the accuracy budget of {budget} points")


def best_artifact(ctx):
    """The last stage with an artifact within the accuracy budget (the run's result),
    unless its own measurements drop it (an early exit that does not pay)."""
    best = None
    for rec in ctx.records.values():
        if rec.status == "ok" and rec.artifact and not dropped(rec.meta.get("info")):
            best = rec
    return best


def dropped(info) -> bool:
    """Whether a stage's info says it must not ship: its early exit was priced by measured
    latency and does not pay on the target (``exit_pricing``)."""
    pricing = ((info or {}).get("exits") or {}).get("pricing") or {}
    return pricing.get("pays") is False


def stages_benchmark(ctx, recs: list) -> dict:
    """The demo's benchmark with a board: edgec stages on the board (baseline dense FP32
    edgec, ratios among them), PyTorch eager on this host, labelled and without ratios."""
    images = ctx.data.test.x[:demo_board.BOARD_IMAGES]
    on_board = [(r.stage.name, r.artifact) for r in recs if r.artifact]
    result = demo_board.board_benchmark(ctx.board, on_board, images, 3 if ctx.config.quick else 7,
                             ctx.config.quiet, ctx.config.power_cmd)
    names = [n for n, _ in on_board]
    base = STAGE_DENSE if STAGE_DENSE in names else (names or [None])[0]
    for s in result["engines"].values():
        s["ratio_to_" + base] = s["median_ms"] / result["engines"][base]["median_ms"]
    host = [r for r in recs if not r.artifact]
    if host:
        rounds, samples = ctx.config.bench_rounds
        local = compare([Engine(r.stage.name, runner(r, images)) for r in host], rounds=rounds,
                        samples=samples, quiet=ctx.config.quiet)
        for name, s in local["engines"].items():
            s = {k: v for k, v in s.items() if not k.startswith("ratio_to_")}
            result["engines"][name] = {**s, "where": "host"}
    result.update(baseline=base, machine=machine_info(), host_engines=[r.stage.name for r in host])
    return result
