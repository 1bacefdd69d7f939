"""Compiling a demo stage's model for the run's target (and tuning it when asked)."""
from __future__ import annotations

import os
import shutil
from dataclasses import replace

from edgec.compiler.build import build_result
from edgec.compiler.config import PipelineConfig
from edgec.compiler.demo.context import STAGE_EAGER, Outcome
from edgec.compiler.demo.power import proxy_of
from edgec.compiler.frontend import import_model
from edgec.compiler.tune.database import log_dir_for
from edgec.compiler.tune.search import tune
from edgec.compiler.tune.spec import TuneSpec
from edgec.targets import get_target


def compile_stage(ctx, model, workdir, config=None, calib_data=None) -> Outcome:
    """Compile ``model`` for the run's target into ``workdir/model.so``, with its power proxy.

    config: a PipelineConfig (default: the target's, tuning logs applied);
    calib_data: INT8 calibration inputs. The proxy counts the graph after the
    compression passes, i.e. what the artifact computes.
    """
    config = config or PipelineConfig(target=ctx.config.target)
    relax_model = import_model(model.eval(), (ctx.example(),))
    path = os.path.join(workdir, "model.so")
    manifest, result = build_result(relax_model, config, path, calib_data)
    info = {"build_seconds": manifest["build_seconds"]}
    if ctx.config.tune_trials:  # tune what this build runs, then build again with the log
        info["tuning_run"], logs = tune_stage(ctx, result.model, workdir)
        manifest, result = build_result(relax_model, replace(config, tuning_logs=logs), path,
                                        calib_data)
    info["power_proxy"] = proxy_of(result.model or relax_model, ctx.config.target).to_json()
    return Outcome(model=None, artifact="model.so", compiled=result.model, info=info)


def tune_stage(ctx, compiled, workdir) -> tuple:
    """Tune ``compiled`` (the graph after the stage's passes) for ``--tune-trials`` trials
    into the run's log, ``OUT/tuning_logs/<target>`` (seeded with the committed log, so
    its records keep applying). Returns (summary, log dir)."""
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
