"""Weight prepacking: the tuned plain build vs the tuned prepacking build, one run.

    python benchmarks/bench_prepack.py --models resnet18 --rounds 5 --samples 3

Both builds apply the same log (the host's base target's, or --log-dir): the plain
kernels their plain records, the prepacking kernels the records tuned with
``edgec tune --prepack-weights``. PyTorch eager and ONNX Runtime run alongside.
Never run it while a tune (or anything heavy) runs.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_tuning import tuning_cost
from benchmarks.common import (Engine, diff_text, edgec_build, edgec_runner, max_abs_diff,
                               model_and_input, parse_args, peer_engines, ratios,
                               report_models, run_compare, scratch)


def bench_model(name: str, args) -> dict:
    from edgec.compiler.tune.database import log_dir_for
    from edgec.targets import get_target

    model, x = model_and_input(name)
    folder = scratch()
    log_dir = args.log_dir or log_dir_for(get_target("host"))
    plain, plain_manifest, _ = edgec_build(model, x, folder, "plain", log_dir, conv_layout="NCHW")
    packed, manifest, _ = edgec_build(model, x, folder, "prepacked", log_dir, prepack_weights=True,
                                      conv_layout="NCHW")
    engines = peer_engines(model, x, args.threads, folder)
    engines += [Engine("edgec_plain", edgec_runner(plain, [x])),
                Engine("edgec_prepacked", edgec_runner(packed, [x]))]
    result = run_compare(engines, args, baseline="edgec_plain")
    record = next(p for p in manifest["passes"] if p["name"] == "prepack_weights")
    return {"model": name, "input_shape": list(x.shape), "prepack": record,
            "tuning": {"plain": plain_manifest["tuning"]["summary"],
                       "prepacked": manifest["tuning"]["summary"]},
            "prepack_tuning_cost": tuning_cost(log_dir, f"benchmarks.models:{name} (prepacked)"),
            "max_abs_diff_vs_torch": max_abs_diff(packed, model, x),
            "ratios": ratios(result, "edgec_prepacked",
                             peers=("edgec_plain", "pytorch_eager", "onnxruntime")),
            "compare": result}


def main(argv=None):
    args = parse_args(__doc__, argv, lambda p: p.add_argument(
        "--log-dir", help="tuning log to apply (default: the host's base target's)"))
    rows = [bench_model(name, args) for name in args.models]
    report_models(rows, args, "prepack", lambda r: (
        ", ".join(f"{k} = {v:.2f}" for k, v in r["ratios"].items())
        + f"; prepack {r['prepack']}; plain: {r['tuning']['plain']}; "
        f"prepacked: {r['tuning']['prepacked']}; " + diff_text(r["max_abs_diff_vs_torch"])))


if __name__ == "__main__":
    main()
