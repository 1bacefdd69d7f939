"""The stages of the edge-classifier scenario, in order.

Each stage is one function ``run(ctx, workdir) -> Outcome`` plus a ``Stage``
entry naming what it needs: the dense ones here, the compression ones in
``compress`` (pruned, pruned + INT8) and ``exits`` (+ early exit), which
take one more argument, ``after``: the stage whose torch model they start from.

The driver caches each result, measures size and accuracy from the artifact,
and benchmarks it with the others. ``plots.py`` documents the optional info
keys (``exits``, ``sensitivity``).
"""
from __future__ import annotations

import functools
import time

import torch

from edgec.compiler.demo.build import compile_dense
from edgec.compiler.demo.compress import int8, prune
from edgec.compiler.demo.context import (BUILD_CODE, STAGE_DENSE, STAGE_EAGER, STAGE_EXITS,
                                         STAGE_INT8, STAGE_PRUNED, TRAIN_CODE, DemoError, Outcome,
                                         Stage)
from edgec.compiler.demo.exits import exits
from edgec.compiler.demo.model import ExportedModule, make_model
from edgec.compiler.train.fit import evaluate, fit

# What each compression stage needs from other parts of edgec (their passes and training).
NEEDS = {
    STAGE_PRUNED: ("edgec.passes.prune_channels", "edgec.compiler.train.prune_finetune"),
    STAGE_INT8: ("edgec.passes.quantize_int8", "edgec.compiler.train.qat"),
    STAGE_EXITS: ("edgec.passes.split_early_exits", "edgec.compiler.train.exits",
                  "edgec.compiler.train.distill"),
}
TUNE_MODULE = "edgec.compiler.tune.search"


def check_fits(model, ctx) -> None:
    """The model must take the data's inputs and give at least one logit per class."""
    shape = "x".join(map(str, ctx.data.input_shape))
    try:
        with torch.no_grad():
            out = model.eval()(ctx.example())
    except Exception as e:
        raise DemoError(f"the model cannot take {ctx.data.name}'s inputs (1x{shape}): "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    logits = out[0] if isinstance(out, (tuple, list)) else out
    if logits.ndim != 2 or logits.shape[-1] < ctx.data.num_classes:
        raise DemoError(f"the model's output has shape {list(logits.shape)}; {ctx.data.name} "
                        f"needs (1, {ctx.data.num_classes}) logits, one per class")


def train_dense(ctx, workdir) -> Outcome:
    """The dense FP32 baseline (the teacher): trained on the train split, or taken as given."""
    cfg = ctx.config
    model = make_model(cfg.model, cfg.seed)
    check_fits(model, ctx)
    history, t0 = [], time.perf_counter()
    if cfg.train_epochs > 0:
        if isinstance(model, ExportedModule):
            raise DemoError(f"{cfg.model}: a torch.export program cannot be trained (torch "
                            "does not support train() on it); use --epochs 0 to take its "
                            "weights as trained, or give a module:factory")
        history = fit(model, ctx.data.train, epochs=cfg.train_epochs, seed=cfg.seed,
                      quiet=cfg.quiet, desc="train dense FP32")
    model.eval()
    val = evaluate(model, ctx.data.val) if cfg.train_epochs > 0 else None
    return Outcome(model=model, info={"train": {
        "epochs": cfg.train_epochs, "loss_per_epoch": history, "val_top1": val,
        "seconds": round(time.perf_counter() - t0, 2), "samples": len(ctx.data.train)}})


# The compression stages' functions ``fn(ctx, workdir, after)``: ``after`` names the
# stage whose torch model they start from (None: not wired into this build).
RUNS = {STAGE_PRUNED: prune, STAGE_INT8: int8, STAGE_EXITS: exits}


def stages(config, compress=(STAGE_PRUNED, STAGE_INT8, STAGE_EXITS)) -> list:
    """The stages of one run, in order: the dense ones, then ``compress`` (kinds, named
    by the demo's stage names); each is named by what its model has had done, e.g.
    ``INT8 + early exit`` when optimize runs without pruning."""
    dense_params = (("epochs", config.train_epochs), ("model", config.model or "MnistCNN"))
    target = (("target", config.target), ("tune_trials", config.tune_trials))
    out = [Stage(STAGE_EAGER, "dense-eager", train_dense, code=TRAIN_CODE, params=dense_params),
           Stage(STAGE_DENSE, "dense-edgec", compile_dense, code=BUILD_CODE,
                 after=(STAGE_EAGER,), params=target)]
    previous, parts = STAGE_EAGER, []
    for kind in compress:
        parts.append(kind.rpartition(" + ")[2])  # "pruned + INT8" -> "INT8"
        name = " + ".join(parts)  # what this stage's model has had done to it
        slug = name.replace(" + ", "-").replace(" ", "-").lower()
        fn = RUNS[kind] and functools.partial(RUNS[kind], after=previous)
        out.append(Stage(name, slug, fn, requires=NEEDS[kind],
                         code=BUILD_CODE + TRAIN_CODE, after=(previous,),
                         params=target + (("quick", config.quick), ("prune", config.prune),
                                          ("budget", config.accuracy_budget))))
        previous = name
    return out
