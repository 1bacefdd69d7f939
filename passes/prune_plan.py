"""Decision for channel pruning: which channels of which group to keep (a PrunePlan).

Importance is computed per group (L1 / L2 norm of the producers' output rows, or
|gamma| of its batch norms), kept counts follow a per-layer or global ratio, a
minimum, and are rounded up to a multiple that suits the target's vector width.
Groups are named after their first producer's torch module (``layer1.0.conv2``),
or its Relax parameter name for ONNX models, so a plan can be read and edited.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np

from edgec.compiler.errors import EdgecError
from edgec.passes.channel_groups import kept_count
from edgec.passes.channel_walk import analyze

CRITERIA = ("l1", "l2", "bn_scale")
SCOPES = ("layer", "global")


class PlanError(EdgecError):
    """A pruning request or plan that cannot be applied."""


@dataclass(frozen=True)
class GroupPlan:
    """One group: its name, producers, width, the channels kept, and what removing saves."""

    name: str
    producers: tuple
    channels: int
    keep: tuple
    macs_saved: int = 0
    params_saved: int = 0


@dataclass(frozen=True)
class PrunePlan:
    """A whole-model plan; ``skipped`` lists unprunable groups as (name, reason)."""

    criterion: str
    ratio: float
    scope: str
    multiple: int
    min_channels: int
    groups: tuple
    skipped: tuple = ()
    macs_before: int = 0
    macs_after: int = 0
    params_before: int = 0
    params_after: int = 0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "PrunePlan":
        try:
            groups = tuple(GroupPlan(**dict(g, producers=tuple(g["producers"]),
                                            keep=tuple(int(i) for i in g["keep"])))
                           for g in d["groups"])
            return cls(**dict(d, groups=groups, skipped=tuple(tuple(s) for s in d.get("skipped", ()))))
        except (KeyError, TypeError) as e:
            raise PlanError(f"not a prune plan: {e}") from e

    @classmethod
    def load(cls, path: str) -> "PrunePlan":
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_json(json.load(f))
        except OSError as e:
            raise PlanError(f"cannot read prune plan {path}: {e.strerror}") from e
        except json.JSONDecodeError as e:
            raise PlanError(f"prune plan {path} is not JSON: {e}") from e

    def summary(self) -> dict:
        """What the manifest records: totals, and per pruned group its kept width."""
        return {"criterion": self.criterion, "ratio": self.ratio, "scope": self.scope,
                "multiple": self.multiple, "macs_before": self.macs_before,
                "macs_after": self.macs_after, "params_before": self.params_before,
                "params_after": self.params_after,
                "groups": {g.name: [len(g.keep), g.channels] for g in self.groups
                           if len(g.keep) < g.channels},
                "skipped": [list(s) for s in self.skipped]}


def group_name(group, torch_names: dict) -> str:
    """The torch module (or Relax parameter) name of a group's first producer."""
    if not group.producers:
        return f"space{group.space}"
    name = torch_names.get(group.producers[0], group.producers[0])
    return name[:-len(".weight")] if name.endswith(".weight") else name


def importance(model, cg, group, criterion: str) -> np.ndarray:
    """Per-channel scores of ``group`` (each producer normalised to mean 1, then summed)."""
    role = "bn" if criterion == "bn_scale" and cg.slices_of(group.space, "bn") else "producer"
    score = np.zeros(group.size)
    for s in cg.slices_of(group.space, role):
        value = model.params[s.name] if s.kind == "param" else cg.constants[s.name].value.numpy()
        w = np.abs(np.moveaxis(np.asarray(value), s.axis, 0).reshape(group.size, -1))
        v = (w ** 2).sum(1) ** 0.5 if criterion == "l2" else w.sum(1)
        score += v / (v.mean() or 1.0)
    return score


def estimate(model, cg, counts: dict) -> tuple:
    """(MACs, parameter elements) if root space ``r`` keeps ``counts[r]`` channels."""
    macs = sum(c * (kept_count(o, counts, cg) if o else 1) * (kept_count(i, counts, cg) if i else 1)
               for c, o, i in cg.mac_terms)
    shapes = {("param", k): list(np.shape(v)) for k, v in model.params.items()}
    shapes.update({("const", k): list(c.value.shape) for k, c in cg.constants.items()})
    full = sum(int(np.prod(s)) for s in shapes.values())
    for s in cg.slices:
        shapes[(s.kind, s.name)][s.axis] = kept_count(s.layout, counts, cg)
    return int(macs), int(sum(int(np.prod(s)) for s in shapes.values())), full


def _kept(n: int, ratio: float, multiple: int, min_channels: int) -> int:
    k = max(min_channels, math.ceil(n * (1.0 - ratio) - 1e-9), 1)
    return min(n, math.ceil(k / multiple) * multiple)


def validate_request(ratio, criterion, scope, multiple, min_channels) -> None:
    """Raise PlanError naming the bad value and the valid choices."""
    if not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
        raise PlanError(f"prune ratio must be in [0, 1), got {ratio!r}")
    if criterion not in CRITERIA:
        raise PlanError(f"unknown prune criterion {criterion!r}; valid: {', '.join(CRITERIA)}")
    if scope not in SCOPES:
        raise PlanError(f"unknown prune scope {scope!r}; valid: {', '.join(SCOPES)}")
    if int(multiple) < 1 or int(min_channels) < 1:
        raise PlanError(f"prune multiple and min channels must be >= 1, got {multiple}, {min_channels}")


def make_plan(model, ratio: float, criterion: str = "l1", scope: str = "layer",
              multiple: int | None = None, min_channels: int = 1, target="host") -> PrunePlan:
    """Plan removing ``ratio`` of the channels of every prunable group of ``model``."""
    if multiple is None:
        from edgec.targets import get_target

        multiple = max(1, get_target(target).vector_bits // 32)
    validate_request(ratio, criterion, scope, multiple, min_channels)
    cg = analyze(model.mod)
    groups = [g for g in cg.groups() if g.prunable]
    scores = {g.space: importance(model, cg, g, criterion) for g in groups}
    counts = {g.space: g.size for g in groups}
    if scope == "global" and groups:
        allv = np.concatenate([s / (s.mean() or 1.0) for s in scores.values()])
        cut = np.quantile(allv, ratio) if ratio > 0 else -np.inf
        counts = {g.space: int((scores[g.space] / (scores[g.space].mean() or 1.0) > cut).sum())
                  for g in groups}
        counts = {r: _kept(n, 0.0, multiple, min_channels) for r, n in counts.items()}
    else:
        counts = {r: _kept(n, ratio, multiple, min_channels) for r, n in counts.items()}
    return _assemble(model, cg, groups, scores, counts,
                     dict(criterion=criterion, ratio=float(ratio), scope=scope,
                          multiple=int(multiple), min_channels=int(min_channels)))


def _assemble(model, cg, groups, scores, counts, meta) -> PrunePlan:
    macs0, _, params0 = estimate(model, cg, {})
    out = []
    for g in groups:
        keep = np.sort(np.argsort(-scores[g.space], kind="stable")[:counts[g.space]])
        macs, params, _ = estimate(model, cg, {g.space: len(keep)})
        out.append(GroupPlan(group_name(g, model.torch_names),
                             tuple(model.torch_names.get(p, p) for p in g.producers),
                             g.size, tuple(int(i) for i in keep), macs0 - macs, params0 - params))
    macs1, params1, _ = estimate(model, cg, counts)
    skipped = tuple((group_name(g, model.torch_names), "; ".join(dict.fromkeys(g.reasons)) or
                     "no producer") for g in cg.groups() if not g.prunable)
    return PrunePlan(groups=tuple(out), skipped=skipped, macs_before=macs0, macs_after=macs1,
                     params_before=params0, params_after=params1, **meta)


def resolve(plan: PrunePlan, model, cg) -> dict:
    """Root space -> kept indices for ``plan`` on ``model``; PlanError on any mismatch."""
    by_name = {group_name(g, model.torch_names): g for g in cg.groups()}
    keep = {}
    for gp in plan.groups:
        g = by_name.get(gp.name)
        if g is None:
            known = ", ".join(n for n, x in by_name.items() if x.prunable)
            raise PlanError(f"prune plan names unknown group {gp.name!r}; prunable groups: {known}")
        if not g.prunable:
            raise PlanError(f"group {gp.name!r} cannot be pruned: {'; '.join(g.reasons)}")
        idx = np.asarray(gp.keep, dtype=np.int64)
        if gp.channels != g.size:
            raise PlanError(f"group {gp.name!r} has {g.size} channels, the plan says {gp.channels}")
        if idx.size == 0:
            raise PlanError(f"prune plan keeps zero channels of group {gp.name!r}; keep at least 1")
        if len(set(idx.tolist())) != idx.size or idx.min() < 0 or idx.max() >= g.size:
            raise PlanError(f"group {gp.name!r}: keep indices must be distinct and in [0, {g.size})")
        if idx.size < g.size:
            keep[cg.group_of(g.space)] = np.sort(idx)
    return keep


__all__ = ["CRITERIA", "SCOPES", "PlanError", "GroupPlan", "PrunePlan", "make_plan", "resolve",
           "importance", "estimate", "group_name", "validate_request"]
