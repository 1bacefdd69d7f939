"""One 3x3 conv (batch 1) on this CPU, timed interleaved, several ways:

- fp32 NCHW and int8 NCHW (u8 x s8 -> s32, what ``--int8-kernel nchw`` emits; LLVM
  auto-vectorises it) as TVM builds them untuned, and MetaSchedule-tuned (``--trials N``);
- int8 packed NCHW[4c] / [8oc][4ic] with edgec's fixed schedule tensorized with the AVX2
  ``dot_8x4_avx2`` intrinsic (what the INT8 pass emits on AVX2: ``passes/int8_kernels.py``),
  and tuned by MetaSchedule through MultiLevelTilingWithIntrin.

    python benchmarks/bench_int8_conv.py --channels 64 --size 56 --trials 0   # no tuning
    python benchmarks/bench_int8_conv.py --trials 32 --out results.json

The input is pre-padded and pre-packed (padding and packing are not part of the kernels
being compared); edgec's kernel writes its int32 output in plain NCHW, as the INT8 pass
uses it. The MetaSchedule builder gets ``fast_inspect_initializer``: without it, builds
time out on a loaded machine.
"""
from __future__ import annotations

import argparse
import json
import tempfile

import numpy as np
import tvm
from tvm import te, topi

from edgec.compiler.compare import Engine, compare, machine_info, markdown_table
from edgec.compiler.tvm_compat import fast_inspect_initializer, meta_schedule
from edgec.passes.int8_kernels import KERNELS, scheduled_conv
from edgec.passes.x86_int8_intrin import register
from edgec.targets import get_target


def conv_fp32(c, h):
    x = te.placeholder((1, c, h + 2, h + 2), "float32", name="x")
    w = te.placeholder((c, c, 3, 3), "float32", name="w")
    return te.create_prim_func([x, w, topi.nn.conv2d_nchw(x, w, 1, 0, 1, "float32")])


def conv_int8(c, h):
    x = te.placeholder((1, c, h + 2, h + 2), "uint8", name="x")
    w = te.placeholder((c, c, 3, 3), "int8", name="w")
    return te.create_prim_func([x, w, topi.nn.conv2d_nchw(x, w, 1, 0, 1, "int32")])


def conv_int8_packed(c, h):
    """data (1, C/4, H, W, 4) u8, weight (OC/8, IC/4, 3, 3, 8, 4) s8 -> (1, OC/8, H, W, 8) s32."""
    x = te.placeholder((1, c // 4, h + 2, h + 2, 4), "uint8", name="x")
    w = te.placeholder((c // 8, c // 4, 3, 3, 8, 4), "int8", name="w")
    ico = te.reduce_axis((0, c // 4), "ico")
    kh, kw = te.reduce_axis((0, 3), "kh"), te.reduce_axis((0, 3), "kw")
    ici = te.reduce_axis((0, 4), "ici")
    out = te.compute((1, c // 8, h, h, 8), lambda n, oco, y, x_, oci: te.sum(
        x[n, ico, y + kh, x_ + kw, ici].astype("int32")
        * w[oco, ico, kh, kw, oci, ici].astype("int32"), axis=[ico, kh, kw, ici]), name="conv")
    return te.create_prim_func([x, w, out])


def space(intrin: str | None):
    ms = meta_schedule()
    if intrin is None:
        return "post-order-apply"
    rules = [ms.schedule_rule.MultiLevelTilingWithIntrin(
        intrin, structure="SSRSRS", max_innermost_factor=64,
        reuse_write=ms.schedule_rule.ReuseType(req="may", levels=[1, 2], scope="global"))]
    rules += [r for r in ms.ScheduleRule.create("llvm")
              if type(r).__name__ != "MultiLevelTiling"]
    postprocs = ms.Postproc.create("llvm") + [ms.postproc.RewriteTensorize(vectorize_init_loop=True)]
    return ms.space_generator.PostOrderApply(sch_rules=rules, postprocs=postprocs,
                                             mutator_probs="llvm")


def tune(func, target, trials, intrin=None):
    ms = meta_schedule()
    init = fast_inspect_initializer  # here and in the workers: they import TVM fast enough
    init()
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    with tempfile.TemporaryDirectory() as work:
        db = ms.tune_tir(mod, target, work, max_trials_global=trials, num_trials_per_iter=16,
                         builder=ms.builder.LocalBuilder(timeout_sec=180, initializer=init),
                         runner=ms.runner.LocalRunner(timeout_sec=60, initializer=init),
                         space=space(intrin))
        sch = ms.tir_integration.compile_tir(db, mod, target)
    if sch is None:
        raise RuntimeError("tuning found no valid schedule")
    return tvm.compile(sch.mod, target=target), sch


def torch_conv(xf, wf):
    import torch

    x, w = torch.from_numpy(xf), torch.from_numpy(wf)

    def run():
        with torch.no_grad():
            return torch.nn.functional.conv2d(x, w)
    return run


def _mod(func):
    return tvm.IRModule({"main": func.with_attr("global_symbol", "main")})


def runner(lib, arrays):
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in arrays]
    return lambda: lib(*args)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--size", type=int, default=56)
    p.add_argument("--trials", type=int, default=32)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out", help="write the result JSON here")
    args = p.parse_args()
    c, h = args.channels, args.size
    target = get_target("x86-avx2").tvm_target()
    rng = np.random.default_rng(0)
    xf = rng.standard_normal((1, c, h + 2, h + 2)).astype("float32")
    wf = rng.standard_normal((c, c, 3, 3)).astype("float32")
    xq = rng.integers(0, 256, xf.shape).astype("uint8")
    wq = rng.integers(-63, 64, wf.shape).astype("int8")
    xp = xq.reshape(1, c // 4, 4, h + 2, h + 2).transpose(0, 1, 3, 4, 2).copy()
    wp = wq.reshape(c // 8, 8, c // 4, 4, 3, 3).transpose(0, 2, 4, 5, 1, 3).copy()
    intrin = register()
    bufs = {"fp32": [xf, wf, np.zeros((1, c, h, h), "float32")],
            "int8": [xq, wq, np.zeros((1, c, h, h), "int32")],
            "packed": [xp, wp, np.zeros((1, c // 8, h, h, 8), "int32")],
            "edgec": [xp, wp, np.zeros((1, c, h, h), "int32")]}
    fixed, _ = scheduled_conv(xp.shape, wp.shape, [1, 1], [1, 1], KERNELS["avx2"])
    builds = {"fp32 NCHW untuned": tvm.compile(_mod(conv_fp32(c, h)), target=target),
              "int8 NCHW untuned": tvm.compile(_mod(conv_int8(c, h)), target=target),
              "int8 packed dot_8x4_avx2 (edgec schedule)": tvm.compile(_mod(fixed), target=target)}
    kinds = {"fp32 NCHW": "fp32", "int8 NCHW": "int8", "int8 packed dot_8x4_avx2": "edgec",
             "int8 packed": "packed"}
    tensorized = {}
    if args.trials:
        for name, func, intr in (("fp32 NCHW", conv_fp32(c, h), None),
                                 ("int8 NCHW", conv_int8(c, h), None),
                                 ("int8 packed", conv_int8_packed(c, h), intrin)):
            lib, sch = tune(func, target, args.trials, intr)
            tensorized[name] = "llvm.x86.avx2.pmadd.ub.sw" in sch.mod.script()
            builds[f"{name} tuned ({args.trials} trials)"] = lib
    engines = [Engine("torch eager fp32 (oneDNN)", torch_conv(xf, wf))]
    for name, lib in builds.items():
        kind = next(v for k, v in kinds.items() if name.startswith(k))
        engines.append(Engine(name, runner(lib, bufs[kind])))
    result = compare(engines, rounds=args.rounds)
    result.update(trials=args.trials, conv=f"{c}ch {h}x{h} 3x3",
                  tuned_tensorized=tensorized, machine=machine_info())
    print(markdown_table(result, f"conv {c}ch {h}x{h}, {args.trials} trials each"))
    if tensorized:
        print("tuned int8 packed used dot_8x4_avx2:", tensorized)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
