"""Compare engines in one run on one machine and report ratios.

These machines are shared and noisy: engines run in interleaved rounds, the
order rotating each round (``timing.interleaved``), and we report each engine's
minimum and the median of its round medians, plus ratios against a baseline, the
CPU and its flags.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass

import numpy as np

from edgec.compiler.timing import calibrate_number, interleaved, time_once
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


def compare(engines, rounds: int = 7, samples: int = 5, warmup: int = 3, baseline: str | None = None,
            quiet: bool = False) -> dict:
    """Time ``engines`` in ``rounds`` interleaved rounds; returns per-engine stats and ratios.

    Each round runs every engine (order rotated, ``timing.interleaved``) for ``samples``
    samples; the engine's figure is the median over rounds of the round medians (ms).
    """
    for e in engines:
        for _ in range(warmup):
            e.run()
    numbers = [calibrate_number(e.run) for e in engines]
    got = interleaved(len(engines), rounds,
                      lambda i, r: [time_once(engines[i].run, numbers[i]) * 1e3
                                    for _ in range(samples)],
                      "benchmark rounds", quiet)
    stats = {}
    for e, n, per_round in zip(engines, numbers, got):
        s = np.asarray(per_round).ravel()
        stats[e.name] = {"median_ms": float(np.median([np.median(x) for x in per_round])),
                         "min_ms": float(s.min()), "mean_ms": float(s.mean()),
                         "std_ms": float(s.std()), "p95_ms": float(np.percentile(s, 95)),
                         "runs_per_sample": n}
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
