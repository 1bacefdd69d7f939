"""The schedule of a blocked (NCHW[b]c) conv kernel: a register tile of pixels x channels.

One tile is ``reg_n`` output pixels of a row x ``oc_in`` blocks of b output channels,
accumulated in vector registers (``reg_n * oc_in`` of them) over every input channel and
kernel tap: per step, ``reg_n`` broadcasts of an input value, ``oc_in`` vector loads of
weights and ``reg_n * oc_in`` FMAs, so the loop is FMA-bound (the direct-conv kernel of
oneDNN and MLAS). The fused epilogue (bias, residual add, ReLU) is applied to the tile
as it leaves the registers; rows of tiles run in parallel.

The tile is a choice per workload: ``default_tile`` is a heuristic, and the MetaSchedule
rule ``edgec_conv2d_nchwc`` (see ``register_rule``) samples the tile from the same
candidates, so tuning measures them on the machine and keeps the best in the log.
"""
from __future__ import annotations

from edgec.compiler.tvm_compat import tvm
from edgec.passes.kernels.conv2d_nchwc import DEPTHWISE, RULE

CONV_BLOCKS = ("conv2d_nchwc", "depthwise_conv2d_nchwc", "winograd_bgemm",
               "dwpw_conv2d_nchwc")  # the last: passes.dw_pw_fuse
# accumulator registers a tile may use, by FP32 lanes per vector: AVX2 has 16 ymm registers
# (more than 8 accumulators spilled there); AVX-512 has 32 zmm and folds the input
# broadcast into the FMA's memory operand, so 28 accumulators leave 4 for weights (oneDNN's
# bound too); NEON has 32 q registers but needs one for the broadcast value.
MAX_ACC = {8: 8, 16: 28, 4: 24}
# Register tiles are cached in the "global" scope, not "local": on a CPU, TVM 0.27's
# LowerTVMBuiltin puts only "global" buffers under 1024 bytes on the stack (where LLVM
# promotes them to registers); a "local" tile became a TVMBackendAllocWorkspace /
# FreeWorkspace pair in every iteration of the parallel loop (tests/test_kernel_allocations.py).
TILE_SCOPE = "global"


def max_acc(lanes: int, depthwise: bool) -> int:
    """How many accumulator registers a tile of ``lanes``-wide vectors may hold."""
    limit = MAX_ACC.get(lanes, 8)
    return min(2 * limit, 28) if depthwise else limit


def tile_candidates(out_width: int, oc_chunks: int, depthwise: bool,
                    lanes: int = 8) -> list[tuple[int, int]]:
    """(reg_n, oc_in) tiles: reg_n divides the output width (one pixel only if nothing
    else does), oc_in the channel blocks, and the tile fits ``max_acc`` registers
    (depthwise: one block, more pixels). A width whose divisors are all below 4 that the
    registers cannot hold whole (squeezenet's 13 x 13 classifier conv in 8-lane blocks:
    1000 = 125 x 8, 125 odd) also gets tiles of 4 or more pixels with a tail (a split that
    does not divide): 1 x 1 took 12.5 ms there, 8 x 1 with a tail 3.5 ms."""
    limit = max_acc(lanes, depthwise)
    pix = [d for d in range(2, min(out_width, limit) + 1) if out_width % d == 0] or [1]
    if max(pix) < 4 and out_width > limit:
        pix += list(range(4, limit + 1))
    ocs = [1] if depthwise else [d for d in (1, 2, 4) if oc_chunks % d == 0]
    return [(r, o) for o in ocs for r in pix if r * o <= limit] or [(min(pix), 1)]


def default_tile(out_width: int, oc_chunks: int, depthwise: bool,
                 lanes: int = 8) -> tuple[int, int]:
    """The heuristic tile. With AVX2's 8 accumulators: the most accumulators, then two
    channel blocks, then more pixels (4 x 2 measured best on a 64-channel 56 x 56 3x3 conv
    on AVX2, 2.5 ms vs 2.9 for 8 x 1). With more registers (AVX-512, NEON): two channel
    blocks first (on AVX-512, 14 x 2 beat 7 x 4 and 28 x 1 on 56 x 56 and 14 x 14 convs,
    and 7 x 2 beat 7 x 4 by 1.9x on a 14 x 14 Winograd GEMM)."""
    cands = tile_candidates(out_width, oc_chunks, depthwise, lanes)
    if max_acc(lanes, depthwise) <= 8:
        return max(cands, key=lambda t: (t[0] * t[1], t[1] == 2, t[0]))
    return max(cands, key=lambda t: (t[1] == 2, t[0] * t[1], t[0]))


def find_conv_block(sch):
    """The blocked conv block of a (fused) PrimFunc, or None."""
    for name in CONV_BLOCKS:
        try:
            return sch.get_sblock(name)
        except Exception:  # noqa: BLE001 - get_sblock raises when the name is absent
            continue
    return None


def conv_shape(sch, block) -> tuple[int, int, bool, int]:
    """(output width, output channel blocks, depthwise, lanes per block) of the conv block."""
    shape = [int(sch.get(loop).extent) for loop in sch.get_loops(block)]  # n, oc, y, x, ob, ...
    return shape[3], shape[1], sch.get(block).name_hint.startswith("depthwise"), shape[4]


def schedule_conv(sch, block, reg_n, oc_in, taps_outer: bool = False) -> None:
    """Apply the register-tile schedule to ``block`` (and its pad and epilogue) in place.

    reg_n, oc_in: ints, or a traced schedule's sampled variables (the tuning rule). Every
    block this leaves is marked ``schedule_rule=None``: MetaSchedule's generic rules must
    not re-tile or re-inline them after this rule. taps_outer: loop over the kernel taps
    outside the input channels (else inside, between channel blocks and lanes); for a
    depthwise conv (no channel loop): pad the whole map first (else per output row)."""
    depthwise = sch.get(block).name_hint.startswith("depthwise")
    schedule_gemm_tile(sch, block, reg_n, oc_in, taps_outer and not depthwise)
    rows = sch.get_loops(block)[0]  # (n, channel blocks, output rows), fused and parallel
    _schedule_pad(sch, rows if depthwise and not taps_outer else None)


def schedule_gemm_tile(sch, block, reg_n, oc_in, taps_outer: bool = False,
                       epilogue: bool = True, parallel: str | None = "channels") -> None:
    """The register tile of ``block`` (loops n, oc, y, x, ob, reductions...): reg_n pixels of
    x by oc_in blocks of oc, accumulated in registers; with ``epilogue``, the elementwise
    ops after it are applied as the tile is written back. parallel: "channels" (n, channel
    blocks and rows fused, in parallel), "rows" (n and rows in parallel, the channel blocks
    inside them) or None (the block sits under a parallel loop already: its first loop)."""
    n, oc, y, x, ob, *red = sch.get_loops(block)[0 if parallel else 1:]
    if taps_outer and len(red) == 4:  # icc, kh, kw, icb
        red = [red[1], red[2], red[0], red[3]]
    elif taps_outer and len(red) == 3:  # the stem: ic, kh, kw
        red = [red[1], red[2], red[0]]
    xo, xi = sch.split(x, [None, reg_n])
    oco, oci = sch.split(oc, [None, oc_in])
    if parallel == "rows":
        sch.reorder(n, y, oco, xo, *red, xi, oci, ob)
        sch.parallel(sch.fuse(n, y))
    else:
        sch.reorder(n, oco, y, xo, *red, xi, oci, ob)
        if parallel:
            sch.parallel(sch.fuse(n, oco, y))
    tile = sch.cache_write(block, 0, TILE_SCOPE)
    if epilogue:
        _epilogue(sch, tile, xo)
    # unit loops kept: a traced schedule must have the same loops whatever tile it samples
    sch.reverse_compute_at(tile, xo, preserve_unit_loops=True)
    sch.vectorize(sch.get_loops(tile)[-1])
    sch.unroll(oci)
    sch.unroll(xi)
    sch.vectorize(ob)
    init = sch.decompose_reduction(block, red[0])
    sch.vectorize(sch.get_loops(init)[-1])
    for done in (init, tile):
        sch.annotate(done, "schedule_rule", "None")


def schedule_dw_pw(sch, block, reg_n, oc_in, whole_map: bool = False, dw_reg_n=None) -> None:
    """A fused depthwise -> 1x1 pair (``passes.dw_pw_fuse``): the 1x1 conv's register tile
    with its output rows in parallel (a row needs only that row of the depthwise output),
    and under each row, first the depthwise conv's row (its own register tile, the
    elementwise ops between the two applied as it leaves the registers) into a buffer the
    size of one row, and its padded input rows (``whole_map``: the whole padded map
    first). dw_reg_n: the depthwise tile's pixels (None: the heuristic's)."""
    if dw_reg_n is None:
        width, lanes = _dw_width_lanes(sch)
        dw_reg_n = default_tile(width, 1, True, lanes)[0]
    schedule_gemm_tile(sch, block, reg_n, oc_in, parallel="rows")
    rows = sch.get_loops(block)[0]
    dw = sch.get_sblock(DEPTHWISE)
    between = []
    for c in consumer_chain(sch, dw):
        if sch.get(c).name_hint == sch.get(block).name_hint:
            break
        between.append(c)
    for c in reversed(between):
        sch.compute_at(c, rows, preserve_unit_loops=True)
    sch.compute_at(dw, rows, preserve_unit_loops=True)
    schedule_gemm_tile(sch, dw, dw_reg_n, 1, epilogue=False, parallel=None)
    for c in between:
        sch.reverse_compute_inline(c)
    sch.annotate(dw, "schedule_rule", "None")
    _schedule_pad(sch, None if whole_map else rows)


def _epilogue(sch, tile, xo) -> None:
    """Inline the fused elementwise ops into the tile's write-back; an op that reads the
    tile in another layout (the stem's unblock to NCHW) runs per tile, the rest inline
    into it."""
    _inline_epilogue_dag(sch, tile)
    target = tile
    for consumer in consumer_chain(sch, tile):
        try:
            sch.reverse_compute_inline(consumer)
        except Exception:  # noqa: BLE001 - not a plain elementwise read of the tile
            if target is not tile:
                return
            try:
                sch.reverse_compute_at(consumer, xo, preserve_unit_loops=True)
            except Exception:  # noqa: BLE001 - e.g. a squeeze-excite scale broadcast over a
                return  # whole map: it runs after the conv, as its own loop nest
            sch.annotate(consumer, "schedule_rule", "None")
            target = consumer


def _inline_epilogue_dag(sch, tile) -> None:
    """Inline every elementwise op between the tile and the kernel's output into the ops
    that read it, so the chain below sees one op. An epilogue that reads the conv's output
    twice (hardswish: ``y * clip(y + 3, 0, 6) / 6``, after every conv of a MobileNetV3)
    is a graph, not a chain: its ops were left as separate whole-map loop nests, scalar
    and on one thread."""
    order, frontier = [], list(sch.get_consumers(tile))
    while frontier:
        block = frontier.pop(0)
        if any(sch.get(block).same_as(sch.get(b)) for b in order):
            continue
        order.append(block)
        frontier.extend(sch.get_consumers(block))
    if all(len(sch.get_consumers(b)) <= 1 for b in order):
        return  # a chain (bias, ReLU, residual add): the loop below inlines it as it is
    for block in order:
        if sch.get_consumers(block):  # not the kernel's output
            try:
                sch.compute_inline(block)
            except Exception:  # noqa: BLE001 - not elementwise (a broadcast, a reduction)
                continue


def consumer_chain(sch, block) -> list:
    """The elementwise ops fused after the conv, in order (each has one consumer or none)."""
    chain, cur = [], block
    while True:
        consumers = sch.get_consumers(cur)
        if len(consumers) != 1:
            return chain
        cur = consumers[0]
        chain.append(cur)


def _schedule_pad(sch, rows=None) -> None:
    """The padded input: over the whole map before the conv, or with ``rows`` (depthwise)
    per output row, the kernel's rows of one channel block (cache-resident). A depthwise
    conv is memory-bound, and a whole padded copy triples its traffic (read, write, read
    again). Heuristic tiles, per row against whole map, on the AVX-512 Xeon: 0.145 against
    0.281 ms (96 channels, 112x112, stride 2), 0.020 against 0.042 (576, 14x14); but 0.099
    against 0.085 (32, 112x112, stride 1: each row copies three), so tuning tries both."""
    try:
        pad = sch.get_sblock("data_pad")
    except Exception:  # noqa: BLE001 - no padding
        return
    if rows is not None:
        sch.compute_at(pad, rows, preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(pad)[-1])
    else:
        loops = sch.get_loops(pad)
        sch.parallel(sch.fuse(*loops[:3]))
        sch.vectorize(loops[-1])
    sch.annotate(pad, "schedule_rule", "None")


def schedule_default(func):
    """``func`` with the heuristic tile if it is an unscheduled blocked conv, else as is."""
    from tvm import s_tir

    if func.attrs is not None and "tirx.is_scheduled" in func.attrs:
        return func
    sch = s_tir.Schedule(func)
    block = find_conv_block(sch)
    if block is None:
        return func
    schedule_any(sch, block, *default_tile(*conv_shape(sch, block)))
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def schedule_any(sch, block, reg_n, oc_in, second: bool = False, dw_reg_n=None) -> None:
    """The register-tile schedule of a direct or a Winograd (``passes.winograd``) conv or
    a fused depthwise -> 1x1 pair (``dw_reg_n``: the depthwise conv's pixels, default the
    heuristic's); ``second``: the other loop order (direct: kernel taps outside the input
    channels; depthwise and fused pairs: the whole map padded first; Winograd: one tile
    row at a time through all three steps)."""
    if sch.get(block).name_hint == "dwpw_conv2d_nchwc":
        schedule_dw_pw(sch, block, reg_n, oc_in, whole_map=second, dw_reg_n=dw_reg_n)
    elif sch.get(block).name_hint == "winograd_bgemm":
        (schedule_winograd_rows if second else schedule_winograd)(sch, block, reg_n, oc_in)
    else:
        schedule_conv(sch, block, reg_n, oc_in, taps_outer=second)


def apply_default_schedules(mod: tvm.IRModule) -> tuple[tvm.IRModule, int]:
    """Schedule every blocked conv kernel that tuning left unscheduled; returns the count."""
    done = 0
    for gv, func in list(mod.functions.items()):
        if isinstance(func, tvm.tirx.PrimFunc):
            new = schedule_default(func)
            if not new.same_as(func):
                mod[gv] = new
                done += 1
    return mod, done


def tuning_rule(sch, block):
    """MetaSchedule design spaces of a blocked conv (``schedule_rule`` = RULE), one per
    loop order (direct: taps inside or outside the channels; Winograd: each step over the
    whole map, or all three a tile row at a time; depthwise: the input padded per output
    row or over the whole map first): the register tile is sampled (pixels and channel
    blocks separately, the heuristic tile twice as likely), so the evolutionary search
    mutates it and the log records the best."""
    shape = conv_shape(sch, block)
    cands, best = tile_candidates(*shape), default_tile(*shape)
    fused = sch.get(block).name_hint == "dwpw_conv2d_nchwc"
    if fused:  # a fused pair: the depthwise conv's pixels too
        width, lanes = _dw_width_lanes(sch)
        dw_cands = tile_candidates(width, 1, True, lanes)
        dw_best = default_tile(width, 1, True, lanes)
    spaces = []
    for second in (False, True):
        space = sch.copy()
        choices = [_sample(space, cands, best, 0), _sample(space, cands, best, 1)]
        extra = {"dw_reg_n": _sample(space, dw_cands, dw_best, 0)} if fused else {}
        schedule_any(space, block, *choices, second=second, **extra)
        # the loops are parallel and vectorized already: ParallelVectorizeUnroll on the
        # root would annotate them again, and its postproc then rejects every candidate
        space.annotate(space.get_sblock("root"), "schedule_rule", "None")
        spaces.append(space)
    return spaces


def _sample(space, cands, best, axis):
    """A categorical sample over the candidates' ``axis`` values (the best twice as likely)."""
    values = sorted({c[axis] for c in cands})
    weights = [2.0 if v == best[axis] else 1.0 for v in values]
    return space.sample_categorical(values, [w / sum(weights) for w in weights])


def _dw_width_lanes(sch) -> tuple[int, int]:
    """Output width and lanes of a fused pair's depthwise conv (loops n, c, y, x, b, ...)."""
    loops = sch.get_loops(sch.get_sblock(DEPTHWISE))
    return int(sch.get(loops[3]).extent), int(sch.get(loops[4]).extent)


def register_rule() -> None:
    """Make RULE known to MetaSchedule (target key "cpu": x86 and ARM); idempotent."""
    tvm.register_global_func(f"s_tir.meta_schedule.cpu.{RULE}", tuning_rule, override=True)


def schedule_winograd_rows(sch, bgemm, reg_n, oc_in) -> None:
    """Like ``schedule_winograd``, but one tile row at a time: per row (in parallel), the
    input transform of that row, its 16 GEMMs and its output transform, so the transformed
    tiles stay in cache between the three steps instead of a round trip through memory."""
    data_t, out = sch.get_sblock("winograd_data"), sch.get_sblock("winograd_out")
    sch.compute_inline(sch.get_sblock("data_pad"))
    n, o, yo = _output_tiles(sch, out, rows_outer=True)
    row = sch.fuse(n, yo)
    sch.parallel(row)  # before the producers move in (their blocks are not "complete" there)
    tile = sch.cache_write(bgemm, 0, TILE_SCOPE)
    sch.compute_at(tile, row, preserve_unit_loops=True)
    p, to, ty, tx, tob = sch.get_loops(tile)[1:]
    txo, txi = sch.split(tx, [None, reg_n])
    oco, oci = sch.split(to, [None, oc_in])
    sch.reorder(p, oco, ty, txo, txi, oci, tob)
    sch.compute_at(bgemm, txo, preserve_unit_loops=True)
    bxi, boi, bob, icc, icb = sch.get_loops(bgemm)[-5:]
    sch.reorder(icc, icb, bxi, boi, bob)
    sch.unroll(bxi)
    sch.unroll(boi)
    sch.vectorize(bob)
    init = sch.decompose_reduction(bgemm, icc)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(tob)
    sch.compute_at(data_t, row, preserve_unit_loops=True)
    dp, dc, dty, dtx, dcb = sch.get_loops(data_t)[1:]
    sch.reorder(dc, dty, dtx, dp, dcb)
    sch.unroll(dp)
    sch.vectorize(dcb)
    for done in (data_t, out, init, tile):
        sch.annotate(done, "schedule_rule", "None")


def schedule_winograd(sch, bgemm, reg_n, oc_in) -> None:
    """The Winograd conv's schedule in place: the input transform per (channel block, tile
    row), the GEMM as ``nchwc_schedule``'s register tile, the output transform per 2x2 tile
    with the fused epilogue inlined. reg_n, oc_in: ints or sampled variables."""
    data_t = sch.get_sblock("winograd_data")
    sch.compute_inline(sch.get_sblock("data_pad"))
    p, c, ty, tx, cb = sch.get_loops(data_t)
    sch.reorder(c, ty, tx, p, cb)
    sch.parallel(sch.fuse(c, ty))
    sch.unroll(p)
    sch.vectorize(cb)
    schedule_gemm_tile(sch, bgemm, reg_n, oc_in, epilogue=False)
    out = sch.get_sblock("winograd_out")
    n, o, yo = _output_tiles(sch, out, rows_outer=False)
    sch.parallel(sch.fuse(n, o, yo))
    for done in (data_t, out):
        sch.annotate(done, "schedule_rule", "None")


def _output_tiles(sch, out, rows_outer: bool):
    """The output transform per 2x2 tile (unrolled, channel lanes vectorized) with the
    fused epilogue inlined; returns its outer loops (n, channel blocks, tile rows)."""
    for consumer in consumer_chain(sch, out):
        sch.reverse_compute_inline(consumer)
    n, o, yy, xx, ob = sch.get_loops(out)
    yo, yi = sch.split(yy, [None, 2])
    xo, xi = sch.split(xx, [None, 2])
    sch.reorder(*((n, yo, o) if rows_outer else (n, o, yo)), xo, yi, xi, ob)
    sch.unroll(yi)
    sch.unroll(xi)
    sch.vectorize(ob)
    return n, o, yo
