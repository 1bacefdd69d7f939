"""The demo's last stage: early exits on the pruned INT8 model.

Exit heads are attached to the previous stage's torch model and trained with its
backbone frozen (self-distillation from the final head), under the same INT8
method that stage chose (QAT fake-quant, or PTQ calibration). Thresholds are
calibrated on the validation split with the compiled INT8 model's own outputs, to
spend part of what is left of the accuracy budget; the split and the decision are
compiled into the library.
"""
from __future__ import annotations

import copy
import functools
import os

import numpy as np
import torch

from edgec.compiler.build import build
from edgec.compiler.config import PipelineConfig
from edgec.compiler.demo.board import BOARD_NUMBER, board_benchmark
from edgec.compiler.demo.build import compile_stage
from edgec.compiler.demo.compress import CALIB_SAMPLES, EXIT_SHARE, budget_of, target_of
from edgec.compiler.demo.context import STAGE_EAGER, DemoError, Outcome
from edgec.compiler.demo.exit_pricing import decide, path_latencies, verdict
from edgec.compiler.demo.power import stage_proxies
from edgec.compiler.deploy.runtime import load
from edgec.compiler.exit_calibration import all_output_logits
from edgec.compiler.frontend import import_model
from edgec.compiler.train.exits import add_exits, exit_head, output_shapes, train_exits
from edgec.compiler.train.fit import evaluate
from edgec.passes.exit_plan import ExitPlan
from edgec.passes.exit_thresholds import calibrate, exit_macs
from edgec.passes.graph import bind
from edgec.passes.split_early_exits import split_early_exits

# The heads: ReLU, 7x7 average pool, 64 hidden, linear. On the demo's pruned MNIST CNN
# (exit after bn1) the default 4x4 linear head exited 15% of val images within a
# 0.5-point budget and this one 84% (5 epochs, lr 3e-3; the backbone frozen).
HEAD = functools.partial(exit_head, pool=7, hidden=64)
HEAD_LR = 3e-3


def exit_points(model, example, most: int = 2) -> list:
    """Modules to attach exits after: 4-d outputs of conv/batch-norm layers, in forward
    order (a batch norm replaces the conv it follows), at most ``most`` of them, spread
    over the first part of the network (never the last feature map)."""
    kinds = (torch.nn.Conv2d, torch.nn.BatchNorm2d)
    modules = dict(model.named_modules())
    shapes = output_shapes(model, [n for n, m in modules.items() if isinstance(m, kinds)],
                           example)
    names = list(shapes)  # in forward order
    points: list = []
    for n in names:
        if len(shapes[n]) != 4:
            continue
        if points and shapes[points[-1]] == shapes[n] and isinstance(
                modules[n], torch.nn.BatchNorm2d):
            points[-1] = n  # the norm of the same conv: its output is what flows on
        elif n not in points:
            points.append(n)
    points = points[:-1]  # the last feature map is the final head's input
    if not points:
        raise DemoError("no place for an early exit: the model has a single conv feature map")
    step = max(1, len(points) // most)
    return points[::step][:most]


def exits(ctx, workdir, after: str) -> Outcome:
    """Attach, train, quantize, calibrate and compile the early-exit model."""
    int8_info = (ctx.records[after].meta.get("info") or {}).get("int8")
    method = int8_info["method"] if int8_info else None  # None: the model before is FP32
    base = copy.deepcopy(ctx.model(after)).eval()
    points = exit_points(base, ctx.example())
    model = add_exits(base, points, ctx.data.num_classes, ctx.example(), head=HEAD,
                      seed=ctx.config.seed)
    calib = ctx.data.train.x[:CALIB_SAMPLES]
    epochs = 2 if ctx.config.quick else 5
    scales = None
    if method == "qat":
        from edgec.compiler.train.qat import prepare_qat
        from edgec.passes.quant_scheme import scheme_for_target

        qat = prepare_qat(model, scheme_for_target(target_of(ctx)), calib)
        train_exits(model, ctx.data.train, epochs=epochs, lr=HEAD_LR, freeze_backbone=True,
                    seed=ctx.config.seed, quiet=ctx.config.quiet)
        scales = os.path.join(workdir, "int8_scales.json")
        qat.finish(scales)
    else:
        train_exits(model, ctx.data.train, epochs=epochs, lr=HEAD_LR, freeze_backbone=True,
                    seed=ctx.config.seed, quiet=ctx.config.quiet)
    model.eval()
    int8 = PipelineConfig(target=ctx.config.target, int8=method is not None, int8_scales=scales)
    cal, allowed, pricing = _calibrate(ctx, model, int8, calib, workdir, after)
    config = PipelineConfig(target=ctx.config.target, int8=method is not None, int8_scales=scales,
                            early_exit=True, exit_thresholds=tuple(cal.thresholds))
    out = compile_stage(ctx, model, workdir, config, calib_data=calib)
    dist = exit_distribution(os.path.join(workdir, "model.so"), ctx.data.test, len(points),
                             ctx.board)
    out.model = model
    out.info["exits"] = {
        "after": points, "int8": method, "train_epochs": epochs,
        "thresholds": [round(float(t), 4) for t in cal.thresholds],
        "criterion": "max_prob", "distribution": dist,
        "val": {"exit_rates": [round(float(r), 4) for r in cal.exit_rates],
                "accuracy": round(cal.accuracy, 2), "never_exiting": round(cal.full_accuracy, 2),
                "budget_points": round(allowed, 2),
                f"expected_{'latency' if pricing['priced_by'] == 'latency' else 'mac'}_speedup":
                    round(cal.speedup, 2),
                "outputs_from": "the unsplit model built for the target, run "
                                + ("on the board" if ctx.board else "here")},
        "pricing": pricing}
    out.info["power_proxy"] = weighted_proxy(out.info["power_proxy"], out.compiled,
                                             ctx.config.target, dist)
    return out


def _calibrate(ctx, model, int8_config, calib, workdir, after):
    """Thresholds from the compiled INT8 multi-exit model's outputs on val, within
    EXIT_SHARE of the budget the earlier stages left (dense teacher's val top-1 minus
    this model's, never exiting). With a board, that model is built for it and run there.

    Each path is priced by its measured latency against the stage before, here or on the
    board (``exit_pricing``): the thresholds minimise expected latency, and the returned
    pricing says whether the exit pays. Where latency cannot be measured (an emulated board,
    no compiled stage before) the paths are priced by MACs and pricing says why."""
    val = ctx.data.val
    relax_model = import_model(model, (ctx.example(),))
    costs = exit_macs(split_early_exits(bind(relax_model), ExitPlan(thresholds_as_input=True)))
    if ctx.board is None:
        logits = all_output_logits(relax_model, val, quiet=True, config=int8_config,
                                   calib_data=calib)
    else:
        from edgec.compiler.demo.board import build_and_run

        logits = build_and_run(ctx.board, relax_model, int8_config, calib, val.x,
                               os.path.join(workdir, "calibration", "model.so"))
    never = float((logits[-1].argmax(1) == val.y[:len(logits[-1])]).mean() * 100)
    dense = evaluate(ctx.model(STAGE_EAGER), val)
    allowed = max(0.0, EXIT_SHARE * (budget_of(ctx) - max(0.0, dense - never)))
    labels = val.y[:len(logits[0])]
    macs = calibrate(logits, labels, costs, allowed, "max_prob")
    why_not = _unpriceable(ctx, after)
    if why_not:
        return macs, allowed, {"priced_by": "MACs", "why": why_not}
    measure = _measure_paths if ctx.board is None else _measure_paths_on_board
    measured = measure(ctx, relax_model, int8_config, calib, workdir, after, len(costs) - 1)
    cal = calibrate(logits, labels, measured["path_s"], allowed, "max_prob", cost_unit="s")

    pricing = decide(cal, measured)
    pricing.update(priced_by="latency", verdict=verdict(pricing),
                   macs_per_path=[int(c) for c in costs],
                   mac_priced_thresholds=[round(float(t), 4) for t in macs.thresholds],
                   mac_priced_speedup=round(macs.speedup, 2), how=measured["how"])
    return cal, allowed, pricing


def _unpriceable(ctx, after) -> str | None:
    """Why the exit paths cannot be priced by latency here (None: they can)."""
    if not ctx.records[after].artifact:
        return f"the stage before ({after}) has no compiled library to compare with"
    if ctx.board is not None and ctx.board.description.get("emulated"):
        return "latency on an emulated board is meaningless"
    return None


def _measure_paths(ctx, relax_model, int8_config, calib, workdir, after, exits) -> dict:
    """Latency of each exit path of the split library and of the stage before, here."""
    from dataclasses import replace


    path = os.path.join(workdir, "pricing", "model.so")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    build(relax_model, replace(int8_config, early_exit=True, thresholds_as_input=True), path,
          calib)
    out = path_latencies(load(path), load(ctx.records[after].artifact), ctx.data.val.x[:1])
    out["how"] = ("here: each path forced by thresholds given as input on a library built like "
                  "the final one, the stage before as built; interleaved rounds of calls "
                  "through the Python API on one val image, medians")
    return out


BOARD_PRICING_IMAGES = 8  # val images each path cycles through on the board
BOARD_PRICING_ROUNDS = 5


def _measure_paths_on_board(ctx, relax_model, int8_config, calib, workdir, after,
                            exits) -> dict:
    """The same on the board: one library per path, its thresholds baked to force it (0 takes
    an exit, 1 never does), timed on the device with the stage before, interleaved."""
    from dataclasses import replace


    stages = []
    for e in range(exits + 1):
        path = os.path.join(workdir, "pricing", f"path{e}", "model.so")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        forced = tuple([1.0] * e + [0.0] * (exits - e))
        build(relax_model, replace(int8_config, early_exit=True, exit_thresholds=forced), path,
              calib)
        stages.append((f"path {e}", path))
    stages.append(("without exits", ctx.records[after].artifact))
    result = board_benchmark(ctx.board, stages, ctx.data.val.x[:BOARD_PRICING_IMAGES],
                             BOARD_PRICING_ROUNDS, quiet=True)
    ms = {name: e["median_ms"] for name, e in result["engines"].items()}
    return {"path_s": [ms[f"path {e}"] / 1e3 for e in range(exits + 1)],
            "without_exits_s": ms["without exits"] / 1e3, "rounds": BOARD_PRICING_ROUNDS,
            "calls": BOARD_NUMBER * BOARD_PRICING_IMAGES,
            "how": (f"on the board: one library per path (thresholds baked to force it), the "
                    f"stage before as built; {BOARD_PRICING_ROUNDS} interleaved rounds over "
                    f"{BOARD_PRICING_IMAGES} val images timed on the device, medians")}


def exit_distribution(so_path: str, split, num_exits: int, board=None) -> dict:
    """{exit name: fraction of ``split`` leaving there}, run by the compiled library
    (here, or on ``board``)."""
    taken = np.zeros(num_exits + 1)
    if board is not None:
        from edgec.compiler.demo.board import board_outputs

        exits = board_outputs(board, so_path, split.x, "exit distribution (board)")[-1]
        np.add.at(taken, exits.astype(int).reshape(-1), 1)
    else:
        lib = load(so_path)
        for i in range(len(split)):
            lib(split.x[i:i + 1])
            taken[lib.exit_taken] += 1
    names = [f"exit {k}" for k in range(num_exits)] + ["final"]
    return {n: round(float(c / len(split)), 4) for n, c in zip(names, taken)}


def weighted_proxy(proxy: dict, compiled, target: str, dist: dict) -> dict:
    """The power proxy averaged over the measured exit distribution (the full count,
    every stage run, is kept as ``worst_case``). ``compiled``: the split model."""
    stages = stage_proxies(compiled, target)
    keys = ("macs", "weight_bytes", "activation_bytes")
    cum = np.cumsum([[getattr(s, k) for k in keys] for s in stages], axis=0)
    expected = (np.asarray(list(dist.values()))[:, None] * cum).sum(axis=0)
    out = {"functions": proxy.get("functions")}
    out.update({k: int(v) for k, v in zip(keys, expected)})
    out["bytes_moved"] = out["weight_bytes"] + out["activation_bytes"]
    out["label"] = (proxy.get("label", "").replace(" (every branch counted: an upper bound)", "")
                    + "; averaged over the exit distribution on the test split")
    out["worst_case"] = {k: proxy.get(k) for k in (*keys, "bytes_moved")}
    return out
