"""An inverted-residual block as one kernel (rolling buffer) against edgec's two kernels.

A question, not a feature: would fusing mobilenet_v2's 1x1 expand conv into its fused
depthwise -> 1x1 pair (``passes.dw_pw_fuse``) pay? The block is expand (+ bias, ReLU6)
-> 3x3 depthwise stride 1 (+ bias, ReLU6) -> 1x1 project (+ bias, residual), NCHW[b]c.

- "two kernels": what edgec builds today, from its own TE computes and schedules
  (``conv2d_nchwc`` + ``schedule_conv``, then ``dw_pw_nchwc`` + ``schedule_dw_pw``); the
  expanded tensor goes through memory between them.
- "one kernel": the output rows in K chunks (in parallel), and per output row the
  depthwise row and the project row, as in the fused pair, plus the expanded rows the
  depthwise row needs, computed under the same row loop and kept in a buffer of three rows
  that TVM's ``rolling_buffer`` primitive folds (each expanded row is computed once per
  chunk; 2 rows per chunk are computed twice). The chunk is a dimension of the compute
  itself: ``rolling_buffer`` finds no rolling pattern when the row loop is split instead.

Each side's tiles are swept first (the best kept), then the two run interleaved.
"""
from __future__ import annotations

import re
import sys
import time

import numpy as np

from benchmarks.common import Engine, machine_line, parse_args, run_compare, write_results
from edgec.compiler.tvm_compat import tvm


def relu6(v):
    from tvm import tirx

    return tirx.min(tirx.max(v, tirx.const(0.0, "float32")), tirx.const(6.0, "float32"))


def placeholders(h, ci, ce, co, b):
    from tvm import te

    shapes = {"x": (1, ci // b, h, h, b), "we": (ce // b, ci, 1, 1, b), "be": (1, ce // b, 1, 1, b),
              "wd": (ce // b, 1, 3, 3, b), "bd": (1, ce // b, 1, 1, b), "wp": (co // b, ce, 1, 1, b),
              "bp": (1, co // b, 1, 1, b)}
    return {k: te.placeholder(s, name=k) for k, s in shapes.items()}


def two_kernels(p, h, tiles, target):
    """edgec today: the expand kernel, then the fused depthwise -> project kernel."""
    from tvm import s_tir, te

    from edgec.passes.kernels.conv2d_nchwc import conv2d_nchwc
    from edgec.passes.kernels.conv2d_nchwc import dw_pw_nchwc
    from edgec.passes.nchwc_schedule import find_conv_block, schedule_conv, schedule_dw_pw

    (rn, oc), (prn, poc, drn) = tiles
    conv = conv2d_nchwc(p["x"], p["we"], [1, 1], [0, 0, 0, 0], [1, 1], 1, "float32")
    mid = te.compute(conv.shape, lambda n, c, y, x, l: relu6(conv[n, c, y, x, l] + p["be"][0, c, 0, 0, l]))
    sch = s_tir.Schedule(te.create_prim_func([p["x"], p["we"], p["be"], mid]))
    schedule_conv(sch, find_conv_block(sch), rn, oc)
    expand = tvm.compile(sch.mod, target=target)
    m = te.placeholder([int(d) for d in mid.shape], name="mid")
    zero, six = te.placeholder((), name="zero"), te.placeholder((), name="six")
    proj = dw_pw_nchwc(m, p["wd"], p["wp"], p["bd"], zero, six,
                       dw_params=dict(strides=[1, 1], padding=[1, 1, 1, 1], dilation=[1, 1],
                                      groups=int(m.shape[1]) * int(m.shape[4]), out_dtype="float32"),
                       ops=["add", "maximum", "minimum"])
    out = te.compute(proj.shape, lambda n, c, y, x, l:
                     proj[n, c, y, x, l] + p["bp"][0, c, 0, 0, l] + p["x"][n, c, y, x, l])
    sch = s_tir.Schedule(te.create_prim_func([m, p["wd"], p["wp"], p["bd"], zero, six,
                                              p["bp"], p["x"], out]))
    schedule_dw_pw(sch, find_conv_block(sch), prn, poc, dw_reg_n=drn)
    dwpw = tvm.compile(sch.mod, target=target)
    return expand, dwpw, [int(d) for d in mid.shape]


def one_kernel(p, h, chunks, rn, drn, target):
    """The block as one kernel, compiled (see ``one_kernel_module``)."""
    return tvm.compile(one_kernel_module(p, h, chunks, rn, drn), target=target)


def one_kernel_module(p, h, chunks, rn, drn):
    """The block as one scheduled PrimFunc, the expanded rows in a rolling buffer (see the
    module doc): ``chunks`` of rows in parallel, ``rn`` pixels per tile of the two 1x1
    convs, ``drn`` per tile of the depthwise conv."""
    from tvm import s_tir, te, tirx

    x, b, rows = p["x"], int(p["x"].shape[4]), h // chunks
    ce, co = int(p["we"].shape[0]) * b, int(p["wp"].shape[0]) * b
    ic, icb = te.reduce_axis((0, int(x.shape[1])), "ic"), te.reduce_axis((0, b), "icb")

    def x_row(n, k, r, col, c):  # input row k * rows + r - 1, zero outside the map
        row = k * rows + r - 1
        safe = tirx.max(tirx.min(row, h - 1), 0)
        return tirx.if_then_else(tirx.all(row >= 0, row < h), x[n, c // b, safe, col, c % b], 0.0)

    e = te.compute((1, chunks, ce // b, rows + 2, h, b), lambda n, k, o, r, col, l: te.sum(
        x_row(n, k, r, col, ic * b + icb) * p["we"][o, ic * b + icb, 0, 0, l], axis=[ic, icb]),
        name="expand")

    def mid(n, k, o, r, col, l):  # the expanded value after bias and ReLU6, zero as padding
        row, safe = k * rows + r - 1, tirx.max(tirx.min(col, h - 1), 0)
        return tirx.if_then_else(tirx.all(row >= 0, row < h, col >= 0, col < h),
                                 relu6(e[n, k, o, r, safe, l] + p["be"][0, o, 0, 0, l]), 0.0)

    rh, rw = te.reduce_axis((0, 3), "rh"), te.reduce_axis((0, 3), "rw")
    d = te.compute((1, chunks, ce // b, rows, h, b), lambda n, k, o, r, col, l: te.sum(
        mid(n, k, o, r + rh, col + rw - 1, l) * p["wd"][o, 0, rh, rw, l], axis=[rh, rw]), name="dw")
    dm = te.compute(d.shape, lambda n, k, o, r, col, l:
                    relu6(d[n, k, o, r, col, l] + p["bd"][0, o, 0, 0, l]), name="dw_act")
    pc, pcb = te.reduce_axis((0, ce // b), "pc"), te.reduce_axis((0, b), "pcb")
    proj = te.compute((1, co // b, h, h, b), lambda n, o, y, col, l: te.sum(
        dm[n, y // rows, pc, y % rows, col, pcb] * p["wp"][o, pc * b + pcb, 0, 0, l], axis=[pc, pcb]),
        name="project")
    out = te.compute(proj.shape, lambda n, o, y, col, l:
                     proj[n, o, y, col, l] + p["bp"][0, o, 0, 0, l] + x[n, o, y, col, l], name="out")
    sch = s_tir.Schedule(te.create_prim_func([*p.values(), out]))
    pb = sch.get_sblock("project")
    n, o, y, col, lane, rc, rcb = sch.get_loops(pb)
    yo, yi = sch.split(y, [chunks, rows])
    xo, xi = sch.split(col, [None, rn])
    sch.reorder(n, yo, yi, o, xo, rc, rcb, xi, lane)
    sch.annotate(yo, "edgec_parallel", 1)  # made parallel below, after rolling_buffer
    sch.compute_at(sch.get_sblock("dw_act"), yi, preserve_unit_loops=True)
    db, eb = sch.get_sblock("dw"), sch.get_sblock("expand")
    sch.compute_at(db, yi, preserve_unit_loops=True)
    sch.compute_at(eb, yi, preserve_unit_loops=True)
    eo, er, ecol, el, eic, eicb = sch.get_loops(eb)[-6:]
    exo, exi = sch.split(ecol, [None, rn])
    sch.reorder(er, eo, exo, eic, eicb, exi, el)
    _register_tile(sch, pb, "out", xo, xi, lane, rc)
    do, dr, dcol, dl, drh, drw = sch.get_loops(db)[-6:]
    dxo, dxi = sch.split(dcol, [None, drn])
    sch.reorder(do, dr, dxo, drh, drw, dxi, dl)
    _register_tile(sch, db, "dw_act", dxo, dxi, dl, drh)
    sch.unroll(exi)
    sch.vectorize(el)
    # the last primitive: the predicated block it leaves is not "complete", so no other
    # primitive (cache_write of the expand tile, parallel) is accepted after it
    sch.rolling_buffer(eb, 0)
    # the chunks write disjoint rows and own their buffers: mark the loop parallel through
    # the script (sch.parallel refuses a loop over a predicated block)
    src = sch.mod.script()
    par = re.sub(r'T\.serial\((\d+), annotations=\{"edgec_parallel": 1\}\)', r"T.parallel(\1)", src)
    if par == src:
        raise RuntimeError("the chunk loop was not found in the scheduled script")
    return tvm.script.from_source(par)


def _register_tile(sch, block, epilogue, xo, xi, lane, first_reduction) -> None:
    """Accumulate ``block``'s tile (xi pixels x lanes) in registers, its elementwise
    ``epilogue`` block applied as the tile is written back under ``xo``."""
    tile = sch.cache_write(block, 0, "local")
    sch.reverse_compute_inline(sch.get_sblock(epilogue))
    sch.reverse_compute_at(tile, xo, preserve_unit_loops=True)
    sch.vectorize(sch.get_loops(tile)[-1])
    sch.unroll(xi)
    sch.vectorize(lane)
    sch.vectorize(sch.get_loops(sch.decompose_reduction(block, first_reduction))[-1])


def reference(vals, h):
    """numpy: the block in NCHW."""
    x, we, be, wd, bd, wp, bp = (vals[k] for k in ("x", "we", "be", "wd", "bd", "wp", "bp"))
    unb = lambda t: t.transpose(0, 1, 4, 2, 3).reshape(1, -1, t.shape[2], t.shape[3])  # noqa: E731
    flat = lambda w: w.transpose(0, 4, 1, 2, 3).reshape(-1, w.shape[1], w.shape[2], w.shape[3])  # noqa: E731
    xx = unb(x)
    e = np.clip(np.einsum("oc,nchw->nohw", flat(we)[:, :, 0, 0], xx) + unb(be), 0, 6)
    ep, k = np.pad(e, ((0, 0), (0, 0), (1, 1), (1, 1))), flat(wd)[:, 0]
    d = sum(ep[:, :, i:i + h, j:j + h] * k[None, :, i, j, None, None] for i in range(3) for j in range(3))
    d = np.clip(d + unb(bd), 0, 6)
    return np.einsum("oc,nchw->nohw", flat(wp)[:, :, 0, 0], d) + unb(bp) + xx, unb


def main(argv=None) -> None:
    def extra(p):
        p.add_argument("--block", default="56,32,144,32",
                       help="map size, input, expanded, output channels (default: mobilenet_v2's "
                            "56x56 residual block, its 24 channels padded to 32)")
        p.add_argument("--target", default="host")

    args = parse_args(__doc__, argv, extra)
    from edgec.passes.nchwc_schedule import default_tile, tile_candidates
    from edgec.targets import get_target

    target = get_target(args.target)
    h, ci, ce, co = (int(v) for v in args.block.split(","))
    lanes = target.vector_bits // 32
    p = placeholders(h, ci, ce, co, lanes)
    rng = np.random.default_rng(0)
    vals = {k: (rng.standard_normal([int(d) for d in t.shape]) * 0.3).astype("float32") for k, t in p.items()}
    dev = tvm.cpu()
    tv = {k: tvm.runtime.tensor(v, dev) for k, v in vals.items()}
    ref, unb = reference(vals, h)
    out = tvm.runtime.tensor(np.zeros([1, co // lanes, h, h, lanes], "float32"), dev)
    consts = [tvm.runtime.tensor(np.array(v, "float32"), dev) for v in (0.0, 6.0)]
    t_tvm = target.tvm_target()

    def runner_two(tiles):
        expand, dwpw, mid_shape = two_kernels(p, h, tiles, t_tvm)
        mid = tvm.runtime.tensor(np.zeros(mid_shape, "float32"), dev)
        return lambda: (expand(tv["x"], tv["we"], tv["be"], mid),
                        dwpw(mid, tv["wd"], tv["wp"], tv["bd"], *consts, tv["bp"], tv["x"], out))

    def runner_one(cfg):
        lib = one_kernel(p, h, *cfg, t_tvm)
        return lambda: lib(*tv.values(), out)

    def checked(make, cfg):
        run = make(cfg)
        out.copyfrom(np.zeros(out.shape, "float32"))
        run()
        err = float(np.abs(unb(out.numpy()) - ref).max())
        if err > 1e-3:
            raise SystemExit(f"{make.__name__} {cfg}: max |diff| {err:.2e} against numpy")
        return run, err

    def best(make, configs):
        timed = []
        for cfg in configs:
            run, err = checked(make, cfg)
            run()
            ts = []
            for _ in range(200):
                t0 = time.perf_counter()
                run()
                ts.append(time.perf_counter() - t0)
            timed.append((float(np.median(ts)) * 1e3, cfg, run, err))
            print(f"  {make.__name__} {cfg}: {timed[-1][0]:.4f} ms (max |diff| {err:.1e})", flush=True)
        return min(timed, key=lambda t: t[0])

    exp_tiles = sorted({default_tile(h, ce // lanes, False, lanes), (14, 2), (7, 4), (8, 3)}
                       & set(tile_candidates(h, ce // lanes, False, lanes)))
    pw_tiles = sorted({default_tile(h, co // lanes, False, lanes), (14, 2), (28, 1)}
                      & set(tile_candidates(h, co // lanes, False, lanes)))
    dw_px = sorted({default_tile(h, 1, True, lanes)[0], 14, 28} & {d for d in range(1, h + 1) if h % d == 0})
    two = best(runner_two, [(e, (pr, po, d)) for e in exp_tiles for (pr, po) in pw_tiles for d in dw_px])
    chunk_opts = [k for k in (2, 4) if h % k == 0]
    one = best(runner_one, [(k, rn, d) for k in chunk_opts for rn in sorted({t[0] for t in pw_tiles})
                            for d in dw_px])
    result = run_compare([Engine("two_kernels", two[2]), Engine("one_kernel_rolling", one[2])],
                         args, baseline="two_kernels")
    med = {k: v["median_ms"] for k, v in result["engines"].items()}
    ratio = med["one_kernel_rolling"] / med["two_kernels"]
    md = (f"Block {h}x{h}, {ci} -> {ce} -> {co} channels, NCHW{lanes}c, target {args.target}.\n\n"
          f"| engine | best tiles | median ms | max abs diff vs numpy |\n| --- | --- | ---: | ---: |\n"
          f"| two kernels (edgec today) | {two[1]} | {med['two_kernels']:.4f} | {two[3]:.1e} |\n"
          f"| one kernel, rolling buffer | chunks, pixels, depthwise pixels = {one[1]} | "
          f"{med['one_kernel_rolling']:.4f} | {one[3]:.1e} |\n\n"
          f"One kernel / two kernels = **{ratio:.3f}x**.\n\n{machine_line(result, args.threads)}")
    paths = write_results(args.out or f"rolling_block-{h}-{ci}-{ce}-{co}",
                          {"block": [h, ci, ce, co], "lanes": lanes, "two_kernels_tiles": two[1],
                           "one_kernel_config": one[1], "ratio": ratio, "compare": result}, md)
    print(md)
    print("wrote", *paths)


if __name__ == "__main__":
    main(sys.argv[1:])
