"""Schedule transfer: a task with no record of its own borrows a similar task's schedule.

A tuning log only matches workloads exactly (structural hash), so a model that changes one
layer's width (hidden 128 -> 256) gets that layer on TVM's default schedule, often 10x
slower than tuned. MetaSchedule schedules are traces of schedule primitives over block and
loop names; the best trace of a workload with the same operators (same blocks, same buffer
ranks and dtypes) usually replays on other shapes. Schedule primitives preserve semantics,
so a trace that replays gives a correct function; one that does not (a tile split that does
not fit the new extents) raises and the next candidate is tried, nearest shapes first. Each
borrowed function is built once before it is used, and the build reports how many tasks
were transferred, so a user knows what to tune next.
"""
from __future__ import annotations

import math
import os

from edgec.compiler.tune.database import RECORDS, WORKLOADS, mean_run_secs, read_rows
from edgec.compiler.tvm_compat import meta_schedule, structural_equal, structural_hash, tvm
from edgec.passes.nchwc_schedule import CONV_BLOCKS


def _best_records(path: str) -> dict:
    """{workload line index: (mean seconds, record json)} of the fastest valid record each."""
    best = {}
    for index, rec in read_rows(os.path.join(path, RECORDS), "tuning record"):
        cost = mean_run_secs(rec[1])
        if cost is not None and (index not in best or cost < best[index][0]):
            best[index] = (cost, rec)
    return best


def _blocks(func) -> tuple:
    """Names of the blocks under the root block (the operators a trace refers to by name)."""
    try:
        sch = tvm.s_tir.Schedule(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}))
        return tuple(sorted(sch.get(b).name_hint
                            for b in sch.get_child_blocks(sch.get_sblock("root"))))
    except Exception:  # noqa: BLE001 - no root block: nothing a trace could name
        return ()


def _buffers(func) -> list:
    """The parameters that are buffers (TVM 0.27: a buffer parameter carries shape/dtype)."""
    return [p for p in func.params if getattr(p, "shape", None) is not None]


def signature(func) -> tuple:
    """What must agree for a trace to be worth replaying: block names, buffer ranks, dtypes."""
    return _blocks(func), tuple((len(b.shape), str(b.dtype)) for b in _buffers(func))


def _prepacks(func) -> bool:
    """Weights marked layout-free (``AttachAttrLayoutFreeBuffers``): tuned with prepacking."""
    return bool(func.attrs is not None and len(func.attrs.get("layout_free_buffers", [])))


def distance(a, b) -> float:
    """Sum of |log ratio| over every buffer dimension (0: identical shapes)."""
    total = 0.0
    for x, y in zip(_buffers(a), _buffers(b)):
        for p, q in zip(x.shape, y.shape):
            total += abs(math.log(max(int(p), 1) / max(int(q), 1)))
    return total


class Donors:
    """The best valid record of every workload in a log, with its function and signature."""
    def __init__(self, path: str):
        ms = meta_schedule()
        rows = read_rows(os.path.join(path, WORKLOADS), "workload")
        self.entries = []
        for index, (cost, rec) in _best_records(path).items():
            workload = ms.database.Workload.from_json(rows[index])
            func = workload.mod["main"]
            self.entries.append((signature(func), func, cost, rec, workload))
        self.memo = {}  # see transferred()

    def transferred(self, func, tvm_target, max_tries: int = 4):
        """``_transfer_one`` memoized per (function, target): a process that compiles one
        model several times (the demo's stages, the tests) replays and checks each once."""
        key = (structural_hash(func), str(tvm_target), max_tries)
        for seen, found in self.memo.get(key, []):
            if structural_equal(seen, func):
                return found
        found = _transfer_one(func, self, tvm_target, max_tries)
        self.memo.setdefault(key, []).append((func, found))
        return found

    def candidates(self, func) -> list:
        """Donor (func, record json, workload) of the same signature, nearest shapes first.

        A prepacking kernel's trace (``PipelineConfig.prepack_weights``) rewrites weight
        layouts inside the kernel: never given to a plain kernel, where that rewrite would
        run on every call. A plain trace fits both. A blocked conv gets none: its tile is
        sampled from candidates of its own shape, and without a record it takes the
        heuristic tile (``nchwc_schedule``), not another shape's."""
        sig, packs = signature(func), _prepacks(func)
        if set(CONV_BLOCKS) & set(sig[0]):
            return []
        same = [e for e in self.entries if e[0] == sig and (packs or not _prepacks(e[1]))]
        same.sort(key=lambda e: (distance(func, e[1]), e[2]))
        return [(e[1], e[3], e[4]) for e in same]


def fit_tile(extent: int, decision) -> list:
    """A tile decision for a loop of ``extent``: keep the donor's inner factors (its micro
    kernel) as far as they divide, the outermost factor takes the rest.
    [16, 8, 2] on 256 -> [16, 8, 2] (same extent); on 512 -> [32, 8, 2]; on 96 -> [6, 8, 2]."""
    out, rest = [1] * len(decision), int(extent)
    for i in range(len(decision) - 1, 0, -1):
        out[i] = math.gcd(int(decision[i]), rest)
        rest //= out[i]
    out[0] = rest
    return out


def replay_schedule(func, rec, workload):
    """A Schedule of ``func`` made by replaying ``rec``'s trace, or None when the trace does
    not fit it.

    Tile sizes are refitted to the new loop extents while replaying (a donor's decisions
    only divide its own shapes); every other decision is replayed as recorded.
    """
    ms = meta_schedule()
    # A TIR schedule rewrites uniquely held statement nodes in place, and ``func``'s body is
    # shared with its module: schedule a deep copy (MetaSchedule's DeepCopyIRModule does
    # the same), or a replay, even a failed one, mutates the caller's function.
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    sch = tvm.s_tir.Schedule(tvm.ir.load_json(tvm.ir.save_json(mod)))

    def refit(inst, inputs, attrs, decision):
        if inst.kind.name == "SamplePerfectTile" and decision is not None:
            return fit_tile(sch.get(inputs[0]).extent, decision)
        return decision

    try:
        trace = ms.database.TuningRecord.from_json(rec, workload).trace
        trace.apply_to_schedule(sch, remove_postproc=False, decision_provider=refit)
        return sch
    except Exception:  # noqa: BLE001 - TVM raises its own error types for a misfit trace
        return None


def seed_schedules(func, donors: "Donors", limit: int = 4) -> list:
    """Schedules of ``func`` replayed from its nearest donors (at most ``limit``): the
    warm start of a tuning run for a workload the log has no record of (``tune``)."""
    out = []
    for _donor, rec, workload in donors.candidates(func):
        sch = replay_schedule(func, rec, workload)
        if sch is not None:
            out.append(sch)
        if len(out) == limit:
            break
    return out


def _builds(func, tvm_target) -> bool:
    try:
        tvm.compile(tvm.IRModule({"main": func}), target=tvm_target)
        return True
    except Exception:  # noqa: BLE001
        return False


_CACHE: dict = {}  # (log path, size, mtime) -> Donors: a process parses a log once


def donors_of(path: str) -> Donors | None:
    """The log's donors, parsed once per process and log version (a build that compiles
    several models, like the demo or the tests, pays the parse once); None without records."""
    if not os.path.exists(os.path.join(path, RECORDS)):
        return None
    stat = os.stat(os.path.join(path, RECORDS))
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = Donors(path)
    return _CACHE[key]


def transfer_schedules(mod, path: str, tvm_target, max_tries: int = 4):
    """Schedule every still-unscheduled PrimFunc of ``mod`` with a similar workload's best
    trace from the log at ``path``. Returns (module, [{task, distance} per transfer])."""
    todo = [(gv, f) for gv, f in mod.functions.items()
            if isinstance(f, tvm.tirx.PrimFunc) and not is_scheduled(f)]
    donors, done = (donors_of(path) if todo else None), []
    if donors is None:
        return mod, []
    mod = mod.clone()  # IRModule updates in place: leave the caller's module as it was
    for gv, func in todo:
        found = donors.transferred(func, tvm_target, max_tries)
        if found is None:
            continue
        new, dist = found
        new = new.without_attr("global_symbol")
        if func.attrs is not None and "global_symbol" in func.attrs:
            new = new.with_attr("global_symbol", func.attrs["global_symbol"])
        mod[gv] = new.with_attr("tirx.is_scheduled", True)
        done.append({"task": gv.name_hint, "distance": dist})
    return mod, done


def _transfer_one(func, donors: Donors, tvm_target, max_tries: int):
    """(scheduled func, distance) from the first of the nearest donors whose trace replays
    on ``func`` and builds, or None."""
    for donor, rec, workload in donors.candidates(func)[:max_tries]:
        sch = replay_schedule(func, rec, workload)
        if sch is not None and _builds(sch.mod["main"], tvm_target):
            return sch.mod["main"], round(distance(func, donor), 3)
    return None


def is_scheduled(func) -> bool:
    """A PrimFunc already scheduled (by a record, a transfer, or edgec's own kernels)."""
    return bool(func.attrs and func.attrs.get("tirx.is_scheduled", False))
