"""This CPU's FP32 peak and a model's FLOPs, for "% of peak" figures.

Peak = cores x FP32 FLOPs per cycle x clock. FLOPs per cycle per core: two FMA pipes of
the widest vector width (AVX-512: 2 x 16 lanes x 2 = 64; AVX2: 2 x 8 x 2 = 32) except
on AMD Zen1/Zen+ (family 23, model < 0x30), whose 256-bit FMAs split into two 128-bit
halves (16). The clock is /proc/cpuinfo's "cpu MHz": nominal on these VMs, and the
cores boost above it (ONNX Runtime ran resnet18 at 90% of the nominal-clock figure).
So the peak used is the larger of that figure and a measured FP32 GEMM (torch/oneDNN,
2048^3, all cores, best of 5). Both are lower bounds of the true peak: the "% of peak"
figures are upper bounds.
"""
from __future__ import annotations

import os


def _cpuinfo() -> dict:
    info = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if ":" in line:
                    k, v = (s.strip() for s in line.split(":", 1))
                    info.setdefault(k, v)
    except OSError:
        pass
    return info


def fp32_peak(max_lanes: int | None = None) -> dict:
    """{"gflops", "cores", "flops_per_cycle", "ghz", "how"} for this machine; max_lanes:
    the FP32 lanes of the code measured (8: AVX2 code on an AVX-512 CPU), when narrower
    than the CPU's: the peak of that width (the measured GEMM scaled by the width ratio)."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    family, model = int(info.get("cpu family", 0)), int(info.get("model", 0))
    if {"avx512f"} <= flags:
        per_cycle, isa = 64, "AVX-512: 2 FMA x 16 lanes x 2"
    elif {"avx2", "fma"} <= flags:
        zen1 = info.get("vendor_id") == "AuthenticAMD" and family == 23 and model < 0x30
        per_cycle, isa = (16, "Zen1 AVX2: 2 x 128-bit FMA x 4 lanes x 2") if zen1 else \
            (32, "AVX2: 2 FMA x 8 lanes x 2")
    else:
        per_cycle, isa = 8, "SSE: 2 x 4 lanes (no FMA)"
    ghz = float(info.get("cpu MHz", 0) or 0) / 1e3
    cores = os.cpu_count() or 1
    gemm, scaled = gemm_gflops(cores), ""
    if max_lanes and 4 * max_lanes < per_cycle:
        ratio = 4 * max_lanes / per_cycle
        gemm, per_cycle = gemm * ratio, 4 * max_lanes
        isa = f"{max_lanes}-lane code: 2 FMA x {max_lanes} lanes x 2"
        scaled = f" x {ratio:g} for {max_lanes}-lane code"
    nominal = cores * per_cycle * ghz
    how = (f"the larger of {cores} cores x {per_cycle} FLOP/cycle ({isa}) x {ghz:.2f} GHz "
           f"nominal = {nominal:.1f} GFLOP/s and a measured 2048^3 FP32 GEMM (torch, {cores} "
           f"threads){scaled} = {gemm:.1f} GFLOP/s (cpu family {family}, model {model})")
    return {"gflops": max(nominal, gemm), "nominal_gflops": nominal, "gemm_gflops": gemm,
            "cores": cores, "flops_per_cycle": per_cycle, "ghz": ghz, "how": how}


def gemm_gflops(threads: int, n: int = 2048, repeat: int = 5) -> float:
    """GFLOP/s of torch's FP32 n x n GEMM on ``threads`` threads, best of ``repeat``."""
    import time

    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)  # warm-up
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return 2.0 * n ** 3 / best / 1e9


def model_flops(model, x, target: str = "x86-avx2") -> float:
    """FLOPs of one inference of torch ``model`` on numpy ``x``: sum over MetaSchedule
    tasks of weight x TIR FLOP estimate (the operators edgec actually runs)."""
    import torch

    from edgec.compiler.frontend import import_model
    from edgec.compiler.tune.search import extract_tasks, lowered_module
    from edgec.targets import get_target
    from tvm.s_tir.analysis import estimate_tir_flops

    model = import_model(model, (torch.from_numpy(x),))
    tasks = extract_tasks(lowered_module(model, target), get_target(target).tvm_target())
    return float(sum(t.weight * estimate_tir_flops(t.dispatched[0]) for t in tasks))
