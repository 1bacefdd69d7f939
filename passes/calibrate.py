"""Calibration: run the FP32 model over data and pick each quantized input's range.

The prepared (bound, BN-folded) module is compiled once to a TVM VM whose main
returns the input tensor of every quantizable layer. Methods:

- ``minmax``: the observed min and max.
- ``percentile``: the ``p``-th / ``(100-p)``-th percentiles of the values
  (a 2048-bin histogram over the observed range), clipping rare outliers.
- ``entropy``: the clipping threshold minimising the KL divergence between the
  histogram of ``|x|`` and its quantized version (TensorRT's method, as in ONNX
  Runtime's entropy calibrator).

Everything is deterministic given the data (no sampling).
"""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from edgec.compiler.errors import EdgecError
from edgec.compiler.tvm_compat import VirtualMachine, relax, tensor, tvm
from edgec.passes.fast_math import legalize_map
from edgec.passes.int8_layers import block_of, residual_operands
from edgec.passes.layout_fallback import blocked_layout
from edgec.passes.loop_schedule import apply_default_loops
from edgec.passes.matmul_schedule import apply_default_matmuls
from edgec.passes.nchwc_schedule import apply_default_schedules
from edgec.passes.quant_scheme import QuantPlan
from edgec.targets import get_target

BINS = 2048


class CalibrationError(EdgecError):
    """Calibration data is missing, empty, mis-shaped or not finite."""


def check_data(data, input_spec) -> np.ndarray:
    """Calibration data as float32 samples of shape ``input_spec.shape`` (batch split off)."""
    if data is None:
        raise CalibrationError("INT8 needs calibration data (--calib-data: .npy, .npz with x, "
                               "or mnist) or a scale table (--scales scales.json)")
    arr = np.asarray(data, dtype=np.float32)
    want = tuple(input_spec.shape[1:])
    if arr.ndim == len(want):
        arr = arr[None]
    if arr.size == 0 or len(arr) == 0:
        raise CalibrationError("calibration data is empty; give at least one sample")
    if tuple(arr.shape[1:]) != want:
        raise CalibrationError(f"calibration samples have shape {list(arr.shape[1:])}, the "
                               f"model input {input_spec.name!r} takes {list(want)} per sample")
    bad = np.flatnonzero(~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1))
    if len(bad):
        raise CalibrationError(f"calibration data has NaN/inf in {len(bad)} sample(s), first "
                               f"at index {int(bad[0])}")
    return arr


def probe_module(mod, tensors) -> tvm.IRModule:
    """``mod`` whose main returns ``tensors`` (vars of its dataflow block) as a tuple."""
    block = block_of(mod)
    out = relax.Var("calib_out", relax.TupleType([t.ty for t in tensors]))
    bindings = list(block.bindings) + [relax.VarBinding(out, relax.Tuple(list(tensors)))]
    f = mod["main"]
    body = relax.SeqExpr([relax.DataflowBlock(bindings)], out)
    new = relax.Function(f.params, body, out.ty, f.is_pure, f.attrs)
    return tvm.IRModule({"main": new})


def _compile(mod):
    """``mod`` built for this machine as an untuned edgec build runs: blocked convs with
    their heuristic tiles, heuristic matmuls, fast math. TVM's default NCHW schedules made
    calibration the slow half of an INT8 build (an untuned NCHW resnet18 takes ~1.6 s an
    inference on the AVX-512 Xeon, the blocked one ~11 ms), on every sample. Pools and
    the other kernels get ``loop_schedule``'s parallel, vector loops."""
    host = get_target("host")
    lanes = max(1, host.vector_bits // 32)
    fast = legalize_map()
    with host.tvm_target() as target:
        mod, _ = blocked_layout(mod, lanes, legalize=fast)
        mod = relax.transform.LegalizeOps(fast)(mod)
        mod = relax.get_pipeline("zero")(mod)
        mod, _ = apply_default_schedules(mod)
        mod, _, _ = apply_default_matmuls(mod, lanes)
        mod, _ = apply_default_loops(mod, lanes)
        return VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())


def collect(mod, tensors, data, input_spec, quiet=True, desc="calibrate"):
    """Yield, per batch, the list of numpy values of ``tensors``."""
    vm = _compile(probe_module(mod, tensors))
    batch = int(input_spec.shape[0])
    usable = len(data) - len(data) % batch
    if usable == 0:
        raise CalibrationError(f"calibration needs at least {batch} samples (the model's batch)")
    for i in tqdm(range(0, usable, batch), desc=desc, disable=quiet, leave=False):
        out = vm["main"](tensor(np.ascontiguousarray(data[i:i + batch])))
        yield [out[k].numpy() for k in range(len(tensors))]


def calibrate(mod, tensors: dict, data, input_spec, method="minmax", percentile=99.99,
              quiet=True, symmetric=False) -> dict:
    """Ranges {name: (lo, hi)} of ``tensors`` ({name: var}) over ``data``.

    symmetric: the ranges feed symmetric int8 (entropy then thresholds |x| with 128
    levels, as ONNX Runtime does); otherwise each side of zero is thresholded on its own.
    """
    data = check_data(data, input_spec)
    names, uniq = list(tensors), list(dict.fromkeys(tensors.values()))
    index = {v: k for k, v in enumerate(uniq)}
    lo = np.full(len(uniq), np.inf)
    hi = np.full(len(uniq), -np.inf)
    for outs in collect(mod, uniq, data, input_spec, quiet):
        lo = np.minimum(lo, [o.min() for o in outs])
        hi = np.maximum(hi, [o.max() for o in outs])
    if method == "minmax":
        ranges = list(zip(lo, hi))
    elif method in ("percentile", "entropy"):
        ranges = _histogram_ranges(mod, uniq, data, input_spec, lo, hi, method, percentile, quiet,
                                   symmetric)
    else:
        raise CalibrationError(f"unknown calibration method {method!r}; valid: minmax, "
                               "percentile, entropy")
    return {n: (float(ranges[index[tensors[n]]][0]), float(ranges[index[tensors[n]]][1]))
            for n in names}


def _histogram_ranges(mod, uniq, data, spec, lo, hi, method, pct, quiet, symmetric) -> list:
    bound = np.maximum(np.abs(lo), np.abs(hi))
    bound = np.where(bound > 0, bound, 1.0)
    hists = [np.zeros(2 * BINS, dtype=np.int64) for _ in uniq]  # over [-bound, bound]
    for outs in collect(mod, uniq, data, spec, quiet, desc=f"calibrate ({method})"):
        for h, o, b in zip(hists, outs, bound):
            h += np.histogram(o, bins=2 * BINS, range=(-b, b))[0]
    out = []
    for h, b, l, u in zip(hists, bound, lo, hi):
        edges = np.linspace(-b, b, 2 * BINS + 1)
        if method == "percentile":
            out.append(percentile_range(h, edges, pct, l, u))
        else:
            out.append(_entropy_range(h, b, l, u, symmetric))
    return out


def _entropy_range(h, bound, lo, hi, symmetric) -> tuple:
    pos, neg = h[BINS:], h[:BINS][::-1]
    if symmetric:
        t = entropy_threshold(pos + neg, bound, 128)
        return max(lo, -t), min(hi, t)
    # asymmetric uint8: a one-sided input (e.g. normalised pixels: a background spike
    # below zero, strokes above) must not be clipped to the spike's |x|
    new_hi = min(hi, entropy_threshold(pos, bound, 128)) if hi > 0 else hi
    new_lo = max(lo, -entropy_threshold(neg, bound, 128)) if lo < 0 else lo
    return new_lo, new_hi


def percentile_range(hist, edges, pct, lo, hi) -> tuple:
    """The (100-pct, pct) percentile values of a histogram, within [lo, hi]."""
    cdf = np.cumsum(hist) / max(hist.sum(), 1)
    q = pct / 100.0
    low = edges[min(np.searchsorted(cdf, 1.0 - q, side="left"), len(hist) - 1)]
    high = edges[min(np.searchsorted(cdf, q, side="left") + 1, len(hist))]
    return (max(float(low), lo) if lo < 0 else lo, min(float(high), hi))


def entropy_threshold(abs_hist, bound, levels=128) -> float:
    """The |x| clipping threshold minimising KL(P || Q) (TensorRT's calibration)."""
    abs_hist = abs_hist.astype(np.float64)
    # the ReLU spike at 0 says nothing about the range, but dominates P: with it the
    # KL prefers the smallest threshold (as in NVIDIA's pytorch-quantization, drop it)
    abs_hist[0] = abs_hist[1]
    n = len(abs_hist)
    if abs_hist.sum() == 0:
        return float(bound)
    best, best_i = np.inf, n
    for i in range(levels, n + 1, 16):
        p = abs_hist[:i].copy()
        p[-1] += abs_hist[i:].sum()
        q = _expand(_merge(abs_hist[:i], levels), abs_hist[:i] > 0, i, levels)
        kl = _kl(p, q)
        if kl < best:
            best, best_i = kl, i
    return float(bound) * best_i / n


def _merge(h, levels):
    idx = np.arange(len(h)) * levels // len(h)
    return np.bincount(idx, weights=h, minlength=levels)


def _expand(merged, nonzero, n, levels):
    idx = np.arange(n) * levels // n
    counts = np.bincount(idx, weights=nonzero.astype(np.float64), minlength=levels)
    per = np.where(counts > 0, merged / np.maximum(counts, 1), 0.0)
    return np.where(nonzero, per[idx], 0.0)


def _kl(p, q):
    p = p / p.sum()
    q = q / max(q.sum(), 1e-30)
    m = p > 0
    return float(np.sum(p[m] * np.log(p[m] / np.maximum(q[m], 1e-12))))


def calibration_plan(mod, layers, data, input_spec, scheme, quiet=True):
    """A ``QuantPlan`` whose ranges come from calibrating ``layers``' inputs on ``data``
    (and the outputs of ``residual_operands``, as ``out_ranges``)."""
    tensors = {layer.name: layer.input for layer in layers}
    outs = {f"{layer.name}\0out": layer.out_var for layer in residual_operands(mod, layers)}
    found = calibrate(mod, {**tensors, **outs}, data, input_spec, scheme.calib_method,
                      scheme.percentile, quiet, symmetric=scheme.activation_dtype == "int8")
    return QuantPlan(scheme, {k: found[k] for k in tensors},
                     source=f"calibration:{scheme.calib_method}",
                     extra={"samples": int(len(check_data(data, input_spec)))},
                     out_ranges={k.split("\0")[0]: found[k] for k in outs})


def run_outputs(mod, data, input_spec, quiet=True, desc="run") -> np.ndarray:
    """The first output of ``mod``'s main over ``data``, batches concatenated."""
    vm = _compile(mod)
    batch = int(input_spec.shape[0])
    outs = []
    for i in tqdm(range(0, len(data) - len(data) % batch, batch), desc=desc, disable=quiet,
                  leave=False):
        out = vm["main"](tensor(np.ascontiguousarray(data[i:i + batch])))
        outs.append((out if hasattr(out, "numpy") else out[0]).numpy())
    return np.concatenate(outs)
