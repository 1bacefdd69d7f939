"""Compare engines in one run on one machine and report ratios.

These machines are shared and noisy: engines run in interleaved rounds, the
order rotating each round, and we report each engine's minimum and the median
of its round medians, plus ratios against a baseline, the CPU and its flags.
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from edgec.targets import cpu_flags


@dataclass(frozen=True)
class Engine:
    """A named callable that runs one inference (inputs bound beforehand)."""
    name: str
    run: object


def machine_info() -> dict:
    """CPU model, the SIMD flags that matter, core count and load (for every result file)."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                         model)
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "asimddp")
    return {"cpu": model, "machine": platform.machine(), "cores": os.cpu_count(),
            "flags": sorted(f for f in cpu_flags() if f in wanted),
            "loadavg_1m": os.getloadavg()[0]}


def time_once(fn, number: int) -> float:
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def calibrate_number(fn, target_s: float = 0.02) -> int:
    """Runs per sample so one sample lasts about ``target_s`` (timer noise stays small)."""
    t = time_once(fn, 1)
    return max(1, min(1000, int(target_s / max(t, 1e-7))))


def compare(engines, rounds: int = 7, samples: int = 5, warmup: int = 3, baseline: str | None = None,
            quiet: bool = False) -> dict:
    """Time ``engines`` in ``rounds`` interleaved rounds; returns per-engine stats and ratios.

    Each round runs every engine (order rotated) for ``samples`` samples; the
    engine's figure is the median over rounds of the round medians (ms).
    """
    for e in engines:
        for _ in range(warmup):
            e.run()
    numbers = {e.name: calibrate_number(e.run) for e in engines}
    per_round = {e.name: [] for e in engines}
    allsamples = {e.name: [] for e in engines}
    for r in tqdm(range(rounds), desc="benchmark rounds", disable=quiet, leave=False):
        order = engines[r % len(engines):] + engines[:r % len(engines)]
        for e in order:
            s = [time_once(e.run, numbers[e.name]) * 1e3 for _ in range(samples)]
            per_round[e.name].append(float(np.median(s)))
            allsamples[e.name] += s
    stats = {}
    for name, meds in per_round.items():
        s = np.asarray(allsamples[name])
        stats[name] = {"median_ms": float(np.median(meds)), "min_ms": float(s.min()),
                       "mean_ms": float(s.mean()), "std_ms": float(s.std()),
                       "p95_ms": float(np.percentile(s, 95)), "runs_per_sample": numbers[name]}
    base = baseline or engines[0].name
    for name in stats:
        stats[name]["ratio_to_" + base] = stats[name]["median_ms"] / stats[base]["median_ms"]
    return {"baseline": base, "rounds": rounds, "samples": samples, "engines": stats,
            "machine": machine_info()}


def markdown_table(results: dict, title: str = "") -> str:
    """A markdown table of one ``compare`` result (median, min, ratio to baseline)."""
    base = results["baseline"]
    lines = [f"### {title}" if title else "", "",
             f"| engine | median ms | min ms | x {base} |", "| --- | ---: | ---: | ---: |"]
    for name, s in results["engines"].items():
        lines.append(f"| {name} | {s['median_ms']:.3f} | {s['min_ms']:.3f} | "
                     f"{s['ratio_to_' + base]:.2f} |")
    return "\n".join(lines).lstrip("\n")
