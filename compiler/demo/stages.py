"""The stages of the edge-classifier scenario, in order.

Each stage is one function ``run(ctx, workdir) -> Outcome`` plus a ``Stage``
entry naming what it needs: the dense ones here, the compression ones in
``demo_compress`` (pruned, pruned + INT8) and ``demo_exits`` (+ early exit), which
take one more argument, ``after``: the stage whose torch model they start from.

The driver caches each result, measures size and accuracy from the artifact,
and benchmarks it with the others. ``plots.py`` documents the optional info
keys (``exits``, ``sensitivity``).
"""
from __future__ import annotations

import functools
import io
import os
import time

import torch

from edgec.compiler.demo import (BUILD_CODE, STAGE_DENSE, STAGE_EAGER, TRAIN_CODE, DemoError,
                                 Outcome, Stage)

STAGE_PRUNED = "pruned"
STAGE_INT8 = "pruned + INT8"
STAGE_EXITS = "pruned + INT8 + early exit"
# What each compression stage needs from other parts of edgec (their passes and training).
NEEDS = {
    STAGE_PRUNED: ("edgec.passes.prune_channels", "edgec.compiler.train.prune_finetune"),
    STAGE_INT8: ("edgec.passes.quantize_int8", "edgec.compiler.train.qat"),
    STAGE_EXITS: ("edgec.passes.split_early_exits", "edgec.compiler.train.exits",
                  "edgec.compiler.train.distill"),
}
TUNE_MODULE = "edgec.compiler.tune"


class ExportedModule(torch.nn.Module):
    """A .pt2 program as an nn.Module that edgec can evaluate, cache and compile.

    torch refuses ``train()``/``eval()`` on exported programs and cannot pickle
    their modules; this wrapper keeps mode switches away from it and pickles
    the program itself (``torch.export.save`` bytes).
    """

    def __init__(self, program):
        super().__init__()
        self.program = program  # the ExportedProgram (not a Module attribute)
        self.inner = program.module()

    def train(self, mode: bool = True):
        self.training = mode
        return self

    def forward(self, *args):
        return self.inner(*args)

    def __reduce__(self):
        buf = io.BytesIO()
        torch.export.save(self.program, buf)
        return (_exported_from_bytes, (buf.getvalue(),))


def _exported_from_bytes(data: bytes) -> ExportedModule:
    from edgec.compiler.pt2_check import check_pt2

    check_pt2(io.BytesIO(data))  # a cached program is data too: never unpickle from it
    return ExportedModule(torch.export.load(io.BytesIO(data)))


def make_model(spec: str | None, seed: int):
    """The dense model: the demo's MnistCNN, a ``module:factory``, or a .pt2 program."""
    from edgec.compiler.specs import load_factory
    from edgec.compiler.zoo import mnist_cnn

    if spec is None:
        return mnist_cnn(seed)
    if spec.endswith(".pt2"):
        if not os.path.isfile(spec):
            raise DemoError(f"model file not found: {spec}")
        from edgec.compiler.pt2_check import check_pt2

        check_pt2(spec)  # refuses a file that would unpickle unless trusted
        try:
            return ExportedModule(torch.export.load(spec))
        except Exception as e:
            raise DemoError(f"cannot read {spec} as a torch.export program: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    torch.manual_seed(seed)
    model = load_factory(spec)
    if not isinstance(model, torch.nn.Module):
        raise DemoError(f"{spec} returned a {type(model).__name__}; it must return a torch.nn.Module")
    return model


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
    from edgec.compiler.train.fit import evaluate, fit

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


def compile_stage(ctx, model, workdir, config=None, calib_data=None) -> Outcome:
    """Compile ``model`` for the run's target into ``workdir/model.so``, with its power proxy.

    config: a PipelineConfig (default: the target's, tuning logs applied);
    calib_data: INT8 calibration inputs. The proxy counts the graph after the
    compression passes, i.e. what the artifact computes.
    """
    from edgec.compiler.build import build_result
    from edgec.compiler.config import PipelineConfig
    from edgec.compiler.frontend import import_model
    from edgec.compiler.power import proxy_of

    config = config or PipelineConfig(target=ctx.config.target)
    relax_model = import_model(model.eval(), (ctx.example(),))
    path = os.path.join(workdir, "model.so")
    manifest, result = build_result(relax_model, config, path, calib_data)
    info = {"build_seconds": manifest["build_seconds"]}
    if ctx.config.tune_trials:  # tune what this build runs, then build again with the log
        from dataclasses import replace

        info["tuning_run"], logs = tune_stage(ctx, result.model, workdir)
        manifest, result = build_result(relax_model, replace(config, tuning_logs=logs), path,
                                        calib_data)
    info["power_proxy"] = proxy_of(result.model or relax_model, ctx.config.target).to_json()
    return Outcome(model=None, artifact="model.so", compiled=result.model, info=info)


def tune_stage(ctx, compiled, workdir) -> tuple:
    """Tune ``compiled`` (the graph after the stage's passes) for ``--tune-trials`` trials
    into the run's log, ``OUT/tuning_logs/<target>`` (seeded with the committed log, so
    its records keep applying). Returns (summary, log dir)."""
    import shutil

    from edgec.compiler.tune import TuneSpec, tune
    from edgec.compiler.tuning_db import log_dir_for
    from edgec.targets import get_target

    target = get_target(ctx.config.target)
    logs = log_dir_for(target, os.path.join(os.path.abspath(ctx.config.out), "tuning_logs"))
    committed = log_dir_for(target)
    if not os.path.isdir(logs) and os.path.isdir(committed):
        shutil.copytree(committed, logs + ".tmp", dirs_exist_ok=True)
        os.replace(logs + ".tmp", logs)
    # on a board (--tracker), candidates are cross-built here and measured there
    spec = TuneSpec(target=target.name, trials=ctx.config.tune_trials, log_dir=logs,
                    resume=True, quiet=ctx.config.quiet, tracker=ctx.config.tracker,
                    rpc_key=ctx.config.key,
                    label=f"{ctx.config.model or 'MnistCNN'} ({_slug_of(workdir)})")
    summary = tune(compiled, spec)
    keep = ("log_dir", "tasks", "trials_before", "trials", "wall_s", "trials_per_min",
            "estimate_ms")
    return {k: summary.get(k) for k in keep}, logs


def _slug_of(workdir: str) -> str:
    """The stage slug of a stage's temporary workdir (``.<slug>-<random>``)."""
    return os.path.basename(workdir).lstrip(".").rsplit("-", 1)[0]


def compile_dense(ctx, workdir) -> Outcome:
    """The dense teacher compiled by edgec (no compression passes)."""
    return compile_stage(ctx, ctx.model(STAGE_EAGER), workdir)


def _compression_runs() -> dict:
    from edgec.compiler.demo_compress import int8, prune
    from edgec.compiler.demo_exits import exits

    return {STAGE_PRUNED: prune, STAGE_INT8: int8, STAGE_EXITS: exits}


# The compression stages' functions ``fn(ctx, workdir, after)``: ``after`` names the
# stage whose torch model they start from (None: not wired into this build).
RUNS = _compression_runs()


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
