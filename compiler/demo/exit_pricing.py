"""Price early exits by measured latency, not by MACs, and say whether they pay.

On a small model the fixed cost of a call and the exit head's own kernels can outweigh
the compute an exit skips: the demo's MNIST CNN left at its exit 93% of the time with
0.24x the MACs of the full path, and the library was still slower than the same model
without exits (issue #25). So the exit plan is priced with the latency of each path,
measured on the built library (thresholds given as an input force each path in turn),
against the latency of the model without exits, interleaved in one run; the thresholds
then minimise the expected measured latency, and the exit is kept only when that
expectation beats the model without exits by ``PAYS_BELOW``.
"""
from __future__ import annotations

import numpy as np

from edgec.compiler.timing import interleaved, time_once

# Keep an exit only if its expected latency is at most this share of the model without
# exits: a smaller gain is within this machine's run-to-run noise and costs accuracy.
PAYS_BELOW = 0.9


def path_latencies(exits_model, plain_model, x: np.ndarray, rounds: int = 7,
                   number: int = 200) -> dict:
    """Median per-call seconds of each exit path (cumulative: path k runs stages 0..k and
    the exit tests before it) and of ``plain_model``, interleaved in rotating rounds.

    exits_model: a ``runtime.Model`` built with ``thresholds_as_input``; plain_model: the
    same network without exits (the stage before). Both are called as users call them.
    """
    info = exits_model.manifest.get("early_exit") or {}
    if not info.get("thresholds_as_input"):
        from edgec.passes.exit_plan import ExitPlanError

        raise ExitPlanError("pricing exits needs a library built with thresholds as input")
    k = info["count"]
    runs = [(lambda t=np.array([1.0] * e + [0.0] * (k - e), "float32"): exits_model(x, t))
            for e in range(k + 1)]
    runs.append(lambda: plain_model(x))
    for fn in runs:  # warm up; each forced path must really take its exit
        fn()
    for e in range(k + 1):
        runs[e]()
        if exits_model.exit_taken != e:
            raise RuntimeError(f"forcing exit {e} took exit {exits_model.exit_taken}")
    samples = interleaved(len(runs), rounds, lambda i, r: time_once(runs[i], number))
    med = [float(np.median(s)) for s in samples]
    return {"path_s": med[:-1], "without_exits_s": med[-1], "rounds": rounds, "calls": number}


def decide(calibration, measured: dict) -> dict:
    """Whether the exits pay: expected latency over the calibration split's exit rates
    (``calibration``: costs in seconds) against the model without exits."""
    expected = float(np.dot(calibration.exit_rates, measured["path_s"]))
    ratio = expected / measured["without_exits_s"]
    return {"path_ms": [round(s * 1e3, 4) for s in measured["path_s"]],
            "without_exits_ms": round(measured["without_exits_s"] * 1e3, 4),
            "expected_ms": round(expected * 1e3, 4), "ratio": round(ratio, 3),
            "exit_rates": [round(float(r), 4) for r in calibration.exit_rates],
            "pays": bool(ratio <= PAYS_BELOW), "pays_below": PAYS_BELOW,
            "rounds": measured["rounds"], "calls": measured["calls"]}


def verdict(decision: dict) -> str:
    """One sentence for the report."""
    paths = ", ".join(f"{ms:.4f}" for ms in decision["path_ms"])
    head = (f"expected {decision['expected_ms']:.4f} ms a call (paths {paths} ms, exit rates "
            f"{', '.join(f'{r:.0%}' for r in decision['exit_rates'])} on val) against "
            f"{decision['without_exits_ms']:.4f} ms without exits = {decision['ratio']:.2f}x")
    if decision["pays"]:
        return f"the exit pays on this target: {head} (kept: <= {decision['pays_below']:g}x)"
    return (f"the exit does not pay on this target: {head} (above {decision['pays_below']:g}x), "
            "so the final artifact is the stage before it")
