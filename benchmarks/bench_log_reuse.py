"""Tuning-log reuse: a model never tuned, sharing layers with a tuned one.

    python -m benchmarks.bench_log_reuse [--trials 160] [--variant hidden256|classes26]

The new model is the tuned MNIST CNN changed (``--variant``): a wider hidden layer (its
linear layers are new) or 26 classes (only the last layer is new); its conv layers are
the tuned MNIST CNN's. Four builds of it, timed
interleaved in one run: untuned; with the committed log alone (what ``edgec compile``
applies, no tuning of this model), once with exact records only and once with schedule
transfer (tasks without a record borrow a similar workload's schedule, the default); and
tuned on its own for ``--trials`` trials from an empty log. The goal (issue 5): the shared
log gives >= 80% of the own-tuned speedup.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import (Engine, edgec_build, edgec_runner, machine_line,
                               markdown_table, parse_args, run_compare, scratch, write_results)


# --variant: (MnistCNN keyword arguments, description). "classes26" is the usual transfer
# case (the same network, a new label set: 26 letters); "hidden256" changes the big layer.
VARIANTS = {
    "hidden256": ({"hidden": 256}, "MNIST CNN with hidden=256 (fc1 and fc2 new)"),
    "classes26": ({"num_classes": 26}, "MNIST CNN with 26 classes (only fc2 new)"),
}


def new_model(variant: str):
    """The demo's MNIST CNN changed as ``variant`` says (never tuned)."""
    from edgec.compiler.zoo import mnist_cnn

    return mnist_cnn(seed=0, **VARIANTS[variant][0])


def _extra(p):
    p.add_argument("--trials", type=int, default=160, help="own tuning of the new model")
    p.add_argument("--variant", choices=sorted(VARIANTS), default="hidden256")
    p.add_argument("--own-log", help="the new model's own log (kept; resumed up to --trials): "
                   "re-time on a quiet machine without tuning again")


def main(argv=None):
    import numpy as np
    import torch

    from edgec.compiler.frontend import import_model
    from edgec.compiler.tune.search import tune
    from edgec.compiler.tune.spec import TuneSpec
    from edgec.compiler.tune.database import log_dir_for
    from edgec.targets import get_target

    args = parse_args(__doc__, argv, _extra)
    target = get_target("host")
    model, about = new_model(args.variant), VARIANTS[args.variant][1]
    x = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype("float32")
    folder = scratch()
    own_log = args.own_log or os.path.join(folder, "own", target.tuning_key)
    summary = tune(import_model(model, (torch.from_numpy(x),)),
                   TuneSpec(target=target.name, trials=args.trials, log_dir=own_log,
                            label=about, resume=True))
    shared_log = log_dir_for(target)
    builds = {"untuned": (None, True), "shared_log_exact": (shared_log, False),
              "shared_log": (shared_log, True), "own_tuned": (own_log, True)}
    engines, manifests = [], {}
    for tag, (logs, transfer) in builds.items():
        path, manifests[tag], _ = edgec_build(model, x, folder, tag, logs,
                                              transfer_schedules=transfer)
        engines.append(Engine(tag, edgec_runner(path, [x])))
    result = run_compare(engines, args, baseline="untuned")
    med = {k: v["median_ms"] for k, v in result["engines"].items()}
    shared_speedup, own_speedup = med["untuned"] / med["shared_log"], med["untuned"] / med["own_tuned"]
    exact_speedup = med["untuned"] / med["shared_log_exact"]
    data = {"model": about, "shared_log": os.path.relpath(shared_log),
            "tuning": {k: m["tuning"] for k, m in manifests.items()},
            "own_tuning": {k: summary[k] for k in ("trials_before", "trials", "wall_s",
                                                   "trials_per_min", "tasks")},
            "speedup_shared_log": shared_speedup, "speedup_own_tuned": own_speedup,
            "speedup_shared_log_exact": exact_speedup,
            "fraction_of_own_speedup": shared_speedup / own_speedup, "goal": 0.8,
            "compare": result}
    text = "\n".join([
        f"New model: {about} (never tuned). Own tuning: {summary['trials_before']} trials "
        f"already in its log, {summary['trials']} more in {summary['wall_s']} s.", "",
        f"- shared log, exact records only: {exact_speedup:.2f}x over untuned "
        f"({manifests['shared_log_exact']['tuning']['summary']})",
        f"- shared log with schedule transfer (the default): {shared_speedup:.2f}x over untuned "
        f"({manifests['shared_log']['tuning']['summary']})",
        f"- own tuning: {own_speedup:.2f}x over untuned",
        f"- shared / own speedup: **{100 * shared_speedup / own_speedup:.0f}%** (goal >= 80%)", "",
        markdown_table(result), "", machine_line(result, args.threads)])
    js, md = write_results(args.out or f"log_reuse-mnist_cnn-{args.variant}", data, text)
    print(text)
    print(f"wrote {js} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
