"""Pack int8 activations NCHW -> NCHW[4c] (with padding) for the packed int8 kernels.

The packed kernels read 4 consecutive input channels of a pixel as one 32-bit word.
Written as Relax ``pad -> reshape -> permute_dims``, the pack is a byte transpose that
LLVM cannot vectorize: 0.66 ms for a 144x56x56 tensor even after MetaSchedule tuning
(0.6 GB/s), and 3.7 of INT8 mobilenet_v2's 17 ms. Here each packed word is built
with integer arithmetic instead, ``x[4c] | x[4c+1] << 8 | x[4c+2] << 16 | x[4c+3] << 24``,
vectorized along the row and stored 32 bits at a time through a uint32 view of the
output (0.026 ms for the same tensor, bit-exact).

Padding (rows, columns, and channels up to a multiple of 4) takes ``pad_value``: the
zero point, the image of 0.0. Reads stay in bounds: indices are clamped and the pad
chosen by a select, so no lane ever loads outside the input.
"""
from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from edgec.passes.kernels.common import IC_BLOCK, hand_scheduled


def pack_func(shape, dtype: str, padding=(0, 0, 0, 0), extra_channels: int = 0,
              pad_value: int = 0):
    """PrimFunc ``(x: NCHW dtype) -> (N, (C + extra) / 4, H + top + bottom, W + left + right, 4)``.

    padding: (top, left, bottom, right), as Relax's conv2d orders it.
    """
    n_, c_, h_, w_ = (int(d) for d in shape)
    top, left, bottom, right = (int(p) for p in padding)
    c4, hp, wp = (c_ + extra_channels) // IC_BLOCK, h_ + top + bottom, w_ + left + right
    if (c_ + extra_channels) % IC_BLOCK:
        raise ValueError(f"pack: {c_} + {extra_channels} channels is not a multiple of 4")
    byte = int(pad_value) & 0xFF
    pad_word = tirx.const(byte * 0x01010101, "uint32")

    def word(x, n, c, h, w):
        """The 4 channels c..c+3 of input pixel (h, w) as one uint32 (pad outside)."""
        out = None
        for k in range(IC_BLOCK):
            ch = T.min(c + k, c_ - 1)
            v = T.bitwise_and(T.Cast("uint32", x[n, ch, h, w]), T.uint32(0xFF))
            if c_ % IC_BLOCK:  # only the last group has padded channels
                v = T.Select(c + k < c_, v, T.uint32(byte))
            v = v << T.uint32(8 * k) if k else v
            out = v if out is None else T.bitwise_or(out, v)
        return out

    @T.prim_func(s_tir=True)
    def pack(x: T.Buffer((n_, c_, h_, w_), dtype), y: T.Buffer((n_, c4, hp, wp, 4), dtype)):
        T.func_attr({"tirx.noalias": True})
        with T.sblock("root"):  # Relax's analyses expect a root block
            y32 = T.decl_buffer((n_ * c4 * hp * wp,), "uint32", data=y.data)
            # serial: 25 us for 144x56x56; T.parallel made it 0.36 ms (thread wake-up)
            for row in T.serial(n_ * c4 * hp):
                n: T.let = row // (c4 * hp)
                c: T.let = row // hp % c4 * IC_BLOCK
                h: T.let = row % hp - top
                hc: T.let = T.max(T.min(h, h_ - 1), 0)
                inside: T.let = T.And(h >= 0, h < h_)
                for w in range(left):
                    y32[row * wp + w] = pad_word
                for w in T.vectorized(w_):
                    y32[row * wp + left + w] = T.Select(inside, word(x, n, c, hc, w), pad_word)
                for w in range(right):
                    y32[row * wp + left + w_ + w] = pad_word

    return hand_scheduled(pack)


def pad_blocked_func(shape, dtype: str, padding, pad_value: int = 0):
    """PrimFunc ``(x: (N, CB, H, W, B)) -> (N, CB, H + top + bottom, W + left + right, B)``,
    the border filled with ``pad_value`` (the zero point): the input of a packed KxK conv
    whose producer wrote the blocked layout. Each row is copied as 32-bit words (B / 4 a
    pixel), vectorized; border words are stored whole."""
    n_, cb_, h_, w_, b_ = (int(d) for d in shape)
    top, left, bottom, right = (int(p) for p in padding)
    hp, wp = h_ + top + bottom, w_ + left + right
    if b_ % IC_BLOCK:
        raise ValueError(f"pad_blocked: a block of {b_} channels is not whole 32-bit words")
    words = b_ // IC_BLOCK
    pad_word = tirx.const((int(pad_value) & 0xFF) * 0x01010101, "uint32")
    # a side with no padding (a 7x1 conv pads rows only): a loop of extent 0, which TVM
    # refuses to vectorize ("Failed to vectorize loop with extent 0": inception_v3's INT8)
    fill_left = T.vectorized if left else T.serial
    fill_right = T.vectorized if right else T.serial

    @T.prim_func(s_tir=True)
    def pad_blocked(x: T.Buffer((n_, cb_, h_, w_, b_), dtype),
                    y: T.Buffer((n_, cb_, hp, wp, b_), dtype)):
        T.func_attr({"tirx.noalias": True})
        with T.sblock("root"):
            x32 = T.decl_buffer((n_ * cb_ * h_ * w_ * words,), "uint32", data=x.data)
            y32 = T.decl_buffer((n_ * cb_ * hp * wp * words,), "uint32", data=y.data)
            for row in T.serial(n_ * cb_ * hp):
                h: T.let = row % hp - top
                plane: T.let = row // hp
                if h >= 0 and h < h_:
                    for i in fill_left(left * words):
                        y32[row * wp * words + i] = pad_word
                    for i in T.vectorized(w_ * words):
                        y32[(row * wp + left) * words + i] = x32[(plane * h_ + h) * w_ * words + i]
                    for i in fill_right(right * words):
                        y32[(row * wp + left + w_) * words + i] = pad_word
                else:
                    for i in T.vectorized(wp * words):
                        y32[row * wp * words + i] = pad_word

    return hand_scheduled(pad_blocked)


def unpack_blocked_func(shape, channels: int, dtype: str):
    """PrimFunc ``(x: (N, CB, H, W, B)) -> (N, channels, H, W)``: a blocked int8 tensor
    back to NCHW, the padded channels dropped, for a consumer that reads NCHW (a pooling
    head, a layer the blocks do not suit). One output row at a time, vectorized along it
    (a strided byte gather: B bytes apart)."""
    n_, cb_, h_, w_, b_ = (int(d) for d in shape)

    @T.prim_func(s_tir=True)
    def unpack_blocked(x: T.Buffer((n_, cb_, h_, w_, b_), dtype),
                       y: T.Buffer((n_, channels, h_, w_), dtype)):
        T.func_attr({"tirx.noalias": True})
        with T.sblock("root"):
            for row in T.serial(n_ * channels * h_):
                n: T.let = row // (channels * h_)
                c: T.let = row // h_ % channels
                h: T.let = row % h_
                for w in T.vectorized(w_):
                    y[n, c, h, w] = x[n, c // b_, h, w, c % b_]

    return hand_scheduled(unpack_blocked)
