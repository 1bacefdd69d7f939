"""The demo's report: report.json for tools, report.md for people.

Every figure comes from the run itself (``DemoRun``): sizes from the artifacts,
accuracy from running them, latency from one interleaved benchmark, the power
proxy from the graphs. Nothing here is typed in by hand; the goals are marked
met or not met from those numbers.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict

from edgec.compiler import __version__
from edgec.compiler.compare import machine_info
from edgec.compiler.demo.context import STAGE_DENSE, STAGE_EAGER
from edgec.compiler.demo.measure import dropped
from edgec.compiler.demo.plots import make_plots
from edgec.compiler.demo.power import PROXY_LABEL
from edgec.compiler.demo.report_md import board_note, markdown
from edgec.compiler.deploy.artifact import atomic_path, write_json_atomic
from edgec.compiler.tvm_compat import tvm_version

GOAL_SIZE, GOAL_SPEEDUP, GOAL_ACC, GOAL_ACC_DROP = 0.30, 3.0, 90.0, 1.0


def build_report(run) -> dict:
    """The JSON report of a finished ``DemoRun``."""
    import torch


    bench = run.benchmark or {}
    stages = [_stage_entry(r, bench) for r in run.records]
    return {
        "format": "edgec-demo-report", "version": 1, "command": run.config.command,
        "created_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "seconds": run.seconds,
        "versions": {"edgec": __version__, "tvm": tvm_version(), "torch": torch.__version__},
        "config": asdict(run.config), "data": run.data, "machine": machine_info(),
        "stages": stages, "goals": goals(stages, bench.get("device")),
        "benchmark": {k: v for k, v in bench.items() if k not in ("engines", "power_readings")},
        "power_proxy_label": PROXY_LABEL, "power_readings": bench.get("power_readings"),
        "stopped": run.stopped,
        "best_artifact": ({"stage": run.best.stage.name, "path": os.path.join(run.config.out, "model.so")}
                          if run.best else None),
    }


def _stage_entry(rec, bench) -> dict:
    entry = {"name": rec.stage.name, "slug": rec.stage.slug, "status": rec.status,
             "missing": rec.missing}
    if rec.status not in ("ok", "over the accuracy budget") or not rec.meta:
        return entry
    m, info = rec.metrics, dict(rec.meta.get("info", {}))
    proxy = m.get("power_proxy") or {}
    info.pop("power_proxy", None)
    entry.update({
        "cache_hit": rec.cache_hit, "cache_key": rec.key, "workdir": rec.workdir,
        "artifact": _published(rec), "cached_artifact": rec.artifact,
        "engine": m["engine"], "size": m["size"],
        "accuracy": m["accuracy"], "latency": _latency(rec.stage.name, bench),
        "power_proxy": {k: proxy.get(k) for k in ("macs", "weight_bytes", "activation_bytes",
                                                  "bytes_moved", "label", "functions",
                                                  "worst_case")},
        "tuning": m.get("tuning"), "passes": m.get("passes"), "target": m.get("target"),
        "seconds": rec.meta.get("seconds"), "info": info})
    return entry


def _published(rec) -> str | None:
    """Where ``demo._publish`` copied the stage's artifact (OUT/artifacts/<slug>.so)."""
    if not rec.artifact:
        return None
    out = os.path.dirname(os.path.dirname(rec.workdir.rstrip(os.sep)))  # OUT/cache/<dir>
    return os.path.join(out, "artifacts", rec.stage.slug + ".so")


def _latency(name, bench) -> dict | None:
    engines = bench.get("engines") or {}
    if name not in engines:
        return None
    s = engines[name]
    out = {k: s[k] for k in ("median_ms", "min_ms", "mean_ms", "p95_ms", "runs_per_sample")}
    if s.get("where"):  # a board run: "board", or "host" for what cannot run there
        out["where"] = s["where"]
    for ref, label in ((STAGE_DENSE, "x_faster_than_dense_edgec"),
                       (STAGE_EAGER, "x_faster_than_pytorch_eager")):
        if ref in engines and engines[ref].get("where") == s.get("where"):  # same device only
            out[label] = engines[ref]["median_ms"] / s["median_ms"]
            out[label + "_by_min"] = engines[ref]["min_ms"] / s["min_ms"]
    return out


def _measured(stages) -> list:
    return [s for s in stages if s.get("accuracy") and s.get("latency")]


def goals(stages, device: dict | None = None) -> dict:
    """The scenario's goals, marked met/not met from the measured numbers (``device``:
    the board the latencies were measured on, if any)."""
    measured = _measured(stages)
    dense = next((s for s in measured if s["name"] == STAGE_DENSE), None)

    final = next((s for s in reversed(measured) if s["engine"] == "edgec"
                  and not dropped(s.get("info"))), None)
    skipped = [s for s in measured if dropped(s.get("info"))]
    if dense is None or final is None:
        return {"final_stage": None, "items": [], "note": "no compiled dense stage was measured"}
    size = final["size"]["artifact_bytes"] / dense["size"]["artifact_bytes"]
    speed = final["latency"]["x_faster_than_dense_edgec"]
    acc, base = final["accuracy"]["test_top1"], dense["accuracy"]["test_top1"]
    items = [
        {"goal": f"final artifact <= {GOAL_SIZE:.0%} of the dense FP32 edgec artifact",
         "value": size, "measured": f"{size:.1%} ({_mb(final['size']['artifact_bytes'])} of "
                                    f"{_mb(dense['size']['artifact_bytes'])})", "met": size <= GOAL_SIZE},
        {"goal": f">= {GOAL_SPEEDUP:g}x faster than dense FP32 edgec (median latency)",
         "value": speed, "measured": f"{speed:.2f}x ({final['latency']['median_ms']:.3f} ms vs "
                                     f"{dense['latency']['median_ms']:.3f} ms)", "met": speed >= GOAL_SPEEDUP},
        {"goal": f"test accuracy >= {GOAL_ACC:g}% and within {GOAL_ACC_DROP:g} point of dense",
         "value": acc, "measured": f"{acc:.2f}% (dense {base:.2f}%, {acc - base:+.2f} points)",
         "met": acc >= GOAL_ACC and base - acc <= GOAL_ACC_DROP},
    ]
    eager = {k: final["latency"].get(k) for k in ("x_faster_than_pytorch_eager",
                                                   "x_faster_than_pytorch_eager_by_min")}
    note = ""
    if final["name"] == STAGE_DENSE:
        note = ("the final stage is dense FP32 edgec itself: the compression stages are not "
                "available in this build, so the size and speed goals cannot be met yet")
    for s in skipped:  # measured and reported, but not the final artifact
        note = "; ".join(filter(None, [note, f"{s['name']} is not the final stage: "
                                             + s["info"]["exits"]["pricing"]["verdict"]]))
    if device:
        note = "; ".join(filter(None, [note, board_note(device)]))
        if device.get("emulated"):
            items[1]["measured"] += " on an EMULATED board: meaningless"
    return {"final_stage": final["name"], "items": items, **eager, "note": note}


def _mb(n) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def write(report: dict, out: str) -> tuple:
    """Write report.json and report.md into ``out``; returns their paths."""
    json_path, md_path = os.path.join(out, "report.json"), os.path.join(out, "report.md")
    write_json_atomic(json_path, report)
    with atomic_path(md_path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(markdown(report))
    return json_path, md_path


def publish(run) -> dict:
    """Build the report of ``run``, draw its plots, write report.json and report.md."""
    report = build_report(run)
    report["plots"] = make_plots(report, os.path.join(run.config.out, "plots"))
    report["files"] = {"json": os.path.join(run.config.out, "report.json"),
                       "markdown": os.path.join(run.config.out, "report.md")}
    write(report, run.config.out)
    return report
