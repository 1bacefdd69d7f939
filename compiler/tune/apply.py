"""Applying tuning to a lowered module: every record of the target's log that matches a
kernel's workload, and a transferred schedule for kernels with none (the pipeline's
``tune`` step; ``edgec tune`` writes the records)."""
from __future__ import annotations

import os
import tempfile

from edgec.compiler.tune.database import count_records, digest, log_dir_for, open_subset, TuningLogError
from edgec.compiler.tune.measure import prepare
from edgec.compiler.tune.transfer import is_scheduled, transfer_schedules
from edgec.compiler.tvm_compat import relax, structural_hash, tvm
from edgec.passes.int8_kernels import HAND_ATTR


def apply_tuning(mod, target, logs: str, transfer: bool = True):
    """The pipeline's tuning phase: apply every matching record of the target's log.

    logs: "auto" (``tuning_logs/<tuning_key>``, skipped if absent) or a log directory.
    transfer: tasks with no record borrow a similar workload's schedule (``tune.transfer``).
    Returns (module, manifest dict: logs used, records, tasks tuned / transferred / left
    on defaults).
    """
    path = log_dir_for(target) if logs == "auto" else logs
    if logs != "auto" and not os.path.isdir(path):
        raise TuningLogError(f"tuning log directory not found: {path}")
    name = os.path.basename(os.path.normpath(path))
    total, hand = count_tasks(mod), count_tasks(mod, hand=True)
    info = {"applied": False, "logs": [], "records": 0, "tasks": total, "tuned": 0,
            "transferred": 0, "default": total, "hand_scheduled": hand,
            "summary": f"no tuning log for {target.tuning_key}: {total} tasks on default schedules"}
    if not os.path.isdir(path):
        return mod, info
    tvm_target = target.tvm_target()
    with tempfile.TemporaryDirectory(prefix="edgec-db-") as scratch:
        db, n = open_subset(path, target, workload_hashes(mod), scratch)
        if db is not None:
            prepare(tvm_target)
            with tvm_target, db:
                mod = relax.transform.MetaScheduleApplyDatabase()(mod)
    exact = count_tasks(mod, scheduled=True)
    moved = []
    if transfer and exact < total:
        mod, moved = transfer_schedules(mod, path, tvm_target)
    tuned = exact + len(moved)
    info.update(applied=tuned > 0, logs=[name], records=n, tuned=exact, transferred=len(moved),
                transferred_tasks=moved, default=total - tuned,
                log_records=count_records(path), digest=digest(path))
    info["summary"] = (f"{exact} of {total} tasks tuned from log {name} ({n} matching of "
                       f"{info['log_records']} records), {len(moved)} with a schedule transferred "
                       f"from a similar workload, {total - tuned} on default schedules"
                       + (f"; {hand} hand-scheduled int8 kernels" if hand else ""))
    return mod, info


def workload_hashes(mod) -> set:
    """Structural hashes of the module's PrimFuncs, normalised as MetaSchedule keys them."""
    return {str(structural_hash(tvm.IRModule({"main": f.with_attr("global_symbol", "main")})))
            for _, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


def count_tasks(mod, scheduled: bool = False, hand: bool = False) -> int:
    """Tasks (PrimFuncs other than edgec's hand-scheduled kernels), the scheduled ones
    only with ``scheduled``; with ``hand``: the hand-scheduled kernels."""
    n = 0
    for _, f in mod.functions.items():
        if isinstance(f, tvm.tirx.PrimFunc) and is_hand_scheduled(f) == hand:
            n += 1 if (hand or is_scheduled(f) or not scheduled) else 0
    return n

def is_hand_scheduled(func) -> bool:
    return func.attrs is not None and HAND_ATTR in func.attrs
