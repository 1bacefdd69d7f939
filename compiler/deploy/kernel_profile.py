"""Where a call's time goes: each kernel an artifact launches, timed alone, on this CPU.

The Relax VM in TVM 0.27 has no profiler. Its instrument hook sees every PrimFunc it
launches with that launch's arguments; each launch is then timed alone with TVM's time
evaluator (the best of ``repeat`` samples of ``number`` runs), and the whole call the
same way, so the report shows the kernels that matter and what the call costs beyond
their sum (VM dispatch, allocation, the ``If`` of an early exit).

Local only: the hook runs in this process. A ``compiled`` exec-mode build bypasses the
hook (no launches recorded; its report says so).
"""
from __future__ import annotations

import os
import re

from edgec.compiler.compare import machine_info
from edgec.compiler.deploy.bench import BenchConfig, random_inputs
from edgec.compiler.deploy.runtime import check_inputs, load, load_library, with_default_thresholds
from edgec.compiler.tvm_compat import tensor, tvm


def kernel_launches(model, tensors: list) -> list:
    """[(module, symbol, args)] of every PrimFunc ``model`` (a loaded ``Model``) launches
    for ``tensors``, in order; the VM's builtins and Relax functions are left out."""
    calls = []

    def instrument(func, symbol, before, ret, *args):
        if before and not str(symbol).startswith("vm.builtin."):
            calls.append((str(symbol), args))
        return 0

    model._vm.set_instrument(instrument)
    try:
        model._vm["main"](*tensors)
    finally:
        model._vm.set_instrument(None)
    found = [(_kernel_module(model.path, s), s, a) for s, a in calls]
    return [k for k in found if k[0] is not None]  # not the Relax functions (stage0, ...)


_MODULES: dict = {}


def _kernel_module(path: str, symbol: str):
    """The module of ``path``'s library that implements ``symbol`` (the kernels live in an
    import of the loaded library, not in the library module itself); None: not a kernel."""
    key = (path, os.stat(path).st_mtime_ns)
    lib = _MODULES.get(key)
    if lib is None:
        lib = _MODULES[key] = load_library(path)
    todo = [lib]
    while todo:
        mod = todo.pop()
        if mod.implements_function(symbol, False):
            return mod
        todo += list(mod.imports)
    return None


def _best(timer, args, repeat: int) -> float:
    return min(timer(*args).results) if repeat > 1 else timer(*args).mean


def kind_of(symbol: str) -> str:
    """The kernel's kind: its symbol without shapes and numbering (``conv2d_int8_vnni``,
    ``fused_conv2d_add_relu``), so a model's time can be read by kind."""
    words = []
    for w in symbol.split("_"):
        if re.fullmatch(r"\d+(x\d+)*(s\d+)?", w):
            continue  # a shape, a stride or a number
        if not re.fullmatch(r"(u?int|float|s)\d+", w):  # dtypes and strides keep theirs
            w = w.rstrip("0123456789") or w
        words.append(w)
    return "_".join(words) or symbol


def profile(path: str, config: BenchConfig = BenchConfig(repeat=5, number=10, warmup=3)) -> dict:
    """Per-kernel times of one call of ``path`` on seeded random inputs (``config.seed``),
    this process's CPU. Returns a report: ``kernels`` (symbol, kind, launches, us, share,
    heaviest first), ``kernel_sum_us``, ``call_us`` (the VM's whole call, the same way) and
    ``overhead_us`` = call - kernel sum."""
    model = load(path)  # refuses an artifact built for another architecture
    args, kwargs = with_default_thresholds(model.manifest, random_inputs(model.manifest, config.seed), {})
    tensors = [tensor(a) for a in check_inputs(model.manifest, args, kwargs)]
    for _ in range(config.warmup):
        model._vm["main"](*tensors)
    launches = kernel_launches(model, tensors)
    dev = tvm.cpu()
    rows: dict = {}
    for mod, symbol, a in launches:
        timer = mod.time_evaluator(symbol, dev, number=config.number, repeat=config.repeat)
        row = rows.setdefault(symbol, {"symbol": symbol, "kind": kind_of(symbol), "launches": 0,
                                       "us": 0.0})
        row["launches"] += 1
        row["us"] += _best(timer, a, config.repeat) * 1e6
    call = model._vm.time_evaluator("main", dev, number=config.number, repeat=config.repeat)
    call_us = _best(call, tensors, config.repeat) * 1e6
    total = sum(r["us"] for r in rows.values())
    kernels = sorted(rows.values(), key=lambda r: -r["us"])
    for r in kernels:
        r["share"] = r["us"] / total if total else 0.0
    by_kind: dict = {}
    for r in kernels:
        k = by_kind.setdefault(r["kind"], {"kind": r["kind"], "kernels": 0, "us": 0.0})
        k["kernels"] += 1
        k["us"] += r["us"]
    return {"path": path, "target": model.manifest["target"]["name"], "config": vars(config),
            "machine": machine_info(), "kernels": kernels,
            "kinds": sorted(by_kind.values(), key=lambda k: -k["us"]),
            "kernel_sum_us": total, "call_us": call_us, "overhead_us": call_us - total,
            "note": None if launches else ("no kernel launches recorded (a compiled exec-mode "
                                           "build bypasses the VM's instrument hook)")}


def format_profile(report: dict, top: int = 25) -> str:
    """The heaviest ``top`` kernels, the time by kind, and the call against the kernel sum."""
    m = report["machine"]
    lines = [f"{os.path.basename(report['path'])} (target {report['target']}) on {m.get('cpu')}, "
             f"load {m.get('loadavg_1m', 0):.2f}: one call {report['call_us']:.1f} us, "
             f"kernels {report['kernel_sum_us']:.1f} us, "
             f"beyond the kernels {report['overhead_us']:.1f} us"]
    if report["note"]:
        lines.append(f"NOTE: {report['note']}")
    lines += ["", "| kernel | launches | us | share |", "| --- | ---: | ---: | ---: |"]
    for r in report["kernels"][:top]:
        lines.append(f"| {r['symbol']} | {r['launches']} | {r['us']:.1f} | {r['share']:.1%} |")
    rest = report["kernels"][top:]
    if rest:
        us = sum(r["us"] for r in rest)
        lines.append(f"| ({len(rest)} more) | {sum(r['launches'] for r in rest)} | {us:.1f} | "
                     f"{us / report['kernel_sum_us']:.1%} |")
    lines += ["", "| kind | kernels | us | share |", "| --- | ---: | ---: | ---: |"]
    for k in report["kinds"]:
        share = k["us"] / report["kernel_sum_us"] if report["kernel_sum_us"] else 0.0
        lines.append(f"| {k['kind']} | {k['kernels']} | {k['us']:.1f} | {share:.1%} |")
    return "\n".join(lines)
