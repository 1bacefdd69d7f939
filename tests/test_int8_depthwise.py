"""INT8 depthwise kernel (passes/kernels/int8_depthwise.py) and its use by the quantize pass:
bit-exact against the plain int8 path (Relax's grouped conv2d, int32 accumulators, the same
requantize as Relax ops), and the pass emits it for a depthwise conv."""
import numpy as np
import pytest
import torch
from torch import nn

from edgec.compiler.frontend import import_model
from edgec.compiler.tvm_compat import relax, tvm
from edgec.passes.calibrate import run_outputs
from edgec.passes.int8_kernels import KERNELS
from edgec.passes.int8_phase import quantize_model
from edgec.passes.kernels.int8_depthwise import (emit_depthwise_conv, is_depthwise,
                                                 pad_split_func)
from edgec.passes.quant_scheme import QuantScheme
from edgec.passes.requant import Requant
from edgec.targets import get_target

HOST = get_target("host").tvm_target()


def _run(mod, x):
    with HOST:
        mod = relax.get_pipeline("zero")(mod)
    vm = relax.VirtualMachine(tvm.compile(mod, target=HOST), tvm.cpu())
    return [y.numpy() for y in vm["main"](tvm.runtime.tensor(x))]


def _module(x, wq, stride, padding, dilation, zp, rq):
    """One depthwise conv + requantize twice, returning (edgec's kernel, the plain path the
    quantize pass emitted before it: pad with the zero point, grouped int32 conv, Relax
    requantize)."""
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, str(x.dtype)))
    with bb.function("main", [xv]):
        with bb.dataflow():
            got = emit_depthwise_conv(bb, xv, wq, [stride] * 2, [dilation] * 2, rq, padding, zp)
            top, left, bottom, right = padding
            xp = bb.emit(relax.op.nn.pad(xv, [0, 0, 0, 0, top, bottom, left, right],
                                         pad_value=float(zp)))
            acc = bb.emit(relax.op.nn.conv2d(
                xp, relax.const(wq, "int8"), strides=[stride] * 2, dilation=[dilation] * 2,
                groups=wq.shape[0], out_dtype="int32"))
            ref = rq.relax_form(bb, acc, (1, -1, 1, 1)) if rq is not None else acc
            out = bb.emit_output(relax.Tuple([got, ref]))
        bb.emit_func_output(out)
    return bb.get()


CASES = [  # channels, height, width, kernel, stride, padding, dilation, zp, dtype, epilogue
    (16, 9, 9, 3, 1, (1, 1, 1, 1), 1, 3, "uint8", "relu6"),   # stride 1: the plane kernel
    (10, 12, 12, 3, 1, (1, 1, 1, 1), 1, 5, "uint8", "relu6"),  # plane widened 14 -> 16
    (4, 6, 34, 3, 1, (1, 1, 1, 1), 1, 2, "uint8", "relu6"),    # 34 wide: the row kernel
    (22, 10, 10, 3, 2, (1, 1, 1, 1), 1, 0, "uint8", "relu6"),  # stride 2, even rows (uint16)
    (13, 9, 11, 3, 2, (1, 1, 1, 1), 1, 7, "uint8", "clip"),   # stride 2, odd rows (gather)
    (8, 7, 7, 5, 1, (2, 2, 2, 2), 1, 0, "uint8", "float"),    # 5x5, float (dequantized) out
    (12, 14, 14, 5, 1, (2, 2, 2, 2), 1, 9, "uint8", "relu6"), # 5x5: plane widened 18 -> 24
    (12, 8, 8, 3, 2, (0, 0, 1, 1), 1, 4, "uint8", "relu6"),   # asymmetric (TF 'same') pad
    (20, 9, 9, 3, 1, (2, 2, 2, 2), 2, 0, "int8", "clip"),     # dilation 2, int8 data (ARM)
    (6, 6, 6, 3, 1, (1, 1, 1, 1), 1, 2, "uint8", None),       # int32 accumulator out
    # the last stages of a network run at 32x32 (shufflenet, mnasnet): 1x1 and 2x2 maps
    (24, 1, 1, 3, 1, (1, 1, 1, 1), 1, 3, "uint8", "relu6"),   # a 1-wide row: no vector
    (24, 1, 1, 3, 2, (1, 1, 1, 1), 1, 3, "uint8", "relu6"),   # a phase with no interior
    (24, 2, 2, 3, 2, (1, 1, 1, 1), 1, 3, "uint8", "clip"),
]


@pytest.mark.parametrize("c,h,w,k,stride,padding,dilation,zp,dtype,epilogue", CASES)
def test_depthwise_kernel_is_bit_exact(c, h, w, k, stride, padding, dilation, zp, dtype, epilogue):
    rng = np.random.default_rng(c)
    lo, hi = (0, 255) if dtype == "uint8" else (-128, 127)
    x = rng.integers(lo, hi + 1, (1, c, h, w)).astype(dtype)
    wq = rng.integers(-127, 128, (c, 1, k, k)).astype("int8")
    bias = rng.integers(-3000, 3000, c)
    scale = (rng.random(c) * 0.004 + 0.001).astype("float32")
    rq = {None: None,
          "relu6": Requant(bias, scale, dtype, zp, float(zp), float(min(hi, zp + 120))),
          "clip": Requant(bias, scale, dtype, zp, float(max(lo, zp - 60)), float(min(hi, zp + 90))),
          "float": Requant(bias, scale, "float32", act=("clip", 0.0, 6.0))}[epilogue]
    got, ref = _run(_module(x, wq, stride, padding, dilation, zp, rq), x)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    np.testing.assert_array_equal(got, ref)
    if rq is not None and rq.quantized:  # the epilogue clipped somewhere, not everywhere
        assert ((got == rq.hi) | (got == rq.lo)).any()
        assert ((got > rq.lo) & (got < rq.hi)).mean() > 0.2


def test_pad_split_puts_each_column_phase_apart():
    """y[n, c, r, p, k] = padded[n, c, r, k * s + p], the pad with the zero point."""
    x = np.arange(2 * 3 * 5 * 8).reshape(2, 3, 5, 8).astype("uint8")
    func = pad_split_func(x.shape, "uint8", (1, 2, 0, 1), 2, 9)
    lib = tvm.compile(func, target=HOST)
    out = tvm.runtime.tensor(np.zeros((2, 3, 6, 2, 6), "uint8"))
    lib(tvm.runtime.tensor(x), out)
    padded = np.pad(x, [(0, 0), (0, 0), (1, 0), (2, 1)], constant_values=9)  # 6 x 11
    padded = np.pad(padded, [(0, 0), (0, 0), (0, 0), (0, 1)], constant_values=9)  # to 12
    np.testing.assert_array_equal(out.numpy(), padded.reshape(2, 3, 6, 6, 2).transpose(0, 1, 2, 4, 3))


def test_is_depthwise():
    w = np.zeros((8, 1, 3, 3), "int8")
    assert is_depthwise(w, 8) and is_depthwise(w, 8, (2, 2))
    assert not is_depthwise(w, 1) and not is_depthwise(w, 8, (3, 3))
    assert not is_depthwise(np.zeros((16, 1, 3, 3), "int8"), 8)  # channel multiplier 2


class InvertedResidual(nn.Module):
    """mobilenet_v2's block in small: 1x1 expand, 3x3 depthwise + ReLU6, 1x1 project."""

    def __init__(self, stride=1):
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(8, 24, 1), nn.BatchNorm2d(24), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(24, 24, 3, stride, 1, groups=24), nn.BatchNorm2d(24),
                                nn.ReLU6())
        self.project = nn.Conv2d(24, 12, 1)

    def forward(self, x):
        return self.project(self.dw(self.expand(x)))


SCHEME = QuantScheme("uint8", True)  # the AVX2 kernel's (7-bit weights): runs on any x86


@pytest.fixture(scope="module", params=[1, 2], ids=["stride1", "stride2"])
def block(request):
    """(imported block, data, calibrated plan): calibrated once per stride."""
    torch.manual_seed(0)
    model = InvertedResidual(request.param).eval()
    for m in model.modules():  # non-trivial BN statistics, so folding matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    rm = import_model(model, (torch.randn(1, 8, 10, 10),))
    data = np.random.default_rng(0).standard_normal((24, 8, 10, 10)).astype("float32")
    _, plan = quantize_model(rm, SCHEME, data[:16])
    return rm, data, plan, request.param


def _quantized(block, depthwise, pad_out=True, blocked=False):
    """NCHW between layers unless ``blocked`` (tests/test_int8_blocked.py covers that:
    there the depthwise conv reads and writes blocks instead)."""
    rm, _, plan, _ = block
    return quantize_model(rm, SCHEME, plan=plan, kernel=KERNELS["avx2"],
                          depthwise=depthwise == "kernel", pad_out=pad_out, blocked=blocked)[0]


def _ops(mod):
    """The main function's ops in order: Relax op names, or the called kernels' names."""
    out = []
    for b in mod["main"].body.blocks[0].bindings:
        v = b.value
        if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op):
            if v.op.name == "relax.call_tir":
                out.append(v.args[0].name_hint)
            else:
                out.append(v.op.name)
    return out


def test_quantize_pass_emits_the_depthwise_kernel(block):
    """Before (plain): the depthwise conv is Relax's grouped int8 conv2d followed by the
    requantize ops; after: the pad (a padded plane for stride 1, split by column phase for
    stride 2) + the depthwise kernel with the requantize inside.
    Everything around it (the packed 1x1 convs) is the same."""
    stride = block[3]
    before, after = _quantized(block, "plain"), _quantized(block, "kernel")
    ops_before, ops_after = _ops(before), _ops(after)
    dw_before = [i for i, op in enumerate(ops_before) if op == "relax.nn.conv2d"]
    assert len(dw_before) == 1
    conv = before["main"].body.blocks[0].bindings[dw_before[0]].value
    assert int(conv.attrs.groups) == 24 and str(conv.ty.dtype) == "int32"
    i = dw_before[0]
    # the plain path: conv2d, + bias, astype, * scale, clip, round, astype
    assert ops_before[i:i + 7] == ["relax.nn.conv2d", "relax.add", "relax.astype", "relax.multiply",
                                   "relax.clip", "relax.round", "relax.astype"]
    assert ops_after[:i] == ops_before[:i]
    pad = "pad_plane_1x24x10x10" if stride == 1 else "pad_split_1x24x10x10_s2"
    assert ops_after[i:i + 2] == [pad, f"dwconv2d_int8_1x24x10x10_3x3s{stride}_requant"]
    assert ops_after[i + 2:] == ops_before[i + 7:]
    assert "relax.nn.conv2d" not in ops_after
    # the 12-output project conv (not a multiple of the AVX2 kernel's 8) runs packed with
    # its outputs padded to 16
    out = 10 // stride
    assert f"conv2d_int8_avx2_1x24x{out}x{out}_12x1_requant" in ops_after
    kernel = after[after.get_global_var(f"dwconv2d_int8_1x24x10x10_3x3s{stride}_requant")]
    assert [str(p.dtype) for p in kernel.params] == ["uint8", "int8", "int32", "float32", "uint8"]


def test_quantized_block_is_bit_exact_against_the_plain_path(block):
    """A whole inverted-residual block, built: the kernel path's outputs equal the plain
    path's (depthwise and output channels plain) bit for bit: same plan, same int32
    accumulators, same requantize."""
    rm, data, _, stride = block
    kernel_mod = _quantized(block, "kernel")
    plain_mod = _quantized(block, "plain", pad_out=False)
    assert "relax.nn.conv2d" in _ops(plain_mod)
    assert f"dwconv2d_int8_1x24x10x10_3x3s{stride}_requant" in _ops(kernel_mod)
    got = run_outputs(kernel_mod, data[16:], rm.inputs[0])
    np.testing.assert_array_equal(got, run_outputs(plain_mod, data[16:], rm.inputs[0]))
    assert np.abs(got).max() > 0
