"""The INT8 scheme and plan: what the quantizer does, kept apart from doing it.

``QuantScheme`` is the rule book (dtypes, bit widths, calibration method);
``QuantPlan`` is one model's decision (activation ranges per layer, layers kept
in FP32). Both are frozen and JSON-serialisable: a plan written by calibration
or by QAT (``compiler/train/qat.py``) is the same file the pass consumes.

Weights: per-output-channel symmetric int8, ``scale_c = max|W_c| / qmax``.
Activations: per-tensor, asymmetric uint8 (``zp`` in [0, 255]) or symmetric int8.
Bias: int32 in the accumulator's scale ``s_in * s_w_c``.
reduce_range: 7-bit weights (qmax 63), as ONNX Runtime does, so that the AVX2
``vpmaddubsw`` pair sum ``2 * 255 * 64 < 32767`` never saturates its int16.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from edgec.compiler.errors import EdgecError

ACTIVATION_DTYPES = ("uint8", "int8")
CALIB_METHODS = ("minmax", "percentile", "entropy")
FORMAT = "edgec-int8-scales"


class QuantError(EdgecError):
    """An invalid quantization scheme, plan or scale table."""


@dataclass(frozen=True)
class QuantScheme:
    """How tensors are quantized.

    activation_dtype: "uint8" (asymmetric, u8 x s8 kernels: x86) or "int8" (symmetric).
    reduce_range: weights in 7 bits (qmax 63) against ``vpmaddubsw`` saturation.
    calib_method: minmax | percentile | entropy; percentile: the kept percentile.
    """

    activation_dtype: str = "uint8"
    reduce_range: bool = False
    calib_method: str = "minmax"
    percentile: float = 99.99

    def __post_init__(self):
        if self.activation_dtype not in ACTIVATION_DTYPES:
            raise QuantError(f"activation dtype {self.activation_dtype!r} is not supported; "
                             f"valid: {', '.join(ACTIVATION_DTYPES)}")
        if self.calib_method not in CALIB_METHODS:
            raise QuantError(f"unknown calibration method {self.calib_method!r}; "
                             f"valid: {', '.join(CALIB_METHODS)}")
        if not 50.0 < float(self.percentile) <= 100.0:
            raise QuantError(f"percentile must be in (50, 100], got {self.percentile}")

    @property
    def weight_qmax(self) -> int:
        return 63 if self.reduce_range else 127

    @property
    def act_qrange(self) -> tuple:
        return (0, 255) if self.activation_dtype == "uint8" else (-127, 127)

    def activation_qparams(self, lo: float, hi: float) -> tuple:
        """(scale, zero_point) for a tensor observed in [lo, hi]; 0.0 is exact."""
        lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
        qmin, qmax = self.act_qrange
        if self.activation_dtype == "int8":
            bound = max(-lo, hi)
            return (bound / qmax if bound > 0 else 1.0), 0
        scale = (hi - lo) / (qmax - qmin) if hi > lo else 1.0
        zp = int(np.clip(round(qmin - lo / scale), qmin, qmax))
        return scale, zp

    def quantize_weight(self, w: np.ndarray, axis: int) -> tuple:
        """Per-channel symmetric int8 along ``axis``: (int8 array, float scales)."""
        w = np.asarray(w, dtype=np.float64)
        moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
        absmax = np.abs(moved).max(axis=1)
        scales = np.where(absmax > 0, absmax / self.weight_qmax, 1.0)
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.round(w / scales.reshape(shape)), -self.weight_qmax, self.weight_qmax)
        return q.astype(np.int8), scales

    def to_json(self) -> dict:
        return asdict(self)


def scheme_for_target(target, activation: str = "auto", reduce_range: str = "auto",
                      calib_method: str = "minmax", percentile: float = 99.99) -> QuantScheme:
    """The scheme for ``target`` (an ``edgec.targets.Target``).

    auto activations: uint8 on x86 (u8 x s8 is what vpmaddubsw/vpdpbusd take),
    int8 on ARM (SDOT). auto reduce_range: on for x86 targets without VNNI,
    whose fast int8 path (vpmaddubsw) saturates int16 pair sums.
    """
    for name, value, valid in (("activation dtype", activation, ("auto", *ACTIVATION_DTYPES)),
                               ("reduce_range", reduce_range, ("auto", "on", "off"))):
        if value not in valid:
            raise QuantError(f"{name} {value!r} is not valid; valid: {', '.join(valid)}")
    x86 = target.arch == "x86_64"
    if activation == "auto":
        activation = "uint8" if x86 else "int8"
    if reduce_range == "auto":
        reduce = x86 and activation == "uint8" and target.int8 != "vnni"
    else:
        reduce = reduce_range == "on"
    return QuantScheme(activation, reduce, calib_method, percentile)


@dataclass(frozen=True)
class QuantPlan:
    """One model's INT8 decision: input range of every quantized layer, FP32 layers.

    ranges: {layer name: (lo, hi)} of the activation entering that layer.
    keep_fp32: layer names left in FP32. source: "calibration:<method>", "qat", "onnx-qdq".
    out_ranges: {layer name: (lo, hi)} of a layer's own output, where calibration records
    it (``int8_layers.residual_operands``: a downsampling block's two convs); optional.
    """

    scheme: QuantScheme
    ranges: dict
    keep_fp32: tuple = ()
    source: str = "calibration"
    extra: dict = field(default_factory=dict)
    out_ranges: dict = field(default_factory=dict)

    def with_keep_fp32(self, names) -> "QuantPlan":
        return replace(self, keep_fp32=tuple(sorted(set(self.keep_fp32) | set(names))))

    def check_layers(self, known) -> None:
        """Raise if the plan names layers the model lacks, or lacks a quantized layer."""
        known = list(known)
        unknown = sorted((set(self.ranges) | set(self.out_ranges) | set(self.keep_fp32))
                         - set(known))
        if unknown:
            raise QuantError(f"scale table names unknown layer(s) {unknown}; "
                             f"the model's quantizable layers are {known}")
        missing = [n for n in known if n not in self.ranges and n not in self.keep_fp32]
        if missing:
            raise QuantError(f"scale table has no range for layer(s) {missing}; calibrate, or "
                             "keep them in FP32 (int8_keep_fp32)")

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": 1, "source": self.source,
                "scheme": self.scheme.to_json(),
                "activations": {k: {"min": float(lo), "max": float(hi)}
                                for k, (lo, hi) in sorted(self.ranges.items())},
                **({"outputs": {k: {"min": float(lo), "max": float(hi)}
                                for k, (lo, hi) in sorted(self.out_ranges.items())}}
                   if self.out_ranges else {}),
                "keep_fp32": list(self.keep_fp32), **({"extra": self.extra} if self.extra else {})}

    @classmethod
    def from_json(cls, d: dict) -> "QuantPlan":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise QuantError(f"not an edgec scale table (expected \"format\": \"{FORMAT}\")")
        try:
            scheme = QuantScheme(**d.get("scheme", {}))
            ranges = {k: (float(v["min"]), float(v["max"])) for k, v in d["activations"].items()}
            outs = {k: (float(v["min"]), float(v["max"])) for k, v in d.get("outputs", {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise QuantError(f"malformed scale table: {e}") from e
        for k, (lo, hi) in [*ranges.items(), *outs.items()]:
            if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
                raise QuantError(f"scale table range of {k!r} is invalid: [{lo}, {hi}]")
        return cls(scheme, ranges, tuple(d.get("keep_fp32", ())), d.get("source", "file"),
                   d.get("extra", {}), outs)

    @classmethod
    def load(cls, path: str) -> "QuantPlan":
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except OSError as e:
            raise QuantError(f"cannot read scale table {path}: {e.strerror}") from e
        except json.JSONDecodeError as e:
            raise QuantError(f"scale table {path} is not JSON: {e}") from e
        return cls.from_json(data)

    def summary(self) -> dict:
        return {"source": self.source, "scheme": self.scheme.to_json(),
                "layers_int8": len(self.ranges) - len(set(self.keep_fp32) & set(self.ranges)),
                "keep_fp32": list(self.keep_fp32)}
