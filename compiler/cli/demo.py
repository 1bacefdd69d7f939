"""``edgec demo`` and ``edgec optimize``: the edge-classifier scenario, with its report."""
from __future__ import annotations

import os
import shlex
import sys
import warnings

from edgec.compiler.cli import command, emit
from edgec.compiler.errors import EdgecError

EXIT_BUDGET = 3  # optimize ran, but a stage missed the accuracy budget


def _flags(p, out_default):
    p.add_argument("--target", "-t", default="host",
                   help="target name (see 'edgec targets'); without --tracker it must run on "
                        "this machine")
    p.add_argument("--tracker", metavar="HOST:PORT", help="an RPC tracker with the target's "
                   "board: accuracy, exits and latency of the compiled stages are measured on it")
    p.add_argument("--key", help="the board's key at the tracker (default: the target's rpc_key)")
    p.add_argument("--timeout", type=float, default=120.0, help="with --tracker: seconds the "
                   "board may stay silent in any one step before the run stops (default 120)")
    p.add_argument("--out", "-o", default=out_default, help="output folder (report, plots, "
                   "artifacts, and the cache of trained models)")
    p.add_argument("--fresh", action="store_true", help="ignore cached stages and redo them")
    p.add_argument("--seed", type=int, default=0, help="seed of the data split and training")
    p.add_argument("--tune-trials", type=int, metavar="N", help="tune every compiled stage for N "
                   "MetaSchedule trials (total per stage, resumable) into OUT/tuning_logs/")
    p.add_argument("--power-cmd", metavar="CMD", help="a command printing a power reading; run "
                   "before and after each stage's timed run and recorded in the report")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress, print nothing on success")


def _calm_warnings() -> None:
    """Hide library chatter (torch deprecations, fit's loss conversion) from the demo's output."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True")


def _command_line() -> str:
    return shlex.join(["edgec", *sys.argv[1:]])


def _finish(args, result) -> int:
    from edgec.compiler.demo.report import publish
    from edgec.compiler.demo.report_md import goals_section, summary_section

    report = publish(result)
    files = report["files"]
    drawn = sum(1 for p in report["plots"].values() if p.get("path"))
    best = report["best_artifact"]
    text = "\n".join(summary_section(report)[2:-2] + [""] + goals_section(report)[2:] + [
        "", f"wrote {files['markdown']}, {files['json']} and {drawn} plot(s) in "
            f"{os.path.join(args.out, 'plots')}"
            + (f"; result {best['path']} ({best['stage']})" if best else "")])
    emit(args, report, text)
    if result.stopped:
        kept = f"; kept the best artifact {best['path']} ({best['stage']})" if best else ""
        print(f"edgec: accuracy budget not met: {result.stopped}{kept}", file=sys.stderr)
        return EXIT_BUDGET
    return 0


def _board(args) -> dict:
    """RunConfig's board fields: the tracker, and the key (default: the target's rpc_key)."""
    if not args.tracker:
        if args.key:
            raise EdgecError("--key needs --tracker HOST:PORT")
        return {}
    from edgec.compiler.deploy.rpc import parse_addr
    from edgec.targets import get_target

    parse_addr(args.tracker, "tracker address")
    if not args.timeout > 0:
        raise EdgecError(f"--timeout must be positive seconds, got {args.timeout}")
    return {"tracker": args.tracker, "key": args.key or get_target(args.target).rpc_key,
            "board_timeout": args.timeout}


@command("demo", "the edge-classifier demo on real MNIST digits: train, compress, compile, "
                 "benchmark every stage, and write a report with plots")
def cmd_demo(args):
    from edgec.compiler.demo.context import RunConfig
    from edgec.compiler.demo.story import run

    _calm_warnings()
    if args.epochs is not None and args.epochs < 0:
        raise EdgecError(f"--epochs must be 0 or more, got {args.epochs}")
    _check_trials(args)
    _check_paths(args)
    config = RunConfig(target=args.target, out=args.out, quick=args.quick, fresh=args.fresh,
                       epochs=args.epochs, seed=args.seed, quiet=args.quiet,
                       power_cmd=args.power_cmd, tune_trials=args.tune_trials or 0,
                       command=_command_line(), **_board(args))
    return _finish(args, run(config))


def _demo_flags(p):
    p.add_argument("--quick", action="store_true", help="fewer epochs and benchmark rounds")
    p.add_argument("--epochs", type=int, help="training epochs of the dense model "
                   "(default 8, or 2 with --quick)")
    _flags(p, "edgec-demo")


cmd_demo.configure = _demo_flags


def _compress_request(args) -> list:
    """The compression stages asked for; refuses, naming what is missing, those not in this build."""
    from edgec.compiler.demo.context import module_exists
    from edgec.compiler.demo.stages import NEEDS, RUNS, STAGE_EXITS, STAGE_INT8, STAGE_PRUNED

    if args.prune is not None and not 0.0 < args.prune < 1.0:
        raise EdgecError(f"--prune takes the fraction of channels to remove, between 0 and 1; "
                         f"got {args.prune}")
    wanted = [(f"--prune {args.prune}", STAGE_PRUNED, args.prune is not None),
              ("--int8", STAGE_INT8, args.int8), ("--early-exit", STAGE_EXITS, args.early_exit)]
    out = []
    for flag, stage, asked in wanted:
        missing = [m for m in NEEDS[stage] if not module_exists(m)] if asked else []
        if missing:
            raise EdgecError(f"{flag} needs {', '.join(missing)}, which this build of edgec "
                             "does not have yet")
        if asked and RUNS[stage] is None:
            raise EdgecError(f"{flag}: its stage is not wired into 'edgec optimize' yet")
        out += [stage] if asked else []
    _check_trials(args)
    return out


def _check_paths(args) -> None:
    """Before the stages run: --power-cmd parses, and the output folder can be written."""
    from edgec.compiler.outputs import check_writable
    from edgec.compiler.demo.power import check_power_cmd

    check_power_cmd(args.power_cmd)
    check_writable(os.path.join(args.out, "report.json"), "--out")


def _check_trials(args) -> None:
    from edgec.compiler.demo.context import module_exists
    from edgec.compiler.demo.stages import TUNE_MODULE

    if args.tune_trials is not None and args.tune_trials < 1:
        raise EdgecError(f"--tune-trials must be a positive number of trials, got {args.tune_trials}")
    if args.tune_trials and not module_exists(TUNE_MODULE):
        raise EdgecError(f"--tune-trials needs {TUNE_MODULE} (MetaSchedule tuning), which this "
                         "build of edgec does not have yet")


@command("optimize", "train/evaluate, compress and compile your own model on your data, "
                     "within an accuracy budget, with the same report as the demo")
def cmd_optimize(args):
    from edgec.compiler.demo.context import RunConfig
    from edgec.compiler.demo.story import run

    _calm_warnings()
    if not args.model.endswith(".pt2") and ":" not in args.model:
        raise EdgecError(f"bad MODEL {args.model!r}; expected package.module:factory or a .pt2 file")
    if args.epochs < 0 or args.accuracy_budget < 0:
        raise EdgecError("--epochs and --accuracy-budget must be 0 or more")
    compress = _compress_request(args)
    _check_paths(args)
    config = RunConfig(target=args.target, out=args.out, data=args.data, model=args.model,
                       fresh=args.fresh, epochs=args.epochs, seed=args.seed, quiet=args.quiet,
                       power_cmd=args.power_cmd, accuracy_budget=args.accuracy_budget,
                       prune=args.prune, tune_trials=args.tune_trials or 0,
                       command=_command_line(), mode="optimize", **_board(args))
    from edgec.compiler.pt2_check import trusting

    with trusting(args.trust_model):
        return _finish(args, run(config, compress))


def _optimize_flags(p):
    p.add_argument("model", metavar="MODEL", help="package.module:factory (returns a "
                   "torch.nn.Module; the current folder is importable) or a .pt2 program")
    p.add_argument("--data", required=True, help="mnist, a .npz (x, y or x_train/y_train/...), "
                   "or an image folder with one subfolder per class")
    p.add_argument("--accuracy-budget", type=float, default=1.0, metavar="POINTS",
                   help="test top-1 points a compressed stage may lose against dense (default 1.0)")
    p.add_argument("--epochs", type=int, default=0, help="train the dense model first for N "
                   "epochs (default 0: take its weights as trained)")
    p.add_argument("--prune", type=float, metavar="R", help="prune this fraction of channels")
    p.add_argument("--int8", action="store_true", help="quantize to INT8")
    p.add_argument("--early-exit", action="store_true", help="add early exits")
    from edgec.compiler.cli.commands import trust_flag

    trust_flag(p)
    _flags(p, "edgec-optimize")


cmd_optimize.configure = _optimize_flags
