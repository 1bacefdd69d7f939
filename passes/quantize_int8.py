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
(directly or through max_pool2d / reshape / relu, which run on int8 too, or a channel
concat whose parts all come out at its scale);
it is dequantized only where an FP32 op needs it, and the last layer of a
chain with no quantized consumer dequantizes straight from its int32 accumulator.

With a packed kernel, layers write their output in the kernel's blocks, NCHW[Bc], where
their consumers read it as it is (packed convs, the blocked depthwise kernel, max pools):
no unpack to NCHW after the producer and no pack before the consumer. A residual add
(and its ReLU) between such layers runs in the epilogue of the conv before it
(``_Realizer._plan_blocked``). Consumers that need NCHW get the tensor unpacked once.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from edgec.compiler.tvm_compat import relax, structural_equal, tvm
from edgec.passes.int8_kernels import (DotKernel, emit_packed_conv, emit_packed_matmul,
                                       emit_taps_conv, out_channel_pad, packable, pad_nchw,
                                       taps_packable)
from edgec.passes.int8_pack import unpack_blocked_func
from edgec.passes.int8_layers import PASSTHROUGH_OPS, block_of, find_layers, op_name, users
from edgec.passes.kernels.common import add_kernel
from edgec.passes.kernels.int8_depthwise import emit_depthwise_conv, is_depthwise
from edgec.passes.kernels.int8_depthwise_blocked import (emit_blocked_depthwise_conv,
                                                         is_blocked_depthwise)
from edgec.passes.quant_scheme import QuantPlan
from edgec.passes.graph import substitute
from edgec.passes.requant import INT32, Requant


# the module attribute giving the number of layers that write the kernel's blocks
BLOCKED_ATTR = "edgec.int8_blocked_layers"


def _blocked_passthrough(value, arg=None) -> bool:
    """A max pool (NCHW) or ReLU of ``arg`` (any var when None): int8 ops that run on the
    kernel's blocks as they are (the max pool with its layout set to them)."""
    name = op_name(value)
    if name not in ("relax.nn.max_pool2d", "relax.nn.relu") or not value.args:
        return False
    if name == "relax.nn.max_pool2d" and (str(value.attrs.layout) != "NCHW"
                                          or str(value.attrs.out_layout) != "NCHW"):
        return False
    return arg is None or value.args[0].same_as(arg)


def _channel_concat(value) -> bool:
    """A concat of NCHW tensors along channels, its parts given as a tuple."""
    if op_name(value) != "relax.concat" or not isinstance(value.args[0], relax.Tuple):
        return False
    ty = value.ty
    return isinstance(ty, relax.TensorType) and len(ty.shape) == 4 \
        and int(value.attrs.axis) in (1, -3)


@dataclass(frozen=True)
class _Residual:
    """A residual add fused into a conv's epilogue: ``out = act(conv + other)``."""

    other: object       # the add's other operand (another layer's output)
    act: tuple | None   # ("relu",) when a ReLU follows the add
    out: object         # the var the fused result stands for (the add's, or the ReLU's)
    skip: tuple         # the bindings it replaces


@dataclass(frozen=True)
class QValue:
    """An int8 tensor standing for a float one: real = (var - zp) * scale."""

    var: object
    scale: float
    zp: int
    dtype: str
    channels: int = 0  # var in the kernel's blocks (N, CB, H, W, B): the real channels

    @property
    def blocked(self) -> bool:
        return self.channels > 0


def quantize(mod, layers, plan: QuantPlan, kernel: DotKernel | None = None, *,
             depthwise: bool = True, pad_out: bool = True, blocked: bool = True) -> tvm.IRModule:
    """Rewrite ``mod`` (a prepared module) so ``plan``'s layers run in int8.

    kernel: convs and matmuls use this packed dot-product kernel (``int8_kernels``,
    ``kernel_for(target, scheme)``) where their channels allow it; None: plain ops.
    depthwise: with a kernel, depthwise convs run edgec's depthwise kernel
    (``kernels.int8_depthwise``); False: Relax's plain grouped int8 conv.
    pad_out: with a kernel, a conv or matmul whose output channels do not fill the
    kernel's block is padded to it; False: such layers take the plain int8 ops.
    blocked: with a kernel, layers whose consumers read the kernel's blocks write them,
    residual adds fuse into convs (``_Realizer._plan_blocked``); False: NCHW between all
    layers.
    (The False paths are the ones before those kernels, kept so benchmarks and tests
    can compare against them: ``PipelineConfig.int8_depthwise`` / ``int8_pad_out`` /
    ``int8_blocked``.)
    """
    plan.check_layers([layer.name for layer in layers])
    active = [layer for layer in layers if layer.name not in plan.keep_fp32]
    return _Realizer(mod, active, plan, kernel, depthwise, pad_out, blocked).run()


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
    def __init__(self, mod, layers, plan, kernel=None, depthwise=True, pad_out=True,
                 blocked=True):
        self.mod, self.plan, self.scheme, self.kernel = mod, plan, plan.scheme, kernel
        self.depthwise, self.pad_out, self.blocked = depthwise, pad_out, blocked
        self.block = block_of(mod)
        self.uses = users(self.block, mod["main"].body.body)
        self.defs = {b.var: b.value for b in self.block.bindings}
        self.by_op = {layer.op_var: layer for layer in layers}
        self.skip = {v for layer in layers for v in layer.chain[1:]}
        self.by_input = {}
        for layer in layers:
            self.by_input.setdefault(layer.input, []).append(layer)
        self.env = {p: p for p in mod["main"].params}
        self.q, self.q_nchw = {}, {}
        self.bb = relax.BlockBuilder()
        self.residuals: dict = {}
        self.producer = {layer.out_var: layer.name for layer in layers}
        self.blocked_layers = self._plan_blocked()
        for name in self.blocked_layers:  # fused adds: realized with their conv
            self.skip.update(self.residuals[name].skip if name in self.residuals else ())
        # layers whose int8 output only a fused add reads (a downsampling block's conv2):
        # quantized with their own calibrated range (``QuantPlan.out_ranges``)
        self.fused_operands = {self.producer[self.residuals[name].other]
                               for name in self.blocked_layers if name in self.residuals}
        self.fused_operands &= set(self.plan.out_ranges)

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
        # how many layers write the kernel's blocks (the manifest reports it)
        return self.bb.get().with_attr(BLOCKED_ATTR, len(self.blocked_layers))

    def binding(self, b):
        v, value = b.var, b.value
        if v in self.skip:
            return
        if v in self.by_op:
            return self.layer(self.by_op[v])
        arg = value.args[0] if isinstance(value, relax.Call) and value.args else None
        if op_name(value) in PASSTHROUGH_OPS and arg not in self.env and arg in self.q:
            qv = self.q[arg]
            return self.passthrough(v, value, qv if _blocked_passthrough(value) or not qv.blocked
                                    else self.nchw(arg))
        if _channel_concat(value) and self.concat(v, value):
            return
        if op_name(value) == "relax.nn.adaptive_avg_pool2d" and arg not in self.env and arg in self.q:
            pooled = int_avg_pool(self.bb, self.nchw(arg), value, v.name)
            if pooled is not None:
                self.env[v] = pooled
                return
        self.env[v] = self.bb.emit(substitute(value, self.fp32), name_hint=v.name)

    def passthrough(self, v, value, qv):
        if op_name(value) == "relax.nn.relu":
            new = relax.op.maximum(qv.var, _const(qv.zp, qv.dtype))
        elif qv.blocked:  # a max pool of blocks (``_blocked_passthrough``)
            a, layout = value.attrs, f"NCHW{int(qv.var.ty.shape[4])}c"
            new = relax.op.nn.max_pool2d(qv.var, a.pool_size, a.strides, a.padding, a.dilation,
                                         a.ceil_mode, layout=layout, out_layout=layout)
        else:
            new = relax.Call(value.op, [qv.var, *value.args[1:]], value.attrs, value.ty_args)
        self.q[v] = QValue(self.bb.emit(new, name_hint=f"{v.name}_q"), qv.scale, qv.zp, qv.dtype,
                           qv.channels)

    def concat(self, v, value) -> bool:
        """A channel concat of int8 tensors that share one scale and zero point (their
        producers requantized to the range of the concat's consumers, ``out_range``), in
        int8 and NCHW: squeezenet's fire modules and googlenet's inception blocks used to
        dequantize every branch, concat in FP32 and quantize again (squeezenet1_1: 0.7 of
        4.1 ms). False: some part is float or has a scale of its own; the concat then
        runs in FP32."""
        parts = list(value.args[0].fields)
        if not all(isinstance(p, relax.Var) and p not in self.env and p in self.q for p in parts):
            return False
        qs = [self.q[p] for p in parts]
        if len({(q.scale, q.zp, q.dtype) for q in qs}) != 1:
            return False
        y = self.bb.emit(relax.op.concat([self.nchw(p).var for p in parts], axis=1),
                         name_hint=f"{v.name}_q")
        self.q[v] = QValue(y, qs[0].scale, qs[0].zp, qs[0].dtype)
        return True

    def nchw(self, var) -> QValue:
        """The int8 form of ``var`` in NCHW: unpacked from the kernel's blocks (once) for a
        consumer that does not read them."""
        qv = self.q[var]
        if not qv.blocked:
            return qv
        if var not in self.q_nchw:
            shape = [int(d) for d in qv.var.ty.shape]
            n, _, h, w, _ = shape
            gv = add_kernel(self.bb, unpack_blocked_func(shape, qv.channels, qv.dtype),
                            f"unpack_nchw{shape[4]}c_{n}x{qv.channels}x{h}x{w}")
            y = self.bb.emit(relax.call_tir(gv, [qv.var], relax.TensorType(
                (n, qv.channels, h, w), qv.dtype)), name_hint=f"{var.name}_nchw")
            self.q_nchw[var] = QValue(y, qv.scale, qv.zp, qv.dtype)
        return self.q_nchw[var]

    def fp32(self, var):
        """The float value of ``var``, dequantizing its int8 form on first use."""
        if var in self.env:
            return self.env[var]
        qv = self.nchw(var)
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
                elif b is not None and _channel_concat(b.value):  # its parts share its scale
                    todo.append(b.var)
        if not found:
            return None
        return min(r[0] for r in found), max(r[1] for r in found)

    def layer(self, layer):
        qin = self.int8(layer.input, *self.plan.ranges[layer.name])
        if qin.blocked and not self._reads_blocks(layer):
            qin = self.nchw(layer.input)
        axis = 0 if layer.kind == "conv2d" else 1
        wq, sw = self.scheme.quantize_weight(layer.weight, axis)
        acc_scale = qin.scale * sw
        other = tuple(d for d in range(wq.ndim) if d != axis)
        bias = np.round(layer.bias / acc_scale) - qin.zp * wq.astype(np.int64).sum(axis=other)
        fused = self.residuals.get(layer.name) if layer.name in self.blocked_layers else None
        out_var = fused.out if fused else layer.out_var
        out = self.out_range(out_var)
        if out is None and layer.name in self.fused_operands:  # only a fused add reads it
            out = self.plan.out_ranges[layer.name]
        res = None
        if out is None:  # only FP32 consumers: dequantize the accumulator itself
            rq = Requant(bias, acc_scale, "float32", act=layer.act)
        else:
            scale, zp = self.scheme.activation_qparams(*out)
            lo, hi = self._bounds(fused.act if fused else layer.act, scale, zp)
            rq = Requant(bias, acc_scale / scale, self.scheme.activation_dtype, zp, lo, hi)
            if fused:  # the residual add (and its ReLU) in the epilogue (blocked: the
                res = self.q[fused.other]  # other's producer is in the set, _plan_blocked)
                rq = replace(rq, res_scale=res.scale / scale, res_zp=res.zp)
        y = self.accumulate(layer, qin, wq, rq, res)
        name = out_var.name + ("_q" if rq.quantized else "")
        if str(y.ty.dtype) == "int32":  # a plain op: requantize with Relax ops after it
            shape = (1, -1, 1, 1) if layer.kind == "conv2d" else (-1,)
            y = rq.relax_form(self.bb, y, shape, name)
        if rq.quantized:
            channels = layer.weight.shape[0] if len(y.ty.shape) == 5 else 0
            self.q[out_var] = QValue(y, scale, zp, rq.dtype, channels)
        else:
            self.env[out_var] = y

    def accumulate(self, layer, qin, wq, rq, res=None):
        """``layer`` on the int8 input ``qin``: the int32 accumulator, or ``rq`` applied
        already (the packed conv does it in its epilogue, with the residual ``res``)."""
        x, w = qin.var, _const(wq, "int8")
        if layer.kind == "matmul":
            if self.kernel and packable(wq, self.kernel, pad_out=self.pad_out):
                return emit_packed_matmul(self.bb, x, wq, self.kernel)
            return self.bb.emit(relax.op.matmul(x, w, out_dtype="int32"))
        a = layer.attrs
        padding = [int(p) for p in a.padding]
        blocked = rq.quantized and layer.name in self.blocked_layers
        if self._packed_conv(layer, wq):
            # padded with the zero point (the image of 0.0) as it is packed; the extra
            # channels up to a multiple of 4 meet zero weights
            return emit_packed_conv(self.bb, x, wq, a.strides, a.dilation, self.kernel, rq,
                                    padding, qin.zp, blocked_out=blocked,
                                    residual=res.var if res is not None else None,
                                    groups=int(a.groups))
        if len(x.ty.shape) == 5:  # a blocked input goes only to a layer that keeps blocks
            assert blocked, f"{layer.name}: blocked input, but its output cannot stay blocked"
            return emit_blocked_depthwise_conv(self.bb, x, wq, a.strides, a.dilation,
                                               self.kernel.oc_block, rq, padding, qin.zp)
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

    def _packed_conv(self, layer, wq) -> bool:
        return (layer.kind == "conv2d" and self.kernel is not None
                and packable(wq, self.kernel, int(layer.attrs.groups), self.pad_out))

    def _blocked_depthwise(self, layer, wq) -> bool:
        return (layer.kind == "conv2d" and self.kernel is not None and self.depthwise
                and is_blocked_depthwise(wq, int(layer.attrs.groups), layer.attrs.strides))

    def _residual(self, layer):
        """The residual add that could fuse into ``layer``'s epilogue: its output's one use
        is ``add(output, other)`` (either order, equal shapes), ``other`` another layer's
        output (checked by ``_plan_blocked``), optionally followed by its one ``relu``.
        None: no such add."""
        uses = self.uses.get(layer.out_var, [])
        if layer.kind != "conv2d" or layer.act is not None or len(uses) != 1 or uses[0] < 0:
            return None
        b = self.block.bindings[uses[0]]
        if op_name(b.value) != "relax.add":
            return None
        x, y = b.value.args
        other = y if x.same_as(layer.out_var) else x
        if (not isinstance(other, relax.Var) or other.same_as(layer.out_var)
                or not structural_equal(other.ty, layer.out_var.ty)):
            return None
        act, out, skip = None, b.var, (b.var,)
        after = self.uses.get(b.var, [])
        if len(after) == 1 and after[0] >= 0:
            r = self.block.bindings[after[0]]
            if op_name(r.value) == "relax.nn.relu":
                act, out, skip = ("relu",), r.var, (b.var, r.var)
        return _Residual(other, act, out, skip)

    def _plan_blocked(self) -> set:
        """The layers that write the kernel's blocks: the greatest set in which each is a
        packed conv (or a depthwise conv whose producer is in the set: the blocked
        depthwise kernel reads blocks only) with an int8 output some consumer of which
        reads blocks (directly or through a max pool or ReLU): a packed conv whose input
        channels the block pads by at most a third, a depthwise conv in the set, or a
        residual add fused into a layer in the set (whose other operand's producer must
        then be in the set too). Other consumers get the output unpacked to NCHW once
        (``nchw``): the last block of a network before its pooling head, say. Removing a
        layer can disqualify others, so it repeats until nothing changes."""
        if self.kernel is None or not self.blocked:
            return set()
        layers = {layer.name: layer for layer in self.by_op.values()}
        order = {b.var: i for i, b in enumerate(self.block.bindings)}
        # (a packed conv's epilogue takes a residual; the depthwise kernels' do not)
        found = {layer.name: r for layer in layers.values()
                 if self._packed_conv(layer, layer.weight)
                 and (r := self._residual(layer)) is not None}
        self.producer.update({r.out: name for name, r in found.items()})
        for b in self.block.bindings:  # a max pool's or ReLU's output: its input's producer
            if _blocked_passthrough(b.value) and b.value.args[0] in self.producer:
                self.producer[b.var] = self.producer[b.value.args[0]]
        # the other operand: another layer's int8 output (maybe max-pooled), realized
        # before this conv
        self.residuals = {name: r for name, r in found.items() if r.other in self.producer
                          and order[r.other] < order[layers[name].op_var]}
        fused_adds = {r.skip[0]: name for name, r in self.residuals.items()}
        chosen = {name for name, layer in layers.items() if layer.kind == "conv2d"
                  and (self._packed_conv(layer, layer.weight) or self._blocked_depthwise(layer, layer.weight))
                  and (self.out_range(self._out(layer)) is not None
                       or name in self.plan.out_ranges and name not in self.residuals)}

        def reads(i, var, channels):
            if i < 0:
                return False
            v, value = self.block.bindings[i].var, self.block.bindings[i].value
            if _blocked_passthrough(value, var):
                return any(reads(j, v, channels) for j in self.uses.get(v, []))
            consumer = self.by_op.get(v)
            if consumer is not None and consumer.input.same_as(var):
                if self._packed_conv(consumer, consumer.weight):
                    return 3 * (channels + out_channel_pad(channels, self.kernel.oc_block)) <= 4 * channels
                return consumer.name in chosen
            return v in fused_adds and fused_adds[v] in chosen

        changed = True
        while changed:
            changed = False
            for name in sorted(chosen):
                layer = layers[name]
                out = self._out(layer)
                ok = any(reads(i, out, layer.weight.shape[0]) for i in self.uses.get(out, []))
                if ok and not self._packed_conv(layer, layer.weight):  # depthwise
                    ok = self.producer.get(layer.input) in chosen
                res = self.residuals.get(name)
                if ok and res is not None:
                    ok = self.producer[res.other] in chosen
                if not ok:
                    chosen.discard(name)
                    changed = True
        return chosen

    def _reads_blocks(self, layer) -> bool:
        """Whether ``layer`` takes an input in the kernel's blocks as it is (else it gets
        the input unpacked to NCHW)."""
        return layer.kind == "conv2d" and (self._packed_conv(layer, layer.weight) or (
            layer.name in self.blocked_layers and self._blocked_depthwise(layer, layer.weight)))

    def _out(self, layer):
        """The var a layer's int8 output stands for: its own, or its fused residual's."""
        res = self.residuals.get(layer.name)
        return res.out if res is not None and self.blocked else layer.out_var

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
