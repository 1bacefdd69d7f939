"""``edgec tune``: MetaSchedule tuning into the target's reusable log, and ``--status``."""
from __future__ import annotations

from edgec.compiler.cli import command, emit
from edgec.compiler.cli.commands import int8_flags, layout_flags, prune_flags, trust_flag


def load_relax_model(model: str, inputs):
    """``MODEL`` as the CLI names it (.onnx, .pt2, module:factory + --input) -> RelaxModel."""
    from edgec.compiler.frontend import import_model
    from edgec.compiler.specs import factory_model, is_factory, parse_input_spec

    specs = [parse_input_spec(s) for s in inputs or []]
    if is_factory(model):
        return import_model(*factory_model(model, specs), specs)
    return import_model(model, None, specs or None)


def status(model, target_name: str, log_dir: str | None, label: str | None = None,
           kernels=None) -> dict:
    """Per-task trials and best latency of ``model`` in the target's log (read-only);
    ``kernels``: the KernelOptions it is built with."""
    from edgec.compiler.tune.search import estimate_ms, extract_tasks, lowered_module, task_status
    from edgec.compiler.tune.database import count_records, log_dir_for, open_database, read_meta
    from edgec.targets import get_target

    target = get_target(target_name)
    path = log_dir or log_dir_for(target)
    db = open_database(path, target)
    tasks = extract_tasks(lowered_module(model, target_name, kernels), target.tvm_target())
    rows = task_status(tasks, db)
    runs = (read_meta(path) or {}).get("runs", []) if db is not None else []
    return {"model": label or model.source, "target": target.name, "log_dir": path,
            "records": count_records(path), "tasks": rows, "estimate_ms": estimate_ms(rows),
            "trials": sum(r["trials"] for r in rows), "tuned_tasks": sum(bool(r["trials"]) for r in rows),
            "log_trials_total": sum(r.get("trials", 0) for r in runs),
            "log_wall_s_total": round(sum(r.get("wall_s", 0) for r in runs), 1)}


def _status_text(s: dict) -> str:
    lines = [f"{s['model']} on {s['target']}: log {s['log_dir']} ({s['records']} records), "
             f"{s['tuned_tasks']}/{len(s['tasks'])} tasks tuned, {s['trials']} trials",
             f"{'task':<48} {'weight':>6} {'trials':>7} {'best ms':>10}"]
    for r in s["tasks"]:
        best = "-" if r["best_ms"] is None else f"{r['best_ms']:.4f}"
        lines.append(f"{r['task'][:48]:<48} {r['weight']:>6} {r['trials']:>7} {best:>10}")
    est = s["estimate_ms"]
    lines.append("estimated end to end: " + ("- (some tasks untuned)" if est is None
                                            else f"{est:.3f} ms (sum of weight x best)"))
    return "\n".join(lines)


def compressed(args, model) -> tuple:
    """(``model`` after the prune / INT8 passes the flags ask for, as ``edgec compile`` with
    the same flags builds it, so its tasks are the ones that build looks up; its label)."""
    from edgec.compiler.cli.commands import calib_data, compression_config
    from edgec.compiler.pipeline import run

    config = compression_config(args, tuning_logs=None)
    # prepacking kernels are other workloads: the log's run history names them apart
    # INT8 kernels pack their own layout: only FP32 convs take the blocked one
    blocked = getattr(args, "conv_layout", "NCHWc") != "NCHW" and not config.int8
    applied = _applied(config) + (["prepacked"] if getattr(args, "prepack_weights", False) else []) \
        + ([args.conv_layout] if blocked else []) \
        + (["no winograd"] if blocked and not getattr(args, "winograd", True) else []) \
        + (["no padding"] if blocked and not getattr(args, "pad_channels", True) else [])
    label = f"{args.model} ({', '.join(applied)})" if applied else args.model
    if not (config.prune or config.prune_plan or config.int8):
        return model, label
    return run(model, config, calib_data(args, config), lower_only=True).model, label


def _applied(config) -> list:
    return ([f"pruned {config.prune}"] if config.prune else []) + \
        ([f"plan {config.prune_plan}"] if config.prune_plan else []) + (["INT8"] if config.int8 else [])


@command("tune", "tune a model with MetaSchedule into tuning_logs/<target> (resumable)")
def cmd_tune(args):
    from edgec.compiler.tune.search import tune
    from edgec.compiler.tune.spec import TuneSpec

    from edgec.compiler.pt2_check import trusting

    with trusting(args.trust_model):
        model, label = compressed(args, load_relax_model(args.model, args.input))
    if args.status:
        s = status(model, args.target, args.log_dir, label, _kernels(args))
        emit(args, s, _status_text(s))
        return 0
    spec = TuneSpec(target=args.target, trials=args.trials, log_dir=args.log_dir,
                    resume=args.resume, tracker=args.tracker, rpc_key=args.key,
                    run_timeout=args.timeout, exit_when_stuck=True,
                    seed=args.seed, quiet=args.quiet or args.json, label=label,
                    warm_start=not args.no_warm_start, kernels=_kernels(args))
    s = tune(model, spec)
    est = "-" if s["estimate_ms"] is None else f"{s['estimate_ms']:.3f} ms"
    emit(args, s, f"tuned {s['tasks']} tasks of {s['model']} for {s['target']}: {s['trials']} "
         f"trials in {s['wall_s']} s ({s['trials_per_min']} trials/min, {s['failed']} failed"
         f"{'' if s.get('boards') is None else ', on %d board(s)' % s['boards']}); "
         f"{s['trials_before'] + s['trials']} trials in the log for this model; "
         f"estimated end to end {est}; log {s['log_dir']}")
    return 0


def _flags(p):
    p.add_argument("model", help="model.onnx, model.pt2, or package.module:factory")
    p.add_argument("--input", "-i", action="append", metavar="NAME:SHAPE[:DTYPE]",
                   help="input name, shape and dtype (needed for module:factory)")
    p.add_argument("--target", "-t", default="host", help="target name (see 'edgec targets')")
    p.add_argument("--trials", "-n", type=int, default=64,
                   help="trials to run (with --resume: total for this model, counting the log)")
    p.add_argument("--log-dir", help="tuning log directory (default: tuning_logs/<target>)")
    p.add_argument("--resume", action="store_true",
                   help="treat --trials as the model's total and run only what the log lacks")
    p.add_argument("--status", action="store_true", help="show per-task trials and best latency")
    p.add_argument("--tracker", metavar="HOST:PORT", help="RPC tracker to measure on a board")
    p.add_argument("--key", help="board key at the tracker (default: the target's rpc_key)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds a board may stay silent (reaching it, or measuring the next "
                        "candidate) before the tune stops with the records so far (default 60)")
    p.add_argument("--seed", type=int, default=0, help="search seed")
    p.add_argument("--json", action="store_true", help="machine-readable summary")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument("--no-warm-start", action="store_true",
                   help="start new workloads from random schedules instead of first measuring "
                        "the log's schedules of similar workloads")
    trust_flag(p)
    layout_flags(p)
    prune_flags(p)  # tune what 'edgec compile' with the same flags builds
    int8_flags(p)


cmd_tune.configure = _flags


def _kernels(args):
    from edgec.compiler.config import KernelOptions

    return KernelOptions(args.conv_layout, args.winograd, args.pad_channels, args.prepack_weights,
                         args.fast_math)
