"""Early-exit options of ``edgec compile`` and threshold calibration on a data set.

``--early-exit`` with ``--exit-thresholds 0.9,0.8`` bakes thresholds in;
``--calibrate-exits DATA --accuracy-budget 1.0`` chooses them on DATA's
validation split (compiled on this machine, no torch needed); ``--thresholds-as-input``
makes them a runtime input (the chosen values become its defaults).
"""
from __future__ import annotations

from dataclasses import replace

from edgec.compiler.errors import EdgecError


def add_exit_flags(p) -> None:
    """Add the early-exit flags to the ``compile`` parser."""
    g = p.add_argument_group("early exit (a model whose outputs are exit logits..., final logits)")
    g.add_argument("--early-exit", action="store_true", help="split at the exits; leave early "
                   "when confident")
    g.add_argument("--exit-thresholds", metavar="T1,T2,...", help="one threshold in [0, 1] per exit")
    g.add_argument("--calibrate-exits", metavar="DATA", help="choose thresholds on DATA's validation "
                   "split (mnist, .npz, image folder)")
    g.add_argument("--accuracy-budget", type=float, default=1.0, metavar="POINTS",
                   help="max top-1 loss vs never exiting, for --calibrate-exits (default 1.0)")
    g.add_argument("--exit-criterion", default="max_prob", choices=("max_prob", "entropy"))
    g.add_argument("--thresholds-as-input", action="store_true",
                   help="thresholds become an 'exit_thresholds' input of the library")


def parse_thresholds(text: str) -> tuple:
    """``"0.9,0.8"`` -> (0.9, 0.8), each checked to lie in [0, 1]."""
    from edgec.passes.exit_plan import check_thresholds

    return check_thresholds(t.strip() for t in text.split(",") if t.strip())


def exit_config(args, config, model, example, specs, quiet: bool = False):
    """``config`` with the early-exit fields the flags ask for (calibrating if asked)."""
    if not args.early_exit:
        if args.exit_thresholds or args.calibrate_exits or args.thresholds_as_input:
            raise EdgecError("exit options need --early-exit")
        return config
    if args.exit_thresholds and args.calibrate_exits:
        raise EdgecError("give either --exit-thresholds or --calibrate-exits, not both")
    thresholds = parse_thresholds(args.exit_thresholds) if args.exit_thresholds else None
    if args.calibrate_exits:
        from edgec.compiler.frontend import import_model
        from edgec.compiler.data import load_dataset
        from edgec.compiler.exit_calibration import calibrate_relax_model  # (loads TVM)

        relax_model = import_model(model, example, specs)
        data = load_dataset(args.calibrate_exits)
        cal = calibrate_relax_model(relax_model, data.val, args.accuracy_budget,
                                    args.exit_criterion, quiet=quiet)
        thresholds = cal.thresholds
        if not quiet:
            print(f"calibrated exits on {data.name} val ({len(data.val)} samples): thresholds "
                  f"{[round(t, 4) for t in thresholds]}, exit rates "
                  f"{[round(r, 3) for r in cal.exit_rates]}, accuracy {cal.accuracy:.2f}% "
                  f"(never exiting {cal.full_accuracy:.2f}%), expected speedup {cal.speedup:.2f}x (MACs)")
    return replace(config, early_exit=True, exit_thresholds=thresholds,
                   exit_criterion=args.exit_criterion, thresholds_as_input=args.thresholds_as_input)
