"""Requantization of an int32 accumulator: one definition, two forms.

``y = float32(acc + bias[c]) * scale[c]``, then either

- requantized to int8/uint8: ``clip(round(y) + zp, lo, hi)`` (ReLU/clip folded into
  ``lo``/``hi``), computed as ``round(clip(y, lo - zp, hi - zp)) + zp``: the same value
  for every y (``lo``, ``hi`` and ``zp`` are integers and rounding is monotone), and a
  clamp before the rounding bounds y, so ``te_form`` rounds and converts with one add
  of a constant (see there), or
- kept float32 (the layer feeds only FP32 ops): ``act(y)``.

``relax_form`` emits it as Relax ops after a plain int32 conv/matmul (FuseOps fuses
them into one elementwise kernel); ``te_form`` computes it inside a packed conv's
epilogue, so the int32 accumulator never goes to memory. Both build the same
expression in the same order, so the two are bit-exact.

A residual add fused into a packed conv's epilogue (``te_form`` with ``res``: an int8
tensor r with its own scale and zero point) adds ``(r - res_zp) * res_scale`` to y
before the rounding: ``act(conv + bias + residual)`` requantized once, where the
unfused path wrote the conv's float output, dequantized r, added and quantized again.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te, tirx

from edgec.compiler.tvm_compat import relax

INT32 = (-(2 ** 31), 2 ** 31 - 1)
ROUND_MAGIC = 1.5 * 2 ** 23  # float32 y + this: round(y) in the low bits (|y| <= 2^22)
ROUND_MAGIC_BITS = 0x4B400000  # its bits as an int32


@dataclass(frozen=True, eq=False)
class Requant:
    """What becomes of each accumulator of output channel ``c`` (see the module doc)."""

    bias: np.ndarray        # int32 per output channel (zero point and BN folded in)
    scale: np.ndarray       # float32 per output channel
    dtype: str              # "uint8" | "int8" (requantized) | "float32" (dequantized)
    zp: int = 0
    lo: float = 0.0         # clip bounds of the requantized value
    hi: float = 0.0
    act: tuple | None = None  # float32 output: None, ("relu",) or ("clip", lo, hi)
    res_scale: float = 0.0  # a fused residual: its scale over the output's (0: none)
    res_zp: int = 0         # ... and its zero point

    @property
    def residual(self) -> bool:
        return self.res_scale != 0.0

    @property
    def quantized(self) -> bool:
        return self.dtype != "float32"

    def bias_const(self, shape):
        return relax.const(np.clip(self.bias, *INT32).astype("int32").reshape(shape), "int32")

    def scale_const(self, shape):
        return relax.const(np.asarray(self.scale, "float32").reshape(shape), "float32")

    def relax_form(self, bb, acc, shape, name_hint=""):
        """Emit the requantize of ``acc`` (int32; channels on the axis ``shape`` marks -1)."""
        acc = bb.emit(relax.op.add(acc, self.bias_const(shape)))
        y = relax.op.multiply(relax.op.astype(acc, "float32"), self.scale_const(shape))
        if not self.quantized:
            if self.act:
                y = relax.op.nn.relu(y) if self.act[0] == "relu" else relax.op.clip(y, *self.act[1:])
            return bb.emit(y, name_hint=name_hint)
        y = relax.op.round(relax.op.clip(y, self.lo - self.zp, self.hi - self.zp))
        if self.zp:
            y = relax.op.add(y, relax.const(float(self.zp), "float32"))
        return bb.emit(relax.op.astype(y, self.dtype), name_hint=name_hint)

    def te_form(self, acc, c, bias, scale, res=None):
        """The requantize of one accumulator ``acc`` of channel ``c`` as a TE expression;
        ``bias``/``scale`` are the kernel's (C,) int32/float32 placeholders; ``res``: the
        fused residual's int8 value at the same output position (``residual``)."""
        f32 = "float32"
        y = (acc + bias[c]).astype(f32) * scale[c]
        if res is not None:
            r = res.astype(f32)
            if self.res_zp:
                r = r - tirx.const(float(self.res_zp), f32)
            y = y + r * tirx.const(float(self.res_scale), f32)
        if not self.quantized:
            if self.act and self.act[0] == "relu":
                return te.max(y, tirx.const(0, f32))
            if self.act:
                lo, hi = (tirx.const(v, f32) for v in self.act[1:])
                return te.max(te.min(y, hi), lo)
            return y
        y = te.max(te.min(y, tirx.const(self.hi - self.zp, f32)), tirx.const(self.lo - self.zp, f32))
        # Round half to even and convert in one add: for |y| <= 2^22, y + 1.5 * 2^23 is
        # rounded (in the default mode, as relax.op.round's nearbyint) to an integer, and
        # the sum's bits are 0x4B400000 + round(y). The clamp above keeps |y| <= 255; the
        # constant's low byte is 0, so the output byte is round(y) + zp with no subtract.
        # frinti/frintn + fcvtzs (AArch64), roundps + cvttps2dq (x86) become one fadd.
        bits = tirx.reinterpret("int32", y + tirx.const(ROUND_MAGIC, f32))
        q = bits - tirx.const(ROUND_MAGIC_BITS - self.zp, "int32")
        return q.astype(self.dtype)
