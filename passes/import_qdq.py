"""ONNX QDQ models (e.g. from ONNX Runtime's quantizer) -> edgec's int8 kernels.

TVM imports QuantizeLinear/DequantizeLinear as ``R.quantize``/``R.dequantize``
around FP32 convs, which then compute in FP32. This rewrite reads the
quantization the model carries and hands it to ``quantize_int8`` as a plan:

- ``dequantize(int8 weight initializer)`` becomes the float weight it stands for
  (the realize pass quantizes it back per channel: the same int8 values when
  the scheme's weight range matches the model's);
- an activation ``dequantize(quantize(x, s, zp))`` becomes ``clip(x, lo, hi)``
  with ``[lo, hi] = [(qmin - zp) s, (qmax - zp) s]`` (the clip keeps the ReLU
  that ORT folds into a zero point), and that range becomes the input range of
  the conv/matmul it feeds. After max_pool2d/reshape the pair is an identity.
"""
from __future__ import annotations

import numpy as np

from edgec.compiler.tvm_compat import Constant, relax
from edgec.passes.graph import RelaxModel, substitute
from edgec.passes.int8_layers import PASSTHROUGH_OPS, op_name, short_name, block_of
from edgec.passes.quant_scheme import QuantPlan

QDQ_OPS = ("relax.quantize", "relax.dequantize")
QRANGE = {"uint8": (0, 255), "int8": (-128, 127)}


def has_qdq(model: RelaxModel) -> bool:
    """Whether the imported model carries QuantizeLinear/DequantizeLinear nodes."""
    found = []
    relax.analysis.post_order_visit(model.mod["main"], lambda e: found.append(1)
                                    if op_name(e) in QDQ_OPS else None)
    return bool(found)


def strip_qdq(model: RelaxModel, scheme) -> tuple:
    """(FP32 model with float weights as constants, layer names, QuantPlan from the QDQ)."""
    return _Stripper(model).run(scheme)


class _Stripper:
    def __init__(self, model):
        self.model, self.block = model, block_of(model.mod)
        f = model.mod["main"]
        n = int(f.attrs["num_input"]) if f.attrs and "num_input" in f.attrs else len(f.params)
        self.inputs = list(f.params[:n])
        self.env = {p: p for p in self.inputs}
        self.consts = {p: model.params[p.name] for p in f.params[n:]}
        self.pending, self.ranges, self.origin = {}, {}, {}
        self.names, self.layer_ranges = [], []
        self.bb = relax.BlockBuilder()

    def value(self, e):
        if isinstance(e, relax.Var) and e in self.consts:
            return np.asarray(self.consts[e])
        if isinstance(e, Constant):
            return e.value.numpy()
        return None

    def run(self, scheme):
        f = self.model.mod["main"]
        with self.bb.function("main", self.inputs):
            with self.bb.dataflow():
                for b in self.block.bindings:
                    self.binding(b)
                ret = self.bb.emit_output(self.sub(f.body.body))
            self.bb.emit_func_output(ret)
        ranges = {n: r for n, r in zip(self.names, self.layer_ranges) if r is not None}
        keep = tuple(n for n, r in zip(self.names, self.layer_ranges) if r is None)
        plan = QuantPlan(scheme, ranges, keep, source="onnx-qdq")
        model = RelaxModel(self.bb.get(), {}, self.model.inputs, {}, self.model.source)
        return model, list(self.names), plan

    def sub(self, e):
        def lookup(v):
            if v in self.env:
                return self.env[v]
            if v in self.consts:
                return relax.const(np.asarray(self.consts[v]))
            # a quantize used by something else than its dequantize: keep it
            x, scale, zp, attrs = self.pending[v]
            q = relax.op.quantize(self.sub(x), self.sub(scale), self.sub(zp), int(attrs.axis),
                                  str(attrs.out_dtype))
            return self.env.setdefault(v, self.bb.emit(q))
        return substitute(e, lookup)

    def binding(self, b):
        v, val, op = b.var, b.value, op_name(b.value)
        if op == "relax.quantize" and self.value(val.args[1]) is not None:
            self.pending[v] = (val.args[0], val.args[1], val.args[2], val.attrs)
            return
        if op == "relax.dequantize" and self.value(val.args[0]) is not None:
            args = [self.value(a) for a in val.args]
            self.env[v] = relax.const(_dequantize(*args, int(val.attrs.axis)).astype("float32"))
            self.origin[v] = self.origin.get(val.args[0], _param_name(val.args[0]))
            return
        if op == "relax.dequantize" and val.args[0] in self.pending:
            return self.activation(v, val)
        if op in ("relax.nn.conv2d", "relax.matmul"):
            w = val.args[1]
            self.names.append(short_name(self.origin.get(w, f"{op.split('.')[-1]}_{len(self.names)}")))
            self.layer_ranges.append(self.ranges.get(val.args[0]))
        if op == "relax.permute_dims" and val.args[0] in self.origin:
            self.origin[v] = self.origin[val.args[0]]
        self.env[v] = self.bb.emit(self.sub(val), name_hint=v.name)

    def activation(self, v, val):
        x, s, zp, attrs = self.pending[val.args[0]]
        s, zp = float(np.ravel(self.value(s))[0]), int(np.ravel(self.value(zp))[0])
        qmin, qmax = QRANGE[str(attrs.out_dtype)]
        lo, hi = (qmin - zp) * s, (qmax - zp) * s
        producer = self._producer(x)
        if producer is not None and op_name(producer) in PASSTHROUGH_OPS and \
                producer.args[0] in self.ranges:
            self.env[v] = self.env[x]  # re-quantizing a pooled/reshaped int8 tensor: identity
        else:
            self.env[v] = self.bb.emit(relax.op.clip(self.sub(x), lo, hi), name_hint=v.name)
        self.ranges[v] = (lo, hi)
        if x in self.env:
            self.ranges.setdefault(x, (lo, hi))

    def _producer(self, x):
        for b in self.block.bindings:
            if b.var.same_as(x):
                return b.value
        return None


def _param_name(e) -> str:
    name = e.name if isinstance(e, relax.Var) else "const"
    return name[: -len("_quantized")] if name.endswith("_quantized") else name


def _dequantize(q, scale, zp, axis):
    q = q.astype(np.float64)
    if np.ndim(scale) == 1 and q.ndim > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zp = np.reshape(scale, shape), np.reshape(zp, shape)
    return (q - zp) * scale
