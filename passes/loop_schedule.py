"""A default schedule for the kernels no other rule schedules: pools, means, concats,
layout transforms, standalone elementwise ops, an INT8 build's quantize and dequantize.

Untuned, TVM compiles such a kernel as its plain loop nest: one thread, and for a pool
the window innermost, so nothing vectorizes. squeezenet1_1's blocked 3x3 max pool
(64 channels, 111 x 111 -> 55 x 55) took 374 us that way on the AVX-512 Xeon, 5% of the
untuned model, where ONNX Runtime runs the whole network in 3.8 ms.

Per kernel, once its pads and elementwise producers are inlined into the one block left:

- the innermost spatial loop runs as one vector when it is the output's contiguous axis,
  every input reads it as it is (a channel block; not a row read through a window) and
  it is short (a longer one splits into vector-wide pieces when they divide it), with a
  pool's window loops moved outside it;
- the spatial loops outside it are fused and run in parallel when the kernel does enough
  work (``PARALLEL_WORK``): waking the thread pool costs more than a small loop.

A kernel that something already scheduled (a tuning record, a register tile, a packed
int8 kernel: any loop already parallel, vectorized or unrolled, or the function marked
scheduled) is left as it is; so is one whose reduction reads two tensors (a conv or a
matmul the other rules did not take: a loop order alone is not their schedule).
"""
from __future__ import annotations

import math

from edgec.compiler.tvm_compat import s_tir, tvm

PARALLEL_WORK = 1 << 15  # output elements x reduction steps; below it, one thread
MAX_VECTOR = 64  # elements: the longest inner loop run as a single vector
SPATIAL, REDUCE = 0, 2  # tirx.IterVar's iteration kinds (DataPar, CommReduce)


def is_scheduled(func, sch=None) -> bool:
    """Marked scheduled, or any loop already parallel, vectorized, unrolled or bound."""
    if func.attrs is not None and "tirx.is_scheduled" in func.attrs:
        return True
    sch = sch or s_tir().Schedule(func)
    serial = tvm.tirx.ForKind.SERIAL
    return any(sch.get(loop).kind != serial
               for block in sch.get_child_blocks(sch.get_sblock("root"))
               for loop in sch.get_loops(block))


def _blocks(sch) -> list:
    """Inline every block that can be into the others; the blocks left."""
    root = sch.get_sblock("root")
    while True:
        blocks = sch.get_child_blocks(root)
        for b in blocks[:-1]:
            try:
                sch.compute_inline(b)
                break
            except Exception:  # noqa: BLE001 - TVM raises ScheduleError: not inlinable
                continue
        else:
            return blocks


def schedule_loops(func, lanes: int):
    """``func`` with parallel outer loops and a vector inner loop (see the module doc), or
    ``func`` as it is when it is scheduled already or not a plain loop nest: one block, or
    a reduction and the elementwise op after it (a mean's division)."""
    if not isinstance(func, tvm.tirx.PrimFunc):
        return func
    sch = s_tir().Schedule(func)
    if is_scheduled(func, sch):
        return func
    blocks = _blocks(sch)
    epilogue = blocks[1] if len(blocks) == 2 else None
    if not blocks or len(blocks) > 2 or (epilogue is not None and not _spatial(sch, epilogue)):
        return func
    block = blocks[0]
    stmt = sch.get(block)
    kinds = [int(iv.iter_type) for iv in stmt.iter_vars]
    loops = sch.get_loops(block)
    if len(loops) != len(kinds) or not kinds or any(k not in (SPATIAL, REDUCE) for k in kinds):
        return func
    n_spatial = kinds.index(REDUCE) if REDUCE in kinds else len(kinds)
    if SPATIAL in kinds[n_spatial:] or (epilogue is not None and n_spatial == len(kinds)):
        return func  # spatial loops after the reduction: not a plain pool or mean
    if n_spatial < len(kinds) and len(stmt.reads) != 1:
        return func  # a reduction over two tensors (conv, matmul): not this rule's
    extents = [int(sch.get(loop).extent) for loop in loops]
    spatial, reduce = list(loops[:n_spatial]), list(loops[n_spatial:])
    if not spatial:
        return func
    work = math.prod(extents)
    inner = _vector_loop(sch, stmt, spatial[-1], extents[n_spatial - 1], lanes)
    changed = inner is not None
    if inner is not None:
        outer = spatial[:-1] + inner[:-1]  # a split's outer piece runs with the others
        if reduce:  # the window outside the vector: each step reads one vector of input
            sch.reorder(*outer, *reduce, inner[-1])
        sch.vectorize(inner[-1])
    else:
        outer = spatial
    if work >= PARALLEL_WORK and outer:
        # before the init is split off: ``parallel`` wants every block under the loop
        # complete, or a reduction with its init (``matmul_schedule`` says the same)
        outer = [sch.fuse(*outer) if len(outer) > 1 else outer[0]]
        sch.parallel(outer[0])
        changed = True
    if not changed:
        return func
    if epilogue is not None and outer:
        sch.reverse_compute_at(epilogue, outer[0])
        last = sch.get_loops(epilogue)[-1]
        if inner is not None and 4 <= int(sch.get(last).extent) <= MAX_VECTOR:
            sch.vectorize(last)
    if reduce:
        init = sch.decompose_reduction(block, reduce[0])
        if inner is not None:
            sch.vectorize(sch.get_loops(init)[-1])
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def _spatial(sch, block) -> bool:
    return all(int(iv.iter_type) == SPATIAL for iv in sch.get(block).iter_vars)


def _vector_loop(sch, stmt, loop, extent: int, lanes: int):
    """[loop] when it runs as one vector, [outer, vector] after a split into vector-wide
    pieces, or None: it must index the output's last axis (contiguous writes)."""
    writes = stmt.writes
    if len(writes) != 1:
        return None
    last = writes[0].region[-1].min
    spatial_vars = [iv.var for iv in stmt.iter_vars if int(iv.iter_type) == SPATIAL]
    if not spatial_vars or not last.same_as(spatial_vars[-1]):
        return None
    if not all(_plain_index(r.min, spatial_vars[-1]) for read in stmt.reads for r in read.region):
        return None
    if 4 <= extent <= MAX_VECTOR:
        return [loop]
    if extent > MAX_VECTOR and extent % lanes == 0:
        return list(sch.split(loop, [None, lanes]))
    return None


def _plain_index(index, var) -> bool:
    """``index`` does not use ``var``, or is ``var`` itself: a read the vector loop makes
    contiguous (or broadcast). An NCHW pool's row read, ``w + window - 1`` under the
    padding test, is not: as a vector it became masked gathers, and googlenet's INT8 3x3
    pools (14 x 14) took 2.7x their scalar time."""
    return index.same_as(var) or not any(
        v.same_as(var) for v in tvm.tirx.analysis.undefined_vars(index, []))


def apply_default_loops(mod: tvm.IRModule, lanes: int) -> tuple[tvm.IRModule, int]:
    """``schedule_loops`` on every kernel of ``mod``; returns (module, kernels scheduled).
    A kernel the rule cannot take keeps TVM's plain loop nest (slow, correct)."""
    done = 0
    for gv, func in list(mod.functions.items()):
        if isinstance(func, tvm.tirx.PrimFunc):
            try:
                new = schedule_loops(func, lanes)
            except Exception:  # noqa: BLE001 - a schedule primitive refused: keep the default
                continue
            if not new.same_as(func):
                mod[gv] = new
                done += 1
    return mod, done
