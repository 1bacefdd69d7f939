"""Coverage: does edgec take the models users bring? Every torchvision classifier, and ONNX files in other tools' forms.

For each classifier of ``torchvision.models.list_models(module=torchvision.models)``
(random seeded weights, batch-norm statistics recalibrated on random inputs so no
network's activations collapse to ~0, see ``recalibrate_bn``; batch 1, its default input
size; a model above --max-gmacs at that size runs at --small-size, listed as such):

- export: torch.export -> edgec compile (untuned) -> run; max |edgec - torch| relative to
  max |torch| <= 1e-4;
- onnx17 / onnx11: torch.onnx.export (legacy exporter) at that opset -> edgec compile ->
  run, checked the same way against ONNX Runtime on that file (an exporter failure is a
  row of its own, not hidden);
- prune: ``prune=0.3`` compiles and runs; MACs before and after;
- int8: 32 random calibration samples, compiles and runs; top-1 agreement with the FP32
  build on 32 other random inputs; conv/matmul layers left in FP32;
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
STEPS = ("export", "onnx17", "onnx11", "prune", "int8", "latency")
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
            import onnxruntime as ort

            path = os.path.join(folder, f"opset{opset}.onnx")
            try:
                torch.onnx.export(model, (x,), path, input_names=["x"], opset_version=opset,
                                  dynamo=False)
            except Exception as e:  # noqa: BLE001
                return {"ok": None, "exporter_failed": _error(e)}
            so = os.path.join(folder, f"opset{opset}.so")
            compile(path, output=so, config=PipelineConfig(**untuned))
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            peer = sess.run(None, {sess.get_inputs()[0].name: xn})[0]
            err = _rel(load(so)(xn)[0], peer)
            return {"ok": err <= TOL, "rel_err": err}
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
            noise = sum(float(((a - b) ** 2).sum()) for a, b in pairs)
            signal = sum(float((b ** 2).sum()) for _, b in pairs)
            out["sqnr_db"] = 10 * np.log10(signal / noise) if noise else float("inf")
        return out

    def latency():
        from edgec.compiler.compare import Engine, compare
        from edgec.compiler.peers import edgec_runner, onnxruntime_session

        path = os.path.join(folder, "opset17.onnx")
        if not os.path.exists(fp32_so):
            return {"ok": None, "note": "needs the export step"}
        if not os.path.exists(path):  # --steps export latency: the file, without its build
            torch.onnx.export(model, (x,), path, input_names=["x"], opset_version=17,
                              dynamo=False)
        res = compare([Engine("edgec", edgec_runner(fp32_so, [xn])),
                       Engine("onnxruntime", onnxruntime_session(path, [xn], os.cpu_count()))],
                      rounds=rounds, samples=3, quiet=True)
        e = res["engines"]
        return {"edgec_ms": e["edgec"]["median_ms"], "onnxruntime_ms": e["onnxruntime"]["median_ms"],
                "ratio": e["edgec"]["median_ms"] / e["onnxruntime"]["median_ms"]}

    step("export", export)
    step("onnx17", onnx(17))
    step("onnx11", onnx(11))
    step("prune", prune)
    step("int8", int8)
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

    import onnxruntime as ort

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
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        err = _rel(load(so)(x)[0], sess.run(None, {name: x})[0])
        step = {"ok": err <= TOL, "rel_err": err, "import_notes": manifest["import_notes"]}
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
            return (f"{s['ratio']:.2f}x ({s['edgec_ms']:.1f} / {s['onnxruntime_ms']:.1f} ms"
                    f"{load})")
        mark = "ok" if s.get("ok") else "**FAIL**"
        extra = ""
        if "rel_err" in s:
            extra = f" {s['rel_err']:.0e}"
        if key == "prune" and s.get("macs_before"):
            extra = f" {s['macs_after'] / s['macs_before']:.2f} MACs"
        if key == "int8" and "top1_agreement" in s:
            sqnr = f", {s['sqnr_db']:.0f} dB" if "sqnr_db" in s else ""
            extra = f" top-1 {s['top1_agreement']:.0%}{sqnr}, {s['layers_fp32']} fp32"
            if s.get("fp32_absmax", 1.0) < 1e-6:
                extra += " (FP32 logits ~0 at random init: agreement meaningless)"
        return f"{mark}{extra} ({s['seconds']:.0f} s)" if s.get("ok") is not None else "n/a"

    head = ["model", "input", "GMACs", *STEPS]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        size = "x".join(str(d) for d in r.get("input", [])[2:]) + (
            f" (from {r['reduced_from']})" if r.get("reduced_from") else "")
        cells = [r["model"], size, str(r.get("gmacs", ""))] + [cell(r, k) for k in STEPS]
        if r["model"].startswith("onnx:"):
            cells = [r["model"], size, "", cell(r, "onnx_file")] + [""] * (len(STEPS) - 1)
        if r.get("crashed"):
            cells[-1] = f"crashed: {r['crashed']}"
        lines.append("| " + " | ".join(cells) + " |")
    sums = [f"- {k}: {v['passed']} of {v['ran']} passed" + (
        f" ({v['exporter_failed']} exporter failures)" if v.get("exporter_failed") else "") + (
        f"; median edgec/ORT {v['median_ratio']:.2f}x, worst {v['worst_ratio']:.2f}x"
        if "median_ratio" in v else "") for k, v in summary.items()]
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
        if args.merge and name.startswith("onnx:"):
            continue
        row = _run_child(name, args)
        done[name] = merge(done.get(name), row, args.steps) if args.merge else row
        rows = [done[n] for n in names if n in done] + [r for n, r in done.items()
                                                        if n not in names]
        m = machine_info()
        write_results(args.out, {"rows": rows, "summary": summarize(rows), "machine": m,
                                 "runs": runs}, _markdown(rows, runs, total, m))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
