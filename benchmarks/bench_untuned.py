"""Untuned edgec vs PyTorch eager and ONNX Runtime, batch 1, on this machine.

    python -m benchmarks.bench_untuned [--models resnet18 mobilenet_v2 mnist_cnn]

Engines run in interleaved rounds (compiler/compare.py); writes
benchmarks/results/untuned-<models>.json and .md with the command line.
``edgec_untuned``: edgec's defaults with no tuning log (NCHWc: the blocked convs get the
heuristic register tile); ``tvm_default_nchw``: the convs as imported on TVM's default
schedules, far slower than both peers: the baseline tuning (benchmarks/bench_tuning.py)
is measured against. Results made before 2026-11-25 have only the second, then named
``edgec_untuned`` (NCHW was the default).
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import (Engine, diff_text, edgec_build, edgec_runner, max_abs_diff,
                               model_and_input, parse_args, peer_engines, ratios,
                               report_models, run_compare, scratch)


def bench_model(name: str, args) -> dict:
    model, x = model_and_input(name)
    folder = scratch()
    so, manifest, build_s = edgec_build(model, x, folder, "untuned", None)
    plain, _, _ = edgec_build(model, x, folder, "tvm_default", None, conv_layout="NCHW")
    engines = peer_engines(model, x, args.threads, folder)
    engines.append(Engine("edgec_untuned", edgec_runner(so, [x])))
    engines.append(Engine("tvm_default_nchw", edgec_runner(plain, [x])))
    result = run_compare(engines, args)
    return {"model": name, "input_shape": list(x.shape), "build_s": round(build_s, 1),
            "max_abs_diff_vs_torch": max_abs_diff(so, model, x),
            "ratios": ratios(result, "edgec_untuned"), "compare": result}


def main(argv=None):
    args = parse_args(__doc__, argv)
    rows = [bench_model(name, args) for name in args.models]
    report_models(rows, args, "untuned", lambda r: ", ".join(
        f"{k} = {v:.2f}" for k, v in r["ratios"].items()) + "; " + diff_text(r["max_abs_diff_vs_torch"]))


if __name__ == "__main__":
    main()
