"""Blocked-layout INT8 depthwise kernel (passes/kernels/int8_depthwise_blocked.py): bit-exact
against a numpy reference (the conv in int64, the requantize in float32 as Requant.relax_form
does it) and against the NCHW kernel of int8_depthwise, for blocks 16/8/4, strides 1/2, with and
without padding, channels not a multiple of the block, odd widths; marked like edgec's other
hand-scheduled kernels; block 4 cross-compiles for aarch64."""
import dataclasses
import shutil

import numpy as np
import pytest

from edgec.compiler.tvm_compat import cross_compiler, relax, tvm
from edgec.passes.kernels.common import HAND_ATTR, MACS_ATTR
from edgec.passes.kernels.int8_depthwise import emit_depthwise_conv
from edgec.passes.kernels.int8_depthwise_blocked import (Geometry, blocked_dw_func,
                                                         emit_blocked_depthwise_conv,
                                                         is_blocked_depthwise, pack_weight)
from edgec.passes.requant import Requant
from edgec.targets import get_target


def to_blocked(x: np.ndarray, block: int, fill: int) -> np.ndarray:
    """NCHW -> (N, ceil(C / block), H, W, block); the lanes past C hold ``fill``."""
    n, c, h, w = x.shape
    cb = -(-c // block)
    full = np.full((n, cb * block, h, w), fill, x.dtype)
    full[:, :c] = x
    return np.ascontiguousarray(full.reshape(n, cb, block, h, w).transpose(0, 1, 3, 4, 2))


def from_blocked(y: np.ndarray, channels: int) -> np.ndarray:
    n, cb, h, w, b = y.shape
    return y.transpose(0, 1, 4, 2, 3).reshape(n, cb * b, h, w)[:, :channels]


def reference(x, wq, stride, padding, dilation, zp, rq):
    """The depthwise conv of NCHW ``x`` in int64 (checked to fit int32), then ``rq`` as
    Requant.relax_form computes it: float32(acc + bias) * scale, round half to even, + zp,
    clip, cast."""
    c, _, kh, kw = wq.shape
    top, left, bottom, right = padding
    xp = np.pad(x.astype(np.int64), [(0, 0), (0, 0), (top, bottom), (left, right)],
                constant_values=zp)
    ho = (xp.shape[2] - (kh - 1) * dilation - 1) // stride + 1
    wo = (xp.shape[3] - (kw - 1) * dilation - 1) // stride + 1
    acc = np.zeros((x.shape[0], c, ho, wo), np.int64)
    for i in range(kh):
        for j in range(kw):
            rows = xp[:, :, i * dilation:i * dilation + (ho - 1) * stride + 1:stride]
            tap = rows[:, :, :, j * dilation:j * dilation + (wo - 1) * stride + 1:stride]
            acc += tap * wq[None, :, 0, i, j, None, None]
    assert np.abs(acc).max() < 2 ** 31
    if rq is None:
        return acc.astype(np.int32)
    y = (acc + rq.bias[None, :, None, None]).astype(np.int32).astype(np.float32)
    y = y * rq.scale.astype(np.float32)[None, :, None, None]
    if not rq.quantized:
        return np.clip(y, *rq.act[1:]).astype(np.float32) if rq.act else y
    y = np.round(y)
    y = y + np.float32(rq.zp) if rq.zp else y
    return np.clip(y, np.float32(rq.lo), np.float32(rq.hi)).astype(rq.dtype)


def _requant(epilogue, c, dtype, zp, rng):
    lo, hi = (0, 255) if dtype == "uint8" else (-128, 127)
    bias = rng.integers(-3000, 3000, c)
    scale = (rng.random(c) * 0.004 + 0.001).astype("float32")
    return {None: None,
            "relu6": Requant(bias, scale, dtype, zp, float(zp), float(min(hi, zp + 120))),
            "clip": Requant(bias, scale, dtype, zp, float(max(lo, zp - 60)),
                            float(min(hi, zp + 90))),
            "float": Requant(bias, scale, "float32", act=("clip", 0.0, 6.0))}[epilogue]


def _blocked_module(xb, wq, block, stride, padding, dilation, zp, rq, nchw_shape=None):
    """main(x blocked) -> the blocked kernel's output; with ``nchw_shape`` also main's
    second input, NCHW x, and the NCHW kernel's output (a tuple of both)."""
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(xb.shape, str(xb.dtype)))
    params = [xv]
    if nchw_shape is not None:
        params.append(relax.Var("x_nchw", relax.TensorType(nchw_shape, str(xb.dtype))))
    with bb.function("main", params):
        with bb.dataflow():
            outs = [emit_blocked_depthwise_conv(bb, xv, wq, [stride] * 2, [dilation] * 2, block,
                                                rq, padding, zp)]
            if nchw_shape is not None:
                outs.append(emit_depthwise_conv(bb, params[1], wq, [stride] * 2, [dilation] * 2,
                                                rq, padding, zp))
            out = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(out)
    return bb.get()


def _run_all(mod, *inputs):
    host = get_target("host").tvm_target()
    with host:
        mod = relax.get_pipeline("zero")(mod)
    vm = relax.VirtualMachine(tvm.compile(mod, target=host), tvm.cpu())
    return [y.numpy() for y in vm["main"](*[tvm.runtime.tensor(a) for a in inputs])]


CASES = [  # block, channels, height, width, kernel, stride, padding, dilation, zp, dtype, epilogue
    (16, 24, 9, 13, 3, 1, (1, 1, 1, 1), 1, 3, "uint8", "relu6"),   # C = 1.5 blocks, odd width
    (16, 32, 8, 7, 3, 2, (1, 1, 1, 1), 1, 5, "uint8", "relu6"),    # stride 2, 7 wide
    (16, 16, 6, 20, 3, 1, (1, 1, 1, 1), 1, 2, "uint8", None),      # int32; 18 interior: 8+8+2
    (16, 24, 9, 9, 3, 1, (2, 2, 2, 2), 2, 0, "uint8", "relu6"),    # dilation 2, zp 0
    (16, 16, 7, 7, 5, 1, (2, 2, 2, 2), 1, 4, "uint8", "float"),    # 5x5, float32 out
    (16, 24, 8, 8, 3, 2, (0, 0, 1, 1), 1, 4, "uint8", "clip"),     # TF 'same': bottom/right only
    (8, 20, 7, 7, 3, 1, (0, 0, 0, 0), 1, 3, "uint8", "clip"),      # no padding, C = 2.5 blocks
    (8, 20, 10, 13, 3, 2, (0, 0, 0, 0), 1, 3, "uint8", "float"),   # stride 2, no padding
    (8, 12, 13, 13, 3, 2, (1, 1, 1, 1), 1, 6, "uint8", None),      # int32, stride 2, odd
    (4, 10, 7, 7, 3, 1, (1, 1, 1, 1), 1, -3, "int8", "clip"),      # ARM's block, int8 data
    (4, 12, 9, 13, 3, 2, (1, 1, 1, 1), 1, 2, "int8", None),
    (16, 24, 1, 1, 3, 1, (1, 1, 1, 1), 1, 3, "uint8", "relu6"),    # 1x1 map: all border
    (16, 24, 2, 2, 3, 2, (1, 1, 1, 1), 1, 3, "uint8", "clip"),
    (16, 48, 28, 28, 3, 1, (1, 1, 1, 1), 1, 3, "uint8", "relu6"),  # 339 K MACs: rows in parallel
]


@pytest.mark.parametrize("block,c,h,w,k,stride,padding,dilation,zp,dtype,epilogue", CASES)
def test_blocked_depthwise_is_bit_exact(block, c, h, w, k, stride, padding, dilation, zp, dtype,
                                        epilogue):
    rng = np.random.default_rng(c * h + w)
    lo, hi = (0, 255) if dtype == "uint8" else (-128, 127)
    x = rng.integers(lo, hi + 1, (1, c, h, w)).astype(dtype)
    wq = rng.integers(-127, 128, (c, 1, k, k)).astype("int8")
    rq = _requant(epilogue, c, dtype, zp, rng)
    xb = to_blocked(x, block, hi)  # the padding lanes hold garbage, not zeros
    (got,) = _run_all(_blocked_module(xb, wq, block, stride, padding, dilation, zp, rq), xb)
    ref = reference(x, wq, stride, padding, dilation, zp, rq)
    cb = -(-c // block)
    assert got.shape == (1, cb, *ref.shape[2:], block)
    assert got.dtype == (rq.dtype if rq is not None else "int32")
    np.testing.assert_array_equal(from_blocked(got, c), ref)
    if rq is not None and rq.quantized:  # the epilogue clipped somewhere, not everywhere
        assert ((ref == rq.hi) | (ref == rq.lo)).any()
        if ref.size > 50:
            assert ((ref > rq.lo) & (ref < rq.hi)).mean() > 0.2
        # padded channels: bias 0, scale 0 -> the zero point, clipped
        assert (got[:, -1, ..., c % block or block:] == np.clip(zp, rq.lo, rq.hi)).all()


@pytest.mark.parametrize("stride", [1, 2])
def test_blocked_equals_the_nchw_kernel(stride):
    """The same conv through int8_depthwise's NCHW kernel and the blocked one: equal."""
    rng = np.random.default_rng(stride)
    c, h, w, zp = 40, 14, 14, 3
    x = rng.integers(0, 256, (1, c, h, w)).astype("uint8")
    wq = rng.integers(-127, 128, (c, 1, 3, 3)).astype("int8")
    rq = _requant("relu6", c, "uint8", zp, rng)
    xb = to_blocked(x, 16, 7)
    mod = _blocked_module(xb, wq, 16, stride, (1, 1, 1, 1), 1, zp, rq, nchw_shape=x.shape)
    got, nchw = _run_all(mod, xb, x)
    np.testing.assert_array_equal(from_blocked(got, c), nchw)
    assert nchw.shape == (1, c, 14 // stride, 14 // stride) and np.ptp(nchw) > 100


def _emitted(c, h, block, padding=(1, 1, 1, 1), rq=True):
    rng = np.random.default_rng(0)
    wq = rng.integers(-127, 128, (c, 1, 3, 3)).astype("int8")
    xb = np.zeros((1, -(-c // block), h, h, block), "uint8")
    requant = _requant("relu6", c, "uint8", 3, rng) if rq else None
    return _blocked_module(xb, wq, block, 1, padding, 1, 3, requant)


def test_kernel_is_marked_and_counts_its_macs():
    """One kernel (the border is inside it: no pad kernel), named after the layout, marked
    hand-scheduled and opaque, its MACs the computed lanes (C padded to the block)."""
    mod = _emitted(24, 9, 16)
    kernels = {gv.name_hint: f for gv, f in mod.functions.items()
               if isinstance(f, tvm.tirx.PrimFunc)}
    assert list(kernels) == ["dwconv2d_int8_nchw16c_1x24x9x9_3x3s1_requant"]
    func = kernels["dwconv2d_int8_nchw16c_1x24x9x9_3x3s1_requant"]
    assert int(func.attrs[MACS_ATTR]) == 32 * 9 * 9 * 9
    assert bool(func.attrs[HAND_ATTR]) and bool(func.attrs["tirx.is_scheduled"])
    assert int(func.attrs["op_pattern"]) == 8
    assert [str(p.dtype) for p in func.params] == ["uint8", "int8", "int32", "float32", "uint8"]
    assert "T.parallel" not in func.script()  # 23 K MACs: one thread
    big = _emitted(24, 40, 16)  # 461 K MACs: rows in parallel
    assert "T.parallel" in next(f for f in big.functions.values()
                                if isinstance(f, tvm.tirx.PrimFunc)).script()
    plain = _emitted(20, 7, 8, (0, 0, 0, 0), rq=False)
    (name,) = [gv.name_hint for gv, f in plain.functions.items()
               if isinstance(f, tvm.tirx.PrimFunc)]
    assert name == "dwconv2d_int8_nchw8c_1x20x7x7_3x3s1"
    assert [str(p.dtype) for p in plain[name].params] == ["uint8", "int8", "int32"]


def test_pack_weight_and_is_blocked_depthwise():
    wq = np.arange(5 * 9).reshape(5, 1, 3, 3).astype("int8")
    packed = pack_weight(wq, 4)
    assert packed.shape == (2, 3, 3, 4) and packed.dtype == np.int8
    assert packed[1, 2, 1, 0] == wq[4, 0, 2, 1] and (packed[1, :, :, 1:] == 0).all()
    w = np.zeros((8, 1, 3, 3), "int8")
    assert is_blocked_depthwise(w, 8, (1, 1)) and is_blocked_depthwise(w, 8, (2, 2))
    assert not is_blocked_depthwise(w, 8, (3, 3)) and not is_blocked_depthwise(w, 8, (3, 1))
    assert not is_blocked_depthwise(w, 1, (1, 1))
    assert not is_blocked_depthwise(np.zeros((16, 1, 3, 3), "int8"), 8, (1, 1))  # multiplier 2
    with pytest.raises(ValueError, match="blocks of 8"):
        _blocked_module(np.zeros((1, 2, 5, 5, 16), "uint8"), w, 8, 1, (1, 1, 1, 1), 1, 0, None)


def test_a_fused_residual_is_refused():
    """The kernel's requantize has no residual input: a Requant carrying one must not be
    emitted as if it had none."""
    if "res_scale" not in {f.name for f in dataclasses.fields(Requant)}:
        pytest.skip("this Requant has no fused residual")
    rq = dataclasses.replace(_requant("relu6", 8, "uint8", 3, np.random.default_rng(0)),
                             res_scale=0.5, res_zp=3)
    w = np.zeros((8, 1, 3, 3), "int8")
    with pytest.raises(ValueError, match="residual"):
        _blocked_module(np.zeros((1, 1, 5, 5, 8), "uint8"), w, 8, 1, (1, 1, 1, 1), 1, 3, rq)


def test_block4_cross_compiles_for_aarch64(tmp_path):
    """ARM's block (4 int32 lanes, one NEON register): built and linked, not run."""
    target = get_target("rpi4")
    if shutil.which(target.cross_cc) is None:
        pytest.skip(f"{target.cross_cc} missing: apt-get install -y g++-aarch64-linux-gnu")
    rq = _requant("relu6", 24, "int8", 3, np.random.default_rng(0))
    geo = Geometry((14, 14), (3, 3), (2, 2), (1, 1), (1, 1), 3)
    func = blocked_dw_func((1, 6, 14, 14, 4), geo, "int8", (7, 7), rq, parallel=True)
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                      target=target.tvm_target())
    path = tmp_path / "dw.so"
    lib.export_library(str(path), fcompile=cross_compiler(target.cross_cc))
    with open(path, "rb") as f:
        header = f.read(20)
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
