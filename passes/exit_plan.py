"""ExitPlan: which model outputs are early exits, how confidence is judged, and when to leave.

The plan is data (JSON-serialisable), kept apart from the surgery in
``split_early_exits``. A sample leaves at exit k when that head's confidence
score is strictly greater than threshold k. Scores lie in [0, 1]:

- ``max_prob``: the largest softmax probability;
- ``entropy``: ``1 - H(softmax) / ln(C)`` (1 = one-hot, 0 = uniform).

So threshold 1.0 never exits and 0.0 exits at the first head (unless its output
is exactly uniform). With a batch, the batch leaves only when every sample passes.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from edgec.compiler.errors import EdgecError

CRITERIA = ("max_prob", "entropy")
THRESHOLDS_INPUT = "exit_thresholds"  # name of the (K,) float32 input when thresholds_as_input


class ExitPlanError(EdgecError):
    """An exit plan that does not fit the model or is out of range."""


@dataclass(frozen=True)
class ExitPlan:
    """Early-exit settings.

    exit_points: indices of the model outputs used as exits, in compute order
      (None: every output but the last; the last output is the final head).
    criterion: one of CRITERIA, or one per exit.
    thresholds: one per exit in [0, 1]; baked into the library as constants,
      or the defaults recorded in the manifest when ``thresholds_as_input``.
    thresholds_as_input: the library takes an ``exit_thresholds`` (K,) float32 input.
    """

    exit_points: tuple | None = None
    criterion: str | tuple = "max_prob"
    thresholds: tuple | None = None
    thresholds_as_input: bool = False

    def __post_init__(self):
        for c in self.criteria_list(1 if isinstance(self.criterion, str) else len(self.criterion)):
            if c not in CRITERIA:
                raise ExitPlanError(f"unknown exit criterion {c!r}; valid: {', '.join(CRITERIA)}")
        if self.thresholds is not None:
            check_thresholds(self.thresholds)
        if self.thresholds is None and not self.thresholds_as_input:
            raise ExitPlanError("early exit needs thresholds (e.g. 0.9,0.8), calibration "
                                "(--calibrate-exits DATA), or thresholds as a runtime input")

    def criteria_list(self, n: int) -> list:
        """The criterion of each of ``n`` exits."""
        if isinstance(self.criterion, str):
            return [self.criterion] * n
        return list(self.criterion)

    def resolve(self, num_outputs: int) -> "ExitPlan":
        """This plan with exit points filled in and counts checked against the model."""
        if num_outputs < 2:
            raise ExitPlanError(
                f"the model has {num_outputs} output; early exit needs outputs (exit logits..., "
                "final logits): attach heads with edgec.compiler.train.exits.add_exits")
        points = tuple(range(num_outputs - 1)) if self.exit_points is None else tuple(self.exit_points)
        valid = f"0..{num_outputs - 2}"
        if not points or any(not 0 <= p < num_outputs - 1 for p in points) or \
                list(points) != sorted(set(points)):
            raise ExitPlanError(f"exit points {list(points)} must be increasing output indices in "
                                f"{valid} (output {num_outputs - 1} is the final head)")
        k = len(points)
        if self.thresholds is not None and len(self.thresholds) != k:
            raise ExitPlanError(f"{len(self.thresholds)} exit threshold(s) given for {k} exit(s); "
                                f"give {k} value(s) in [0, 1]")
        if not isinstance(self.criterion, str) and len(self.criterion) != k:
            raise ExitPlanError(f"{len(self.criterion)} criteria given for {k} exit(s); give one "
                                f"or {k} of {', '.join(CRITERIA)}")
        crit = self.criterion if isinstance(self.criterion, str) else tuple(self.criterion)
        thr = None if self.thresholds is None else tuple(float(t) for t in self.thresholds)
        return ExitPlan(points, crit, thr, self.thresholds_as_input)

    @property
    def num_exits(self) -> int:
        return len(self.exit_points or ())

    def to_json(self) -> dict:
        d = asdict(self)
        d["exit_points"] = None if self.exit_points is None else list(self.exit_points)
        d["thresholds"] = None if self.thresholds is None else list(self.thresholds)
        d["criterion"] = self.criterion if isinstance(self.criterion, str) else list(self.criterion)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "ExitPlan":
        pts, thr, crit = d.get("exit_points"), d.get("thresholds"), d.get("criterion", "max_prob")
        return cls(None if pts is None else tuple(pts), crit if isinstance(crit, str) else tuple(crit),
                   None if thr is None else tuple(thr), bool(d.get("thresholds_as_input", False)))

    def dumps(self) -> str:
        return json.dumps(self.to_json())


def check_thresholds(thresholds) -> tuple:
    """Thresholds as floats, each checked to lie in [0, 1]."""
    out = []
    for t in thresholds:
        try:
            v = float(t)
        except (TypeError, ValueError):
            raise ExitPlanError(f"exit threshold {t!r} is not a number; valid range [0, 1]") from None
        if math.isnan(v) or not 0.0 <= v <= 1.0:
            raise ExitPlanError(f"exit threshold {t!r} is outside the valid range [0, 1]")
        out.append(v)
    return tuple(out)
