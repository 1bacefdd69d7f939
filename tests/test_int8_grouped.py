"""INT8 grouped convs on the packed dot-product kernels (``int8_kernels.group_span``).

TVM's plain int8 group conv is an unscheduled loop nest (regnet_x_400mf's INT8 build took
4.3x its FP32 time). A grouped conv whose groups have a multiple of 4 input channels and
whose output channels per group are a multiple of the kernel's block B (or divide it) now
runs packed: each output block reads only its group's input channels (a group of whole
blocks) or those of the few groups it covers (groups narrower than a block), through a
block-diagonal weight. Numeric: equal to the plain int8 convs bit for bit, on this CPU's
kernel; structural: the block-diagonal weight and which convs qualify.
"""
import numpy as np
import pytest
import torch

from edgec.compiler import PipelineConfig, compile
from edgec.compiler.deploy.runtime import load
from edgec.passes.int8_kernels import KERNELS, group_span, group_weight


def test_group_span_and_weight():
    vnni, sdot = KERNELS["vnni"], KERNELS["sdot"]
    w16 = np.ones((64, 16, 3, 3), "int8")  # 4 groups of 16 -> 16
    assert group_span(w16, vnni, 4) == 16 and group_span(w16, sdot, 4) == 16
    w8 = np.ones((64, 8, 3, 3), "int8")  # 8 groups of 8: a VNNI block covers two
    assert group_span(w8, vnni, 8) == 16 and group_span(w8, sdot, 8) == 8
    assert group_span(np.ones((64, 2, 3, 3), "int8"), vnni, 32) is None  # 2 inputs a group
    assert group_span(np.ones((64, 1, 3, 3), "int8"), vnni, 64) is None  # depthwise
    assert group_span(np.ones((48, 4, 1, 1), "int8"), vnni, 12) == 16  # 4 groups a block: 4x
    assert group_span(np.ones((32, 4, 1, 1), "int8"), vnni, 16) is None  # 8 groups a block
    # 13 groups of 8 (regnet_y's 104): an empty group fills the last VNNI block
    assert group_span(np.ones((104, 8, 3, 3), "int8"), vnni, 13) == 16
    assert group_weight(np.ones((104, 8, 1, 1), "int8"), 13, 16).shape == (112, 16, 1, 1)
    assert group_span(np.ones((24, 16, 1, 1), "int8"), vnni, 3) is None  # 8 out, 16 in a group
    # block-diagonal: output channel o of group g reads span channels, its own at
    # (g - first group of its block) * 8
    w = np.arange(64 * 8, dtype=np.int64).reshape(64, 8, 1, 1).astype("int8")
    bd = group_weight(w, 8, 16)
    assert bd.shape == (64, 16, 1, 1)
    assert (bd[3, :8] == w[3]).all() and not bd[3, 8:].any()  # group 0: first half
    assert (bd[12, 8:] == w[12]).all() and not bd[12, :8].any()  # group 1: second half
    assert (bd[20, :8] == w[20]).all() and not bd[20, 8:].any()  # group 2, next block


@pytest.mark.parametrize("groups,width", [(4, 16), (8, 8), (3, 8), (13, 8)])
def test_grouped_conv_packed_equals_plain_int8(tmp_path, groups, width):
    torch.manual_seed(0)
    c = groups * width
    model = torch.nn.Sequential(
        torch.nn.Conv2d(16, c, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(c, c, 3, padding=1, groups=groups), torch.nn.ReLU(),
        torch.nn.Conv2d(c, 16, 1)).eval()
    x = torch.randn(1, 16, 10, 10)
    calib = np.random.default_rng(1).standard_normal((8, 16, 10, 10)).astype("float32")
    outs = {}
    for mode in ("auto", "nchw"):
        so = str(tmp_path / f"{mode}.so")
        manifest = compile(model, (x,), output=so, calib_data=calib, config=PipelineConfig(
            target="host", int8=True, calib_samples=8, int8_kernel=mode))
        outs[mode] = load(so)(x.numpy())[0]
        record = next(p for p in manifest["passes"] if p["name"] == "quantize_int8")
        if mode == "auto" and record["kernel"].startswith("packed"):
            kernel = KERNELS[record["kernel"].split("-")[1]]
            w = np.ones((c, width, 3, 3), "int8")
            with open(so, "rb") as f:
                grouped = f"_g{groups}_".encode() in f.read()
            assert grouped == (group_span(w, kernel, groups) is not None)
    np.testing.assert_array_equal(outs["auto"], outs["nchw"])
    assert np.abs(outs["auto"]).max() > 0
