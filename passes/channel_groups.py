"""Channel dependency groups of an imported Relax model (analysis for channel pruning).

Every channel axis an activation carries is described by a *layout*: a list of
segments ``(space, size)`` (one per concatenated source) and a ``block`` (how many
consecutive elements one channel covers, >1 after flattening NCHW into a linear
input). Convs and linears create spaces; residual adds unite them (union-find);
depthwise convs, bias adds, batch norms, activations and pools pass them on; concat
joins segments. Each weight axis that must follow a space is a ``Slice``. A group is
one united space: removing its channel ``c`` removes that index from every slice.

Anything the walk does not understand marks the spaces it touches unprunable, with
the reason, so surgery can never be wrong, only conservative.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Layout:
    """Channel layout of one axis: segments ``((space, size), ...)`` and a block size."""

    segments: tuple
    block: int = 1


@dataclass(frozen=True)
class Slice:
    """One tensor axis that follows ``layout``: kind "param" (by name) or "const" (by key).

    role: "producer" (conv/linear output rows), "bn" (batch-norm gamma), "member"
    (other per-channel values) or "consumer" (input columns of the next layer).
    """

    kind: str
    name: str
    axis: int
    layout: Layout
    role: str


@dataclass
class Group:
    """One united channel space: what produces it and whether it may be pruned."""

    space: int
    size: int
    producers: list = field(default_factory=list)
    reasons: list = field(default_factory=list)

    @property
    def prunable(self) -> bool:
        return not self.reasons and bool(self.producers)


@dataclass
class ChannelGroups:
    """Result of the analysis; ``group_of(space)`` resolves a space to its root."""

    parent: dict
    sizes: dict
    reasons: dict
    producers: dict
    slices: list
    mac_terms: list
    reshapes: dict  # reshape Call -> output axis that carries the channels
    depthwise: set  # depthwise conv2d Calls (their groups attribute follows the width)
    constants: dict

    def group_of(self, space: int) -> int:
        while self.parent[space] != space:
            self.parent[space] = self.parent[self.parent[space]]
            space = self.parent[space]
        return space

    def groups(self) -> list:
        """Every root space as a Group, in the order they were created."""
        out = {}
        for s in self.parent:
            r = self.group_of(s)
            g = out.setdefault(r, Group(r, self.sizes[r]))
            g.producers += self.producers.get(s, [])
            g.reasons += self.reasons.get(s, [])
        return list(out.values())

    def slices_of(self, space: int, role: str | None = None) -> list:
        """Single-segment slices that follow exactly ``space``'s group."""
        r = self.group_of(space)
        return [s for s in self.slices if len(s.layout.segments) == 1 and s.layout.block == 1
                and self.group_of(s.layout.segments[0][0]) == r and (role is None or s.role == role)]


def layout_indices(layout: Layout, keep: dict, base: ChannelGroups) -> np.ndarray | None:
    """Indices along an axis with ``layout`` that survive ``keep`` (root -> kept channels;
    -1 stands for a zero channel and stays -1).

    None when nothing along this axis is removed.
    """
    parts, offset, changed = [], 0, False
    for space, size in layout.segments:
        kept = keep.get(base.group_of(space))
        if kept is None:
            kept = np.arange(size)
        else:
            changed = True
        kept = np.asarray(kept, dtype=np.int64)
        parts.append(np.where(kept < 0, -1, kept + offset))  # -1: a padded zero channel
        offset += size
    if not changed:
        return None
    ch = np.concatenate(parts)
    b = layout.block
    idx = ch[:, None] * b + np.arange(b)[None, :]
    idx[ch < 0] = -1
    return idx.reshape(-1)


def kept_count(layout: Layout, counts: dict, base: ChannelGroups) -> int:
    """Elements left along an axis with ``layout`` when root ``r`` keeps ``counts[r]``."""
    return layout.block * sum(counts.get(base.group_of(s), n) for s, n in layout.segments)

