"""INT8 against FP32, untuned, interleaved in one process: edgec before/after its int8
depthwise kernel and output-channel padding, and ONNX Runtime FP32 / static QDQ INT8.

    python -m benchmarks.bench_int8_dw --models mobilenet_v2 resnet18

Engines (batch 1, random weights and inputs, seeded; ``--threads`` threads each):
- edgec FP32 (untuned: no tuning logs applied);
- edgec INT8 "plain" (``int8_depthwise="plain", int8_pad_out=False``: depthwise convs and
  convs whose output channels do not divide the dot-product block on Relax's plain int8
  conv, the path before issue #24's kernels);
- edgec INT8 "oc-pad" (``int8_depthwise="plain"``: output channels padded, depthwise plain);
- edgec INT8 (both: the default);
- ONNX Runtime FP32 and ONNX Runtime static QDQ INT8 (``quant_pre_process`` first, then
  ``quantize_static``: QDQ, per-channel S8 weights, U8 activations, reduce_range on CPUs
  without VNNI), calibrated on the same samples as edgec.

SQNR of each INT8 engine's outputs against its FP32 counterpart on held-out inputs.
Results: benchmarks/results/int8_dw.json and .md (with this command and the machine).
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import model_and_input, parse_args, scratch, write_results
from edgec.compiler.compare import Engine, compare, machine_info
from edgec.compiler.peers import edgec_runner, export_onnx, onnxruntime_qdq, onnxruntime_session
from edgec.compiler.tvm_compat import VirtualMachine, tensor, tvm
from edgec.passes.sensitivity import sqnr_db

# edgec INT8 variants: name -> the PipelineConfig fields of its build
VARIANTS = {
    "edgec int8 plain (before)": {"int8_depthwise": "plain", "int8_pad_out": False},
    "edgec int8 oc-pad": {"int8_depthwise": "plain", "int8_pad_out": True},
    "edgec int8 (after)": {"int8_depthwise": "kernel", "int8_pad_out": True},
}


def build(model, x, folder, tag, calib=None, fields=None):
    """An untuned edgec build with PipelineConfig ``fields``; (so path, seconds)."""
    import torch

    from edgec.compiler import PipelineConfig, compile

    out = os.path.join(folder, f"{tag}.so")
    start = time.perf_counter()
    config = PipelineConfig(target="host", int8=calib is not None, **(fields or {}),
                            **({"calib_samples": len(calib)} if calib is not None else {}))
    compile(model, (torch.from_numpy(x),), output=out, calib_data=calib, config=config)
    return out, time.perf_counter() - start


def edgec_outputs(so, xs):
    vm = VirtualMachine(tvm.runtime.load_module(so), tvm.cpu())
    outs = []
    for i in range(len(xs)):
        y = vm["main"](tensor(xs[i:i + 1]))
        outs.append((y[0] if not hasattr(y, "numpy") else y).numpy())
    return np.concatenate(outs)


def ort_outputs(path, xs):
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"input0": xs[i:i + 1]})[0] for i in range(len(xs))])


def run_model(name, args, folder):
    from edgec.targets import get_target

    model, x = model_and_input(name)
    rng = np.random.default_rng(1)
    calib = rng.standard_normal((args.calib, *x.shape[1:])).astype("float32")
    held = rng.standard_normal((4, *x.shape[1:])).astype("float32")
    builds = {"edgec fp32": build(model, x, folder, "fp32")}
    for tag, fields in VARIANTS.items():
        builds[tag] = build(model, x, folder, tag.split(" (")[0].replace(" ", "_"), calib, fields)
    onnx_fp32 = export_onnx(model, [x], os.path.join(folder, "fp32.onnx"))
    vnni = get_target("host").int8 == "vnni"
    onnx_q = onnxruntime_qdq(onnx_fp32, calib, os.path.join(folder, "qdq.onnx"),
                             reduce_range=not vnni)
    engines = [Engine(tag, edgec_runner(so, [x])) for tag, (so, _) in builds.items()]
    engines += [Engine("ORT fp32", onnxruntime_session(onnx_fp32, [x], args.threads)),
                Engine("ORT int8 QDQ", onnxruntime_session(onnx_q, [x], args.threads))]
    result = compare(engines, rounds=args.rounds, samples=args.samples, baseline="edgec fp32")
    ref = edgec_outputs(builds["edgec fp32"][0], held)
    ort_ref = ort_outputs(onnx_fp32, held)
    result["sqnr_db_vs_fp32"] = {tag: sqnr_db(edgec_outputs(builds[tag][0], held), ref)
                                 for tag in VARIANTS}
    result["sqnr_db_vs_fp32"]["ORT int8 QDQ"] = sqnr_db(ort_outputs(onnx_q, held), ort_ref)
    result["build_s"] = {tag: round(s, 1) for tag, (_, s) in builds.items()}
    return {"model": name, "input_shape": list(x.shape), "calib_samples": args.calib,
            "compare": result}


def markdown(row) -> str:
    r = row["compare"]
    e = r["engines"]
    fp = e["edgec fp32"]["median_ms"]
    lines = [f"### {row['model']} {'x'.join(map(str, row['input_shape']))}", "",
             "| engine | median ms | min ms | edgec fp32 / engine | SQNR vs FP32 dB | build s |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, s in e.items():
        sq = r["sqnr_db_vs_fp32"].get(name)
        lines.append(f"| {name} | {s['median_ms']:.2f} | {s['min_ms']:.2f} | "
                     f"{fp / s['median_ms']:.2f}x | {'' if sq is None else f'{sq:.1f}'} | "
                     f"{r['build_s'].get(name, '')} |")
    after, ortq = e["edgec int8 (after)"]["median_ms"], e["ORT int8 QDQ"]["median_ms"]
    before = e["edgec int8 plain (before)"]["median_ms"]
    lines += ["", f"edgec INT8 after vs before: {before / after:.2f}x faster; vs edgec FP32: "
              f"{fp / after:.2f}x; vs ONNX Runtime QDQ INT8: {ortq / after:.2f}x "
              f"(>1: edgec faster). Load average at the end: "
              f"{r['machine']['loadavg_1m']:.2f}."]
    return "\n".join(lines)


def main(argv=None):
    def extra(p):
        p.add_argument("--calib", type=int, default=16, help="calibration samples")

    args = parse_args(__doc__, argv, extra)
    args.models = [m for m in args.models if m != "mnist_cnn"] or ["mobilenet_v2"]
    # a folder per model: a library path loads once per process (dlopen hands back the
    # first model's library for a second file at the same path)
    rows = [run_model(m, args, scratch()) for m in args.models]
    m = machine_info()
    md = [markdown(r) for r in rows]
    md.append(f"Machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['flags'])}; load "
              f"average (1 min) {m['loadavg_1m']:.2f} at the end (the machine is shared with "
              f"other jobs); {args.threads} thread(s) per engine, batch 1, engines interleaved "
              f"({args.rounds} rounds x {args.samples} samples), untuned.")
    paths = write_results(args.out or "int8_dw", {"results": rows, "machine": m}, "\n\n".join(md))
    print("\n\n".join(md))
    print("wrote", *paths)


if __name__ == "__main__":
    main(sys.argv[1:])
