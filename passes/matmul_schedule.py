"""A heuristic schedule for the matmuls tuning left unscheduled (a classifier's GEMV).

TVM's default schedule of a fused ``matmul -> bias add -> relu`` is its plain loop nest:
one output at a time, the reduction innermost and the weight (K, N) read down a column,
a stride of N floats per step. The MNIST CNN's untuned 3136 x 128 classifier took 0.60 ms
of its 0.69 ms that way. Here the output columns are split into vector-wide blocks with
the reduction outside them, so each step streams one contiguous row of the weight into
one accumulator register per block; the fused bias and activation are applied as the
block leaves the registers. Like the blocked convs' heuristic tile
(``nchwc_schedule.apply_default_schedules``) it only fills in where no record applies.
"""
from __future__ import annotations

from edgec.compiler.tvm_compat import tvm
from edgec.passes.nchwc_schedule import TILE_SCOPE, consumer_chain

# Below this many multiply-accumulates the columns run on one thread (waking the pool
# costs more than it saves: see ``int8_kernels.PARALLEL_MACS``).
PARALLEL_MACS = 1 << 20
DATA_PAR, COMM_REDUCE = 0, 2  # tirx.IterVar's iteration kinds


def _matmul_block(sch):
    """The 2-D ``matmul`` block (M, N, K: spatial, spatial, reduce) of ``sch``, or None."""
    try:
        block = sch.get_sblock("matmul")
    except Exception:  # noqa: BLE001 - get_sblock raises when the name is absent
        return None
    kinds = [int(iv.iter_type) for iv in sch.get(block).iter_vars]
    return block if kinds == [DATA_PAR, DATA_PAR, COMM_REDUCE] else None


def schedule_matmul(func, lanes: int):
    """``func`` with vector-wide column blocks if it is an unscheduled 2-D matmul whose
    columns divide by 4 or more lanes; otherwise ``func`` as it is."""
    from tvm import s_tir


    if func.attrs is not None and "tirx.is_scheduled" in func.attrs:
        return func
    sch = s_tir.Schedule(func)
    block = _matmul_block(sch)
    if block is None:
        return func
    i, j, k = sch.get_loops(block)
    m, n, kk = (int(sch.get(x).extent) for x in (i, j, k))
    width = next((w for w in (lanes, lanes // 2, 4) if w >= 4 and n % w == 0), None)
    if width is None:
        return func
    blocks = n // width  # up to 4 accumulators per row of the weight (its reads contiguous)
    group = next(g for g in (4, 2, 1) if blocks % g == 0 and (blocks // g >= 2 or g == 1))
    jo, jc, ji = sch.split(j, [None, group, width])
    sch.reorder(i, jo, k, jc, ji)
    sch.unroll(jc)
    acc = sch.cache_write(block, 0, TILE_SCOPE)
    sch.reverse_compute_at(acc, jo)
    for consumer in consumer_chain(sch, acc):  # the fused bias add, activation
        sch.reverse_compute_inline(consumer)
    sch.vectorize(sch.get_loops(acc)[-1])
    sch.vectorize(ji)  # before the init is split off: the update alone is not complete
    if m * n * kk >= PARALLEL_MACS and blocks // group >= 2:
        # before the init is split off too: ``parallel`` checks that every block under the
        # loop is complete or a reduction with its init, which the bare update is not.
        # (Done after it, this raised for every GEMV above PARALLEL_MACS, and those kept
        # TVM's column-strided default: alexnet's 9216 x 4096 took 317 ms instead of ~5.)
        sch.parallel(sch.fuse(i, jo))
    init = sch.decompose_reduction(block, k)
    sch.vectorize(sch.get_loops(init)[-1])
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def apply_default_matmuls(mod: tvm.IRModule, lanes: int) -> tuple[tvm.IRModule, int, list]:
    """Schedule every 2-D matmul kernel tuning left unscheduled; returns (module, the count,
    the kernels the schedule could not take, each with TVM's reason: they keep TVM's
    default schedule, slow but correct, and the manifest lists them)."""
    done, skipped = 0, []
    for gv, func in list(mod.functions.items()):
        if isinstance(func, tvm.tirx.PrimFunc):
            try:
                new = schedule_matmul(func, lanes)
            except Exception as e:  # noqa: BLE001 - e.g. a fused epilogue that does not
                # inline (a broadcast into a larger tensor): TVM's default stays, said so
                reason = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
                skipped.append({"kernel": gv.name_hint, "reason": f"{type(e).__name__}: "
                                                                  f"{reason[:200]}"})
                continue
            if not new.same_as(func):
                mod[gv] = new
                done += 1
    return mod, done, skipped
