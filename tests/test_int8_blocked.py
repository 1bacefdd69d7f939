"""INT8 between packed layers in the kernel's blocked layout (``quantize_int8``,
``PipelineConfig.int8_blocked``): Before (NCHW between all layers: every packed conv
unpacks its output to NCHW, the next one packs it again; a residual add dequantizes,
adds in float and quantizes again) / Expected (a producer whose consumers all read blocks
writes them, no pack or unpack between; the residual add in the conv's epilogue), and the
two paths against each other on a network with every kind of edge: conv -> depthwise,
depthwise -> conv, a residual add, a KxK conv reading blocks (padded in blocks), and a
consumer whose input channels the block would pad too much (NCHW).

The fused residual rounds once (``round(conv * s1 + r * s2)``) where the unfused path
rounds the float sum's quantization (``round((conv' + r') / s)``): the two may differ by
one step where a value falls on a rounding boundary. On these inputs they agree bit for
bit, so the comparison is exact.

The AVX2 kernel (block 8, 7-bit weights) runs on any x86 CPU; the VNNI kernel (block 16)
runs where the CPU has VNNI and is skipped elsewhere.
"""
import numpy as np
import pytest
import torch
from torch import nn

from conftest import seeded
from edgec.compiler.frontend import import_model
from edgec.compiler.tvm_compat import relax, tvm
from edgec.passes.calibrate import run_outputs
from edgec.passes.int8_kernels import KERNELS
from edgec.passes.int8_phase import quantize_model
from edgec.passes.quant_scheme import QuantScheme
from edgec.targets import cpu_flags


class Net(nn.Module):
    """A stem, an inverted residual block with its residual add, a strided one without,
    a 3x3 conv, a conv to 4 channels and a 4-channel conv (the block would double its
    input), a classifier."""

    def __init__(self):
        super().__init__()

        def cbr(i, o, k=1, s=1, g=1, act=True):
            layers = [nn.Conv2d(i, o, k, s, k // 2, groups=g), nn.BatchNorm2d(o)]
            return nn.Sequential(*layers, nn.ReLU6()) if act else nn.Sequential(*layers)

        self.stem = cbr(3, 24, 3, 2)
        self.block1 = nn.Sequential(cbr(24, 72), cbr(72, 72, 3, 1, 72), cbr(72, 24, act=False))
        self.block2 = nn.Sequential(cbr(24, 72), cbr(72, 72, 3, 2, 72), cbr(72, 40, act=False))
        self.conv3 = cbr(40, 32, 3)
        self.narrow = cbr(32, 4)
        self.wide = cbr(4, 16, 3)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.block1(x)
        x = self.wide(self.narrow(self.conv3(self.block2(x))))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = seeded(Net())
    rm = import_model(model, (torch.randn(1, 3, 28, 28),))
    data = np.random.default_rng(0).standard_normal((20, 3, 28, 28)).astype("float32")
    return rm, data


def _quantized(net, kernel, scheme, blocked):
    rm, data = net
    return quantize_model(rm, scheme, data[:16], kernel=KERNELS[kernel], blocked=blocked)[0]


def _kernels(mod):
    """The called kernels of ``main`` in order (Relax ops left out)."""
    out = []
    for b in mod["main"].body.blocks[0].bindings:
        v = b.value
        if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op) and v.op.name == "relax.call_tir":
            out.append(v.args[0].name_hint)
    return out


AVX2 = QuantScheme("uint8", True)


def _match(names, expected) -> bool:
    """Kernel names as expected (a second kernel of one name gets a number appended:
    pack_nchw4c_1x24x14x141)."""
    return len(names) == len(expected) and all(
        n == e or n.startswith(e) and n[len(e):].isdigit() for n, e in zip(names, expected))


def test_before_every_packed_conv_unpacks_and_the_next_packs(net):
    names = _kernels(_quantized(net, "avx2", AVX2, blocked=False))
    convs = [n for n in names if n.startswith("conv2d_int8")]
    assert len(convs) == 8 and not any("blocked" in n or "nchw8c" in n for n in names)
    # every packed conv's input is packed from NCHW right before it
    for i, n in enumerate(names):
        if n.startswith("conv2d_int8_avx2"):
            assert names[i - 1].startswith("pack_nchw4c"), (names[i - 1], n)


def test_expected_blocks_between_packed_layers(net):
    names = _kernels(_quantized(net, "avx2", AVX2, blocked=True))
    expected = [
        "pack_nchw4c_1x4x30x30",  # the image, packed (3 -> 4 channels) and padded
        # the stem: read by the expand conv and by the residual add fused into the project
        # conv, both of which take blocks
        "conv2d_int8_avx2_1x4x30x30_24x3_requant_blocked",
        "conv2d_int8_avx2_nchw8c_1x24x14x14_72x1_requant_blocked",  # -> depthwise: blocks
        "dwconv2d_int8_nchw8c_1x72x14x14_3x3s1_requant",  # (pads in blocks) -> 1x1: blocks
        # project + the residual add (+ the stem's output, in blocks) in one epilogue
        "conv2d_int8_avx2_nchw8c_1x72x14x14_24x1_requant_blocked_residual",
        "conv2d_int8_avx2_nchw8c_1x24x14x14_72x1_requant_blocked",
        "dwconv2d_int8_nchw8c_1x72x14x14_3x3s2_requant",
        "conv2d_int8_avx2_nchw8c_1x72x7x7_40x1_requant_blocked",  # -> the 3x3 conv: blocks
        "pad_nchw8c_1x40x9x9",  # padded with the zero point, in blocks
        "conv2d_int8_avx2_nchw8c_1x40x9x9_32x3_requant_blocked",
        # 32 -> 4: the next conv would read 4 channels padded to 8: NCHW instead
        "conv2d_int8_avx2_nchw8c_1x32x7x7_4x1_requant",
        "pack_nchw4c_1x4x9x9",
        "conv2d_int8_avx2_1x4x9x9_16x3_requant",
    ]
    assert _match(names, expected), names


def _check_bit_exact(net, kernel, scheme):
    rm, data = net
    blocked = _quantized(net, kernel, scheme, True)
    nchw = _quantized(net, kernel, scheme, False)
    got = run_outputs(blocked, data[16:], rm.inputs[0])
    want = run_outputs(nchw, data[16:], rm.inputs[0])
    np.testing.assert_array_equal(got, want)
    assert np.abs(got).max() > 0
    return blocked


def test_blocked_is_bit_exact_against_nchw_avx2(net):
    from edgec.passes.quantize_int8 import BLOCKED_ATTR

    mod = _check_bit_exact(net, "avx2", AVX2)
    assert int(mod.attrs[BLOCKED_ATTR]) == 8  # all convs but the 32 -> 4 and the 4-channel one


@pytest.mark.skipif("avx512_vnni" not in cpu_flags(), reason="this CPU has no AVX-512 VNNI")
def test_blocked_is_bit_exact_against_nchw_vnni(net):
    mod = _check_bit_exact(net, "vnni", QuantScheme("uint8", False))
    names = _kernels(mod)
    assert "dwconv2d_int8_nchw16c_1x72x14x14_3x3s1_requant" in names
    # 72 channels in 5 blocks of 16, the residual fused
    assert "conv2d_int8_vnni_nchw16c_1x80x14x14_24x1_requant_blocked_residual" in names


class Basic(nn.Module):
    """resnet's basic block: conv-bn-relu, conv-bn, + the input, relu."""

    def __init__(self, c):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))) + x)


class Down(nn.Module):
    """resnet's downsampling block: the residual is a strided 1x1 conv of the input."""

    def __init__(self, i, o):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(i, o, 3, 2, 1, bias=False), nn.BatchNorm2d(o)
        self.c2, self.b2 = nn.Conv2d(o, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o)
        self.ds = nn.Sequential(nn.Conv2d(i, o, 1, 2, bias=False), nn.BatchNorm2d(o))

    def forward(self, x):
        return torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))) + self.ds(x))


class ResNetLike(nn.Module):
    """A 7x7 stem and a max pool, a basic block, a downsampling one, a basic one, a
    mean-pool head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 7, 2, 3, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.blocks = nn.Sequential(Basic(16), Down(16, 32), Basic(32))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def test_resnet_blocks_pool_and_add_in_blocks(net):
    """The max pool runs on blocks; the first block's residual add and ReLU fuse into its
    second conv, the stem's pooled output read in blocks; the downsampling block's add
    fuses into its 1x1 conv, the second 3x3 conv's output in int8 at its own calibrated
    range (``QuantPlan.out_ranges``); the last block's output, pooled by the head in FP32,
    is unpacked once, so its add stays as it was (float). Against the NCHW path: a fused
    add rounds once (see the module doc): SQNR >= 40 dB."""
    from edgec.passes.sensitivity import sqnr_db

    torch.manual_seed(0)
    model = seeded(ResNetLike())
    rm = import_model(model, (torch.randn(1, 3, 32, 32),))
    data = np.random.default_rng(0).standard_normal((24, 3, 32, 32)).astype("float32")
    _, plan = quantize_model(rm, AVX2, data[:16])
    assert sorted(plan.out_ranges) == ["blocks.1.c2", "blocks.1.ds.0"]
    blocked, nchw = (quantize_model(rm, AVX2, plan=plan, kernel=KERNELS["avx2"], blocked=b)[0]
                     for b in (True, False))
    names = _kernels(blocked)
    assert _match(names, [
        "pack_nchw4c_1x4x38x38", "conv2d_int8_avx2_1x4x38x38_16x7_requant_blocked",
        "pad_nchw8c_1x16x10x10", "conv2d_int8_avx2_nchw8c_1x16x10x10_16x3_requant_blocked",
        "pad_nchw8c_1x16x10x10",
        "conv2d_int8_avx2_nchw8c_1x16x10x10_16x3_requant_blocked_residual",
        "pad_nchw8c_1x16x10x10", "conv2d_int8_avx2_nchw8c_1x16x10x10_32x3_requant_blocked",
        "pad_nchw8c_1x32x6x6", "conv2d_int8_avx2_nchw8c_1x32x6x6_32x3_requant_blocked",
        "conv2d_int8_avx2_nchw8c_1x16x8x8_32x1_requant_blocked_residual",  # the downsample
        "pad_nchw8c_1x32x6x6", "conv2d_int8_avx2_nchw8c_1x32x6x6_32x3_requant_blocked",
        "pad_nchw8c_1x32x6x6", "conv2d_int8_avx2_nchw8c_1x32x6x6_32x3_requant",
        "unpack_nchw8c_1x32x4x4"]), names
    pools = [b.value for b in blocked["main"].body.blocks[0].bindings
             if isinstance(b.value, relax.Call) and getattr(b.value.op, "name", "") == "relax.nn.max_pool2d"]
    assert len(pools) == 1 and str(pools[0].attrs.layout) == "NCHW8c"
    xs = data[16:]
    got, want = (run_outputs(m, xs, rm.inputs[0])[0] for m in (blocked, nchw))
    assert sqnr_db(got, want) >= 40.0
    with torch.no_grad():
        ref = model(torch.from_numpy(xs)).numpy()
    assert sqnr_db(got, ref) >= sqnr_db(want, ref) - 1.0  # as close to FP32 as before


def test_output_ranges_round_trip_in_the_scale_table():
    """``QuantPlan.out_ranges`` is written as "outputs" and read back; tables without it
    (older ones, QAT's) load with none; an unknown layer in it is refused."""
    from edgec.passes.quant_scheme import QuantError, QuantPlan

    plan = QuantPlan(AVX2, {"a": (0.0, 1.0)}, out_ranges={"b": (-3.0, 4.0)})
    data = plan.to_json()
    assert data["outputs"] == {"b": {"min": -3.0, "max": 4.0}}
    back = QuantPlan.from_json(data)
    assert back.out_ranges == {"b": (-3.0, 4.0)} and back.ranges == plan.ranges
    del data["outputs"]
    assert QuantPlan.from_json(data).out_ranges == {}
    with pytest.raises(QuantError, match="unknown layer"):
        plan.check_layers(["a"])  # out_ranges names "b": not a layer of this model
    plan.with_keep_fp32(["b"]).check_layers(["a", "b"])


class DepthwiseResidual(nn.Module):
    """A depthwise conv with no activation straight into a residual add: the add cannot
    fuse into the depthwise kernel (its epilogue takes no residual), so it stays an add."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.BatchNorm2d(16))
        self.pw = nn.Sequential(nn.Conv2d(16, 16, 1), nn.ReLU())

    def forward(self, x):
        x = self.stem(x)
        return self.pw(x + self.dw(x)).mean((2, 3))


def test_a_depthwise_conv_before_an_add_keeps_the_add():
    from edgec.passes.sensitivity import sqnr_db

    torch.manual_seed(0)
    model = seeded(DepthwiseResidual())
    rm = import_model(model, (torch.randn(1, 3, 12, 12),))
    data = np.random.default_rng(0).standard_normal((20, 3, 12, 12)).astype("float32")
    _, plan = quantize_model(rm, AVX2, data[:16])
    blocked, nchw = (quantize_model(rm, AVX2, plan=plan, kernel=KERNELS["avx2"], blocked=b)[0]
                     for b in (True, False))
    assert not any("residual" in n for n in _kernels(blocked))
    got, want = (run_outputs(m, data[16:], rm.inputs[0]) for m in (blocked, nchw))
    assert sqnr_db(got, want) >= 40.0
