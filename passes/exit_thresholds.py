"""Choose per-exit thresholds that minimise expected compute within an accuracy budget.

Inputs are the logits of every exit (and the final head) on validation data
and the cumulative cost of leaving at each exit: MACs from the split module
(``exit_macs``) or latencies measured on the built library (``measure_exit_seconds``).
The search is coordinate descent over quantiles of each exit's confidence
scores, starting from "never exit" (the final head's accuracy, always feasible).
The scores mirror the compiled ones exactly (see ``edgec.passes.exit_plan``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from edgec.compiler.tvm_compat import relax
from edgec.passes.count_macs import call_macs
from edgec.passes.exit_plan import CRITERIA, ExitPlanError
from edgec.passes.split_early_exits import stage_names


@dataclass(frozen=True)
class Calibration:
    """Chosen thresholds and what they give on the calibration data."""
    thresholds: tuple
    criterion: str
    exit_rates: tuple  # fraction of samples leaving at each exit, final last
    accuracy: float  # % with early exit
    full_accuracy: float  # % of the final head (never exit)
    expected_cost: float
    full_cost: float
    cost_unit: str

    @property
    def speedup(self) -> float:
        return self.full_cost / self.expected_cost

    def to_json(self) -> dict:
        d = asdict(self)
        d["thresholds"], d["exit_rates"] = list(self.thresholds), list(self.exit_rates)
        d["speedup"] = self.speedup
        return d


def scores(logits: np.ndarray, criterion: str) -> np.ndarray:
    """Per-sample confidence in [0, 1], as the compiled ``main`` computes it."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    p = np.exp(logp)
    if criterion == "max_prob":
        return p.max(axis=1)
    if criterion == "entropy":
        return 1.0 - (-(p * logp).sum(axis=1)) / np.log(z.shape[1])
    raise ExitPlanError(f"unknown exit criterion {criterion!r}; valid: {', '.join(CRITERIA)}")


def simulate(exit_scores, exit_correct, thresholds) -> np.ndarray:
    """The exit each sample takes: the first k with score_k > threshold_k, else the final."""
    n = len(exit_correct[0])
    taken = np.full(n, len(thresholds), dtype=np.int64)
    for k in reversed(range(len(thresholds))):
        taken[exit_scores[k] > thresholds[k]] = k
    return taken


def _evaluate(exit_scores, correct, costs, thresholds):
    taken = simulate(exit_scores, correct, thresholds)
    acc = float(np.mean(np.choose(taken, correct)) * 100.0)
    return acc, float(np.mean(np.asarray(costs)[taken])), taken


def calibrate(exit_logits, labels, exit_costs, accuracy_budget: float = 1.0,
              criterion: str = "max_prob", grid: int = 2000, full_accuracy: float | None = None,
              cost_unit: str = "MACs") -> Calibration:
    """Thresholds minimising mean cost s.t. accuracy >= full_accuracy - accuracy_budget.

    exit_logits: K+1 arrays (N, C), exits then final. exit_costs: K+1 cumulative
    costs of leaving at each exit. full_accuracy: the reference (default: the
    final head's accuracy on these samples).
    """
    k = len(exit_logits) - 1
    if k < 1 or len(exit_costs) != k + 1:
        raise ExitPlanError(f"need logits of >= 1 exit plus the final head and one cost per "
                            f"output; got {len(exit_logits)} logits, {len(exit_costs)} costs")
    if accuracy_budget < 0:
        raise ExitPlanError(f"accuracy budget must be >= 0 points, got {accuracy_budget}")
    labels = np.asarray(labels)
    correct = [np.argmax(z, axis=1) == labels for z in exit_logits]
    sc = [scores(z, criterion) for z in exit_logits[:-1]]
    ref = float(correct[-1].mean() * 100.0) if full_accuracy is None else float(full_accuracy)
    floor = ref - accuracy_budget
    thr = [1.0] * k
    best = _evaluate(sc, correct, exit_costs, thr)
    for _sweep in range(5):
        changed = False
        for e in range(k):
            for t in _candidates(sc[e], grid):
                trial = thr[:e] + [float(t)] + thr[e + 1:]
                acc, cost, taken = _evaluate(sc, correct, exit_costs, trial)
                if acc >= floor and (cost, -acc) < (best[1], -best[0]):
                    thr, best, changed = trial, (acc, cost, taken), True
        if not changed:
            break
    acc, cost, taken = best
    rates = tuple(float((taken == j).mean()) for j in range(k + 1))
    return Calibration(tuple(thr), criterion, rates, acc, ref, cost, float(exit_costs[-1]), cost_unit)


def _candidates(score, grid: int) -> np.ndarray:
    """Thresholds worth trying: every distinct score (or ``grid`` quantiles of many), 0 and 1."""
    pts = score if len(score) <= grid else np.quantile(score, np.linspace(0, 1, grid))
    return np.unique(np.clip(np.concatenate([pts, [0.0, 1.0]]), 0.0, 1.0))


def stage_macs(mod) -> list:
    """Multiply-accumulates of each stage function (conv2d and matmul; other ops are cheap)."""
    out = []
    for name in stage_names(mod):
        total = [0]

        def visit(e, total=total):
            if isinstance(e, relax.Call) and hasattr(e.op, "name"):
                total[0] += call_macs(e)

        relax.analysis.post_order_visit(mod[name], visit)
        out.append(total[0])
    return out


def exit_macs(mod) -> list:
    """Cumulative MACs of leaving at each exit (stage 0..k), for ``calibrate``."""
    return list(np.cumsum(stage_macs(mod)).astype(float))


def measure_exit_seconds(model, x, repeat: int = 30) -> list:
    """Cumulative median latency of leaving at each exit, on a library built with
    ``thresholds_as_input``: thresholds force each exit in turn."""
    info = model.manifest.get("early_exit") or {}
    if not info.get("thresholds_as_input"):
        raise ExitPlanError("measuring exit latency needs a library built with thresholds as input")
    k = info["count"]
    out = []
    for e in range(k + 1):
        thr = np.array([1.0] * e + [0.0] * (k - e), dtype="float32")
        out.append(float(np.median(model.time(x, thr, repeat=repeat))))
    return out
