"""Pad channel groups to the blocked conv layout's vector width (FP32, NCHWc only).

With NCHWc a tensor takes the target's FP32 lanes as its channel block, or on AVX-512 8
where only 8 divides (``conv_layout.channel_block``). mobilenet_v2's 24-channel tensors
then run at half the vector width: its two 24-channel convs took 0.136 and 0.205 ms on
the AVX-512 Xeon (2 threads), where ONNX Runtime, whose NCHWc transformer pads them to
32 channels (as oneDNN's nChw16c does), took 0.070 and 0.101 ms. A group whose channels
do not divide by the lanes at all (a pruned layer of 37) stayed in plain NCHW.

Padding is pruning's inverse, on the same channel groups (``passes.channel_groups``):
every tensor axis that follows a group gets zero channels appended. The producers' new
output rows and biases are zero, so the padded channels hold zeros (or, after a batch
norm or an activation, some finite value); the consumers' new input columns are zero,
so whatever the padded channels hold adds nothing: the model computes the same function.
Only groups pruning could cut are padded (one whose channels reach the model's output,
or an op the analysis does not know, is left as is), and only where the padding costs at
most half again the channels (``padded_size``).
"""
from __future__ import annotations

import numpy as np

from edgec.passes.channel_walk import analyze
from edgec.passes.prune_channels import resize_groups

MAX_GROWTH = 1.5  # 24 -> 32 on AVX-512 (1.33x) pads; 8 -> 16 (2x) keeps its 8-lane block


def padded_size(channels: int, lanes: int) -> int:
    """Channels after padding for ``lanes`` FP32 lanes: the next multiple of the lanes if
    that is at most MAX_GROWTH times as many, else of half the lanes (not below 8: the
    narrow block of AVX-512), else as is."""
    for block in (lanes, lanes // 2):
        if block < min(lanes, 8):
            break
        size = -(-channels // block) * block
        if size == channels:
            return channels
        if size <= MAX_GROWTH * channels:
            return size
    return channels


def pad_channels(model, lanes: int, func: str = "main"):
    """``model`` with its paddable channel groups padded for ``lanes`` (a copy), and the
    pipeline's record (None when no group needs padding)."""
    cg = analyze(model.mod, func)
    keep, padded = {}, []
    for g in cg.groups():
        size = padded_size(g.size, lanes)
        if size != g.size and g.prunable:
            keep[cg.group_of(g.space)] = np.concatenate(
                [np.arange(g.size), np.full(size - g.size, -1)])
            padded.append([g.size, size])
    if not keep:
        return model, None
    out = resize_groups(model, cg, keep, func)
    return out, {"name": "pad_channels", "lanes": lanes, "groups": len(padded),
                 "channels": sorted(padded), "weight_bytes_before": model.weight_bytes,
                 "weight_bytes_after": out.weight_bytes}
