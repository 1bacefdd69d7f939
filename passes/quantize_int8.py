"""Realize INT8: quantizable layers become u8/s8 x s8 -> int32 ops with requantization.

Per layer (see ``int8_layers``): weights are quantized per output channel to int8
constants (4x fewer bytes), the bias (with BN folded in) becomes int32 in the
accumulator's scale, and the zero point of uint8 inputs is folded into that bias
(``conv(x - zp, W) = conv(x, W) - zp * sum(W)``; padding then pads with ``zp``).

Requantization uses a **float scale** per output channel, as ONNX Runtime's MLAS
does: ``q_out = clip(round(float(acc) * (s_in * s_w[c] / s_out)) + zp_out, lo, hi)``,
ReLU/clip folded into ``lo``/``hi``. On x86 float multiply-and-round vectorises
(vcvtdq2ps/vmulps/vcvtps2dq); a fixed-point multiplier needs 64-bit products,
which AVX2 lacks. A float32 product of an |acc| < 2^24 is exact to half an ulp,
so results differ from a fixed-point requantize by at most one step. It is one
``requant.Requant``: Relax ops after a plain conv/matmul (FuseOps fuses them), or the
epilogue of a packed conv (``int8_kernels``), whose int32 accumulators never leave it.

The output of a layer stays int8 when another quantized layer consumes it
(directly or through max_pool2d / reshape / relu, which run on int8 too);
it is dequantized only where an FP32 op needs it, and the last layer of a
chain with no quantized consumer dequantizes straight from its int32 accumulator.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgec.compiler.tvm_compat import relax, tvm
from edgec.passes.int8_kernels import (DotKernel, emit_packed_conv, emit_packed_matmul,
                                       emit_taps_conv, packable, pad_nchw, taps_packable)
from edgec.passes.int8_layers import PASSTHROUGH_OPS, block_of, find_layers, op_name, users
from edgec.passes.kernels.int8_depthwise import emit_depthwise_conv, is_depthwise
from edgec.passes.quant_scheme import QuantPlan
from edgec.passes.graph import substitute
from edgec.passes.requant import INT32, Requant


@dataclass(frozen=True)
class QValue:
    """An int8 tensor standing for a float one: real = (var - zp) * scale."""

    var: object
    scale: float
    zp: int
    dtype: str


def quantize(mod, layers, plan: QuantPlan, kernel: DotKernel | None = None, *,
             depthwise: bool = True, pad_out: bool = True) -> tvm.IRModule:
    """Rewrite ``mod`` (a prepared module) so ``plan``'s layers run in int8.

    kernel: convs and matmuls use this packed dot-product kernel (``int8_kernels``,
    ``kernel_for(target, scheme)``) where their channels allow it; None: plain ops.
    depthwise: with a kernel, depthwise convs run edgec's depthwise kernel
    (``kernels.int8_depthwise``); False: Relax's plain grouped int8 conv.
    pad_out: with a kernel, a conv or matmul whose output channels do not fill the
    kernel's block is padded to it; False: such layers take the plain int8 ops.
    (The two False paths are the ones before those kernels, kept so benchmarks and tests
    can compare against them: ``PipelineConfig.int8_depthwise`` / ``int8_pad_out``.)
    """
    plan.check_layers([layer.name for layer in layers])
    active = [layer for layer in layers if layer.name not in plan.keep_fp32]
    return _Realizer(mod, active, plan, kernel, depthwise, pad_out).run()


def int32_overflows(layers, plan: QuantPlan) -> list:
    """Names of ``layers`` whose int32 accumulator cannot hold their bias at the plan's
    input scale: ``round(bias / (s_in * s_w))`` plus the largest sum of products passes
    2^31, and the bias saturated (``Requant.bias_const`` clips): a wrong output, silently.
    It happens when a layer's input range is tiny next to its bias (inception_v3 with
    random weights: activations fade to ~1e-9 by the classifier, SQNR 0 dB against
    FP32). Such layers stay FP32; the manifest lists them."""
    scheme, out = plan.scheme, []
    qmin, qmax = scheme.act_qrange
    for layer in layers:
        if layer.name in plan.keep_fp32 or layer.name not in plan.ranges:
            continue
        scale, zp = scheme.activation_qparams(*plan.ranges[layer.name])
        axis = 0 if layer.kind == "conv2d" else 1
        wq, sw = scheme.quantize_weight(layer.weight, axis)
        other = tuple(d for d in range(wq.ndim) if d != axis)
        bias = np.round(layer.bias / (scale * sw)) - zp * wq.astype(np.int64).sum(axis=other)
        acc = np.abs(wq.astype(np.int64)).sum(axis=other) * max(abs(qmax - zp), abs(qmin - zp))
        if float(np.max(np.abs(bias) + acc)) > INT32[1]:
            out.append(layer.name)
    return out


def _const(value, dtype):
    return relax.const(np.asarray(value).astype(dtype), dtype)


def int_avg_pool(bb, qv: QValue, call, name: str):
    """``adaptive_avg_pool2d`` of an int8 tensor, summed in int32, dequantized after:
    ``mean((q - zp) * s) = sum(q) * (s / k) - zp * s`` (the sum is exact). The int8 tensor
    is read once, instead of dequantized whole to float first (a global pool before a
    classifier, an exit head's pool). None: windows that do not tile the input evenly."""
    a = call.attrs
    shape = qv.var.ty.shape
    if str(a.layout) != "NCHW" or str(a.out_layout) != "NCHW" or shape is None:
        return None
    n, c, h, w = (int(d) for d in shape.values)
    oh, ow = (int(d) for d in a.output_size) if a.output_size is not None else (h, w)
    if h % oh or w % ow:
        return None
    kh, kw = h // oh, w // ow
    x = relax.op.reshape(relax.op.astype(qv.var, "int32"), (n, c, oh, kh, ow, kw))
    y = relax.op.astype(relax.op.sum(x, axis=[3, 5]), "float32")
    y = relax.op.multiply(y, _const(qv.scale / (kh * kw), "float32"))
    if qv.zp:
        y = relax.op.subtract(y, _const(qv.zp * qv.scale, "float32"))
    return bb.emit(y, name_hint=name)


class _Realizer:
    def __init__(self, mod, layers, plan, kernel=None, depthwise=True, pad_out=True):
        self.mod, self.plan, self.scheme, self.kernel = mod, plan, plan.scheme, kernel
        self.depthwise, self.pad_out = depthwise, pad_out
        self.block = block_of(mod)
        self.uses = users(self.block, mod["main"].body.body)
        self.defs = {b.var: b.value for b in self.block.bindings}
        self.by_op = {layer.op_var: layer for layer in layers}
        self.skip = {v for layer in layers for v in layer.chain[1:]}
        self.by_input = {}
        for layer in layers:
            self.by_input.setdefault(layer.input, []).append(layer)
        self.env = {p: p for p in mod["main"].params}
        self.q = {}
        self.bb = relax.BlockBuilder()

    def run(self):
        f = self.mod["main"]
        attrs = dict(f.attrs) if f.attrs else None
        with self.bb.function("main", list(f.params), attrs=attrs):
            with self.bb.dataflow():
                for b in self.block.bindings:
                    self.binding(b)
                ret = substitute(f.body.body, self.fp32)
                ret = self.bb.emit_output(ret)
            self.bb.emit_func_output(ret)
        return self.bb.get()

    def binding(self, b):
        v, value = b.var, b.value
        if v in self.skip:
            return
        if v in self.by_op:
            return self.layer(self.by_op[v])
        arg = value.args[0] if isinstance(value, relax.Call) and value.args else None
        if op_name(value) in PASSTHROUGH_OPS and arg not in self.env and arg in self.q:
            return self.passthrough(v, value, self.q[arg])
        if op_name(value) == "relax.nn.adaptive_avg_pool2d" and arg not in self.env and arg in self.q:
            pooled = int_avg_pool(self.bb, self.q[arg], value, v.name)
            if pooled is not None:
                self.env[v] = pooled
                return
        self.env[v] = self.bb.emit(substitute(value, self.fp32), name_hint=v.name)

    def passthrough(self, v, value, qv):
        if op_name(value) == "relax.nn.relu":
            new = relax.op.maximum(qv.var, _const(qv.zp, qv.dtype))
        else:
            new = relax.Call(value.op, [qv.var, *value.args[1:]], value.attrs, value.ty_args)
        self.q[v] = QValue(self.bb.emit(new, name_hint=f"{v.name}_q"), qv.scale, qv.zp, qv.dtype)

    def fp32(self, var):
        """The float value of ``var``, dequantizing its int8 form on first use."""
        if var in self.env:
            return self.env[var]
        qv = self.q[var]
        x = relax.op.astype(qv.var, "float32")
        if qv.zp:
            x = relax.op.subtract(x, _const(qv.zp, "float32"))
        self.env[var] = self.bb.emit(relax.op.multiply(x, _const(qv.scale, "float32")),
                                     name_hint=f"{var.name}_dq")
        return self.env[var]

    def int8(self, var, lo, hi) -> QValue:
        """The int8 form of ``var``, quantizing its float value with range [lo, hi]."""
        if var in self.q:
            return self.q[var]
        scale, zp = self.scheme.activation_qparams(lo, hi)
        qmin, qmax = self.scheme.act_qrange
        x = relax.op.round(relax.op.multiply(self.fp32(var), _const(1.0 / scale, "float32")))
        if zp:
            x = relax.op.add(x, _const(zp, "float32"))
        x = relax.op.astype(relax.op.clip(x, float(qmin), float(qmax)), self.scheme.activation_dtype)
        self.q[var] = QValue(self.bb.emit(x, name_hint=f"{var.name}_q"), scale, zp,
                             self.scheme.activation_dtype)
        return self.q[var]

    def out_range(self, var):
        """Union of the input ranges of quantized layers fed by ``var`` (None: none)."""
        found, todo = [], [var]
        while todo:
            cur = todo.pop()
            found += [self.plan.ranges[layer.name] for layer in self.by_input.get(cur, [])]
            for i in self.uses.get(cur, []):
                b = self.block.bindings[i] if i >= 0 else None
                if b is not None and op_name(b.value) in PASSTHROUGH_OPS and b.value.args[0].same_as(cur):
                    todo.append(b.var)
        if not found:
            return None
        return min(r[0] for r in found), max(r[1] for r in found)

    def layer(self, layer):
        qin = self.int8(layer.input, *self.plan.ranges[layer.name])
        axis = 0 if layer.kind == "conv2d" else 1
        wq, sw = self.scheme.quantize_weight(layer.weight, axis)
        acc_scale = qin.scale * sw
        other = tuple(d for d in range(wq.ndim) if d != axis)
        bias = np.round(layer.bias / acc_scale) - qin.zp * wq.astype(np.int64).sum(axis=other)
        out = self.out_range(layer.out_var)
        if out is None:  # only FP32 consumers: dequantize the accumulator itself
            rq = Requant(bias, acc_scale, "float32", act=layer.act)
        else:
            scale, zp = self.scheme.activation_qparams(*out)
            lo, hi = self._bounds(layer.act, scale, zp)
            rq = Requant(bias, acc_scale / scale, self.scheme.activation_dtype, zp, lo, hi)
        y = self.accumulate(layer, qin, wq, rq)
        name = layer.out_var.name + ("_q" if rq.quantized else "")
        if str(y.ty.dtype) == "int32":  # a plain op: requantize with Relax ops after it
            shape = (1, -1, 1, 1) if layer.kind == "conv2d" else (-1,)
            y = rq.relax_form(self.bb, y, shape, name)
        if rq.quantized:
            self.q[layer.out_var] = QValue(y, scale, zp, rq.dtype)
        else:
            self.env[layer.out_var] = y

    def accumulate(self, layer, qin, wq, rq):
        """``layer`` on the int8 input ``qin``: the int32 accumulator, or ``rq`` applied
        already (the packed conv does it in its epilogue)."""
        x, w = qin.var, _const(wq, "int8")
        if layer.kind == "matmul":
            if self.kernel and packable(wq, self.kernel, pad_out=self.pad_out):
                return emit_packed_matmul(self.bb, x, wq, self.kernel)
            return self.bb.emit(relax.op.matmul(x, w, out_dtype="int32"))
        a = layer.attrs
        padding = [int(p) for p in a.padding]
        if self.kernel is not None and packable(wq, self.kernel, int(a.groups),
                                                self.pad_out):
            # padded with the zero point (the image of 0.0) as it is packed; the extra
            # channels up to a multiple of 4 meet zero weights
            return emit_packed_conv(self.bb, x, wq, a.strides, a.dilation, self.kernel, rq,
                                    padding, qin.zp)
        if self.kernel is not None and taps_packable(wq, self.kernel, int(a.groups)):
            return emit_taps_conv(self.bb, x, wq, a.strides, a.dilation, self.kernel, rq,
                                  padding, qin.zp)
        if (self.kernel is not None and self.depthwise
                and is_depthwise(wq, int(a.groups), a.strides)):
            return emit_depthwise_conv(self.bb, x, wq, a.strides, a.dilation, rq, padding,
                                       qin.zp)
        if qin.zp and any(padding):  # pad with the zero point, the image of 0.0
            x, padding = pad_nchw(self.bb, x, padding, qin.zp), [0, 0, 0, 0]
        return self.bb.emit(relax.op.nn.conv2d(
            x, w, strides=a.strides, padding=padding, dilation=a.dilation, groups=int(a.groups),
            data_layout="NCHW", kernel_layout="OIHW", out_layout="NCHW", out_dtype="int32"))

    def _bounds(self, act, scale, zp):
        qmin, qmax = self.scheme.act_qrange
        lo, hi = qmin, qmax
        if act and act[0] == "relu":
            lo = max(qmin, zp)
        elif act:
            lo = max(qmin, int(round(act[1] / scale)) + zp)
            hi = min(qmax, int(round(act[2] / scale)) + zp)
        return float(lo), float(hi)


def QuantizeInt8(plan: QuantPlan, names=None, kernel=None):  # noqa: N802  (TVM's naming)
    """The pass form: ``QuantizeInt8(plan, layer_names)(prepared_module)``."""
    @tvm.ir.transform.module_pass(opt_level=0, name="edgec.QuantizeInt8")
    def pass_fn(mod, _ctx):
        return quantize(mod, find_layers(mod, names), plan, kernel)

    return pass_fn
