"""Shared benchmark plumbing: models, peer engines, edgec builds, result files.

Every result file records the command line that made it, the machine (CPU, flags,
load) and the engines' interleaved medians (``compiler/compare.py``).
"""
from __future__ import annotations

import os
import shlex
import sys
import tempfile
import time

import numpy as np
import torch

from benchmarks import models as zoo
from edgec.compiler.deploy.artifact import write_json_atomic
from edgec.compiler.compare import Engine, compare, markdown_table
from edgec.compiler.peers import edgec_runner, export_onnx, onnxruntime_session, torch_eager

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
NAMES = ("resnet18", "mobilenet_v2", "mnist_cnn")  # the default set; --models takes any of zoo.MODELS


def model_and_input(name: str, seed: int = 0):
    """(torch model, numpy input) of a benchmark model, seeded."""
    if name not in zoo.MODELS:
        raise SystemExit(f"unknown model {name!r}; known: {', '.join(zoo.MODELS)}")
    factory, shape = zoo.MODELS[name]
    model = getattr(zoo, factory)()
    x = np.random.default_rng(seed).standard_normal(shape).astype("float32")
    return model, x


def edgec_build(model, x, folder: str, tag: str, tuning_logs, target: str = "host",
                calib_data=None, **fields):
    """Compile with edgec (``fields``: more PipelineConfig); returns (so path, manifest, build s)."""
    from edgec.compiler import PipelineConfig, compile

    out = os.path.join(folder, f"{tag}.so")
    start = time.perf_counter()
    manifest = compile(model, (torch.from_numpy(x),), output=out, calib_data=calib_data,
                       config=PipelineConfig(target=target, tuning_logs=tuning_logs, **fields))
    return out, manifest, time.perf_counter() - start


def peer_engines(model, x, threads: int, folder: str) -> list:
    """PyTorch eager and ONNX Runtime (FP32, all graph optimisations), ``threads`` threads."""
    onnx_path = export_onnx(model, [x], os.path.join(folder, "model.onnx"))
    return [Engine("pytorch_eager", torch_eager(model, [x], threads)),
            Engine("onnxruntime", onnxruntime_session(onnx_path, [x], threads))]


def max_abs_diff(so_path: str, model, x) -> dict:
    """max |edgec - torch| and the output's scale max |torch| (random-weight mobilenet_v2's
    logits are ~1e-14: an absolute difference alone would say nothing there)."""
    from edgec.compiler.deploy.runtime import load

    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    return {"abs": float(np.abs(load(so_path)(x)[0] - ref).max()), "scale": float(np.abs(ref).max())}


def diff_text(d: dict) -> str:
    """'max |edgec - torch| = a (b of max |torch| = c)' for a result's markdown."""
    rel = d["abs"] / d["scale"] if d["scale"] else float("inf")
    return f"max |edgec - torch| = {d['abs']:.2e} ({rel:.1e} of max |torch| = {d['scale']:.2e})"


def ratios(result: dict, engine: str, peers=("pytorch_eager", "onnxruntime")) -> dict:
    e = result["engines"]
    return {f"{engine}_over_{p}": e[engine]["median_ms"] / e[p]["median_ms"] for p in peers if p in e}


def write_results(stem: str, data: dict, markdown: str) -> tuple[str, str]:
    """Write ``results/<stem>.json`` and ``.md``, both naming the command that made them."""
    cmd = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])
    data = dict(data, command=cmd, date_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    stem = stem if os.path.dirname(stem) else os.path.join(RESULTS, stem)
    js, md = stem + ".json", stem + ".md"
    write_json_atomic(js, data)
    with open(md, "w", encoding="utf-8") as f:
        f.write(f"Made by `{cmd}` on {data['date_utc']}.\n\n{markdown}\n")
    return js, md


def report_models(rows: list, args, prefix: str, summary) -> None:
    """Per model its table and ``summary(row)`` line, then the machine; write and print.

    Results go to ``args.out`` or ``results/<prefix>-<models>``.
    """
    md = []
    for r in rows:
        md.append(markdown_table(r["compare"], f"{r['model']} {'x'.join(map(str, r['input_shape']))}"))
        md.append("\n" + summary(r) + "\n")
    md.append(machine_line(rows[-1]["compare"], args.threads))
    paths = write_results(args.out or f"{prefix}-" + "-".join(args.models), {"results": rows},
                          "\n".join(md))
    print("\n".join(md))
    print("wrote", *paths)


def parse_args(doc: str, argv, extra=None):
    """The flags every benchmark takes (``extra(parser)`` adds more); sets the threads."""
    import argparse

    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(NAMES), choices=list(zoo.MODELS))
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--samples", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", help="result files stem (default: benchmarks/results/<name>)")
    if extra:
        extra(p)
    args = p.parse_args(argv)
    set_threads(args.threads)
    return args


def set_threads(n: int) -> None:
    """Give every engine ``n`` threads (TVM's pool reads TVM_NUM_THREADS when it starts)."""
    os.environ["TVM_NUM_THREADS"] = str(n)


def run_compare(engines, args, baseline="pytorch_eager") -> dict:
    return compare(engines, rounds=args.rounds, samples=args.samples, baseline=baseline)


def scratch() -> str:
    return tempfile.mkdtemp(prefix="edgec-bench-")


def machine_line(result: dict, threads: int) -> str:
    m = result["machine"]
    return (f"Machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['flags'])}, "
            f"load average {m['loadavg_1m']:.2f} at the end; every engine ran {threads} "
            f"thread(s), batch 1.")


__all__ = ["NAMES", "model_and_input", "edgec_build", "peer_engines", "max_abs_diff", "diff_text", "ratios",
           "write_results", "report_models", "run_compare", "set_threads", "parse_args", "scratch", "machine_line", "markdown_table",
           "Engine", "edgec_runner"]
