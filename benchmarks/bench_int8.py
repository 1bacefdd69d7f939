"""INT8 vs FP32, end to end, on this machine: accuracy (a trained MNIST CNN) and speed.

    python benchmarks/bench_int8.py --out int8.json            # MNIST CNN
    python benchmarks/bench_int8.py --model resnet18 --calib 8   # a torchvision model

Accuracy: FP32 vs PTQ (minmax, percentile, entropy) vs QAT, all as built .so files.
Speed (batch 1, interleaved rounds): edgec FP32 and INT8 (untuned: tuning logs are
not applied here), edgec compiling ONNX Runtime's QDQ model, ORT FP32 and ORT's static
INT8 QDQ (per-channel, u8 activations, reduce_range on CPUs without VNNI), torch eager.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile

import numpy as np
import torch

from edgec.compiler.api import compile as compile_model
from edgec.compiler.compare import Engine, compare, machine_info, markdown_table
from edgec.compiler.config import PipelineConfig
from edgec.compiler.peers import (edgec_runner, export_onnx, onnxruntime_qdq,
                                  onnxruntime_session, torch_eager)
from edgec.compiler.deploy.runtime import load
from edgec.passes.sensitivity import sqnr_db


def logits(so, xs):
    lib = load(so)
    return np.concatenate([lib(xs[i:i + 1])[0] for i in range(len(xs))])


def accuracy_table(model, ds, work, n_test):
    """Top-1 of FP32, PTQ (3 methods) and QAT .so files on the MNIST test split."""
    from edgec.compiler.train.fit import accuracy, fit
    from edgec.compiler.train.qat import prepare_qat
    from edgec.passes.quant_scheme import scheme_for_target
    from edgec.targets import get_target

    x, y = ds.test.x[:n_test], ds.test.y[:n_test]
    ex = torch.from_numpy(x[:1])
    calib = ds.train.x[:256]
    rows = {}
    compile_model(model, ex, config=PipelineConfig(), output=f"{work}/fp32.so")
    ref = logits(f"{work}/fp32.so", x)
    rows["fp32"] = accuracy(ref, y)
    for method in ("minmax", "percentile", "entropy"):
        so = f"{work}/ptq_{method}.so"
        compile_model(model, ex, config=PipelineConfig(int8=True, calib_method=method),
                      output=so, calib_data=calib)
        out = logits(so, x)
        rows[f"int8 PTQ {method}"] = accuracy(out, y)
        rows[f"agreement {method} %"] = float((out.argmax(1) == ref.argmax(1)).mean() * 100)
    student = copy.deepcopy(model)
    qat = prepare_qat(student, scheme_for_target(get_target("host")), calib)
    fit(student, ds.train, epochs=1, lr=3e-4, quiet=True)
    qat.finish(f"{work}/qat.json")
    compile_model(student, ex, config=PipelineConfig(int8=True, int8_scales=f"{work}/qat.json"),
                  output=f"{work}/qat.so")
    rows["int8 QAT (1 epoch)"] = accuracy(logits(f"{work}/qat.so", x), y)
    return rows


def speed(model, x, calib, work, rounds):
    """Interleaved timing of every engine on one input; returns compare()'s result."""
    from edgec.targets import get_target

    ex = torch.from_numpy(x)
    fp = compile_model(model, ex, config=PipelineConfig(), output=f"{work}/fp32.so")
    q = compile_model(model, ex, config=PipelineConfig(int8=True, calib_samples=len(calib)),
                      output=f"{work}/int8.so", calib_data=calib)
    onnx_fp32 = export_onnx(model, [x], f"{work}/fp32.onnx")
    vnni = get_target("host").int8 == "vnni"
    onnx_q = onnxruntime_qdq(onnx_fp32, calib, f"{work}/qdq.onnx", reduce_range=not vnni,
                             pre_process=False)  # (as this benchmark's committed results)
    qdq = compile_model(onnx_q, config=PipelineConfig(), output=f"{work}/qdq.so")
    engines = [Engine("edgec fp32 (untuned)", edgec_runner(f"{work}/fp32.so", [x])),
               Engine("edgec int8 (untuned)", edgec_runner(f"{work}/int8.so", [x])),
               Engine("edgec from ORT QDQ (untuned)", edgec_runner(f"{work}/qdq.so", [x])),
               Engine("ORT fp32", onnxruntime_session(onnx_fp32, [x])),
               Engine("ORT int8 QDQ", onnxruntime_session(onnx_q, [x])),
               Engine("torch eager fp32", torch_eager(model, [x]))]
    result = compare(engines, rounds=rounds)
    result["weights_bytes"] = {"fp32": fp["weights_bytes"], "int8": q["weights_bytes"],
                               "ratio": q["weights_bytes"] / fp["weights_bytes"],
                               "qdq_int8": qdq["weights_bytes"]}
    ref = logits(f"{work}/fp32.so", calib[:4])
    result["sqnr_db_int8_vs_fp32"] = sqnr_db(logits(f"{work}/int8.so", calib[:4]), ref)
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mnist", help="mnist, or a torchvision name (resnet18...)")
    p.add_argument("--calib", type=int, default=64, help="calibration samples (speed part)")
    p.add_argument("--test", type=int, default=1000, help="MNIST test samples for accuracy")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out", help="write the results JSON here")
    args = p.parse_args()
    out = {"machine": machine_info()}
    with tempfile.TemporaryDirectory() as work:
        if args.model == "mnist":
            from edgec.compiler.data import mnist
            from edgec.compiler.train.fit import fit
            from edgec.compiler.zoo import mnist_cnn

            ds = mnist(0)
            model = mnist_cnn(0)
            fit(model, ds.train, epochs=2, lr=2e-3, quiet=True)
            out["accuracy"] = accuracy_table(model, ds, work, args.test)
            print(json.dumps(out["accuracy"], indent=2))
            x, calib = ds.test.x[:1], ds.train.x[:args.calib]
        else:
            from edgec.compiler.zoo import torchvision_model

            model = torchvision_model(args.model)
            rng = np.random.default_rng(0)
            calib = rng.standard_normal((args.calib, 3, 224, 224)).astype("float32")
            x = calib[:1]
        os.makedirs(f"{work}/speed", exist_ok=True)
        out["speed"] = speed(model, x, calib, f"{work}/speed", args.rounds)
    print(markdown_table(out["speed"], f"{args.model}, batch 1"))
    print("weights:", out["speed"]["weights_bytes"], "SQNR int8 vs fp32 (dB):",
          round(out["speed"]["sqnr_db_int8_vs_fp32"], 1))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
