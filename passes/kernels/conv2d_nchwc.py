"""TE computes of blocked (NCHW[b]c) FP32 convs, the kernels ``conv_layout`` legalizes to.

- ``conv2d_nchwc``: NCHW[bi]c x OIHW[bo]o -> NCHW[bo]c, groups == 1, depthwise, and
  grouped convs whose groups are whole channel blocks directly; other grouped convs
  through NCHW (correct, not fast);
- ``conv2d_nchw_stem``: a conv whose input channels do not divide by the block (the RGB
  stem): NCHW in, blocked weights, the NCHW[b]c register tile, NCHW or NCHW[b]c out;
- ``dw_pw_nchwc``: a depthwise conv, the elementwise ops after it and the 1x1 conv after
  those as one kernel (``dw_pw_fuse``).

Their blocks carry ``schedule_rule = RULE``: ``nchwc_schedule`` schedules them by default
and MetaSchedule tunes them with its rule.
"""
from __future__ import annotations

from edgec.compiler.tvm_compat import tvm  # noqa: F401  (te/topi/tirx below need tvm loaded)

RULE = "edgec_conv2d_nchwc"  # the blocks' schedule_rule annotation
BLOCK = "dwpw_conv2d_nchwc"  # the 1x1 conv block of a fused pair (tuned by its rule)
DEPTHWISE = "dwpw_depthwise"  # its depthwise conv block (scheduled by the same rule)


def conv_params(call) -> dict:
    """A relax conv2d's strides, padding, dilation, groups and out_dtype (unset: the
    input's dtype) as plain Python values."""
    a = call.attrs
    out_dtype = str(a.out_dtype)
    if out_dtype in ("", "None", "void"):  # unset: the input's dtype
        out_dtype = str(call.args[0].ty.dtype)
    return dict(strides=[int(s) for s in a.strides], padding=[int(p) for p in a.padding],
                dilation=[int(d) for d in a.dilation], groups=int(a.groups),
                out_dtype=str(out_dtype))


def conv2d_nchw_stem(data, kernel, strides, padding, dilation, groups, out_dtype,
                     blocked_out=False):
    """TE compute: data [N, C, H, W], kernel [O/b, C, KH, KW, b] -> NCHW[b]c tile -> [N, O, OH, OW]
    (``blocked_out``: the tile, [N, O/b, OH, OW, b])."""
    from tvm import te, topi

    n, c, h, w = (int(x) for x in data.shape)
    oc, _, kh, kw, b = (int(x) for x in kernel.shape)
    (sh, sw), (dh, dw) = strides, dilation
    top, left, bottom, right = padding
    oh = (h + top + bottom - (kh - 1) * dh - 1) // sh + 1
    ow = (w + left + right - (kw - 1) * dw - 1) // sw + 1
    pad = topi.nn.pad(data, (0, 0, top, left), (0, 0, bottom, right), name="data_pad")
    ric, rh, rw = te.reduce_axis((0, c), "ic"), te.reduce_axis((0, kh), "kh"), te.reduce_axis((0, kw), "kw")
    out = te.compute(
        (n, oc, oh, ow, b),
        lambda i, o, y, x, ob: te.sum(
            pad[i, ric, y * sh + rh * dh, x * sw + rw * dw].astype(out_dtype)
            * kernel[o, ric, rh, rw, ob].astype(out_dtype), axis=[ric, rh, rw]),
        name="conv2d_nchwc", attrs={"schedule_rule": RULE})
    if blocked_out:
        return out
    return te.compute((n, oc * b, oh, ow), lambda i, o, y, x: out[i, o // b, y, x, o % b],
                      name="unblock_out")


def conv2d_nchwc(data, kernel, strides, padding, dilation, groups, out_dtype, name=None,
                 rule=RULE):
    """TE compute: data [N, C/bi, H, W, bi], kernel [O/bo, C/groups, KH, KW, bo] ->
    [N, O/bo, OH, OW, bo] (bi == bo but where a tensor's channels take the narrower block).
    name, rule: the conv block's name (default: conv2d_nchwc, depthwise_conv2d_nchwc) and
    schedule_rule (``passes.dw_pw_fuse`` names the two convs of a fused pair apart)."""
    from tvm import te, topi

    n, cc, h, w, b = (int(x) for x in data.shape)
    oc, icg, kh, kw, bo = (int(x) for x in kernel.shape)
    (sh, sw), (dh, dw) = strides, dilation
    top, left, bottom, right = padding
    oh = (h + top + bottom - (kh - 1) * dh - 1) // sh + 1
    ow = (w + left + right - (kw - 1) * dw - 1) // sw + 1
    pad = topi.nn.pad(data, (0, 0, top, left, 0), (0, 0, bottom, right, 0), name="data_pad")
    rh, rw = te.reduce_axis((0, kh), "kh"), te.reduce_axis((0, kw), "kw")
    cast = lambda x: x.astype(out_dtype)  # noqa: E731
    if groups == 1:
        ric, rib = te.reduce_axis((0, cc), "icc"), te.reduce_axis((0, b), "icb")
        return te.compute(
            (n, oc, oh, ow, bo),
            lambda i, o, y, x, ob: te.sum(
                cast(pad[i, ric, y * sh + rh * dh, x * sw + rw * dw, rib])
                * cast(kernel[o, ric * b + rib, rh, rw, ob]), axis=[ric, rh, rw, rib]),
            name=name or "conv2d_nchwc", attrs={"schedule_rule": rule})
    if groups == cc * b == oc * bo and icg == 1 and b == bo:  # depthwise, one filter per channel
        return te.compute(
            (n, oc, oh, ow, b),
            lambda i, o, y, x, ob: te.sum(
                cast(pad[i, o, y * sh + rh * dh, x * sw + rw * dw, ob])
                * cast(kernel[o, 0, rh, rw, ob]), axis=[rh, rw]),
            name=name or "depthwise_conv2d_nchwc", attrs={"schedule_rule": rule})
    ocg = oc * bo // groups  # output channels per group
    if b == bo and icg % b == 0 and ocg % bo == 0:
        # grouped, each group whole channel blocks (regnet's 16-wide groups on AVX-512):
        # the groups==1 form with the input blocks of output block o's group
        ric, rib = te.reduce_axis((0, icg // b), "icc"), te.reduce_axis((0, b), "icb")
        first = lambda o: (o * bo // ocg) * (icg // b)  # noqa: E731 - group's first block
        return te.compute(
            (n, oc, oh, ow, bo),
            lambda i, o, y, x, ob: te.sum(
                cast(pad[i, first(o) + ric, y * sh + rh * dh, x * sw + rw * dw, rib])
                * cast(kernel[o, ric * b + rib, rh, rw, ob]), axis=[ric, rh, rw, rib]),
            name=name or "conv2d_nchwc", attrs={"schedule_rule": rule})
    # other grouped convs (a group within a block): unblock, convolve in NCHW, block again
    plain = te.compute((n, cc * b, h, w), lambda i, c, y, x: data[i, c // b, y, x, c % b],
                       name="unblock_data")
    weight = te.compute((oc * bo, icg, kh, kw),
                        lambda o, c, y, x: kernel[o // bo, c, y, x, o % bo], name="unblock_weight")
    out = topi.nn.group_conv2d_nchw(plain, weight, strides, padding, dilation, groups, out_dtype)
    return te.compute((n, oc, oh, ow, bo), lambda i, o, y, x, ob: out[i, o * bo + ob, y, x],
                      name="block_out")


def block_diagonal_groups(data_shape, kernel_shape, groups: int) -> int | None:
    """For a grouped conv whose groups are narrower than the block, each group's outputs
    reading its own inputs (``icg == ocg``, dividing the block b): the number of groups
    the conv has with ``block_diagonal_weight`` (one per channel block), else None.

    Each output block then reads exactly its own input block through a b x b weight, zero
    outside the groups on its diagonal: b / icg times the multiplies, but the groups==1
    register tile (broadcast input, vector weight). regnet_y_400mf's 8-wide groups on
    AVX-512 (b = 16), resnext's 4-wide ones: TVM's NCHW fallback through unblocking took
    several ms per conv, 10x the whole rest of the layer."""
    n, cc, h, w, b = (int(x) for x in data_shape)
    oc, icg, kh, kw, bo = (int(x) for x in kernel_shape)
    ocg = oc * bo // groups
    if groups == 1 or b != bo or cc != oc or icg != ocg or icg == 1 or b % icg or icg == b:
        return None
    return oc


def block_diagonal_weight(kernel, groups: int):
    """TE: OIHW[bo]o weights [O/bo, icg, KH, KW, bo] of a grouped conv -> [O/bo, bo, KH,
    KW, bo]: output lane ob of block o reads input lane c of block o with the weight of its
    group, zero where c is in another group (see ``block_diagonal_groups``)."""
    from tvm import te, tirx

    oc, icg, kh, kw, bo = (int(x) for x in kernel.shape)
    ocg = oc * bo // groups

    def value(o, c, y, x, ob):
        g = ob // ocg
        inside = tirx.all(c >= g * icg, c < (g + 1) * icg)
        return tirx.if_then_else(inside, kernel[o, tirx.max(c - g * icg, 0) % icg, y, x, ob],
                                 tirx.const(0, kernel.dtype))

    return te.compute((oc, bo, kh, kw, bo), value, name="block_diagonal_weight")


def dw_pw_nchwc(data, dw_weight, pw_weight, *sides, dw_params, ops):
    """TE compute: the depthwise conv (block DEPTHWISE), the elementwise ``ops`` on its
    output (``sides``: their other operands, in order, broadcast), the 1x1 conv (BLOCK)."""
    from tvm import te

    mid = conv2d_nchwc(data, dw_weight, name=DEPTHWISE, rule="None", **dw_params)
    it = iter(sides)
    for name in ops:
        side = None if name == "relu" else next(it)
        mid = te.compute(mid.shape, _ewise(mid, name, side), name=f"dwpw_{name}",
                         attrs={"schedule_rule": "None"})
    return conv2d_nchwc(mid, pw_weight, [1, 1], [0, 0, 0, 0], [1, 1], 1, "float32", name=BLOCK)


def _ewise(x, name, side):
    from tvm import tirx

    def at(idx):  # the side operand broadcast to x's index (numpy rules, right-aligned)
        dims = [int(d) for d in side.shape]
        idx = idx[len(idx) - len(dims):]
        return side(*[0 if d == 1 else i for d, i in zip(dims, idx)])

    fn = {"add": lambda a, b: a + b, "subtract": lambda a, b: a - b,
          "multiply": lambda a, b: a * b, "divide": lambda a, b: a / b,
          "maximum": tirx.max, "minimum": tirx.min,
          "relu": lambda a, _: tirx.max(a, tirx.const(0, x.dtype))}[name]  # a: no dtype
    return lambda *i: fn(x(*i), None if side is None else at(i))
