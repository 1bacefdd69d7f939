"""``edgec prune-plan``: plan structured channel pruning and show what it saves."""
from __future__ import annotations

import os

from edgec.compiler.deploy.artifact import write_json_atomic
from edgec.compiler.cli import command, emit
from edgec.compiler.errors import EdgecError


def load_model(model: str, inputs):
    """Import a .onnx/.pt2 file or a ``module:factory`` (which needs ``inputs``)."""
    from edgec.compiler.frontend import import_model
    from edgec.compiler.specs import load_factory, parse_input_spec

    specs = [parse_input_spec(s) for s in inputs or []]
    if not os.path.splitext(model)[1] and ":" in model:
        import torch

        if not specs:
            raise EdgecError("a module:factory model needs --input NAME:SHAPE[:DTYPE] for each input")
        example = tuple(torch.zeros(s.shape, dtype=getattr(torch, s.dtype)) for s in specs)
        return import_model(load_factory(model), example, specs)
    return import_model(model, None, specs or None)


def plan_table(plan) -> str:
    """The plan as text: one row per group, then totals and the unprunable groups."""
    width = max([len(g.name) for g in plan.groups] + [5])
    rows = [f"{'group':<{width}}  {'kept':>11}  {'MACs saved':>12}  {'params saved':>12}"]
    for g in plan.groups:
        rows.append(f"{g.name:<{width}}  {len(g.keep):>5}/{g.channels:<5}  "
                    f"{g.macs_saved:>12,}  {g.params_saved:>12,}")
    mr = plan.macs_after / max(plan.macs_before, 1)
    pr = plan.params_after / max(plan.params_before, 1)
    rows.append(f"MACs {plan.macs_before:,} -> {plan.macs_after:,} ({mr:.1%}); "
                f"params {plan.params_before:,} -> {plan.params_after:,} ({pr:.1%}); "
                f"criterion {plan.criterion}, ratio {plan.ratio}, scope {plan.scope}, "
                f"multiple {plan.multiple}")
    rows += [f"not pruned: {name}: {reason}" for name, reason in plan.skipped]
    return "\n".join(rows)


@command("prune-plan", "plan channel pruning: groups, kept channels, MACs and parameter savings")
def cmd_prune_plan(args):
    from edgec.passes.prune_plan import make_plan

    from edgec.compiler.outputs import check_outputs
    from edgec.compiler.pt2_check import trusting

    check_outputs({"--output": args.output},
                  {"MODEL": args.model if os.path.exists(args.model) else None})
    with trusting(args.trust_model):
        model = load_model(args.model, args.input)
    plan = make_plan(model, args.ratio, args.criterion, args.scope, args.multiple,
                     args.min_channels, args.target)
    if args.output:
        write_json_atomic(args.output, plan.to_json())
    text = plan_table(plan) + (f"\nwrote {args.output}" if args.output else "")
    emit(args, plan.to_json(), text)


def _flags(p):
    p.add_argument("model", help="model.onnx, model.pt2, or package.module:factory")
    p.add_argument("--ratio", "-r", type=float, default=0.5, help="fraction of channels to remove")
    p.add_argument("--criterion", "-c", default="l1", help="importance: l1, l2 or bn_scale")
    p.add_argument("--scope", default="layer", help="layer (same ratio per group) or global")
    p.add_argument("--multiple", type=int, help="round kept counts to this multiple "
                   "(default: the target's fp32 vector lanes)")
    p.add_argument("--min-channels", type=int, default=1, help="keep at least this many per group")
    p.add_argument("--target", "-t", default="host", help="target whose vector width sets --multiple")
    p.add_argument("--input", "-i", action="append", metavar="NAME:SHAPE[:DTYPE]",
                   help="input name, shape and dtype (needed for module:factory models)")
    p.add_argument("--output", "-o", metavar="PLAN.json", help="write the plan as JSON")
    from edgec.compiler.cli.commands import trust_flag

    trust_flag(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")


cmd_prune_plan.configure = _flags
