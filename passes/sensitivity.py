"""Mixed precision: how much each layer alone hurts, and which to keep in FP32.

For every layer, the model is built with only that layer quantized and its
output compared with the FP32 model's on the same samples (SQNR in dB; top-1
accuracy too when labels are given). The worst layers can then be kept in FP32:
a fixed number (``--int8-keep-fp32 N``) or as many as an SQNR/accuracy budget needs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from edgec.passes.calibrate import run_outputs
from edgec.passes.quantize_int8 import quantize


def sqnr_db(out, ref) -> float:
    """Signal-to-quantization-noise ratio of ``out`` against ``ref``, in dB."""
    noise = float(np.sum((np.asarray(out, np.float64) - ref) ** 2))
    signal = float(np.sum(np.asarray(ref, np.float64) ** 2))
    return float("inf") if noise == 0 else 10.0 * np.log10(max(signal, 1e-30) / noise)


@dataclass(frozen=True)
class Sensitivity:
    """One row: the layer, its SQNR when only it is int8, and its top-1 (or None)."""

    layer: str
    sqnr_db: float
    accuracy: float | None = None

    def to_json(self) -> dict:
        return {"layer": self.layer, "sqnr_db": round(self.sqnr_db, 2), "accuracy": self.accuracy}


def _accuracy(out, labels):
    return None if labels is None else float((out.argmax(1) == labels[:len(out)]).mean() * 100)


def layer_sensitivity(mod, layers, plan, data, spec, labels=None, quiet=True) -> list:
    """Rows for every layer of ``plan``, worst (lowest SQNR) first."""
    names = [layer.name for layer in layers]
    ref = run_outputs(mod, data, spec)
    rows = []
    for name in tqdm(names, desc="sensitivity", disable=quiet, leave=False):
        only = plan.with_keep_fp32([n for n in names if n != name])
        out = run_outputs(quantize(mod, layers, only), data, spec)
        rows.append(Sensitivity(name, sqnr_db(out, ref), _accuracy(out, labels)))
    return sorted(rows, key=lambda r: r.sqnr_db)


def keep_worst(rows, n: int) -> tuple:
    """The ``n`` most sensitive layers (to keep in FP32)."""
    return tuple(r.layer for r in rows[:max(0, int(n))])


def keep_for_budget(mod, layers, plan, data, spec, rows, min_sqnr=None, labels=None,
                    max_drop=None, quiet=True) -> tuple:
    """Keep worst layers in FP32 until SQNR >= ``min_sqnr`` dB and/or the top-1 drop
    against FP32 is <= ``max_drop`` points. Returns (keep_fp32, final SQNR)."""
    ref = run_outputs(mod, data, spec)
    ref_acc = _accuracy(ref, labels)
    keep: list = []
    for k in range(len(rows) + 1):
        keep = [r.layer for r in rows[:k]]
        out = run_outputs(quantize(mod, layers, plan.with_keep_fp32(keep)), data, spec)
        ok = min_sqnr is None or sqnr_db(out, ref) >= min_sqnr
        if max_drop is not None and labels is not None:
            ok = ok and ref_acc - _accuracy(out, labels) <= max_drop
        if ok:
            return tuple(keep), sqnr_db(out, ref)
    return tuple(keep), float("inf")


def markdown(rows) -> str:
    """The sensitivity table as markdown, worst first."""
    lines = ["| layer | SQNR alone (dB) | top-1 alone |", "| --- | ---: | ---: |"]
    for r in rows:
        acc = "-" if r.accuracy is None else f"{r.accuracy:.2f}"
        lines.append(f"| {r.layer} | {r.sqnr_db:.2f} | {acc} |")
    return "\n".join(lines)
