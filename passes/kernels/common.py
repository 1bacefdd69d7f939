"""What every hand-scheduled int8 kernel shares: the channel block the packed layouts
use, the attributes edgec marks kernels with, and adding one to a Relax module.

int8_kernels (packed convs/matmuls), int8_pack (the NCHW -> NCHW[4c] pack) and
kernels.int8_depthwise all import from here, so none of them imports another's
internals (int8_kernels and int8_pack used to import each other).
"""
from __future__ import annotations

# input channels one 32-bit word of the packed layout NCHW[4c] holds
IC_BLOCK = 4

# The multiply-accumulates one call of a packed kernel does (the power proxy reads it).
MACS_ATTR = "edgec.macs"
# Marks edgec's hand-scheduled kernels: tuning skips them, the build counts them apart.
HAND_ATTR = "edgec.hand_scheduled"


def hand_scheduled(func):
    """Mark a hand-scheduled kernel. Opaque: FuseOps must not merge it with its
    neighbours; scheduled: MetaSchedule's database and edgec's schedule transfer leave it
    as it is; HAND_ATTR: the tuner does not extract it as a task."""
    return (func.with_attr("op_pattern", 8).with_attr("tirx.is_scheduled", True)
            .with_attr(HAND_ATTR, True))


def add_kernel(bb, func, name: str):
    """Add a PrimFunc to ``bb`` (once: equal kernels are shared) under a fresh name. Its
    symbol comes from that name (AttachGlobalSymbol): two layers' kernels of one shape
    differ when their requantize constants do, and must not share a symbol."""
    return bb.add_func(func.without_attr("global_symbol"), name)
