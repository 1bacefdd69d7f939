"""Instructions per inference on the emulated aarch64 board: edgec vs ONNX Runtime.

    python benchmarks/bench_emulated.py --models resnet18 mobilenet_v2 mnist_cnn \\
        --targets rpi4 rpi5 [--n 1] [--json]

Instruction counts under qemu-user, not time (compiler/deploy/icount.py, deploy/qemu_plugin):
no caches, no memory stalls, no frequency. Per target, qemu emulates the board's core
(rpi4: -cpu cortex-a72, no dot product; rpi5: cortex-a76 with SDOT/UDOT), so both engines'
run-time dispatch sees the board's features. Each engine runs one thread; a program runs
the model once, then N and then 2N more times, and (count(2N) - count(N)) / N is one
inference: loading, graph optimisation, packing and start-up are excluded. edgec_run is
counted whole (one thread, repeats exactly); ONNX Runtime keeps a helper thread whose
start-up work varies by millions of instructions from run to run and does no inference
work (intra_op_num_threads=1 runs every kernel on the caller), so its script marks a
window around the N runs and the calling thread is counted there.

edgec: FP32 and INT8 builds for the target (untuned unless tuning_logs/ has the target),
run by deploy/cpp's edgec_run cross-compiled for aarch64. ONNX Runtime: the aarch64 wheel
of the host's version, on the board's Python, FP32 (ORT_ENABLE_ALL) and static QDQ INT8
(quant_pre_process, then per-channel S8 weights, U8 activations); both INT8 forms
calibrate on the same 16 random images (random weights).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import numpy as np

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import (NAMES, RESULTS, edgec_build, model_and_input, scratch,
                               write_results)
from edgec.compiler.deploy import icount
from edgec.compiler.deploy import board
from edgec.targets import get_target

TARGETS = ("rpi4", "rpi5")
ENGINES = ("edgec_fp32", "ort_fp32", "edgec_int8", "ort_int8")
ORT_RUN = f"""
import os
import sys
import numpy as np
import onnxruntime as ort


def mark(m):  # the plugin's counting window (compiler/deploy/icount.py); lseek fails: EBADF
    try:
        os.lseek(-1, m, 0)
    except OSError:
        pass


model, x, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
o = ort.SessionOptions()
o.intra_op_num_threads = o.inter_op_num_threads = 1
o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
o.add_session_config_entry("session.intra_op.allow_spinning", "0")
s = ort.InferenceSession(model, o, providers=["CPUExecutionProvider"])
feed = {{s.get_inputs()[0].name: np.load(x)}}
s.run(None, feed)
mark({icount.MARK_START:#x})
for _ in range(k):
    s.run(None, feed)
mark({icount.MARK_STOP:#x})
"""


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ort_wheel(py: str) -> str:
    """ONNX Runtime's aarch64 wheel, the host's version, unpacked for the board's Python."""
    import onnxruntime

    ver = onnxruntime.__version__
    folder = os.path.join(icount.cache_dir(), f"onnxruntime-{ver}-aarch64-cp{py.replace('.', '')}")
    if os.path.isdir(os.path.join(folder, "onnxruntime")):
        return folder
    plats = [a for p in ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64",
                         "manylinux2014_aarch64") for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                    folder + ".partial", *plats, "--python-version", py, "--implementation",
                    "cp", "--only-binary=:all:", f"onnxruntime=={ver}"], check=True)
    os.replace(folder + ".partial", folder)
    return folder


def calibration(x) -> np.ndarray:
    """The 16 random images both engines' INT8 forms calibrate on."""
    return np.random.default_rng(1).standard_normal((16, *x.shape[1:])).astype("float32")


def build_edgec(model, x, target: str, precision: str, folder: str):
    """One edgec artifact as this benchmark counts it (``precision`` fp32 or int8; tuned
    only where tuning_logs/ has the target); returns (.so path, manifest). The committed
    baseline's CI check (tests/test_icount_baseline.py) builds through here too."""
    calib = calibration(x)
    extra = {"calib_data": calib, "int8": True, "calib_samples": len(calib)} \
        if precision == "int8" else {}
    so, manifest, _ = edgec_build(model, x, folder, f"{target}-{precision}", "auto",
                                  target=target, **extra)
    return so, manifest


def build(name: str, targets, folder: str) -> dict:
    """Every artifact of one model: edgec FP32/INT8 per target, ORT FP32/INT8 once."""
    from edgec.compiler.peers import export_onnx, onnxruntime_qdq  # torch: only where models are built

    model, x = model_and_input(name)
    np.save(os.path.join(folder, "x.npy"), x)
    onnx32 = export_onnx(model, [x], os.path.join(folder, "model.onnx"))
    files = {"x": os.path.join(folder, "x.npy"), "shape": list(x.shape), "ort_fp32": onnx32,
             "ort_int8": onnxruntime_qdq(onnx32, calibration(x), os.path.join(folder, "q.onnx"))}
    for t in targets:
        for tag in ("fp32", "int8"):
            say(f"{name}: edgec {tag} for {t}")
            so, manifest = build_edgec(model, x, t, tag, folder)
            files[(t, f"edgec_{tag}")] = so
            files[(t, f"tuning_{tag}")] = manifest.get("tuning", {}).get("summary")
    return files


def count_model(name: str, files: dict, targets, n: int, board_root: str, ort_dir: str,
                runner: str, script: str, kernels: bool = False) -> list:
    rows = []
    for t in targets:
        cpu = get_target(t).tvm["mcpu"]
        root = icount.counting_root(board_root, cpu)
        argv = {"edgec_fp32": icount.runner_argv(runner, files[(t, "edgec_fp32")], [files["x"]]),
                "edgec_int8": icount.runner_argv(runner, files[(t, "edgec_int8")], [files["x"]])}
        py = os.path.join(root, "usr/bin/python3")
        for e in ("ort_fp32", "ort_int8"):
            argv[e] = (lambda model: lambda k: [py, script, model, files["x"], k])(files[e])
        for engine in ENGINES:
            say(f"{name} {t} ({cpu}): counting {engine}")
            start = time.time()
            env = {"PYTHONPATH": ort_dir} if engine.startswith("ort") else {}
            r = icount.per_inference(argv[engine], n, root, cpu=cpu, env=env)
            tuning = files.get((t, "tuning_" + engine.split("_")[1])) if "edgec" in engine else None
            row = {"model": name, "target": t, "qemu_cpu": cpu, "engine": engine,
                   "input_shape": files["shape"], **r, "tuning": tuning}
            if kernels and engine.startswith("edgec"):  # one more run, each kernel marked
                row["kernels"] = icount.kernel_counts(runner, files[(t, engine)], [files["x"]],
                                                      root, cpu=cpu)
            rows.append({**row, "emulation_s": round(time.time() - start, 1)})
            say(f"  {r['total'] / 1e6:.2f} M instructions/inference, MAC share "
                f"{r['mac_share']:.3f}")
    return rows


def ratios(rows: list) -> dict:
    """edgec / ONNX Runtime instructions per inference, per model, target and precision."""
    by = {(r["model"], r["target"], r["engine"]): r["total"] for r in rows}
    out = {}
    for (m, t, e), v in by.items():
        if e.startswith("edgec"):
            peer = by.get((m, t, e.replace("edgec", "ort")))
            if peer:
                out[f"{m}/{t}/{e.split('_')[1]}"] = v / peer
    return out


def markdown(rows: list, ratio: dict, data: dict) -> str:
    lines = [f"**{icount.LABEL}.** One thread per engine; per inference = (count(2N) - "
             f"count(N)) / N, N = {data['n']}, after a first call: loading and start-up are "
             "excluded. edgec_run is counted whole; ONNX Runtime on its calling thread inside "
             "a window marked around the runs (a helper thread's start-up work varies by "
             "millions of instructions from run to run). MAC share: FMLA/FMLS/FMADD, "
             "MLA/MLS/SMLAL/UMLAL, SDOT/UDOT over all instructions (SMULL + SADDW pairs and "
             "scalar MADD are not counted as MACs).", "",
             "| model | target (qemu cpu) | engine | instructions / inference (M) | MAC share "
             "| fp_mac | int_mac | dot | loads | stores | edgec / ORT |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        c, prec = r["classes"], r["engine"].split("_")[1]
        rat = ratio.get(f"{r['model']}/{r['target']}/{prec}") if "edgec" in r["engine"] else None
        lines.append(f"| {r['model']} | {r['target']} ({r['qemu_cpu']}) | {r['engine']} | "
                     f"{r['total'] / 1e6:.2f} | {r['mac_share']:.3f} | "
                     + " | ".join(f"{c[k] / 1e6:.2f}" for k in ("fp_mac", "int_mac", "dot",
                                                                 "load", "store"))
                     + f" | {'' if rat is None else f'{rat:.2f}x'} |")
    tuning = sorted({f"{r['model']} {r['target']} {r['engine']}: {r['tuning']}"
                     for r in rows if r["tuning"]})
    lines += kernel_tables(rows, data.get("top_kernels", 8))
    lines += ["", "Class counts in millions per inference.", "", "edgec tuning: " +
              "; ".join(tuning), "", f"{data['qemu']}; ONNX Runtime {data['onnxruntime']} "
              f"(aarch64 wheel). Host CPU: {data['host_cpu']}; counts do not depend on it."]
    return "\n".join(lines)


def kernel_tables(rows: list, top: int) -> list:
    """Per edgec build counted with --kernels: its largest kernels (edgec_run
    --mark-kernels: one call, each PrimFunc between the counter's marks)."""
    lines = []
    for r in rows:
        if not r.get("kernels"):
            continue
        ks, inside = r["kernels"], sum(k["total"] for k in r["kernels"])
        lines += ["", f"**{r['model']} {r['target']} {r['engine']}**: {len(ks)} kernels hold "
                  f"{inside / 1e6:.2f} M of {r['total'] / 1e6:.2f} M instructions (the rest: the "
                  f"VM between launches); the {min(top, len(ks))} largest:", "",
                  "| kernel | launches | instructions (M) | share | MAC share | loads (M) "
                  "| stores (M) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for k in ks[:top]:
            c = k["classes"]
            mac = sum(c[m] for m in icount.MAC_CLASSES)
            lines.append(f"| {k['kernel']} | {k['launches']} | {k['total'] / 1e6:.3f} | "
                         f"{k['total'] / r['total']:.1%} | {mac / max(k['total'], 1):.3f} | "
                         f"{c['load'] / 1e6:.3f} | {c['store'] / 1e6:.3f} |")
    return lines


def host_cpu() -> str:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        return next((line.split(":", 1)[1].strip() for line in f
                     if line.startswith("model name")), "unknown")


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(NAMES), choices=list(NAMES))
    p.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    p.add_argument("--n", type=int, default=1, help="inferences N of the N vs 2N runs")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--out", default="emulated_icount", help="results/<stem>.json and .md")
    p.add_argument("--render", action="store_true", help="only rewrite the .md from the .json")
    p.add_argument("--kernels", type=int, default=0, metavar="K",
                   help="also count each edgec kernel (one more run per build) and list the K "
                        "largest per build")
    args = p.parse_args(argv)
    if args.render:
        return render(args.out)
    board_root = board.default_dir()
    board.prepare(board_root)
    py = re.search(r"python(\d+\.\d+)", board.PY_SITE).group(1)
    ort_dir, runner = ort_wheel(py), icount.build_runner(board_root, board.PY_SITE)
    folder = scratch()
    script = os.path.join(folder, "ort_run.py")
    with open(script, "w", encoding="utf-8") as f:
        f.write(ORT_RUN)
    rows = []
    for name in args.models:  # results rewritten after each model: a stopped run keeps them
        files = build(name, args.targets, folder)
        rows += count_model(name, files, args.targets, args.n, board_root, ort_dir, runner, script,
                            kernels=args.kernels > 0)
        data, md = report(rows, args)
        paths = write_results(args.out, data, md)
        say("wrote " + " ".join(paths))
    print(json.dumps(data, indent=2) if args.json else md)


def report(rows: list, args) -> tuple[dict, str]:
    import onnxruntime

    ratio = ratios(rows)
    data = {"label": icount.LABEL, "host_cpu": host_cpu(), "n": args.n, "qemu": _qemu_version(),
            "top_kernels": args.kernels,
            "onnxruntime": onnxruntime.__version__, "models": sorted({r["model"] for r in rows}),
            "rows": rows, "edgec_over_ort": ratio}
    return data, markdown(rows, ratio, data)


def render(stem: str) -> None:
    """Rewrite ``results/<stem>.md`` from its JSON (the table's layout changed, not the data)."""
    js = stem if os.path.dirname(stem) else os.path.join(RESULTS, stem)
    with open(js + ".json", encoding="utf-8") as f:
        data = json.load(f)
    md = markdown(data["rows"], data["edgec_over_ort"], data)
    with open(js + ".md", "w", encoding="utf-8") as f:
        f.write(f"Made by `{data['command']}` on {data['date_utc']}.\n\n{md}\n")


def _qemu_version() -> str:
    out = subprocess.run([icount.check_qemu(), "--version"], capture_output=True, text=True)
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


if __name__ == "__main__":
    main()
