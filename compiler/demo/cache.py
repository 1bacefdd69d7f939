"""The demo's cached stage driver: run stages in order, reuse what is in OUT/cache.

Each stage lives in ``OUT/cache/<slug>-<key>``. The key hashes the stage's
parameters, the data, the seed, the source of the code it runs (its function
and the modules it names), the versions, and the keys of the stages it builds
on; ``stage.json`` is written last, so a folder without it is an interrupted
build and is redone. A second run reuses trained models and built libraries
(``cache_hit``) unless ``fresh``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import os
import shutil
import sys
import tempfile
import time

from edgec.compiler import __version__
from edgec.compiler.demo.context import (NOT_AVAILABLE, OVER_BUDGET, SKIPPED, Context, Stage,
                                         StageRecord)
from edgec.compiler.demo.measure import budget_violation, measure
from edgec.compiler.deploy.artifact import write_json_atomic
from edgec.compiler.safe_load import CacheEntryError, load_module
from edgec.compiler.tvm_compat import tvm_version


def source_digest(modules) -> str:
    """A digest of the source files of ``modules`` (a package: every .py in it)."""
    h = hashlib.sha256()
    for name in sorted(set(modules)):
        spec = importlib.util.find_spec(name)
        files = [spec.origin]
        if spec.submodule_search_locations:
            folder = list(spec.submodule_search_locations)[0]
            files = [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(".py")]
        for path in files:
            with open(path, "rb") as f:
                h.update(path.rsplit(os.sep, 1)[-1].encode() + f.read())
    return h.hexdigest()


def stage_key(stage: Stage, ctx: Context) -> str:
    """The content key of ``stage`` in this run (changes whenever its result could)."""
    import torch


    parts = {"stage": stage.slug, "params": [list(p) for p in stage.params],
             "seed": ctx.config.seed, "data": ctx.digests.get("data"),
             "model": ctx.digests.get("model"), "code": source_digest(stage.code),
             "run": inspect.getsource(getattr(stage.run, "func", stage.run)),
             "after": [ctx.records[a].key for a in stage.after],
             "versions": [__version__, tvm_version(), torch.__version__]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def run_stages(stages, ctx: Context) -> str | None:
    """Run ``stages`` in order; returns why the run stopped early (None: it did not)."""
    stop = None
    for stage in stages:
        if stop:
            ctx.records[stage.name] = StageRecord(stage, SKIPPED)
            continue
        rec = _run_one(stage, ctx)
        ctx.records[stage.name] = rec
        stop = budget_violation(ctx, rec)
        if stop:
            rec.status = OVER_BUDGET
    return stop


def _say(ctx, text: str) -> None:
    if not ctx.config.quiet:
        print(f"edgec {ctx.config.mode}: {text}", file=sys.stderr, flush=True)


def _run_one(stage: Stage, ctx: Context) -> StageRecord:
    missing = stage.missing()
    if missing or stage.run is None:
        _say(ctx, f"{stage.name}: {NOT_AVAILABLE}")
        return StageRecord(stage, NOT_AVAILABLE, missing or ["its demo stage is not wired yet"])
    if any(ctx.records.get(a) is None or ctx.records[a].status != "ok" for a in stage.after):
        _say(ctx, f"{stage.name}: {NOT_AVAILABLE} (it builds on {', '.join(stage.after)})")
        return StageRecord(stage, NOT_AVAILABLE, [f"stage(s) {', '.join(stage.after)}"])
    key = stage_key(stage, ctx)
    final = os.path.join(ctx.cache_dir, f"{stage.slug}-{key}")
    if not ctx.config.fresh and os.path.isfile(os.path.join(final, "stage.json")):
        _say(ctx, f"{stage.name}: reusing the cached result {key}")
        return _load_record(stage, key, final, ctx)
    _say(ctx, f"{stage.name}: building")
    rec = StageRecord(stage, "ok", key=key, workdir=final)
    _build_into(stage, ctx, rec, final)
    acc = rec.metrics["accuracy"]["test_top1"]
    _say(ctx, f"{stage.name}: done in {rec.meta['seconds']['run']} s, test top-1 {acc:.2f}%")
    return rec


def _build_into(stage, ctx, rec, final) -> None:
    """Run the stage in a temp folder, move it into the cache, then measure it."""
    made = not os.path.isdir(ctx.cache_dir)
    os.makedirs(ctx.cache_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{stage.slug}-", dir=ctx.cache_dir)
    t0 = time.perf_counter()
    try:
        outcome = stage.run(ctx, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if made and not os.listdir(ctx.cache_dir):  # a failed first stage leaves no folder
            os.rmdir(ctx.cache_dir)
        raise
    try:
        if outcome.model is not None:
            import torch

            torch.save(outcome.model, os.path.join(tmp, "model.pt"))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rec.model = outcome.model
    rec.artifact = os.path.join(final, outcome.artifact) if outcome.artifact else None
    rec.meta = {"name": stage.name, "key": rec.key, "created_unix": round(time.time()),
                "seconds": {"run": round(time.perf_counter() - t0, 2)},
                "artifact": outcome.artifact, "has_model": outcome.model is not None,
                "info": outcome.info}
    t1 = time.perf_counter()
    rec.meta["metrics"] = measure(rec, ctx)
    rec.meta["seconds"]["measure"] = round(time.perf_counter() - t1, 2)
    write_json_atomic(os.path.join(final, "stage.json"), rec.meta)  # written last: complete


def _load_record(stage, key, final, ctx) -> StageRecord:
    path = os.path.join(final, "stage.json")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict):
        raise CacheEntryError(f"{path} is damaged; delete {final} or rerun with --fresh")
    model = None
    if meta.get("has_model"):  # read with the weights-only unpickler: a planted file runs nothing
        spec = ctx.config.model or ""
        user = (spec.split(":", 1)[0].split(".", 1)[0],) if ":" in spec else ()
        model = load_module(os.path.join(final, "model.pt"), user)
    artifact = os.path.join(final, meta["artifact"]) if meta.get("artifact") else None
    return StageRecord(stage, "ok", key=key, workdir=final, cache_hit=True, model=model,
                       artifact=artifact, meta=meta)
