"""Tuning: MetaSchedule (XGBoost cost model + evolutionary search) over a model's tasks.

The tuner tunes exactly the module the build applies records to: the pipeline's own
lowering (``pipeline.run(..., lower_only=True)``), so workloads match. Records go to the
target's log (``tuning_logs/<tuning_key>/``, see ``tune.database``), shared by every model.
Trials are shared across tasks by weight (gradient task scheduler, 16 trials a round so
every task gets a first round early). Builders run locally (cross-compiling for boards);
candidates run on this machine (LocalRunner) or on a board over an RPC tracker.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import asdict

from edgec.compiler.config import KernelOptions, PipelineConfig
from edgec.compiler.deploy.rpc_session import connect
from edgec.compiler.pipeline import run
from edgec.compiler.tune.apply import is_hand_scheduled
from edgec.compiler.tune.database import (as_logged, count_records, digest, log_dir_for,
                                          mean_run_secs)
from edgec.compiler.tune.lock import SharedLog
from edgec.compiler.tune.measure import (CtrlC, LogSync, NoRepeatSearch, Progress, boards_under,
                                         make_builder,
                                         make_runner, measure_threads, prepare,
                                         quiet_metaschedule_logs)
from edgec.compiler.tune.spec import TuneError, TuneSpec
from edgec.compiler.tune.transfer import donors_of
from edgec.compiler.tvm_compat import meta_schedule
from edgec.targets import get_target

RUN_KEYS = ("model", "target", "tasks", "trials", "wall_s", "trials_per_min", "interrupted",
            "measure_threads", "boards")  # what the log's run history keeps of each tune


def lowered_module(model, target_name: str, kernels: KernelOptions = KernelOptions()):
    """The fused module the build applies records to (the pipeline's own lowering, with
    the kernel options the build will use)."""
    config = PipelineConfig(target=target_name, tuning_logs=None, **asdict(kernels))
    return run(model, config, lower_only=True).lowered


def extract_tasks(mod, tvm_target) -> list:
    """MetaSchedule tasks (one per distinct fused PrimFunc) with their call counts as weights.

    edgec's hand-scheduled kernels (the packed INT8 convs/matmuls, tensorized) are left
    out: they are final, and MetaSchedule's FLOP estimate cannot read their intrinsics
    ("Do not have a default for prim.Broadcast").
    """
    prepare(tvm_target)
    tasks = meta_schedule().relax_integration.extract_tasks(mod, tvm_target)
    return [t for t in tasks if not is_hand_scheduled(t.dispatched[0]["main"])]


def task_status(tasks, db) -> list[dict]:
    """Per task: name, weight, trials in the log, best measured latency (ms, None if none)."""
    rows = []
    for t in tasks:
        mod = t.dispatched[0]
        trials, best = 0, None
        if db is not None and db.has_workload(mod):
            recs = db.get_top_k(db.commit_workload(mod), 1 << 30)
            trials = len(recs)
            costs = [_mean_ms(r) for r in recs]
            costs = [c for c in costs if c is not None]
            best = min(costs) if costs else None
        rows.append({"task": t.task_name, "weight": int(t.weight), "trials": trials,
                     "best_ms": best})
    return rows


def _mean_ms(record):
    secs = mean_run_secs(record.run_secs)
    return None if secs is None else 1e3 * secs


def estimate_ms(rows) -> float | None:
    """End-to-end estimate: sum of weight x best latency (None until every task has one)."""
    if not rows or any(r["best_ms"] is None for r in rows):
        return None
    return sum(r["weight"] * r["best_ms"] for r in rows)


def tune(model, spec: TuneSpec) -> dict:
    """Tune ``model`` (a RelaxModel) as ``spec`` says; returns a JSON-able summary.

    Appends to the target's log after every batch, under the log's lock (other tunes may
    share it): Ctrl-C or a crash keeps every record measured so far, and re-running
    continues from them.
    """
    target = get_target(spec.target)
    if spec.tracker:
        check_board(spec, target)  # a missing, stuck or foreign board fails before the search
    log_dir = spec.log_dir or log_dir_for(target)
    log = SharedLog(log_dir, target)  # validates first: never writes a bad log
    try:
        return _tune_into(model, spec, target, log)
    finally:
        log.close()


def check_board(spec, target) -> None:
    """Open one session to the tracker's board (within ``run_timeout``) and check its
    architecture is the target's."""
    key = spec.rpc_key or target.rpc_key
    session = connect(tracker=spec.tracker, key=key, timeout=spec.run_timeout)
    try:
        if session.arch not in ("unknown", target.arch):
            raise TuneError(f"the board under key {key!r} at {spec.tracker} is {session.arch}, "
                            f"but target {target.name!r} is {target.arch}; give --key of a "
                            f"{target.arch} board or another --target")
    finally:
        session.close()


def _tune_into(model, spec, target, log) -> dict:
    tvm_target, log_dir, db = target.tvm_target(), log.path, log.db
    mod = lowered_module(model, spec.target, spec.kernels)
    tasks = as_logged(extract_tasks(mod, tvm_target), db)
    if not tasks:
        raise TuneError("the model has no tunable operators (no fused PrimFuncs)")
    before = task_status(tasks, db)
    # tasks without a record first: the gradient scheduler gives every task one round in
    # list order, and a small --resume budget (a model whose stem became a new workload)
    # ran out before it reached the new tasks at the end of the list
    order = sorted(range(len(tasks)), key=lambda i: before[i]["trials"] > 0)
    tasks, before = [tasks[i] for i in order], [before[i] for i in order]
    done = sum(r["trials"] for r in before)
    budget = max(0, spec.trials - done) if spec.resume else spec.trials
    summary = {"model": spec.label or model.source, "target": target.name, "log_dir": log_dir,
               "tasks": len(tasks), "trials_before": done, "trials_requested": budget,
               "measure_threads": None if spec.tracker else measure_threads(target),
               "boards": boards_under(spec, target) if spec.tracker else None}
    # warm start: new workloads first measure the log's schedules of similar ones
    donors = donors_of(log_dir) if spec.warm_start and budget > 0 else None
    if budget > 0:
        log.begin_run(dict({k: summary[k] for k in RUN_KEYS if k in summary},
                           trials_requested=budget))
    progress, interrupted, wall = _search_guarded(tasks, log, spec, target, budget, before,
                                                  donors, summary["boards"] or 1)
    log.sync()
    after = task_status(tasks, db)
    ran = sum(r["trials"] for r in after) - done
    summary.update(_run_stats(ran, wall, progress), interrupted=interrupted, per_task=after,
                   estimate_ms=estimate_ms(after), records=count_records(log_dir),
                   digest=digest(log_dir))
    log.end_run({k: summary[k] for k in RUN_KEYS} if ran else None)
    if interrupted:
        import sys

        print(f"edgec tune: interrupted; {ran} trials of this run are saved in {log_dir}; run "
              "the same command (with --resume) to continue", file=sys.stderr)
        raise KeyboardInterrupt
    if budget and progress and progress.valid == 0:
        raise TuneError(f"all {progress.count} candidates failed; first error: {progress.first_error}")
    return summary


def _search_guarded(tasks, log, spec, target, budget, before, donors=None, boards=1):
    """Run the search unless the budget is spent; returns (progress, interrupted, wall s)."""
    start, progress = time.perf_counter(), None

    with CtrlC() as ctrl_c:
        if budget > 0:
            try:
                progress = _run_search(tasks, log, spec, target, budget, before, donors, boards)
            except Exception:
                if not ctrl_c.pressed:
                    raise
    return progress, ctrl_c.pressed, time.perf_counter() - start


def _run_stats(ran, wall, progress) -> dict:
    return {"trials": ran, "wall_s": round(wall, 1),
            "trials_per_min": round(60 * ran / wall, 1) if ran and wall else 0.0,
            "overhead_s_per_trial": round(wall / ran, 2) if ran else None,
            "failed": progress.failed if progress else 0,
            "measure_s": round(progress.measure_s, 1) if getattr(progress, "measure_s", None)
            is not None else None}


def _run_search(tasks, log, spec, target, budget, before, donors=None, boards=1):
    ms = meta_schedule()
    quiet_metaschedule_logs(ms)
    work_dir = tempfile.mkdtemp(prefix="edgec-tune-")
    try:
        # a fresh seed per run, so resuming explores new candidates instead of the same ones
        seed = spec.seed + sum(r["trials"] for r in before)
        # a quarter of TVM's default population, 2 evolution rounds instead of 4: on 2 shared
        # cores the default search took 1-2.5 min per 16 candidates, more than building them
        strategy = NoRepeatSearch(ms.search_strategy.EvolutionarySearch(
            population_size=128, genetic_num_iters=2), donors)
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            tasks, work_dir, strategy=strategy, num_threads=target.num_cores, seed=seed)
        progress = Progress(budget, before, spec.quiet)
        runner = make_runner(target, spec, boards)
        # records reach the shared log after each batch (TVM's own callbacks add them to
        # the private copy first)
        callbacks = (ms.measure_callback.MeasureCallback.create("default")
                     + [LogSync(log), progress])
        try:
            ms.tune_tasks(tasks=contexts, task_weights=weights, work_dir=work_dir,
                          max_trials_global=budget, num_trials_per_iter=spec.trials_per_iter,
                          builder=make_builder(target, spec), runner=runner,
                          database=log.db, cost_model="xgb", measure_callbacks=callbacks,
                          task_scheduler="gradient")
        finally:
            progress.close()
        progress.measure_s = getattr(runner, "busy_s", None)  # boards only (BoundedRunner)
        if getattr(runner, "dead", None):  # a board stopped answering: one line, not a hang
            from edgec.compiler.deploy.rpc import RpcError

            raise RpcError(runner.dead)
        return progress
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


