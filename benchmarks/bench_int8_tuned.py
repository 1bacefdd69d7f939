"""INT8 vs FP32 edgec (untuned and tuned), ONNX Runtime FP32 and static INT8, PyTorch eager: one run.

    python benchmarks/bench_int8_tuned.py --models resnet18 mobilenet_v2 efficientnet_lite0 \
        --rounds 5 --samples 3

edgec_fp32 applies the host base target's tuning log (or --log-dir) where it has records,
as a user's default build does; edgec_int8_untuned applies none (what most users run);
edgec_int8 applies the same log's INT8 records (``edgec tune MODEL --int8``); with no INT8
records in the log it equals the untuned build and is left out. ONNX Runtime's INT8 model
is its fastest static configuration for this CPU: ``quant_pre_process`` first, as its docs
ask, then QDQ, per-channel weights, uint8 activations, reduce_range where there is no VNNI.
Both INT8 models calibrate on the same random images (the models have random weights).
efficientnet_lite0 needs ``pip install -e '.[bench]'`` (timm). Never run it while a tune
(or anything heavy) runs.
"""
from __future__ import annotations

import os
import sys

import numpy as np

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import (Engine, edgec_build, edgec_runner, model_and_input, parse_args,
                               peer_engines, ratios, report_models, run_compare, scratch)


def _sqnr(fp32_so, int8_so, xs) -> float:
    from edgec.compiler.deploy.runtime import load
    from edgec.passes.sensitivity import sqnr_db

    fp, q = load(fp32_so), load(int8_so)
    return sqnr_db(np.concatenate([q(x[None])[0] for x in xs]),
                   np.concatenate([fp(x[None])[0] for x in xs]))


def bench_model(name: str, args) -> dict:
    from edgec.compiler.peers import onnxruntime_qdq, onnxruntime_session
    from edgec.compiler.tune.database import log_dir_for
    from edgec.targets import get_target

    model, x = model_and_input(name)
    calib = np.random.default_rng(1).standard_normal((args.calib, *x.shape[1:])).astype("float32")
    folder = scratch()
    host = get_target("host")
    log_dir = args.log_dir or log_dir_for(host)
    fp32, fp_manifest, fp_s = edgec_build(model, x, folder, "fp32", log_dir)
    kw = dict(calib_data=calib, int8=True, calib_samples=len(calib))
    untuned, u_manifest, u_s = edgec_build(model, x, folder, "int8_untuned", None, **kw)
    int8, q_manifest, q_s = edgec_build(model, x, folder, "int8", log_dir, **kw)
    tuned = _tuned_tasks(q_manifest) > 0
    engines = peer_engines(model, x, args.threads, folder)
    qdq = onnxruntime_qdq(os.path.join(folder, "model.onnx"), calib,
                          os.path.join(folder, "qdq.onnx"), reduce_range=host.int8 != "vnni")
    engines += [Engine("onnxruntime_int8", onnxruntime_session(qdq, [x], args.threads)),
                Engine("edgec_fp32", edgec_runner(fp32, [x])),
                Engine("edgec_int8_untuned", edgec_runner(untuned, [x]))]
    if tuned:
        engines.append(Engine("edgec_int8", edgec_runner(int8, [x])))
    result = run_compare(engines, args, baseline="edgec_fp32")
    quant = next(p for p in u_manifest["passes"] if p["name"] == "quantize_int8")
    best = "edgec_int8" if tuned else "edgec_int8_untuned"
    peers = ("edgec_fp32", "onnxruntime_int8", "onnxruntime", "pytorch_eager")
    return {"model": name, "input_shape": list(x.shape), "calib_samples": len(calib),
            "int8_kernel": quant["kernel"], "layers_int8": quant["layers_int8"],
            "tuning": {"fp32": fp_manifest["tuning"]["summary"],
                       "int8": q_manifest["tuning"]["summary"]},
            "compile_seconds": {"fp32": fp_s, "int8_untuned": u_s, "int8": q_s},
            "weights_bytes": {"fp32": fp_manifest["weights_bytes"],
                              "int8": u_manifest["weights_bytes"],
                              "ratio": u_manifest["weights_bytes"] / fp_manifest["weights_bytes"]},
            "sqnr_db_int8_vs_fp32": _sqnr(fp32, untuned, calib[:4]),
            "sqnr_db_onnxruntime_int8_vs_fp32": _sqnr_onnx(
                os.path.join(folder, "model.onnx"), qdq, calib[:4]),
            "ratios": ratios(result, "edgec_int8_untuned", peers=peers),
            "ratios_tuned": ratios(result, best, peers=peers) if tuned else None,
            "compare": result}


def _tuned_tasks(manifest) -> int:
    """How many of a build's tasks took a schedule from the tuning log."""
    tuning = manifest["tuning"]
    return tuning.get("tuned", 0) + tuning.get("transferred", 0)


def _sqnr_onnx(fp32_onnx: str, int8_onnx: str, xs) -> float:
    """ONNX Runtime's INT8 logits against its FP32 logits on the same inputs."""
    import onnxruntime as ort
    from edgec.passes.sensitivity import sqnr_db

    fp, q = (ort.InferenceSession(p, providers=["CPUExecutionProvider"])
             for p in (fp32_onnx, int8_onnx))
    name = fp.get_inputs()[0].name
    return sqnr_db(np.concatenate([q.run(None, {name: x[None]})[0] for x in xs]),
                   np.concatenate([fp.run(None, {name: x[None]})[0] for x in xs]))


def _summary(r) -> str:
    w = r["weights_bytes"]
    speed = ", ".join(f"{k} = {v:.2f}" for k, v in r["ratios"].items())
    c = r.get("compile_seconds") or {}
    build = (f" Compile: FP32 {c['fp32']:.0f} s, INT8 {c['int8_untuned']:.0f} s "
             f"({c['int8_untuned'] / c['fp32']:.2f}x)." if c else "")
    onnx_sqnr = r.get("sqnr_db_onnxruntime_int8_vs_fp32")
    onnx_sqnr = f", ONNX Runtime's {onnx_sqnr:.1f} dB" if onnx_sqnr is not None else ""
    return (f"{speed}.{build} Weights {w['fp32']:,} -> {w['int8']:,} bytes ({w['ratio']:.3f}x); "
            f"SQNR of the INT8 logits vs FP32 {r['sqnr_db_int8_vs_fp32']:.1f} dB{onnx_sqnr} "
            f"({r['calib_samples']} calibration images, {r['layers_int8']} layers INT8, "
            f"kernels {r['int8_kernel']}). FP32: {r['tuning']['fp32']}. "
            f"INT8: {r['tuning']['int8']}.")


def main(argv=None):
    def extra(p):
        p.add_argument("--log-dir", help="tuning log to apply (default: the host's base target's)")
        p.add_argument("--calib", type=int, default=16, help="calibration images (default 16)")

    args = parse_args(__doc__, argv, extra)
    rows = [bench_model(name, args) for name in args.models]
    report_models(rows, args, "int8_tuned", _summary)


if __name__ == "__main__":
    main()
