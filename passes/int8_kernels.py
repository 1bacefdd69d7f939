"""Packed int8 conv2d and matmul kernels, tensorized with each CPU's int8 dot product.

Relax's conv2d legalizes to a plain NCHW loop nest that LLVM vectorizes by
widening u8/s8 to s16 (vpmovzxbw + vpmaddwd on x86). These kernels instead take
data packed NCHW[4c] and weights packed OIHW[Bo][4i] at compile time, so one
instruction multiplies 4 input channels for B output channels at once:

- ``avx2``: ``vpmaddubsw`` + ``vpmaddwd`` (``dot_8x4_avx2``, ours), B = 8, u8 data,
  7-bit weights (``reduce_range``: vpmaddubsw saturates int16 pair sums);
- ``vnni``: ``vpdpbusd`` (TVM's ``dot_16x4_vnni``, re-registered for LLVM 22 by
  ``tvm_compat.fix_vnni_intrinsic``), B = 16, u8 data;
- ``sdot``: ARM ``sdot`` (TVM's ``dot_4x4_i8i8s32_sdot``, re-registered by
  ``arm_int8_intrin``; ``+dotprod`` CPUs), B = 4, s8 data;
- ``neon``: ARM NEON without dotprod, B = 4, s8 data: ``dot_4x8_neon`` (ours: two blocks
  of 4 input channels per call, smull + smlal in int16, one saddlp/addp reduction) where
  the input channels pair up, else TVM's ``dot_4x4_i8i8s32_neon`` (smull, saddlp, addp).

The schedule is fixed (no tuning needed): output rows in parallel, a block of
output pixels unrolled per weight tile, the Bx4 dot product tensorized, the
requantize vectorized over the B channels, each output row transposed to NCHW.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from tvm import te

from edgec.compiler.tvm_compat import fix_vnni_intrinsic, relax, s_tir
from edgec.passes.arm_int8_intrin import pairs_ok
from edgec.passes.arm_int8_intrin import register as register_arm
from edgec.passes.int8_pack import pack_func, pad_blocked_func
from edgec.passes.x86_int8_intrin import register as register_avx2
# re-exported: the tuner and the power proxy read these attributes from here
from edgec.passes.kernels.common import (HAND_ATTR, IC_BLOCK, MACS_ATTR,  # noqa: F401
                                         add_kernel, hand_scheduled)


@dataclass(frozen=True)
class DotKernel:
    """One CPU int8 dot-product instruction: B output x 4 input channels per call."""

    name: str
    oc_block: int
    data_dtype: str  # the activations' dtype the instruction multiplies (weights: int8)
    intrin: str  # the TensorIntrin's name
    # an intrinsic over two blocks of 4 input channels (B x 8), where one exists
    pair_intrin: str | None = None
    # ... over four blocks (B x 16), where one exists: used where the blocks come in fours
    quad_intrin: str | None = None

    def register(self) -> str:
        """Register the tensor intrinsic(s) (idempotent); returns the 4-channel one's name."""
        if self.name == "avx2":
            return register_avx2()
        if self.name == "vnni":
            fix_vnni_intrinsic()
        else:
            register_arm()  # sdot, neon and neon 4x8
        return self.intrin


KERNELS = {k.name: k for k in (
    DotKernel("avx2", 8, "uint8", "dot_8x4_avx2"),
    DotKernel("vnni", 16, "uint8", "dot_16x4_vnni"),
    DotKernel("sdot", 4, "int8", "dot_4x4_i8i8s32_sdot"),
    DotKernel("neon", 4, "int8", "dot_4x4_i8i8s32_neon", "dot_4x8_i8i8s32_neon",
              "dot_4x16_i8i8s32_neon"),
)}


def target_kernel(target) -> DotKernel | None:
    """The dot-product kernel of a target's int8 instructions (None: it has none)."""
    name = {("x86_64", "avx2"): "avx2", ("x86_64", "vnni"): "vnni",
            ("aarch64", "dotprod"): "sdot", ("aarch64", "neon"): "neon"}.get(
        (target.arch, target.int8))
    return KERNELS.get(name)


def kernel_for(target, scheme) -> DotKernel | None:
    """The packed kernel for a target and quantization scheme (None: plain int8 convs)."""
    kernel = target_kernel(target)
    if kernel is None or scheme.activation_dtype != kernel.data_dtype:
        return None
    if kernel.name == "avx2" and not scheme.reduce_range:
        return None  # 8-bit weights would saturate vpmaddubsw's int16 pair sums
    return kernel


def packable(wq: np.ndarray, kernel: DotKernel, groups: int = 1, pad_out: bool = True) -> bool:
    """Whether an OIHW conv weight (or a (K, N) matmul weight) fits the packed kernels.

    A conv's input channels need not divide by 4: ``channel_pad`` pads them with zero
    weights (a stem's 3 RGB channels run packed as 4) where that adds at most a third more
    multiply-accumulates; 1, 2 or 5 input channels stay on the plain int8 conv. Its output
    channels need not divide by the kernel's block either: ``out_channel_pad`` pads them
    with zero weights (24 -> 32, 40 -> 48 for VNNI) where that at most doubles them, and
    the kernel writes only the real ones. The plain int8 conv it replaces costs far more
    (mobilenet_v2's 96 -> 24 1x1 conv: 6.9 ms plain on a Xeon with VNNI). ``pad_out=False``:
    output channels must divide (the behaviour before, kept to compare against).
    """
    oc = wq.shape[1] if wq.ndim == 2 else wq.shape[0]
    opad = out_channel_pad(oc, kernel.oc_block)
    if wq.ndim == 2:  # a matmul's N pads where that adds at most an eighth (a 1000-class
        # classifier: 1008, 1.41 -> 0.045 ms on a Xeon with VNNI); a small N (a 10-class
        # head) stays plain: it is cheap, and padding would grow its weight bytes by half
        return wq.shape[0] % IC_BLOCK == 0 and (opad == 0 or pad_out and 8 * opad <= oc)
    ic = wq.shape[1]
    if groups > 1:
        return group_span(wq, kernel, groups) is not None
    return ((opad == 0 or pad_out and oc + opad <= 2 * oc)
            and 3 * (ic + channel_pad(wq)) <= 4 * ic)


# A grouped conv runs packed when each output block reads at most this many times the
# input channels its group has (the rest multiply zeros); TVM's plain int8 group conv it
# replaces is an unscheduled loop nest (regnet_x_400mf INT8 25.7 ms against 5.9 ms FP32)
MAX_GROUP_SPREAD = 4


def group_span(wq: np.ndarray, kernel: DotKernel, groups: int) -> int | None:
    """Input channels one output block of a grouped conv reads, or None: not packable.

    Groups of whole blocks (output channels per group a multiple of B: regnet_x's 16 with
    VNNI) read their group's input channels; groups narrower than a block (B a multiple of
    their width: regnet_y's 8) read the B / width groups the block covers, through a
    block-diagonal weight (``group_weight``). Narrow groups whose channels do not fill the
    last block (regnet_y's 104 = 13 x 8) get empty groups added there, as many input as
    output channels, so they need groups as wide in as out. Input channels per group must
    divide by 4. Depthwise convs (1 input channel per group) have kernels of their own."""
    oc, icg = wq.shape[0], wq.shape[1]
    ocg, b = oc // groups, kernel.oc_block
    if groups <= 1 or icg % IC_BLOCK or not (ocg % b == 0 or b % ocg == 0):
        return None
    if oc % b and (icg != ocg or 2 * oc < oc + out_channel_pad(oc, b)):
        return None
    span = icg * max(1, b // ocg)
    return span if span <= MAX_GROUP_SPREAD * icg else None


def group_weight(wq: np.ndarray, groups: int, oc_block: int) -> np.ndarray:
    """(O', span, KH, KW): each output channel's weights at its input channels' places in
    the span its block reads (``group_span``), zeros elsewhere; O' = O padded to the block
    (the added channels' weights all zero)."""
    oc, icg = wq.shape[0], wq.shape[1]
    ocg = oc // groups
    span = icg * max(1, oc_block // ocg)
    out = np.zeros((oc + out_channel_pad(oc, oc_block), span, *wq.shape[2:]), wq.dtype)
    for o in range(oc):
        first = (o // oc_block * oc_block) // ocg  # the first group of o's block
        at = (o // ocg - first) * icg
        out[o, at:at + icg] = wq[o]
    return out


def out_channel_pad(oc: int, oc_block: int) -> int:
    """Output channels to add so they divide by the kernel's block."""
    return -oc % oc_block


def taps_packable(wq: np.ndarray, kernel: DotKernel, groups: int = 1) -> bool:
    """Whether a conv with fewer input channels than ``packable`` pads (1 or 2: a grayscale
    stem) runs packed as a 1x1 conv over its taps (``emit_taps_conv``): the MNIST CNN's
    1-channel 3x3 stem becomes 9 -> 12 channels, where padding its one channel to 4 would
    do 4x its multiply-accumulates and the plain int8 conv is TVM's unscheduled loop nest."""
    return (wq.ndim == 4 and groups == 1 and wq.shape[1] < IC_BLOCK
            and wq.shape[2] * wq.shape[3] > 1 and wq.shape[0] % kernel.oc_block == 0
            and not packable(wq, kernel, groups))


def pad_nchw(bb, x, padding, value: int):
    """Emit ``x`` (NCHW) padded by ``padding`` (top, left, bottom, right, as Relax's conv2d
    orders it) with ``value``: an int8 conv's zero point, the image of 0.0."""
    top, left, bottom, right = (int(p) for p in padding)
    return bb.emit(relax.op.nn.pad(x, [0, 0, 0, 0, top, bottom, left, right],
                                   pad_value=float(value)))


def emit_taps_conv(bb, x, wq: np.ndarray, strides, dilation, kernel: DotKernel, requant=None,
                   padding=(0, 0, 0, 0), pad_value: int = 0):
    """A KHxKW conv of ``x`` (NCHW, few channels) as the packed 1x1 conv of its taps: the
    input padded with ``pad_value`` (the zero point), then one strided slice per tap,
    concatenated tap-major (channel (kh * KW + kw) * C + c), against the weight reordered
    the same way. Integer sums are exact, so the result equals the KHxKW conv's."""
    if any(int(p) for p in padding):
        x = pad_nchw(bb, x, padding, pad_value)
    _, _, h, w = (int(d) for d in x.ty.shape)
    (sh, sw), (dh, dw) = ([int(v) for v in strides], [int(v) for v in dilation])
    kh, kw = wq.shape[2:]
    oh, ow = (h - (kh - 1) * dh - 1) // sh + 1, (w - (kw - 1) * dw - 1) // sw + 1
    taps = [bb.emit(relax.op.strided_slice(x, axes=[2, 3], begin=[i * dh, j * dw],
                                           end=[i * dh + (oh - 1) * sh + 1, j * dw + (ow - 1) * sw + 1],
                                           strides=[sh, sw]))
            for i in range(kh) for j in range(kw)]
    cols = bb.emit(relax.op.concat(taps, axis=1))
    w1 = np.ascontiguousarray(wq.transpose(0, 2, 3, 1).reshape(wq.shape[0], -1, 1, 1))
    return emit_packed_conv(bb, cols, w1, [1, 1], [1, 1], kernel, requant, pad_value=pad_value)


def channel_pad(wq: np.ndarray) -> int:
    """Input channels to add so an OIHW weight's input channels divide by 4."""
    return -wq.shape[1] % IC_BLOCK


def pack_weight(wq: np.ndarray, oc_block: int, in_channels: int | None = None) -> np.ndarray:
    """OIHW -> (O/B, I/4, KH, KW, B, 4), input channels zero-padded to a multiple of 4 (or
    to ``in_channels``: a blocked input's padded channel count) and output channels to a
    multiple of B."""
    ipad = (in_channels - wq.shape[1]) if in_channels else channel_pad(wq)
    wq = np.pad(wq, [(0, out_channel_pad(wq.shape[0], oc_block)), (0, ipad), (0, 0), (0, 0)])
    o, i, kh, kw = wq.shape
    return np.ascontiguousarray(
        wq.reshape(o // oc_block, oc_block, i // 4, 4, kh, kw).transpose(0, 2, 4, 5, 1, 3))


def _compute(data_shape, w_shape, strides, dilation, data_dtype, requant=None,
             out_channels=None, blocked_out=False, group_width=None):
    """The conv's TE: data (N, CB, HP, WP, IB), IB channels a pixel (4: ``pack_func``'s
    NCHW[4c]; a kernel's block: a blocked producer's output, read as IB / 4 words) x weight
    (O/B, I/4, KH, KW, B, 4). ``blocked_out``: the output stays (N, O/B, HO, WO, B), every
    channel written (the padded ones requantize to the zero point); else NCHW.
    ``group_width``: (output, input) channels per group of a grouped conv; output block
    ``ob`` then reads the weight's I/4 blocks of input from its first group's first channel
    on (``group_span``)."""
    n, _, hp, wp, ib = data_shape
    words = ib // IC_BLOCK
    cob, ci4, kh, kw, ocb, _ = w_shape
    oc = out_channels or cob * ocb  # the real ones: the padded tail is never written
    (sh, sw), (dh, dw) = strides, dilation
    ho, wo = (hp - (kh - 1) * dh - 1) // sh + 1, (wp - (kw - 1) * dw - 1) // sw + 1
    x = te.placeholder(data_shape, data_dtype, name="data")
    w = te.placeholder(w_shape, "int8", name="weight")
    ico, ici = te.reduce_axis((0, ci4), "ico"), te.reduce_axis((0, IC_BLOCK), "ici")
    rh, rw = te.reduce_axis((0, kh), "kh"), te.reduce_axis((0, kw), "kw")

    def pixel(b, c4, y, xx, i):  # input channels 4 * c4 + i of a pixel
        if words == 1:
            return x[b, c4, y, xx, i]
        return x[b, c4 // words, y, xx, c4 % words * IC_BLOCK + i]

    def base(oc):  # the output block's first input block (0: a dense conv)
        if group_width is None:
            return 0
        ocg, icg = group_width
        return oc * ocb // ocg * (icg // IC_BLOCK)

    acc = te.compute((n, cob, ho, wo, ocb), lambda b, oc, y, xx, oci: te.sum(
        pixel(b, base(oc) + ico, y * sh + rh * dh, xx * sw + rw * dw, ici).astype("int32")
        * w[oc, ico, rh, rw, oci, ici].astype("int32"), axis=[ico, rh, rw, ici]), name="conv")
    # the output in plain NCHW. The requantize runs in the packed layout, B channels of a
    # pixel in one vector, so int32 never goes to memory; then each output row is
    # transposed to NCHW as bytes. Requantizing during the transpose instead (pixels as the
    # vector lanes) cost 2x the conv itself: 7-wide int32 shuffles and byte extracts.
    if requant is None:
        out = te.compute((n, oc, ho, wo),
                         lambda b, c, y, xx: acc[b, c // ocb, y, xx, c % ocb], name="unpack")
        return te.create_prim_func([x, w, out]), (n, oc, ho, wo)
    bias = te.placeholder((cob * ocb,), "int32", name="bias")
    scale = te.placeholder((cob * ocb,), "float32", name="scale")
    inputs = [x, w, bias, scale]
    if requant.residual:  # a fused residual add: an int8 tensor in the output's blocks
        if not blocked_out:
            raise ValueError("a residual fuses into a packed conv with a blocked output only")
        res = te.placeholder((n, cob, ho, wo, ocb), requant.dtype, name="residual")
        inputs.append(res)
    rq = te.compute((n, cob, ho, wo, ocb), lambda b, oc, y, xx, oci: requant.te_form(
        acc[b, oc, y, xx, oci], oc * ocb + oci, bias, scale,
        res[b, oc, y, xx, oci] if requant.residual else None), name="requant")
    if blocked_out:  # what the next packed layer reads: no transpose at all
        return te.create_prim_func([*inputs, rq]), (n, cob, ho, wo, ocb)
    out = te.compute((n, oc, ho, wo),
                     lambda b, c, y, xx: rq[b, c // ocb, y, xx, c % ocb], name="unpack")
    return te.create_prim_func([x, w, bias, scale, out]), (n, oc, ho, wo)


# Below this many multiply-accumulates a conv runs on one thread: waking the pool cost
# more than the second thread saved (2-vCPU Xeon: a 0.9 M-MAC conv 6.7 us on one thread,
# 8.9 us on two; the MNIST CNN's convs are 0.15 M and 0.9 M).
PARALLEL_MACS = 1 << 22


def _vector_block(width: int) -> int:
    """The largest divisor of ``width`` up to 16 (the unpack's vector of pixels)."""
    return next(b for b in range(min(width, 16), 0, -1) if width % b == 0)


def _pixel_block(width: int) -> int:
    return next(b for b in (8, 7, 6, 5, 4, 3, 2, 1) if width % b == 0)


def _blocks(out_blocks: int, most: int) -> int:
    """The most output-channel blocks, up to ``most``, that divide ``out_blocks``."""
    return max(d for d in range(1, min(most, out_blocks) + 1) if out_blocks % d == 0)


def _arm_tile(out_blocks, width, kernel, reduction, span, taps, blocked_out):
    """The ARM register tile, or None for ``register_tile``'s general rule.

    ARM (``kernel`` "sdot" or "neon"; ``reduction``: the conv's input blocks x KH x KW;
    ``span``: input blocks per intrinsic call) has 32 registers of 4 int32 lanes and no
    broadcast memory operand, and LLVM hoists a short reduction's weights out of the pixel
    loop: AVX-512's wide tiles spill. Chosen by instructions per MAC on the emulated boards
    (benchmarks/bench_arm_int8_tiles.py, results/arm_int8_tiles.md: 12 convs of
    mobilenet_v2 and resnet18, every tile; 8 convs of resnet50, efficientnet_b0 and
    mobilenet_v3 held out). sdot: a reduction of up to 4 blocks (16 input channels, 1x1)
    4 blocks x 2 pixels, up to 8 4 x 4 (16->96 at 112: 0.299 instructions per MAC with
    6x4, 0.269 with 4x2; 24->144 at 56: 0.257 -> 0.222); a 1x1 conv (``taps`` 1) at 7 x 7
    whose blocks no 3 divides, writing blocks (``blocked_out``), 4 x 7 (320->1280: 0.157
    with 2x7, 0.134; in mobilenet_v2, 960->320 2.27 -> 1.93 M instructions, 960->160 and
    576->160 -9% to -15%; but 320->1280 writing NCHW for the pool 3.18 -> 4.88 M, and at
    14 x 14 192->64 +53%, 384->64 -11%; 4x7 was within 2% of 3x7 on the other 7-wide 1x1
    convs and 1.22x 2x7 on a 3x3 one), else register_tile's rule. NEON: up
    to 4 blocks 2 x 2; four blocks a call (``dot_4x16_neon``) 2 pixels x up to 6 blocks
    (resnet18's 3x3 convs 0.366 -> 0.331 with 4x2, 1x1 convs at 14 x 14 0.41 -> 0.34 with
    6x2); pairs at most 16 accumulators: 4 x 4, else 4 to 8 blocks x 2 pixels; 7-wide
    rows 2 x 7."""
    def blocks(most):
        return _blocks(out_blocks, most)

    if kernel == "sdot":
        if 0 < reduction <= 4 and width % 2 == 0 and blocks(4) >= 3:
            return blocks(4), 2
        if 0 < reduction <= 8 and width % 4 == 0 and blocks(4) >= 3:
            return blocks(4), 4
        if taps == 1 and width == 7 and blocked_out and blocks(4) == 4 and blocks(3) < 3:
            return 4, 7
        return None
    if 0 < reduction <= 4 and width % 2 == 0 and blocks(2) == 2:
        return 2, 2
    if span == 4 and width % 2 == 0 and blocks(6) >= 3:
        return blocks(6), 2
    if width % 4 == 0 and blocks(4) >= 3:
        return blocks(4), 4
    if width % 2 == 0 and blocks(8) >= 4:
        return blocks(8), 2
    if width % 7 == 0 and blocks(2) == 2:
        return 2, 7
    return None


def register_tile(out_blocks: int, width: int, kernel: str = "vnni", reduction: int = 0,
                  span: int = 1, taps: int = 0, blocked_out: bool = True) -> tuple:
    """(output-channel blocks, output pixels) one step of the packed conv keeps in vector
    registers. Each data word broadcast feeds every block of the tile, each weight load
    every pixel, so wider tiles load less per multiply-add; the accumulators must fit
    AVX-512's 32 registers beside the operands. Measured with the blocked output on a
    2-core Xeon with VNNI (us, best of 5; tile blocks x pixels): 24->144 1x1 at 56x56 1x8
    164, 3x4 87; 96->576 at 14x14 1x7 119, 3x7 71; 32->192 at 28x28 1x7 56, 6x4 34;
    64->64 3x3 at 56x56 1x8 428, 4x4 293, 2x8 290; 144->24 at 56x56 1x8 97, 2x8 52.
    Widths no 8, 7, 6 or 4 divides (squeezenet's and alexnet's 111, 55, 27, 13; VNNI,
    interleaved, background paused): 16->64 3x3 at 55 1x1 537, 1x5 260, 4x5 200;
    32->128 3x3 at 27 1x1 519, 1x3 255, 4x3 129; 512->1008 1x1 at 13 1x1 1861, 3x1 884,
    7x1 698, 9x1 793, 21x1 823; 128->16 1x1 at 55 1x1 100, 1x5 68. Rule: 4 pixels with 3
    to 6 blocks where the width and the blocks allow it, else up to 21 accumulators of
    8, 7, 6, 5 or 3 pixels, else ``_pixel_block`` pixels with up to 7 blocks. ARM
    kernels ("sdot", "neon") take ``_arm_tile``'s where it has one (the other arguments
    are its)."""
    if kernel in ("sdot", "neon"):
        tile = _arm_tile(out_blocks, width, kernel, reduction, span, taps, blocked_out)
        if tile:
            return tile

    def blocks(most):
        return _blocks(out_blocks, most)

    if width % 4 == 0 and blocks(6) >= 3:
        return blocks(6), 4
    for px in (8, 7, 6, 5, 3):
        if width % px == 0 and blocks(21 // px) >= 2:
            return blocks(21 // px), px
    px = _pixel_block(width)
    return blocks(min(7, 21 // px)), px


def call_span(kernel: DotKernel, in_blocks: int, data_block: int, pairs: bool) -> int:
    """Input blocks of 4 channels per intrinsic call: 4 or 2 where the kernel has such an
    intrinsic, the weights allow it (``pairs``) and the conv's ``in_blocks`` divide; the
    blocks are planes of NCHW[4c] data (``data_block`` 4), not words of a wider block."""
    if not pairs or data_block != IC_BLOCK:
        return 1
    return next((k for k, name in ((4, kernel.quad_intrin), (2, kernel.pair_intrin))
                 if name is not None and in_blocks % k == 0), 1)


def scheduled_conv(data_shape, w_shape, strides, dilation, kernel: DotKernel, requant=None,
                   out_channels=None, blocked_out=False, pairs: bool = False,
                   group_width=None, tile=None):
    """The tensorized PrimFunc and its output shape (``requant``: a ``Requant`` done in
    the epilogue; the PrimFunc then also takes its (C,) bias and scale, padded to the
    weight's blocks; ``out_channels``: the real output channels, fewer than the weight's
    padded ones; ``blocked_out``: the output stays in the weight's blocks, see ``_compute``;
    ``pairs``: the weights allow two products in int16, so ``kernel``'s intrinsics over
    four or two input blocks are used where the blocks divide (``call_span``); ``group_width``: a grouped conv's channels per group, see ``_compute``;
    ``tile``: (output-channel blocks, pixels) in place of ``register_tile``'s, each dividing
    the conv's blocks and width: benchmarks/bench_arm_int8_tiles.py tries them)."""
    intrin = kernel.register()
    span = call_span(kernel, w_shape[1], data_shape[4], pairs)
    func, out_shape = _compute(data_shape, w_shape, strides, dilation, kernel.data_dtype, requant,
                               out_channels, blocked_out, group_width)
    sch = s_tir().Schedule(func)
    block = sch.get_sblock("conv")
    n, oc, y, x, oci, ico, kh, kw, ici = sch.get_loops(block)
    width = out_shape[3]
    tile_blocks, pixels = tile or register_tile(w_shape[0], width, kernel.name,
                                                int(np.prod(w_shape[1:4])), span,
                                                int(np.prod(w_shape[2:4])), blocked_out)
    oco, oc_i = sch.split(oc, [None, tile_blocks])
    xo, xi = sch.split(x, [None, pixels])
    if span > 1:  # two or four blocks of 4 input channels per call
        ico, ico_i = sch.split(ico, [None, span])
        sch.reorder(n, oco, y, xo, ico, kh, kw, oc_i, xi, oci, ico_i, ici)
        intrin = kernel.quad_intrin if span == 4 else kernel.pair_intrin
    else:
        sch.reorder(n, oco, y, xo, ico, kh, kw, oc_i, xi, oci, ici)
    row = sch.fuse(n, oco, y)
    if np.prod(out_shape) * np.prod(w_shape[1:4]) * IC_BLOCK >= PARALLEL_MACS:
        sch.parallel(row)
    # An epilogue moved under a tile loop gets loops only for its extents above 1, so its
    # own loops are counted from below that loop, never taken as "the last k": with a 1 x 1
    # tile, "the last three" of the requant were (row, xo, channel) and row's parallel
    # became an unroll of 444 x 111 steps: squeezenet1_1's INT8 stem ran on one thread and
    # LLVM compiled it for tens of minutes.
    if requant is not None:  # one (blocks x pixels x B channels) tile at a time, B a vector
        rq = sch.get_sblock("requant")
        sch.reverse_compute_at(rq, xo)
        *tile, channel = sch.get_loops(rq)[2:]  # under row, xo
        sch.vectorize(channel)
        for loop in tile:
            sch.unroll(loop)
    if not blocked_out:
        unpack = sch.get_sblock("unpack")
        sch.reverse_compute_at(unpack, row)  # a whole output row of the tile's channels
        inner = sch.get_loops(unpack)[1:]  # under row: channels, then pixels (if above 1)
        # consecutive pixels of one output channel, at most 16 per vector: each is a
        # strided gather from the packed tile, and LLVM legalizes a whole row as one (the
        # 112-wide stem of mobilenet_v3: <112 x i8>) in minutes: 120 of a 164 s INT8 build
        vector = _vector_block(width)
        if width > 1:
            _, x_v = sch.split(inner[-1], [None, vector])
            sch.vectorize(x_v)
        if vector & (vector - 1) == 0:  # an odd vector (11 of 55) is a slow gather to
            sch.unroll(inner[0])  # legalize: LLVM took 13 s for 64 unrolled ones
    sch.decompose_reduction(block, ico)
    sch.tensorize(oci, intrin)
    sch.unroll(xi)
    sch.unroll(oc_i)
    return hand_scheduled(sch.mod["main"]), out_shape


def _packed_input(bb, x, wq: np.ndarray, padding, pad_value: int, extra: int = 0):
    """(the conv's padded input in words of 4 channels, its name tag): ``x`` NCHW packed to
    NCHW[4c] with ``channel_pad(wq)`` channels added; ``x`` already blocked (N, CB, H, W,
    IB) read as it is, only padded in blocks when the conv pads (tag ``_nchw{IB}c``).
    ``extra``: more channels to add when packing NCHW (a grouped conv's empty groups)."""
    dtype = str(x.ty.dtype)
    if len(x.ty.shape.values) == 4:
        func = pack_func(x.ty.shape.values, dtype, padding, channel_pad(wq) + extra, pad_value)
        n, c4, h, w, _ = (int(d) for d in func.params[1].shape)
        name, tag = f"pack_nchw4c_{n}x{c4 * IC_BLOCK}x{h}x{w}", ""
    else:
        shape = [int(d) for d in x.ty.shape.values]
        tag = f"_nchw{shape[4]}c"
        if not any(int(p) for p in padding):
            return x, tag
        func = pad_blocked_func(shape, dtype, padding, pad_value)
        n, cb, h, w, ib = (int(d) for d in func.params[1].shape)
        name = f"pad_nchw{ib}c_{n}x{cb * ib}x{h}x{w}"
    gv = add_kernel(bb, func, name)
    shape = [int(d) for d in func.params[1].shape]
    return bb.emit(relax.call_tir(gv, [x], relax.TensorType(shape, dtype))), tag


def emit_packed_conv(bb, x, wq: np.ndarray, strides, dilation, kernel: DotKernel,
                     requant=None, padding=(0, 0, 0, 0), pad_value: int = 0,
                     blocked_out: bool = False, residual=None, groups: int = 1):
    """Emit the tensorized conv of ``x`` by ``wq`` (OIHW int8), padded by ``padding``
    (top, left, bottom, right) with ``pad_value`` (the zero point).

    ``x`` NCHW int8/uint8 is packed to NCHW[4c] first (``channel_pad(wq)`` channels added);
    ``x`` already blocked, (N, CB, H, W, IB) from a blocked producer, is read as it is
    (only padded, when the conv pads). Returns NCHW: int32, or ``requant``'s dtype when it
    is given (done in the epilogue); ``blocked_out`` (with a requantize): (N, O/B, HO, WO,
    B) in the kernel's block, the layout the next packed layer reads. ``residual``: an
    int8 tensor of that blocked shape added in the epilogue (``requant.residual``).
    ``groups`` > 1: a grouped conv ``group_span`` accepts, each output block reading its
    groups' input channels.
    """
    # a grouped conv with empty groups added (``group_span``) reads as many more channels
    extra = out_channel_pad(wq.shape[0], kernel.oc_block) if groups > 1 else 0
    data, tag = _packed_input(bb, x, wq, padding, pad_value, extra)
    n, cb, h, w, ib = (int(d) for d in data.ty.shape.values)
    data_shape, c_in = (n, cb, h, w, ib), cb * ib
    group_width = None
    if groups > 1:
        group_width = (wq.shape[0] // groups, wq.shape[1])
        # a blocked producer writes whole blocks: the empty groups' inputs exist
        assert c_in >= (wq.shape[0] + extra) // group_width[0] * wq.shape[1], (c_in, wq.shape)
        wp = pack_weight(group_weight(wq, groups, kernel.oc_block), kernel.oc_block)
        tag += f"_g{groups}"
    else:
        wp = pack_weight(wq, kernel.oc_block, in_channels=c_in)
    opad = out_channel_pad(wq.shape[0], kernel.oc_block)
    if requant is not None and opad:  # the padded channels' bias and scale: never written
        requant = replace(requant, bias=np.pad(requant.bias, (0, opad)),  # (or the zero point)
                          scale=np.pad(np.asarray(requant.scale, "float32"), (0, opad)))
    blocked_out = blocked_out and requant is not None
    func, out_shape = scheduled_conv(data_shape, wp.shape,
                                     [int(s) for s in strides], [int(d) for d in dilation], kernel,
                                     requant, wq.shape[0], blocked_out, pairs=pairs_ok(wq),
                                     group_width=group_width)
    name = f"conv2d_int8_{kernel.name}{tag}_{n}x{c_in}x{h}x{w}_{wq.shape[0]}x{wq.shape[2]}"
    args = [data, relax.const(wp, "int8")]
    if requant is not None:
        name += "_requant" + ("_blocked" if blocked_out else "")
        args += [requant.bias_const((-1,)), requant.scale_const((-1,))]
        if requant.residual:
            name += "_residual"
            args.append(residual)
    # each output pixel reads all of wp; the MACs done, the padded input and output
    # channels' included: what the power proxy should count
    macs = out_shape[0] * out_shape[2] * out_shape[3] * wp.size
    gv = add_kernel(bb, func.with_attr(MACS_ATTR, macs), name)
    dtype = requant.dtype if requant is not None else "int32"
    return bb.emit(relax.call_tir(gv, args, relax.TensorType(out_shape, dtype)))


def scheduled_matmul(m, k, n, kernel: DotKernel):
    """(M, K) data x packed (N/B, K/4, B, 4) s8 -> (M, N) s32, tensorized."""
    intrin, ob = kernel.register(), kernel.oc_block
    a = te.placeholder((m, k), kernel.data_dtype, name="data")
    b = te.placeholder((n // ob, k // IC_BLOCK, ob, IC_BLOCK), "int8", name="weight")
    r = te.reduce_axis((0, k), "k")
    c = te.compute((m, n), lambda i, j: te.sum(
        a[i, r].astype("int32") * b[j // ob, r // 4, j % ob, r % 4].astype("int32"), axis=r),
        name="matmul")
    sch = s_tir().Schedule(te.create_prim_func([a, b, c]))
    block = sch.get_sblock("matmul")
    i, j, kk = sch.get_loops(block)
    jo, ji = sch.split(j, [None, ob])
    ko, ki = sch.split(kk, [None, IC_BLOCK])
    sch.reorder(i, jo, ko, ji, ki)
    if m * n // ob >= 8 and m * n * k >= 1 << 18:  # small GEMVs: threads cost more
        sch.parallel(sch.fuse(i, jo))
    sch.decompose_reduction(block, ko)
    sch.tensorize(ji, intrin)
    return hand_scheduled(sch.mod["main"])


def emit_packed_matmul(bb, x, wq: np.ndarray, kernel: DotKernel):
    """Emit ``x (..., K) @ wq (K, N) s8`` with the packed kernel; returns int32 (..., N).
    N is padded to the kernel's block with zero weights and the padded columns sliced off."""
    shape = [int(d) for d in x.ty.shape.values]
    k, n = wq.shape
    m, ob = int(np.prod(shape[:-1])), kernel.oc_block
    npad = n + out_channel_pad(n, ob)  # padded columns: zero weights, sliced off after
    wq = np.pad(wq, [(0, 0), (0, npad - n)])
    wp = np.ascontiguousarray(wq.T.reshape(npad // ob, ob, k // 4, 4).transpose(0, 2, 1, 3))
    name = f"matmul_int8_{kernel.name}_{m}x{k}x{n}"
    gv = add_kernel(bb, scheduled_matmul(m, k, npad, kernel).with_attr(MACS_ATTR, m * k * npad),
                    name)
    flat = bb.emit(relax.op.reshape(x, (m, k))) if len(shape) != 2 else x
    out = bb.emit(relax.call_tir(gv, [flat, relax.const(wp, "int8")],
                                 relax.TensorType((m, npad), "int32")))
    if npad != n:  # FuseOps fuses the slice into the requantize after it
        out = bb.emit(relax.op.strided_slice(out, axes=[1], begin=[0], end=[n]))
    return bb.emit(relax.op.reshape(out, (*shape[:-1], n))) if len(shape) != 2 else out
