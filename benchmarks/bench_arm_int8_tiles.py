"""The INT8 register tile for ARM, chosen by instructions per multiply-accumulate.

    python benchmarks/bench_arm_int8_tiles.py [--targets rpi5 rpi4] [--convs NAME ...] [--json]

One packed INT8 conv at a time (``int8_kernels.scheduled_conv`` with a requantize to int8
and the blocked output, as the INT8 build runs them), for each register tile (output-
channel blocks x pixels) that fits, cross-compiled for the target and counted on the
emulated board (``edgec_run --mark-kernels``: the conv kernel alone). The convs are the
shapes of mobilenet_v2's and resnet18's INT8 layers at 224 x 224.

Instruction counts under qemu-user, not time: no caches, no memory stalls, no frequency.
rpi5 (cortex-a76) runs TVM's sdot intrinsic, rpi4 (cortex-a72) edgec's NEON ones (four or
two input blocks a call where the channels allow it, ``int8_kernels.call_span``). ``x86`` tiles were measured in time, see
``int8_kernels.register_tile``; AArch64 has 32 vector registers of 128 bits and no
broadcast memory operand, so a tile's accumulators, its weights and its data words all
want registers, and the rule differs.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_emulated import _qemu_version, host_cpu
from benchmarks.common import scratch, write_results
from edgec.compiler.deploy import board, icount
from edgec.compiler.tvm_compat import cross_compiler, relax
from edgec.passes import int8_kernels as K
from edgec.passes.arm_int8_intrin import pairs_ok
from edgec.passes.requant import Requant
from edgec.targets import get_target

TARGETS = ("rpi5", "rpi4")
# name: (input channels, output channels, input height = width, kernel, stride)
CONVS = {
    "mbv2_16_96_112": (16, 96, 112, 1, 1),
    "mbv2_24_144_56": (24, 144, 56, 1, 1),
    "mbv2_144_24_56": (144, 24, 56, 1, 1),
    "mbv2_32_192_28": (32, 192, 28, 1, 1),
    "mbv2_64_384_14": (64, 384, 14, 1, 1),
    "mbv2_96_576_14": (96, 576, 14, 1, 1),
    "mbv2_160_960_7": (160, 960, 7, 1, 1),
    "mbv2_320_1280_7": (320, 1280, 7, 1, 1),
    "r18_64_64_56_3x3": (64, 64, 56, 3, 1),
    "r18_128_128_28_3x3": (128, 128, 28, 3, 1),
    "r18_256_256_14_3x3": (256, 256, 14, 3, 1),
    "r18_512_512_7_3x3": (512, 512, 7, 3, 1),
}
# not used to choose the rule: resnet50's, efficientnet_b0's and mobilenet_v3's convs, to
# see whether it holds beyond the convs it was chosen on (--convs held_out)
HELD_OUT = {
    "r50_64_256_56": (64, 256, 56, 1, 1),
    "r50_256_64_56": (256, 64, 56, 1, 1),
    "r50_128_128_28_3x3": (128, 128, 28, 3, 1),
    "effb0_40_240_28": (40, 240, 28, 1, 1),
    "effb0_80_480_14": (80, 480, 14, 1, 1),
    "mbv3_16_64_112": (16, 64, 112, 1, 1),
    "mbv3_96_40_14": (96, 40, 14, 1, 1),
    "effb0_192_1152_7": (192, 1152, 7, 1, 1),
}
CONVS_ALL = {**CONVS, **HELD_OUT}
BLOCKS = (1, 2, 3, 4, 5, 6, 8)
PIXELS = (1, 2, 3, 4, 5, 6, 7, 8)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def tiles(out_blocks: int, width: int) -> list:
    """Every (blocks, pixels) dividing the conv with 2 to 32 accumulators."""
    return [(b, p) for b in BLOCKS for p in PIXELS
            if out_blocks % b == 0 and width % p == 0 and 2 <= b * p <= 32]


def conv_module(spec, kernel, tile):
    """A Relax module running one packed conv (weights, bias and scale constant) on its
    packed, padded int8 input; returns (module, input shape, output shape, MACs)."""
    cin, cout, hw, k, stride = spec
    rng = np.random.default_rng(0)
    wq = rng.integers(-127, 128, (cout, cin, k, k)).astype("int8")  # no -128: NEON pairs
    wp = K.pack_weight(wq, kernel.oc_block)
    pad = k // 2
    data_shape = (1, -(-cin // 4), hw + 2 * pad, hw + 2 * pad, 4)
    rq = Requant(bias=rng.integers(-2000, 2000, cout).astype("int32"),
                 scale=np.full(cout, 2e-3, "float32"), dtype="int8", lo=0.0, hi=127.0)
    func, out_shape = K.scheduled_conv(data_shape, wp.shape, [stride] * 2, [1, 1], kernel, rq,
                                       cout, blocked_out=True, pairs=pairs_ok(wq), tile=tile)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(data_shape, "int8"))
    with bb.function("main", [x]):
        gv = K.add_kernel(bb, func, "conv")
        y = bb.emit(relax.call_tir(gv, [x, relax.const(wp, "int8"), rq.bias_const((-1,)),
                                        rq.scale_const((-1,))],
                                   relax.TensorType(out_shape, "int8")))
        bb.emit_func_output(y)
    macs = out_shape[2] * out_shape[3] * cout * cin * k * k
    return bb.get(), data_shape, out_shape, macs


def build(mod, target, folder: str, data_shape, out_shape) -> str:
    """The module cross-compiled for ``target`` with the manifest edgec_run reads."""
    import tvm

    tvm_target = target.tvm_target()
    with tvm_target:
        exe = tvm.compile(mod, target=tvm_target)
    so = os.path.join(folder, "conv.so")
    exe.export_library(so, fcompile=cross_compiler(target.cross_cc))
    spec = lambda name, shape: {"name": name, "shape": list(shape), "dtype": "int8"}  # noqa: E731
    with open(os.path.join(folder, "conv.json"), "w", encoding="utf-8") as f:
        json.dump({"format": "edgec-artifact", "inputs": [spec("x", data_shape)],
                   "outputs": [spec("y", out_shape)], "early_exit": None}, f)
    np.save(os.path.join(folder, "x.npy"),
            np.random.default_rng(1).integers(-128, 128, data_shape).astype("int8"))
    return so


def count_conv(name, spec, target_name, runner, board_root, folder) -> list:
    target = get_target(target_name)
    cpu = target.tvm["mcpu"]
    root = icount.counting_root(board_root, cpu)
    kernel = K.target_kernel(target)
    cout, hw, stride = spec[1], spec[2], spec[4]
    out_blocks, width = -(-cout // kernel.oc_block), (hw - 1) // stride + 1
    rows = []
    in_blocks = -(-spec[0] // 4)  # the weights are random in [-127, 127]: pairs allowed
    rule = K.register_tile(out_blocks, width, kernel.name, in_blocks * spec[3] ** 2,
                           K.call_span(kernel, in_blocks, 4, True), spec[3] ** 2)
    for tile in tiles(out_blocks, width):
        start = time.time()
        mod, data_shape, out_shape, macs = conv_module(spec, kernel, tile)
        so = build(mod, target, folder, data_shape, out_shape)
        (conv,) = [k for k in icount.kernel_counts(runner, so, [os.path.join(folder, "x.npy")],
                                                   root, cpu=cpu) if k["kernel"] == "conv"]
        rows.append({"conv": name, "shape": list(spec), "target": target_name, "cpu": cpu,
                     "kernel": kernel.name, "tile": list(tile), "rule": list(rule),
                     "macs": macs, "instructions": conv["total"], "classes": conv["classes"],
                     "per_mac": conv["total"] / macs, "seconds": round(time.time() - start, 1)})
        say(f"{name} {target_name} tile {tile}: {conv['total'] / 1e6:.3f} M instructions, "
            f"{conv['total'] / macs:.4f} per MAC")
    return rows


def markdown(rows: list) -> str:
    out = [f"**{icount.LABEL}** One packed INT8 conv per row (requantized to int8, blocked "
           "output), the conv kernel alone. Instructions per MAC for each register tile "
           "(output-channel blocks x pixels); **best** and the rule's (`register_tile`) "
           "tile marked.", ""]
    for target in sorted({r["target"] for r in rows}, reverse=True):
        out += [f"### {target} ({next(r['cpu'] for r in rows if r['target'] == target)}, "
                f"{next(r['kernel'] for r in rows if r['target'] == target)})", "",
                "| conv (cin, cout, hw, k, stride) | best tile | per MAC | rule's tile | per MAC "
                "| rule / best | all tiles (per MAC) |", "| --- | --- | ---: | --- | ---: | ---: | --- |"]
        for conv in dict.fromkeys(r["conv"] for r in rows if r["target"] == target):
            mine = sorted((r for r in rows if r["target"] == target and r["conv"] == conv),
                          key=lambda r: r["per_mac"])
            best = mine[0]
            rule = next((r for r in mine if r["tile"] == r["rule"]), None)
            cells = ", ".join(f"{r['tile'][0]}x{r['tile'][1]} {r['per_mac']:.3f}" for r in mine)
            out.append(f"| {conv} {tuple(best['shape'])} | {best['tile'][0]}x{best['tile'][1]} "
                       f"| {best['per_mac']:.4f} | "
                       + (f"{rule['tile'][0]}x{rule['tile'][1]} | {rule['per_mac']:.4f} | "
                          f"{rule['per_mac'] / best['per_mac']:.2f}x" if rule else "- | - | -")
                       + f" | {cells} |")
        out.append("")
    return "\n".join(out)


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    p.add_argument("--convs", nargs="+", default=["all"], choices=[*CONVS_ALL, "held_out", "all"],
                   help="convs by name; held_out: the 8 not used to choose the rule; all "
                        "(default): the 12 and the 8")
    p.add_argument("--out", default="arm_int8_tiles", help="results/<stem>.json and .md")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    groups = {"held_out": list(HELD_OUT), "all": list(CONVS_ALL)}
    convs = list(dict.fromkeys(c for name in args.convs for c in groups.get(name, [name])))
    board_root = board.default_dir()
    board.prepare(board_root)
    runner = icount.build_runner(board_root, board.PY_SITE)
    folder = scratch()
    rows: list = []
    for name in convs:  # results rewritten after each conv: a stopped run keeps them
        for t in args.targets:
            rows += count_conv(name, CONVS_ALL[name], t, runner, board_root, folder)
        data = {"label": icount.LABEL, "host_cpu": host_cpu(), "qemu": _qemu_version(),
                "rows": rows}
        md = markdown(rows) + f"\nCounted on {data['host_cpu']} (the counts do not depend on " \
            f"the host), {data['qemu']}.\n"
        write_results(args.out, data, md)
    print(json.dumps(data, indent=2) if args.json else md)


if __name__ == "__main__":
    main()
