"""Analysis for INT8: which ops can be quantized, under which names, fused with what.

A quantizable *layer* is a ``conv2d`` (NCHW/OIHW) or ``matmul`` whose weight is a
constant, followed by the per-output-channel affine ops the importer leaves
behind (bias add, a decomposed inference batch norm: subtract/divide/multiply/add
by per-channel constants) and at most one ``relu``/``clip``. The affine ops fold
into the weight and bias, so the chain becomes one int8 op plus a requantize.

Layers are named after the torch module (``conv1``, ``layer1.0.conv2``) or the
ONNX initializer their weight came from, so plans and QAT tables can name them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgec.compiler.errors import EdgecError
from edgec.passes.graph import RelaxModel, bind
from edgec.compiler.tvm_compat import Constant, relax, tvm
from edgec.passes.simplify import Simplify

AFFINE_OPS = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide")
ACT_OPS = ("relax.nn.relu", "relax.clip")
# ops that commute with a per-tensor affine quantization: they run on int8 as is
PASSTHROUGH_OPS = ("relax.nn.max_pool2d", "relax.reshape", "relax.nn.relu", "relax.flatten",
                   "relax.permute_dims", "relax.squeeze", "relax.expand_dims")


class QuantizeGraphError(EdgecError):
    """The module's structure is one the INT8 pass does not handle."""


@dataclass(frozen=True)
class Layer:
    """One quantizable chain: op (conv2d | matmul) + folded affine + activation."""

    name: str
    kind: str
    op_var: object
    input: object
    weight: np.ndarray      # folded fp32 weight: OIHW (conv2d) or (K, N) (matmul)
    bias: np.ndarray        # folded fp32 bias per output channel
    act: tuple | None       # None, ("relu",) or ("clip", lo, hi)
    out_var: object         # the last binding of the chain
    chain: tuple            # every var the chain replaces (op_var .. out_var)
    attrs: object


def prepare(model: RelaxModel) -> tvm.IRModule:
    """Bind the weights and simplify (BN folding, constant folding) before quantizing."""
    return Simplify(fold_batchnorm=True)(bind(model))


def block_of(mod, func="main"):
    """The single dataflow block of ``func`` (what frontends produce)."""
    body = mod[func].body
    blocks = list(body.blocks)
    if len(blocks) != 1 or not isinstance(blocks[0], relax.DataflowBlock):
        raise QuantizeGraphError(f"{func} must be one dataflow block to quantize, found "
                                 f"{len(blocks)} block(s)")
    return blocks[0]


def op_name(value) -> str:
    return value.op.name if isinstance(value, relax.Call) and hasattr(value.op, "name") else ""


def users(block, ret) -> dict:
    """var -> list of binding indices using it (-1: ``ret``, the function's return)."""
    out: dict = {}

    def note(expr, idx):
        def visit(e):
            if isinstance(e, relax.Var):
                out.setdefault(e, []).append(idx)
        relax.analysis.post_order_visit(expr, visit)

    for i, b in enumerate(block.bindings):
        note(b.value, i)
    note(ret, -1)
    return out


def layer_names(model: RelaxModel) -> list:
    """Names of the weighted conv2d/matmul ops of the imported module, in order."""
    bindings = block_of(model.mod).bindings
    defs = {b.var: b.value for b in bindings}
    names = []
    for b in bindings:
        if op_name(b.value) not in ("relax.nn.conv2d", "relax.matmul"):
            continue
        w = b.value.args[1]
        if op_name(defs.get(w)) == "relax.permute_dims":
            w = defs[w].args[0]
        if isinstance(w, relax.Var) and w.name in model.params:
            names.append(short_name(model.torch_names.get(w.name, w.name)))
    return names


def short_name(name: str) -> str:
    for suffix in (".weight", "_weight"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name[2:] if name.startswith("p_") else name


def _channel_vector(arr, out_shape, axis) -> np.ndarray | None:
    """``arr`` as a per-channel vector along ``axis`` of ``out_shape`` (None: not one)."""
    ndim = len(out_shape)
    if arr.ndim > ndim:
        return None
    full = arr.reshape((1,) * (ndim - arr.ndim) + arr.shape)
    ch = out_shape[axis]
    if any(full.shape[d] != 1 for d in range(ndim) if d != axis % ndim) or \
            full.shape[axis] not in (1, ch):
        return None
    return np.broadcast_to(full.reshape(-1), (ch,)).astype(np.float64)


def _affine_step(value, cur, out_shape, axis):
    """(scale, shift) vectors if ``value`` is ``cur (op) per-channel const``, else None."""
    op = op_name(value)
    if op not in AFFINE_OPS:
        return None
    a, b = value.args
    if b.same_as(cur) and isinstance(a, Constant) and op in ("relax.add", "relax.multiply"):
        a, b = b, a
    if not a.same_as(cur) or not isinstance(b, Constant):
        return None
    v = _channel_vector(b.value.numpy(), out_shape, axis)
    if v is None:
        return None
    one, zero = np.ones_like(v), np.zeros_like(v)
    if op in ("relax.add", "relax.subtract"):
        return one, (v if op == "relax.add" else -v)
    if op == "relax.divide" and not np.all(v != 0):
        return None
    return (v if op == "relax.multiply" else 1.0 / v), zero


def _activation(value):
    op = op_name(value)
    if op == "relax.nn.relu":
        return ("relu",)
    if op == "relax.clip":
        lo, hi = (float(a.value) for a in value.args[1:3])
        return ("clip", lo, hi)
    return None


def _weight_of(value):
    """The fp32 weight constant of a quantizable conv2d/matmul call, or None."""
    op, args = op_name(value), value.args if isinstance(value, relax.Call) else ()
    if op not in ("relax.nn.conv2d", "relax.matmul") or not isinstance(args[1], Constant):
        return None
    w = args[1].value.numpy()
    if w.dtype != np.float32 or str(args[0].ty.dtype) != "float32":
        return None
    if op == "relax.nn.conv2d":
        a = value.attrs
        ok = a.data_layout == "NCHW" and a.kernel_layout == "OIHW" and a.out_layout == "NCHW"
        return w if ok and w.ndim == 4 else None
    return w if w.ndim == 2 and args[0].ty.ndim >= 2 else None


def find_layers(mod, names=None) -> list:
    """Every quantizable layer of ``mod``'s main, in program order."""
    block = block_of(mod)
    uses = users(block, mod["main"].body.body)
    found = []
    for i, b in enumerate(block.bindings):
        w = _weight_of(b.value)
        if w is None:
            continue
        kind = "conv2d" if op_name(b.value) == "relax.nn.conv2d" else "matmul"
        found.append(_chain(block.bindings, i, uses, kind, w))
    if names is None or len(names) != len(found):
        names = [f"{layer['kind']}_{k}" for k, layer in enumerate(found)]
    return [Layer(name=n, **layer) for n, layer in zip(names, found)]


def residual_operands(mod, layers) -> list:
    """Layers whose output is one operand of an ``add`` whose other operand is another
    layer's output: a downsampling residual block's two convs (``conv2 + downsample``).
    Neither output feeds a quantized layer, so calibration records their own ranges: with
    one of them in int8, the add fuses into the other's epilogue (``quantize_int8``)."""
    outs = {layer.out_var: layer for layer in layers}
    found = []
    for b in block_of(mod).bindings:
        if op_name(b.value) == "relax.add" and len(b.value.args) == 2:
            x, y = b.value.args
            if x in outs and y in outs and not x.same_as(y):
                found += [outs[v] for v in (x, y) if all(f is not outs[v] for f in found)]
    return found


def fp32_ops(mod, layers) -> dict:
    """{op: count} of the convs and matmuls in ``mod``'s main that no layer quantizes
    (a matmul of two activations in attention, a conv whose weight is computed): they
    stay FP32, and the manifest lists them."""
    quantized = {layer.op_var for layer in layers}
    counts = {}
    for b in block_of(mod).bindings:
        op = op_name(b.value)
        if op in ("relax.nn.conv2d", "relax.matmul") and b.var not in quantized:
            counts[op] = counts.get(op, 0) + 1
    return counts


def _chain(bindings, i, uses, kind, w) -> dict:
    op_b = bindings[i]
    axis = 1 if kind == "conv2d" else -1
    out_shape = [int(d) for d in op_b.var.ty.shape.values]
    scale, shift = np.ones(out_shape[axis]), np.zeros(out_shape[axis])
    cur, chain, act, j = op_b.var, [op_b.var], None, i + 1
    while len(uses.get(cur, [])) == 1 and uses[cur][0] >= 0 and act is None:
        j = uses[cur][0]
        nxt = bindings[j]
        step = _affine_step(nxt.value, cur, out_shape, axis)
        act = None if step else _activation(nxt.value)
        if step is None and act is None:
            break
        if step is not None:
            scale, shift = scale * step[0], shift * step[0] + step[1]
        cur = nxt.var
        chain.append(cur)
    wf = w.astype(np.float64) * (scale[:, None, None, None] if kind == "conv2d" else scale[None, :])
    return dict(kind=kind, op_var=op_b.var, input=op_b.value.args[0], weight=wf, bias=shift,
                act=act, out_var=cur, chain=tuple(chain), attrs=op_b.value.attrs)
