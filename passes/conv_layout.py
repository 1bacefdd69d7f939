"""Blocked conv layout for CPUs: FP32 convs run in NCHW[b]c with OIHW[b]o weights.

In plain NCHW a conv's inner loop walks pixels, and MetaSchedule's schedules for it
stay under half of this CPU's FP32 peak (45% for tuned resnet18, benchmarks/results). In NCHW[b]c,
with b the target's FP32 vector width (8 on AVX2, 16 on AVX-512, 4 on NEON), the
innermost axis of every activation and weight is b output channels: one vector
register, loaded once and reused across a tile of pixels (the layout oneDNN and ONNX
Runtime's MLAS use on x86).

Relax's ``ConvertLayout`` moves the layouts: each conv gets blocked data/weights, and
the elementwise ops, pools and reductions between convs follow, so only the graph's
edges transform activations; the weights' transforms are folded at compile time.
Relax cannot legalize a conv with a blocked layout ("channel chunk ... cannot be
legalized by TOPI"), so ``legalize_blocked_conv`` supplies the compute: groups == 1,
depthwise and grouped convs directly in the blocked layout (groups of whole blocks as
they are; several groups within one block with a block-diagonal weight, folded at compile
time); any other grouped conv unblocks, convolves in NCHW and blocks again (correct, not
fast); 3x3 stride-1 convs that gain run as Winograd
F(2x2, 3x3) (``edgec.passes.winograd``). ``channel_block`` gives a tensor whose channels
do not divide by the target's lanes a narrower block (the conv between converts).
"""
from __future__ import annotations

import functools
import re

import numpy as np

from edgec.compiler.errors import EdgecError
from edgec.compiler.tvm_compat import (Constant, legalize_conv2d_default, legalize_default, relax,
                                       structural_hash, tvm)
from edgec.passes.clip_min_max import ClipAsMinMax
from edgec.passes.dw_pw_fuse import fuse_dw_pw
from edgec.passes.layout_names import CONV_LAYOUTS as LAYOUTS
from edgec.passes.kernels.conv2d_nchwc import (block_diagonal_groups, block_diagonal_weight,
                                               conv2d_nchw_stem, conv2d_nchwc, conv_params)
from edgec.passes.stem_layout import SinkStemTransforms
from edgec.passes.winograd import conv2d_nchwc_winograd, use_winograd, weight_transform

_BLOCKED = re.compile(r"^NCHW(\d+)c$")


class ConvLayoutError(EdgecError):
    """A conv layout edgec does not know."""


def block_for(layout: str, vector_bits: int) -> int | None:
    """The channel block for ``layout`` ("NCHW": None; "NCHWc": FP32 lanes of the target)."""
    if layout not in LAYOUTS:
        raise ConvLayoutError(f"unknown conv layout {layout!r}; valid choices: {', '.join(LAYOUTS)}")
    return None if layout == "NCHW" else max(1, vector_bits // 32)


def channel_block(channels: int, lanes: int) -> int:
    """The block of a tensor with ``channels`` channels: the target's lanes, or on AVX-512
    half of them (8) when only that divides (mobilenet_v2's 24-channel layers), or 4 when
    only 4 does (shufflenet_v2_x1_0's 116-channel branches, which channel padding cannot
    follow through the shuffle: in plain NCHW they ran on TVM's default schedules, and
    the untuned model took 11.9x ONNX Runtime's time); the lanes when none does
    (ConvertLayout then leaves the conv in NCHW)."""
    for b in (lanes, lanes // 2, 4):
        if b >= min(lanes, 4) and channels % b == 0:
            return b
    return lanes


# ops whose layout rule in TVM 0.27 fails on a blocked input: ConvertLayout gives them
# these layouts, so it converts their input back to NCHW before them (conv2d_transpose:
# "Layouts must have the same size", in the FPN of a paddle2onnx text detector)
_PLAIN_ONLY = {"relax.nn.conv2d_transpose": ("NCHW", "IOHW")}


def _layouts(lanes: int, exclude=()):
    """ConvertLayout's per-call callback: each conv's data and output take their own
    tensors' blocks (a 144 -> 24 conv on AVX-512: NCHW16c in, NCHW8c out); the convs in
    ``exclude`` (keyed by ``conv_key``) stay in NCHW."""
    def layouts(call):
        name = getattr(call.op, "name", "")
        if name in _PLAIN_ONLY:  # TVM's rule fails on a blocked input: keep it NCHW
            return {name: list(_PLAIN_ONLY[name])}
        if name != "relax.nn.conv2d":
            return {}
        if exclude and conv_key(call) in exclude:
            return {}
        bi = channel_block(int(call.args[0].ty.shape[1]), lanes)
        bo = channel_block(int(call.args[1].ty.shape[0]), lanes)
        return {"relax.nn.conv2d": [f"NCHW{bi}c", f"OIHW{bo}o", f"NCHW{bo}c"]}
    return layouts


def conv_key(call) -> tuple:
    """A conv2d's identity across ConvertLayout's rewrites: its weight's structural hash,
    shapes and attributes (the weights are bound constants by then)."""
    weight = call.args[1]
    return (structural_hash(weight), str(weight.ty),
            str(call.attrs.strides), str(call.attrs.padding), int(call.attrs.groups))


def convert_conv_layout(mod: tvm.IRModule, block: int, winograd: bool = True,
                        blocks: list | None = None, fused: list | None = None,
                        exclude=(), legalize: dict | None = None) -> tvm.IRModule:
    """Blocks every FP32 conv2d whose channels divide by ``block`` (the target's lanes; see
    ``channel_block`` for the narrower block), then legalizes them (with ``winograd``, the
    3x3 stride-1 ones that gain as Winograd F(2x2, 3x3)). ``blocks``: a list to which each
    blocked conv's output block is appended; ``fused``: a list to which the number of
    depthwise -> 1x1 pairs fused into one kernel is appended (``passes.dw_pw_fuse``).

    Convs whose channel counts do not divide (a 3-channel RGB stem) stay in NCHW;
    ConvertLayout puts the layout transforms on their edges. So do the convs in
    ``exclude`` (``conv_key``s; ``passes.layout_fallback`` finds those TVM cannot block).
    legalize: more LegalizeOps functions for the other ops (``fast_math.legalize_map()``).
    """
    if block is None or block <= 1:
        return mod
    # clip as max/min; channel splits, slices and mixed-block concats plain
    mod = _BeforeConvertLayout(ClipAsMinMax()(mod), block).rewrite()
    mod = relax.transform.ConvertLayout({}, layout_cb=_layouts(block, exclude))(mod)
    # ConvertLayout transforms a tensor once per consumer (resnet18's stem output: for the
    # first conv and again for its residual add); one transform serves them all
    mod = relax.transform.EliminateCommonSubexpr()(mod)
    mod = SinkStemTransforms()(mod)  # the RGB stem writes blocked output itself
    mod, pairs = fuse_dw_pw(mod)  # a depthwise conv and the 1x1 conv after it: one kernel
    if fused is not None:
        fused.append(pairs)
    hook = functools.partial(legalize_blocked_conv, block=block, winograd=winograd,
                             blocks=blocks)
    return relax.transform.LegalizeOps({**(legalize or {}), "relax.nn.conv2d": hook})(mod)


@relax.expr_functor.mutator
class _BeforeConvertLayout(relax.PyExprMutator):
    """A rewrite ConvertLayout needs (after ``ClipAsMinMax``, the other one):
    channel splits and slices, and channel concats whose inputs would take another
    block than their output, become their TIR compute (``call_tir``), so ConvertLayout
    hands them NCHW tensors. TVM 0.27's layout rules for them go wrong on a blocked
    channel axis: split keeps its channel indices (a split at 48 of NCHW16c data cuts at
    block 48: mixed-kernel grouped convs, "data channel size 96"); strided_slice and such
    a concat (ghost modules: two 8-channel halves into a 16-channel conv) ask for a "16b"
    axis ("Invalid layout axis 16b"). A transform around each costs less than the convs
    left plain.
    """

    def __init__(self, mod, lanes):
        super().__init__(mod)
        self.mod, self.lanes = mod, lanes
        self.heads = set()  # the convs (calls as imported) whose output reaches no other conv
        self.epilogues = {}  # per head conv: its per-channel ops after it (``_epilogue``)
        self.in_epilogue = {}  # such an op -> (the head's output channels, last of its chain)

    def rewrite(self):
        for gv, func in self.mod.functions.items():
            if isinstance(func, relax.Function):
                bindings, users = _uses(func)
                self.heads = _head_convs(bindings)
                ret = set(relax.analysis.free_vars(func.body.body))
                self.epilogues = {c: _epilogue(bindings, users, ret, c) for c in self.heads}
                self.in_epilogue = {
                    op: (int(c.args[1].ty.shape[0]), i == len(ops) - 1)
                    for c, ops in self.epilogues.items() for i, op in enumerate(ops)}
                self.builder_.update_func(gv, self.visit_expr(func))
        return self.builder_.get()

    def visit_call_(self, op):
        if op in self.in_epilogue and self.in_epilogue[op][0] != _width(self.visit_expr(op.args[0])):
            return self._padded_epilogue(op, *self.in_epilogue[op])
        head = op in self.heads
        call = super().visit_call_(op)
        if _is_channel_slice(call, self.lanes):
            return legalize_default(self.builder_, call)
        if _odd_outputs(call):
            return self._padded_outputs(call)
        if head and _narrow_head(call, self.lanes):
            # the slice goes after the bias and activation, which stay in the conv's tile
            return self._padded_outputs(call, slice_back=not self.epilogues.get(op))
        return call

    def _padded_outputs(self, call, slice_back: bool = True):
        """``call`` with its output channels zero-padded to the lanes (blocked by
        ConvertLayout), then sliced back (in NCHW, as the channel slices above)."""
        a, (data, weight) = call.attrs, call.args[:2]
        w = weight.value.numpy()
        o = w.shape[0]
        padded = -(-o // self.lanes) * self.lanes
        w = np.concatenate([w, np.zeros((padded - o, *w.shape[1:]), w.dtype)])
        conv = relax.op.nn.conv2d(
            data, relax.const(w), strides=a.strides, padding=a.padding, dilation=a.dilation,
            groups=1, data_layout="NCHW", kernel_layout="OIHW", out_layout="NCHW",
            out_dtype=a.out_dtype)
        return self._slice(self.builder_.emit(conv), o) if slice_back else conv

    def _padded_epilogue(self, op, channels: int, last: bool):
        """An op of a padded head's epilogue on the padded channels (per-channel constants
        zero-padded); the last one slices back to ``channels``."""
        x = self.visit_expr(op.args[0])
        args = [x] + [_pad_channels_const(a, channels, _width(x)) for a in op.args[1:]]
        call = self.builder_.normalize(relax.Call(op.op, args, op.attrs, op.ty_args))
        return self._slice(self.builder_.emit(call), channels) if last else call

    def _slice(self, var, channels: int):
        sliced = relax.op.strided_slice(var, axes=[1], begin=[0], end=[channels])
        return legalize_default(self.builder_, self.builder_.normalize(sliced))


# ops a head conv's output may pass through, channel by channel, before its slice (clips
# are max/min by now: ``ClipAsMinMax``)
_EPILOGUE_OPS = {"relax.add", "relax.multiply", "relax.subtract", "relax.maximum",
                 "relax.minimum", "relax.nn.relu", "relax.sigmoid", "relax.nn.silu"}


def _width(expr) -> int | None:
    ty = expr.ty
    return int(ty.shape[1]) if isinstance(ty, relax.TensorType) and ty.shape is not None \
        and len(ty.shape) == 4 else None


def _uses(func) -> tuple[list, dict]:
    """``func``'s bindings in order, and for each var the indices of the bindings using it."""
    bindings = [b for block in func.body.blocks for b in block.bindings]
    users = {}
    for i, b in enumerate(bindings):
        for v in relax.analysis.free_vars(b.value):
            users.setdefault(v, []).append(i)
    return bindings, users


def _epilogue(bindings, users, ret, conv) -> list:
    """The calls after ``conv`` that work channel by channel, each the only user of the one
    before: a bias add, a ReLU ... (their other operands constants, scalars or one value
    per channel). ``ret``: the vars the function returns (a chain stops before them)."""
    var = next((b.var for b in bindings if b.value.same_as(conv)), None)
    o, chain = int(conv.args[1].ty.shape[0]), []
    while var is not None and len(users.get(var, [])) == 1 and var not in ret:
        value = bindings[users[var][0]].value
        if getattr(getattr(value, "op", None), "name", "") not in _EPILOGUE_OPS \
                or not value.args[0].same_as(var) \
                or not all(_per_channel_const(a, o) for a in value.args[1:]):
            break
        chain.append(value)
        var = bindings[users[var][0]].var
    return chain


def _per_channel_const(arg, channels: int) -> bool:
    """A scalar constant, or one with a value per channel ((1, C, 1, 1)): what an epilogue
    op may take besides the conv's output."""
    if not isinstance(arg, Constant):
        return False
    shape = [int(d) for d in arg.ty.shape]
    return not shape or shape == [1] or shape == [1, channels, 1, 1]


def _pad_channels_const(arg, channels: int, padded: int):
    """A per-channel constant zero-padded from ``channels`` to ``padded``; others as they are."""
    if not isinstance(arg, Constant) or [int(d) for d in arg.ty.shape] != [1, channels, 1, 1]:
        return arg
    v = arg.value.numpy()
    return relax.const(np.concatenate([v, np.zeros((1, padded - channels, 1, 1), v.dtype)], 1))


def _plain_conv_channels(call):
    """(output, input) channels of an FP32 conv (groups 1, NCHW, bound weights); else None."""
    if getattr(call.op, "name", "") != "relax.nn.conv2d":
        return None
    a, (data, weight) = call.attrs, call.args[:2]
    if int(a.groups) != 1 or a.data_layout != "NCHW" or a.kernel_layout != "OIHW" \
            or a.out_layout != "NCHW" or not isinstance(weight, Constant) \
            or str(weight.ty.dtype) != "float32" or len(weight.ty.shape) != 4:
        return None
    return int(weight.ty.shape[0]), int(data.ty.shape[1])


def _odd_outputs(call) -> bool:
    """An FP32 conv (groups 1, bound weights) whose output channels no block of 4 or more
    divides while its input channels do: ConvertLayout would leave it in NCHW, on TVM's
    default schedule (shufflenet_v2_x2_0's 128 -> 122 convs before each channel shuffle,
    which channel padding cannot follow: 4 of them took 39 of 56 ms untuned). Padded to
    the lanes, it runs the blocked register tile; the few extra channels cost less."""
    oc = _plain_conv_channels(call)
    return oc is not None and oc[0] % 4 != 0 and oc[1] % 4 == 0 and oc[0] > 4


def _narrow_head(call, lanes: int) -> bool:
    """An FP32 conv whose output channels only a narrower block than the lanes divides
    (squeezenet's 512 -> 1000 classifier: blocks of 8 on AVX-512, half-width vectors).
    Asked only of head convs (``_head_convs``): their output slices back to NCHW once, on
    its way to the pool and the logits, where an inner conv's slice would cost a layout
    transform before the next conv. Padded to the lanes (1000 -> 1008), squeezenet's
    classifier conv alone at 13x13 took 1.31 ms against 3.46 ms (AVX-512 Xeon, 2 threads)."""
    oc = _plain_conv_channels(call)
    return oc is not None and oc[0] % lanes != 0 and oc[1] % 4 == 0 and oc[0] > 4


def _head_convs(bindings) -> set:
    """The conv2d calls among ``bindings`` whose output flows into no other conv2d
    (through any ops): a classifier conv, the last conv of a detection head."""
    feeds_conv, heads = set(), set()
    for b in reversed(bindings):
        conv = getattr(getattr(b.value, "op", None), "name", "") == "relax.nn.conv2d"
        if conv and b.var not in feeds_conv:
            heads.add(b.value)
        if conv or b.var in feeds_conv:
            feeds_conv.update(relax.analysis.free_vars(b.value))
    return heads


def _is_channel_slice(call, lanes: int) -> bool:
    """A split or strided_slice that cuts the channel axis of an NCHW tensor, or a channel
    concat whose inputs would take another block than its output."""
    name = getattr(call.op, "name", "")
    if name == "relax.concat" and int(call.attrs.axis) in (1, -3) \
            and isinstance(call.ty, relax.TensorType) and len(call.ty.shape) == 4:
        out = channel_block(int(call.ty.shape[1]), lanes)
        return any(channel_block(int(t.shape[1]), lanes) != out for t in call.args[0].ty.fields)
    data = call.args[0] if call.args else None
    if name not in ("relax.split", "relax.strided_slice") or data is None \
            or not isinstance(data.ty, relax.TensorType) or len(data.ty.shape) != 4:
        return False
    if name == "relax.split":
        return int(call.attrs.axis) in (1, -3)
    out = call.ty
    return isinstance(out, relax.TensorType) and int(out.shape[1]) != int(data.ty.shape[1])


def legalize_blocked_conv(bb: relax.BlockBuilder, call: relax.Call, block: int = 8,
                          winograd: bool = False, blocks: list | None = None) -> relax.Expr:
    """LegalizeOps hook for relax.nn.conv2d: the NCHW[bi]c x OIHW[bo]o -> NCHW[bo]c compute
    (TE), or with ``winograd`` the Winograd F(2x2, 3x3) one where it gains (weights
    transformed at compile time); an FP32 conv left in NCHW whose input channels do not
    divide by the block (the RGB stem) still computes blocked (NCHW in, NCHW[b]c tile, NCHW
    or NCHW[b]c out), on weights blocked at compile time."""
    a = call.attrs
    m, out = _BLOCKED.match(a.data_layout), _BLOCKED.match(a.out_layout)
    if m is None:  # the stem's block: its output's (NCHW[b]c when a transform moved in)
        b = int(out.group(1)) if out else channel_block(int(call.args[1].ty.shape[0]), block)
        if _plain_stem(call, b):
            if blocks is not None:
                blocks.append(b)
            return _stem(bb, call, b)
        # not ours: the default legalization (plain layouts)
        return legalize_conv2d_default(bb, call)
    bo = int(out.group(1)) if out else None
    if a.kernel_layout != f"OIHW{bo}o":
        raise ConvLayoutError(f"blocked conv2d with kernel layout {a.kernel_layout} and output "
                              f"layout {a.out_layout}; expected OIHW[b]o and NCHW[b]c")
    if blocks is not None:
        blocks.append(bo)
    params = conv_params(call)
    data, kernel = call.args[:2]
    if winograd and "float32" == params["out_dtype"] and a.data_layout == a.out_layout and (
            use_winograd(data.ty.shape, kernel.ty.shape, params["strides"], params["dilation"],
                         params["groups"])):
        weight = bb.emit_te(weight_transform, kernel, primfunc_name_hint="winograd_weight")
        return bb.call_te(conv2d_nchwc_winograd, data, weight, params["padding"], "float32",
                          primfunc_name_hint="conv2d_nchwc_winograd")
    groups = block_diagonal_groups(data.ty.shape, kernel.ty.shape, params["groups"])
    if groups:  # several groups within one block: a block-diagonal weight, folded now
        kernel = bb.emit_te(block_diagonal_weight, kernel, params["groups"],
                            primfunc_name_hint="block_diagonal_weight")
        params = dict(params, groups=groups)
    return bb.call_te(conv2d_nchwc, data, kernel, primfunc_name_hint="conv2d_nchwc", **params)


def _plain_stem(call, block) -> bool:
    a, (data, weight) = call.attrs, call.args[:2]
    return (a.data_layout == "NCHW" and a.kernel_layout == "OIHW"
            and a.out_layout in ("NCHW", f"NCHW{block}c")
            and int(a.groups) == 1 and "float" in str(data.ty.dtype)
            and int(weight.ty.shape[0]) % block == 0 and int(data.ty.shape[1]) % block != 0)


def _stem(bb, call, b):
    from tvm import te

    o, i, kh, kw = (int(x) for x in call.args[1].ty.shape)
    weight = bb.emit_te(lambda w: te.compute((o // b, i, kh, kw, b),
                                             lambda p, c, y, x, q: w[p * b + q, c, y, x],
                                             name="block_weight"),
                        call.args[1], primfunc_name_hint="block_weight")
    return bb.call_te(conv2d_nchw_stem, call.args[0], weight, primfunc_name_hint="conv2d_nchwc",
                      blocked_out=call.attrs.out_layout != "NCHW", **conv_params(call))
