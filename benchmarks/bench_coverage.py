"""Coverage: does edgec take the models users bring? Every torchvision classifier, and ONNX files in other tools' forms.

For each classifier of ``torchvision.models.list_models(module=torchvision.models)``
(random seeded weights, batch-norm statistics recalibrated on random inputs so no
network's activations collapse to ~0, see ``recalibrate_bn``; batch 1, its default input
size; a model above --max-gmacs at that size runs at --small-size, listed as such):

- export: torch.export -> edgec compile (untuned) -> run; max |edgec - torch| relative to
  max |torch| <= 1e-4;
- onnx17 / onnx11: torch.onnx.export (legacy exporter) at that opset -> edgec compile ->
  run, checked the same way against ONNX Runtime on that file (an exporter failure is a
  row of its own, not hidden). Where the error is above 1e-4, ONNX Runtime is also run
  with its graph optimizations off: an error within the peer's own disagreement with
  itself (float32 rounding of a near-saturated output, say) passes, and the row shows
  both figures;
- prune: ``prune=0.3`` compiles and runs; MACs before and after;
- int8: 32 random calibration samples, compiles and runs; top-1 agreement with the FP32
  build on 32 other random inputs, SQNR; conv/matmul layers left in FP32;
- int8_ort: ONNX Runtime's static QDQ INT8 of the opset-17 file on the same calibration
  and test inputs, its SQNR against ONNX Runtime FP32: the peer's figure for the same
  random network (deep random networks lose ~15 dB in INT8 in either tool);
- latency: the untuned FP32 build against ONNX Runtime FP32 on the opset-17 file,
  interleaved (compiler/compare.py), and compile times.

Plus the ONNX files ``edgec.compiler.onnx_zoo`` writes in older tools' forms, and real
files other tools exported (``third_party_onnx``: PaddleOCR's, via paddle2onnx). Each model
runs in a child process with a deadline (a crash or hang is a row, not the end of the
run); rows are saved after each model, so an interrupted run resumes (--fresh redoes).
Results: benchmarks/results/coverage.json + .md, with the command and the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
STEPS = ("export", "onnx17", "onnx11", "prune", "int8", "int8_ort", "latency")
COLUMNS = tuple(k for k in STEPS if k != "int8_ort")  # int8_ort shows in the int8 cell
SIZES = {"inception_v3": 299}  # default input sizes other than 224
# models that take only their default size: ViT's position embeddings fix the patch grid,
# MaxViT's 7x7 windows need 224 (at 112: "shape '[1, 8, 8, 7, 7, 64]' is invalid")
FIXED_SIZE = {"vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14", "maxvit_t"}
TOL = 1e-4


def classifiers() -> list:
    from edgec.compiler.zoo import import_torchvision

    tv = import_torchvision()
    return list(tv.models.list_models(module=tv.models))


def _model(name: str):
    import torch

    from edgec.compiler.zoo import import_torchvision

    tv = import_torchvision()
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("inception_v3", "googlenet") \
        else {}
    model = tv.models.get_model(name, weights=None, **kwargs).eval()
    # a layer initialized to zeros (torchvision's ViT heads) makes every output 0: nothing
    # to compare against (the export check's relative error was inf). Random, like the rest.
    with torch.no_grad():
        for m in model.modules():
            w = getattr(m, "weight", None)
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and not w.any():
                torch.nn.init.normal_(w, std=0.02)
    return model


def recalibrate_bn(model, size: int, batches: int = 2):
    """Batch-norm statistics from random inputs (a cumulative average over ``batches`` of
    4), then eval. Random init leaves some networks' activations collapsing through the
    layers: mobilenet_v3_small's logits came out ~1e-9, which INT8 rounds to exactly 0,
    so its "top-1 agreement" compared noise. With each BN normalizing what it sees, every
    layer keeps unit scale and the INT8 checks mean something. Still random weights."""
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(4, 3, size, size, generator=g))
    return model.eval()


def _rel(y, ref) -> float:
    scale = float(np.abs(ref).max())
    return float(np.abs(np.asarray(y) - ref).max() / scale) if scale else float("inf")


def _check_against_ort(path: str, feeds: dict, y) -> dict:
    """edgec's output ``y`` against ONNX Runtime on the file at ``path``; passes within
    TOL, or within ONNX Runtime's own disagreement between its optimized and unoptimized
    graphs (float32 noise the peer has too: PaddleOCR's detector, whose sigmoid map peaks
    at 6e-4 on random input, differs from itself by 3.1e-4 relative)."""
    import onnxruntime as ort

    def run(level):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = level
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        return sess.run(None, feeds)[0]

    peer = run(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    err = _rel(y, peer)
    out = {"ok": err <= TOL, "rel_err": err}
    if err > TOL:
        out["ort_self_rel"] = _rel(run(ort.GraphOptimizationLevel.ORT_DISABLE_ALL), peer)
        out["ok"] = err <= out["ort_self_rel"]
    return out


def _sqnr(pairs) -> float:
    """Signal-to-quantization-noise ratio (dB) of (quantized, float) output pairs."""
    noise = sum(float(((a - b) ** 2).sum()) for a, b in pairs)
    signal = sum(float((b ** 2).sum()) for _, b in pairs)
    return 10 * np.log10(signal / noise) if noise else float("inf")


def _error(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"[:400]


def _macs(model, x) -> int:
    from edgec.compiler.frontend import import_model
    from edgec.passes.count_macs import count_macs

    return count_macs(import_model(model, (x,)).mod)


def run_one(name: str, steps, max_gmacs: float, small: int, folder: str, rounds: int,
            recalibrate: bool = True) -> dict:
    """All steps for one classifier (in this process); returns its row."""
    import torch

    from edgec.compiler import PipelineConfig, compile, load

    row = {"model": name, "steps": {}}
    model = _model(name)
    size = SIZES.get(name, 224)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    row["params_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
    try:
        macs = _macs(model, x)
        if macs > max_gmacs * 1e9 and name not in FIXED_SIZE:
            size = small
            x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
            row["reduced_from"] = SIZES.get(name, 224)
            macs = _macs(model, x)
        row["gmacs"] = round(macs / 1e9, 3)
    except Exception as e:  # noqa: BLE001 (the export step below reports it)
        row["gmacs"] = None
        row["macs_error"] = _error(e)
    row["input"] = [1, 3, size, size]
    if recalibrate:
        model = recalibrate_bn(model, size)
        row["bn_recalibrated"] = True
    with torch.no_grad():
        ref = model(x).numpy()
    xn = x.numpy()
    untuned = dict(tuning_logs=None)
    fp32_so = os.path.join(folder, "fp32.so")

    def step(key, fn):
        if key not in steps:
            return None
        t0 = time.perf_counter()
        try:
            out = fn() or {}
            out.setdefault("ok", True)
        except Exception as e:  # noqa: BLE001 (every failure is a row)
            out = {"ok": False, "error": _error(e)}
        out["seconds"] = round(time.perf_counter() - t0, 1)
        row["steps"][key] = out
        return out

    def export():
        compile(model, (x,), output=fp32_so, config=PipelineConfig(**untuned))
        err = _rel(load(fp32_so)(xn)[0], ref)
        return {"ok": err <= TOL, "rel_err": err}

    def onnx(opset):
        def go():
            path = os.path.join(folder, f"opset{opset}.onnx")
            try:
                torch.onnx.export(model, (x,), path, input_names=["x"], opset_version=opset,
                                  dynamo=False)
            except Exception as e:  # noqa: BLE001
                return {"ok": None, "exporter_failed": _error(e)}
            so = os.path.join(folder, f"opset{opset}.so")
            compile(path, output=so, config=PipelineConfig(**untuned))
            return _check_against_ort(path, {"x": xn}, load(so)(xn)[0])
        return go

    def prune():
        so = os.path.join(folder, "pruned.so")
        manifest = compile(model, (x,), output=so, config=PipelineConfig(prune=0.3, **untuned))
        load(so)(xn)
        rec = next((p for p in manifest["passes"] if p["name"] == "prune_channels"), {})
        out = {"macs_before": rec.get("macs_before"), "macs_after": rec.get("macs_after"),
               "groups_pruned": len(rec.get("groups") or {}),
               "groups_skipped": len(rec.get("skipped") or [])}
        if rec.get("macs_before") and rec.get("macs_after") == rec.get("macs_before"):
            out["note"] = "nothing prunable"
        return out

    def int8():
        rng = np.random.default_rng(2)
        calib = rng.standard_normal((32, *xn.shape[1:])).astype("float32")
        tests = rng.standard_normal((32, *xn.shape)).astype("float32")
        so = os.path.join(folder, "int8.so")
        manifest = compile(model, (x,), output=so, calib_data=calib,
                           config=PipelineConfig(int8=True, calib_samples=32, **untuned))
        q, f = load(so), load(fp32_so) if os.path.exists(fp32_so) else None
        rec = next((p for p in manifest["passes"] if p["name"] == "quantize_int8"), {})
        out = {"layers_int8": rec.get("layers_int8", 0), "kernel": rec.get("kernel")}
        out["layers_fp32"] = _fp32_layers(model, x) - out["layers_int8"]
        if f is not None:  # random weights: logits nearly flat, so SQNR says more than top-1
            pairs = [(q(t)[0], f(t)[0]) for t in tests]
            out["top1_agreement"] = float(np.mean([np.argmax(a) == np.argmax(b)
                                                   for a, b in pairs]))
            out["fp32_absmax"] = max(float(np.abs(b).max()) for _, b in pairs)
            out["sqnr_db"] = _sqnr(pairs)
        return out

    def int8_ort():
        import onnxruntime as ort

        from edgec.compiler.peers import onnxruntime_qdq

        rng = np.random.default_rng(2)  # the int8 step's calibration and test inputs
        calib = rng.standard_normal((32, *xn.shape[1:])).astype("float32")
        tests = rng.standard_normal((32, *xn.shape)).astype("float32")
        path = opset17_file()
        qdq = onnxruntime_qdq(path, calib, os.path.join(folder, "qdq.onnx"))
        f, q = (ort.InferenceSession(p, providers=["CPUExecutionProvider"]) for p in (path, qdq))
        pairs = [(q.run(None, {"x": t})[0], f.run(None, {"x": t})[0]) for t in tests]
        return {"sqnr_db": _sqnr(pairs), "top1_agreement": float(np.mean(
            [np.argmax(a) == np.argmax(b) for a, b in pairs]))}

    def opset17_file():
        path = os.path.join(folder, "opset17.onnx")
        if not os.path.exists(path):  # --steps export latency: the file, without its build
            torch.onnx.export(model, (x,), path, input_names=["x"], opset_version=17,
                              dynamo=False)
        return path

    def latency():
        from edgec.compiler.compare import Engine, compare
        from edgec.compiler.peers import edgec_runner, onnxruntime_session

        if not os.path.exists(fp32_so):
            return {"ok": None, "note": "needs the export step"}
        threads = os.cpu_count()
        engines = [Engine("edgec", edgec_runner(fp32_so, [xn])),
                   Engine("onnxruntime", onnxruntime_session(opset17_file(), [xn], threads))]
        # INT8 when this run built it (steps int8 / int8_ort): issue #24 asks INT8 to beat
        # edgec's own FP32 on every model, untuned, and measures it against ORT's QDQ
        int8_so, qdq = os.path.join(folder, "int8.so"), os.path.join(folder, "qdq.onnx")
        if os.path.exists(int8_so):
            engines.append(Engine("edgec_int8", edgec_runner(int8_so, [xn])))
        if os.path.exists(qdq):
            engines.append(Engine("onnxruntime_int8", onnxruntime_session(qdq, [xn], threads)))
        e = compare(engines, rounds=rounds, samples=3, quiet=True)["engines"]
        ms = {k: v["median_ms"] for k, v in e.items()}
        out = {"edgec_ms": ms["edgec"], "onnxruntime_ms": ms["onnxruntime"],
               "ratio": ms["edgec"] / ms["onnxruntime"]}
        if "edgec_int8" in ms:
            out.update(int8_ms=ms["edgec_int8"], int8_over_fp32=ms["edgec_int8"] / ms["edgec"])
        if "onnxruntime_int8" in ms:
            out["onnxruntime_int8_ms"] = ms["onnxruntime_int8"]
            if "edgec_int8" in ms:
                out["int8_ratio"] = ms["edgec_int8"] / ms["onnxruntime_int8"]
        return out

    step("export", export)
    step("onnx17", onnx(17))
    step("onnx11", onnx(11))
    step("prune", prune)
    step("int8", int8)
    step("int8_ort", int8_ort)
    step("latency", latency)
    return row


def _fp32_layers(model, x) -> int:
    """conv2d + matmul/linear calls of the imported model (before any pass)."""
    from edgec.compiler.frontend import import_model
    from edgec.compiler.tvm_compat import relax

    count = [0]

    def visit(e):
        if isinstance(e, relax.Call) and getattr(e.op, "name", "") in (
                "relax.nn.conv2d", "relax.matmul", "relax.linear"):
            count[0] += 1

    relax.analysis.post_order_visit(import_model(model, (x,)).mod["main"], visit)
    return count[0]


def run_onnx_case(case: str, folder: str) -> dict:
    """An ONNX file in another tool's form: one that ``onnx_zoo`` writes, or
    ``3p/FILE``, a real file from ``third_party_onnx``."""
    from edgec.compiler import compile, load, onnx_zoo
    from edgec.passes.graph import TensorSpec

    if case.startswith("3p/"):
        from benchmarks import third_party_onnx

        path = third_party_onnx.fetch()[case[3:]]
        name, shape = third_party_onnx.FILES[case[3:]]
    else:
        path = os.path.join(folder, f"{case}.onnx")
        (name, shape), = onnx_zoo.write_case(case, path).items()
    so = os.path.join(folder, f"{case}.so")
    t0 = time.perf_counter()
    row = {"model": f"onnx:{case}", "input": list(shape), "steps": {}}
    try:
        manifest = compile(path, output=so, input_specs=[TensorSpec(name, shape, "float32")])
        x = np.random.default_rng(1).standard_normal(shape).astype("float32")
        step = dict(_check_against_ort(path, {name: x}, load(so)(x)[0]),
                    import_notes=manifest["import_notes"])
    except Exception as e:  # noqa: BLE001
        step = {"ok": False, "error": _error(e)}
    step["seconds"] = round(time.perf_counter() - t0, 1)
    row["steps"]["onnx_file"] = step
    return row


def child(args) -> None:
    """--one NAME: run one model here and write its row to --row-out."""
    os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count()))
    with tempfile.TemporaryDirectory(prefix="edgec-coverage-") as folder:
        if args.one.startswith("onnx:"):
            row = run_onnx_case(args.one[5:], folder)
        else:
            row = run_one(args.one, args.steps, args.max_gmacs, args.small_size, folder,
                          args.rounds, not args.no_bn_recalibration)
    with open(args.row_out, "w", encoding="utf-8") as f:
        json.dump(row, f)


def _run_child(name, args) -> dict:
    fd, out = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    cmd = [sys.executable, os.path.abspath(__file__), "--one", name, "--row-out", out,
           "--steps", *args.steps, "--max-gmacs", str(args.max_gmacs),
           "--small-size", str(args.small_size), "--rounds", str(args.rounds)] + (
               ["--no-bn-recalibration"] if args.no_bn_recalibration else [])
    from edgec.compiler.compare import machine_info

    t0 = time.perf_counter()
    # Each row says where and under what load it ran: a latency ratio measured while the
    # machine was busy is not comparable (TVM's thread pool suffers far more than ONNX
    # Runtime's when a core is taken: alexnet measured 44x at load 3-6, 1.8x quiet).
    where = {"cpu": machine_info()["cpu"], "load_before": round(os.getloadavg()[0], 2)}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        if proc.returncode == 0:
            with open(out, encoding="utf-8") as f:
                row = json.load(f)
        else:
            tail = (proc.stderr or "").strip().splitlines()[-1:] or [""]
            row = {"model": name, "steps": {},
                   "crashed": f"exit {proc.returncode}: {tail[0][:300]}"}
    except subprocess.TimeoutExpired:
        row = {"model": name, "steps": {}, "crashed": f"timeout after {args.timeout} s"}
    finally:
        os.unlink(out)
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    row["ran_on"] = dict(where, load_after=round(os.getloadavg()[0], 2),
                         date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return row


def merge(old: dict | None, new: dict, steps) -> dict:
    """``new``'s results for ``steps`` over ``old``'s row (--merge); ``ran_on`` per step."""
    if not old or old.get("crashed") or new.get("crashed"):
        return new
    row = dict(old, steps=dict(old.get("steps", {})))
    for key in steps:
        if key in new.get("steps", {}):
            row["steps"][key] = dict(new["steps"][key], ran_on=new.get("ran_on"))
    return row


def summarize(rows: list) -> dict:
    """Per step: how many of the models that ran it passed."""
    out = {}
    for key in STEPS + ("onnx_file",):
        ran = [r for r in rows if key in r.get("steps", {}) or (r.get("crashed") and
                                                               key != "onnx_file")]
        ok = [r for r in ran if r.get("steps", {}).get(key, {}).get("ok")]
        exporter = [r for r in ran if r.get("steps", {}).get(key, {}).get("exporter_failed")]
        if ran:
            out[key] = {"ran": len(ran), "passed": len(ok), "exporter_failed": len(exporter)}
    ratios = sorted(r["steps"]["latency"]["ratio"] for r in rows
                    if r.get("steps", {}).get("latency", {}).get("ratio"))
    if ratios:
        out["latency"] = dict(out.get("latency", {}), median_ratio=float(np.median(ratios)),
                              worst_ratio=ratios[-1], best_ratio=ratios[0])
    lat = [r["steps"]["latency"] for r in rows if "int8_over_fp32" in
           r.get("steps", {}).get("latency", {})]
    if lat:
        over = sorted(x["int8_over_fp32"] for x in lat)
        out["int8_latency"] = {"measured": len(lat),
                               "faster_than_fp32": sum(x < 1.0 for x in over),
                               "median_int8_over_fp32": float(np.median(over)),
                               "worst_int8_over_fp32": over[-1]}
        peer = sorted(x["int8_ratio"] for x in lat if "int8_ratio" in x)
        if peer:
            out["int8_latency"]["median_int8_over_ort_int8"] = float(np.median(peer))
    return out


def markdown(rows, summary, machine, total) -> str:
    def cell(r, key):
        s = r.get("steps", {}).get(key)
        if s is None:
            return "crashed" if r.get("crashed") else ""
        if s.get("exporter_failed"):
            return "exporter failed"
        if key == "latency" and s.get("ratio"):
            ran = s.get("ran_on") or r.get("ran_on") or {}
            load = f", load {ran['load_before']:.1f}" if "load_before" in ran else ""
            int8 = ""
            if "int8_over_fp32" in s:
                int8 = f"; INT8 {s['int8_over_fp32']:.2f}x FP32" + (
                    f", {s['int8_ratio']:.2f}x ORT INT8" if "int8_ratio" in s else "")
            return (f"{s['ratio']:.2f}x ({s['edgec_ms']:.1f} / {s['onnxruntime_ms']:.1f} ms"
                    f"{load}){int8}")
        mark = "ok" if s.get("ok") else "**FAIL**"
        extra = ""
        if "rel_err" in s:
            extra = f" {s['rel_err']:.0e}" + (f" (ORT vs itself {s['ort_self_rel']:.0e})"
                                               if "ort_self_rel" in s else "")
        if key == "prune" and s.get("macs_before"):
            extra = f" {s['macs_after'] / s['macs_before']:.2f} MACs"
        if key == "int8" and "top1_agreement" in s:
            peer = r["steps"].get("int8_ort", {}).get("sqnr_db")
            sqnr = (f", {s['sqnr_db']:.0f} dB" if "sqnr_db" in s else "") + (
                f" (ORT QDQ {peer:.0f} dB)" if peer is not None else "")
            extra = f" top-1 {s['top1_agreement']:.0%}{sqnr}, {s['layers_fp32']} fp32"
            if s.get("fp32_absmax", 1.0) < 1e-6:
                extra += " (FP32 logits ~0 at random init: agreement meaningless)"
        return f"{mark}{extra} ({s['seconds']:.0f} s)" if s.get("ok") is not None else "n/a"

    head = ["model", "input", "GMACs", *COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        size = "x".join(str(d) for d in r.get("input", [])[2:]) + (
            f" (from {r['reduced_from']})" if r.get("reduced_from") else "")
        cells = [r["model"], size, str(r.get("gmacs", ""))] + [cell(r, k) for k in COLUMNS]
        if r["model"].startswith("onnx:"):
            cells = [r["model"], size, "", cell(r, "onnx_file")] + [""] * (len(COLUMNS) - 1)
        if r.get("crashed"):
            cells[-1] = f"crashed: {r['crashed']}"
        lines.append("| " + " | ".join(cells) + " |")
    sums = [f"- {k}: {v['passed']} of {v['ran']} passed" + (
        f" ({v['exporter_failed']} exporter failures)" if v.get("exporter_failed") else "") + (
        f"; median edgec/ORT {v['median_ratio']:.2f}x, worst {v['worst_ratio']:.2f}x"
        if "median_ratio" in v else "") for k, v in summary.items() if k != "int8_latency"]
    i8 = summary.get("int8_latency")
    if i8:
        sums.append(f"- INT8 latency: faster than edgec FP32 on {i8['faster_than_fp32']} of "
                    f"{i8['measured']} models; median INT8/FP32 {i8['median_int8_over_fp32']:.2f}x, "
                    f"worst {i8['worst_int8_over_fp32']:.2f}x" + (
                        f"; median edgec INT8 / ORT QDQ {i8['median_int8_over_ort_int8']:.2f}x"
                        if "median_int8_over_ort_int8" in i8 else ""))
    return "\n".join([f"{len(rows)} of {total} models run so far.", "", *sums, "",
                      *lines, "", machine])


def _markdown(rows, runs, total, m) -> str:
    """The table, the machine, and the earlier runs whose rows it holds."""
    machine = (f"Machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['flags'])}, "
               f"load average {m['loadavg_1m']:.2f}; untuned edgec builds, batch 1.")
    history = "\n".join(["Runs whose rows this table holds (each row's `ran_on` in the JSON "
                         "says which made it):"] + [f"- {r['date_utc']}: `{r['command']}`"
                                                    for r in runs[:-1]])
    return markdown(rows, summarize(rows), machine, total) + "\n\n" + history


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", help="classifier names (default: all of torchvision's)")
    p.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    p.add_argument("--max-gmacs", type=float, default=5.0)
    p.add_argument("--small-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--timeout", type=int, default=3600, help="seconds per model")
    p.add_argument("--out", default=os.path.join(RESULTS, "coverage"))
    p.add_argument("--fresh", action="store_true", help="redo models already in --out")
    p.add_argument("--merge", action="store_true",
                   help="rerun --steps for models already in --out, keeping their other steps")
    p.add_argument("--no-bn-recalibration", action="store_true",
                   help="keep the batch-norm statistics of the random init (see recalibrate_bn)")
    p.add_argument("--report", action="store_true",
                   help="rewrite the markdown from the JSON, running nothing")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--row-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        child(args)
        return 0
    from edgec.compiler.compare import machine_info
    from edgec.compiler.onnx_zoo import CASES

    from benchmarks.common import write_results

    from benchmarks.third_party_onnx import FILES

    names = args.models or ([f"onnx:{c}" for c in CASES] + [f"onnx:3p/{f}" for f in FILES]
                            + classifiers())
    done, runs, old = {}, [], {}
    if not args.fresh and os.path.exists(args.out + ".json"):
        with open(args.out + ".json", encoding="utf-8") as f:
            old = json.load(f)
        done = {r["model"]: r for r in old["rows"]}
        runs = old.get("runs") or [{"command": old.get("command"), "date_utc": old.get("date_utc")}]
    # the table may hold the rows of several runs (resumed, or --merge): each is listed
    runs = runs + [{"command": "python " + " ".join(sys.argv), "cpu": machine_info()["cpu"],
                    "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]
    total = len(set(names) | set(done) | set(
        [f"onnx:{c}" for c in CASES] + [f"onnx:3p/{f}" for f in FILES] + classifiers()))
    if args.report:  # only rewrite the markdown from the JSON, as its last run made it
        rows = [done[n] for n in done]
        md = _markdown(rows, runs[:-1], total, old.get("machine") or machine_info())
        with open(args.out + ".md", "w", encoding="utf-8") as f:
            f.write(f"Made by `{runs[-2]['command']}` on {runs[-2]['date_utc']}.\n\n{md}\n")
        return 0
    for name in names:
        if name in done and not args.merge:
            continue
        onnx_file = name.startswith("onnx:")  # one step: --merge redoes the row if named
        if args.merge and onnx_file and not args.models:
            continue
        row = _run_child(name, args)
        done[name] = merge(done.get(name), row, args.steps) if args.merge and not onnx_file \
            else row
        rows = [done[n] for n in names if n in done] + [r for n, r in done.items()
                                                        if n not in names]
        m = machine_info()
        write_results(args.out, {"rows": rows, "summary": summarize(rows), "machine": m,
                                 "runs": runs}, _markdown(rows, runs, total, m))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
