"""Tuned edgec vs untuned edgec, PyTorch eager and ONNX Runtime, batch 1, on this machine.

    python -m benchmarks.bench_tuning [--models resnet18 mobilenet_v2 mnist_cnn] [--log-dir DIR]
        [--conv-layout NCHWc] [--target x86-avx2]

Tuned builds apply the committed log of the target (default host: its base target,
tuning_logs/x86-avx2 on AVX2 machines, x86-avx512-vnni on AVX-512 + VNNI ones; --target
x86-avx2 on an AVX-512 machine times the portable target's code there); results go to
results/tuned-<that target>-<models>[-nchwc].{json,md}. ``edgec_tuned`` uses
``--conv-layout``; with NCHWc the tuned plain-NCHW build runs alongside as
``edgec_tuned_nchw`` (when the log has a record for each of its tasks); ``edgec_untuned``
is TVM's default schedules in NCHW. Reports latency ratios, % of this CPU's FP32 peak,
and the tuning cost recorded in the log (trials, wall time, trials/minute, seconds per trial).
Never run it while a tune (or anything heavy) runs: contention ruins the numbers.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import (Engine, diff_text, edgec_build, edgec_runner, machine_line,
                               markdown_table, max_abs_diff, model_and_input, peer_engines,
                               parse_args, ratios, run_compare, scratch, write_results)
from benchmarks.peak import fp32_peak, model_flops


def tuning_cost(log_dir: str, label: str) -> dict:
    """Trials and wall time the log's runs spent on ``label`` (and on the whole log)."""
    from edgec.compiler.tune.database import read_meta

    runs = (read_meta(log_dir) or {}).get("runs", [])
    mine = [r for r in runs if r.get("model") == label]
    trials, wall = sum(r["trials"] for r in mine), sum(r["wall_s"] for r in mine)
    return {"trials": trials, "wall_s": round(wall, 1),
            "trials_per_min": round(60 * trials / wall, 1) if wall else None,
            "s_per_trial": round(wall / trials, 2) if trials else None,
            "log_trials": sum(r["trials"] for r in runs),
            "log_wall_s": round(sum(r["wall_s"] for r in runs), 1)}


def bench_model(name: str, args, peak: dict, log_dir: str) -> dict:
    model, x = model_and_input(name)
    folder = scratch()
    untuned, _, _ = edgec_build(model, x, folder, "untuned", None, target=args.target,
                                conv_layout="NCHW")  # TVM's default schedules
    tuned, manifest, build_s = edgec_build(model, x, folder, "tuned", log_dir, target=args.target,
                                           conv_layout=args.conv_layout)
    engines = peer_engines(model, x, args.threads, folder)
    engines += [Engine("edgec_untuned", edgec_runner(untuned, [x])),
                Engine("edgec_tuned", edgec_runner(tuned, [x]))]
    nchw_note = None
    if args.conv_layout != "NCHW":
        plain, plain_manifest, _ = edgec_build(model, x, folder, "tuned_nchw", log_dir,
                                               target=args.target, conv_layout="NCHW")
        left = plain_manifest["tuning"].get("default", 0)
        if not left:
            engines.append(Engine("edgec_tuned_nchw", edgec_runner(plain, [x])))
        else:  # the log lacks NCHW records for the model: its convs would run untuned
            nchw_note = (f"no edgec_tuned_nchw: {left} of the NCHW build's tasks have no "
                         f"record in {os.path.basename(log_dir)}")
    result = run_compare(engines, args)
    flops = model_flops(model, x)
    tuned_ms = result["engines"]["edgec_tuned"]["median_ms"]
    label = f"benchmarks.models:{name}" + ("" if args.conv_layout == "NCHW"
                                           else f" ({args.conv_layout})")
    return {"model": name, "input_shape": list(x.shape), "tuning": manifest["tuning"],
            "conv_layout": args.conv_layout,
            "tuned_build_s": round(build_s, 1), "max_abs_diff_vs_torch": max_abs_diff(tuned, model, x),
            "gflop": flops / 1e9, "tuned_gflops": flops / tuned_ms / 1e6,
            "tuned_pct_of_peak": 100 * flops / tuned_ms / 1e6 / peak["gflops"],
            "onnxruntime_pct_of_peak": 100 * flops / result["engines"]["onnxruntime"]["median_ms"]
            / 1e6 / peak["gflops"],
            "ratios": dict(ratios(result, "edgec_tuned", peers=("pytorch_eager", "onnxruntime",
                                                                "edgec_tuned_nchw")),
                           speedup_tuned_over_untuned=result["engines"]["edgec_untuned"]["median_ms"]
                           / tuned_ms),
            "tuning_cost": tuning_cost(log_dir, label), "nchw_note": nchw_note,
            "compare": result}


def _markdown(rows, peak, threads) -> str:
    md = []
    for r in rows:
        md.append(markdown_table(r["compare"], f"{r['model']} {'x'.join(map(str, r['input_shape']))}"))
        c = r["tuning_cost"]
        md.append(f"\nedgec_tuned: conv layout {r['conv_layout']}; "
                  + ", ".join(f"{k} = {v:.2f}" for k, v in r["ratios"].items())
                  + f"; {r['tuned_gflops']:.1f} GFLOP/s = {r['tuned_pct_of_peak']:.1f}% of peak "
                  f"(ONNX Runtime {r['onnxruntime_pct_of_peak']:.1f}%); "
                  f"{r['tuning']['summary']}; tuning spent {c['trials']} trials in {c['wall_s']} s "
                  f"({c['trials_per_min']} trials/min, {c['s_per_trial']} s/trial); "
                  + diff_text(r['max_abs_diff_vs_torch'])
                  + (f"; {r['nchw_note']}" if r.get("nchw_note") else "") + "\n")
    md.append(f"FP32 peak used: {peak['gflops']:.1f} GFLOP/s = {peak['how']}. GFLOP/s and % "
              "of peak count the plain model's FLOPs (direct convs): Winograd kernels "
              "multiply less, so for them these are effective rates.")
    md.append(machine_line(rows[-1]["compare"], threads))
    return "\n".join(md)


def _flags(p):
    from edgec.compiler.config import CONV_LAYOUTS

    p.add_argument("--log-dir", help="tuning log to apply (default: the host's base target's)")
    p.add_argument("--conv-layout", default="NCHWc", choices=CONV_LAYOUTS,
                   help="edgec_tuned's conv layout (NCHWc: the plain tuned build runs too)")
    p.add_argument("--target", default="host",
                   help="edgec's target (one this CPU runs, e.g. x86-avx2 on an AVX-512 CPU)")


def main(argv=None):
    from edgec.compiler.deploy.runtime import host_arch
    from edgec.compiler.tune.database import log_dir_for
    from edgec.targets import cpu_flags, get_target

    args = parse_args(__doc__, argv, _flags)
    target = get_target(args.target)
    flags = {f.replace("_", "") for f in cpu_flags()}
    lacking = [f for f in target.features if f.replace("_", "") not in flags]
    if target.arch != host_arch() or lacking:
        raise SystemExit(f"--target {args.target}: this CPU cannot run its code ({target.arch}"
                         f"{', lacks ' + ', '.join(lacking) if lacking else ''}); valid: host "
                         "or a target of this CPU's architecture and features")
    peak = fp32_peak(max_lanes=target.vector_bits // 32)
    log_dir = args.log_dir or log_dir_for(target)
    rows = [bench_model(name, args, peak, log_dir) for name in args.models]
    md = _markdown(rows, peak, args.threads)
    # the log's target names the file: results of an AVX2 and an AVX-512 machine both stay
    key = os.path.basename(os.path.normpath(log_dir))
    stem = f"tuned-{key}-" + "-".join(args.models) + ("" if args.conv_layout == "NCHW"
                                                      else "-" + args.conv_layout.lower())
    paths = write_results(args.out or stem,
                          {"peak": peak, "results": rows}, md)
    print(md)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
