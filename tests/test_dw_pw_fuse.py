"""A depthwise conv and the 1x1 conv after it run as one kernel, a row at a time
(``edgec.passes.dw_pw_fuse``, ``nchwc_schedule.schedule_dw_pw``)."""
import re

import numpy as np
import pytest
import torch
from torch import nn

from conftest import compile_nchwc, seeded
from edgec.compiler import load
from edgec.compiler.config import PipelineConfig
from edgec.compiler.frontend import import_model
from edgec.compiler.pipeline import run
from edgec.compiler.deploy.runtime import flatten_outputs
from edgec.compiler.tvm_compat import relax, tvm


class Inverted(nn.Module):
    """mobilenet_v2's inverted residual: 1x1 expand, depthwise 3x3 (+ BN, ReLU6), 1x1
    project (+ BN), residual add; ``tap`` also returns the depthwise output (two users).
    Without ``bias`` (torchvision's) the batch norms fold into the convs; with it they
    stay, as subtract, divide, multiply and add between the convs."""

    def __init__(self, channels=16, stride=1, tap=False, bias=False):
        super().__init__()
        mid = 4 * channels
        self.expand = nn.Sequential(nn.Conv2d(channels, mid, 1, bias=bias), nn.BatchNorm2d(mid),
                                    nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=bias),
                                nn.BatchNorm2d(mid), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(mid, channels, 1, bias=bias),
                                     nn.BatchNorm2d(channels))
        self.residual, self.tap = stride == 1, tap

    def forward(self, x):
        d = self.dw(self.expand(x))
        y = self.project(d)
        y = x + y if self.residual else y
        return (y, d.sum()) if self.tap else y


def _lowered(model, x, target="x86-avx2"):
    config = PipelineConfig(target=target, tuning_logs=None, conv_layout="NCHWc")
    res = run(import_model(model, (x,)), config, lower_only=True)
    return res, next(p for p in res.passes if p["name"] == "conv_layout")


def _blocks(func) -> list:
    return re.findall(r'T\.sblock\("(\w+)"\)', func.script())


def test_pair_becomes_one_kernel_with_the_project_epilogue():
    """Structure: the depthwise and project convs are one PrimFunc, which also holds the
    depthwise bias and ReLU6 and, fused by FuseOps, the project's bias and residual add;
    no depthwise kernel is left on its own."""
    model, x = seeded(Inverted()), torch.randn(1, 16, 16, 16)
    res, record = _lowered(model, x)
    assert record["dw_pw_fused"] == 1
    funcs = {gv.name_hint: f for gv, f in res.lowered.functions.items()
             if isinstance(f, tvm.tirx.PrimFunc)}
    fused = [n for n, f in funcs.items() if "dwpw_conv2d_nchwc" in _blocks(f)]
    assert len(fused) == 1
    blocks = _blocks(funcs[fused[0]])
    assert {"dwpw_depthwise", "dwpw_add", "dwpw_maximum", "dwpw_minimum"} <= set(blocks)
    assert sum(b.startswith("T_add") for b in blocks) == 2  # project bias, residual add
    assert not [n for n, f in funcs.items() if "depthwise_conv2d_nchwc" in _blocks(f)]


@pytest.mark.parametrize("model, shape", [
    (Inverted(tap=True), (1, 16, 16, 16)),  # the depthwise output has two users
    (Inverted(), (1, 16, 8, 8)),  # 8 rows: fewer than MIN_ROWS
])
def test_pairs_left_apart(model, shape):
    _, record = _lowered(seeded(model), torch.randn(*shape))
    assert record["dw_pw_fused"] == 0


@pytest.mark.parametrize("stride, bias", [(1, False), (2, False), (1, True)])
def test_fused_pair_matches_torch(tmp_path, stride, bias):
    """Numeric, on this machine (heuristic tiles): stride 1 with a residual add, stride 2
    without (mobilenet_v2's two block kinds), and a block whose batch norms do not fold
    (the depthwise output's chain holds its five ops)."""
    model, x = seeded(Inverted(stride=stride, bias=bias)), torch.randn(1, 16, 32, 32)
    with torch.no_grad():
        ref = model(x).numpy()
    out = str(tmp_path / "m.so")
    _, record = compile_nchwc(model, x, out, "host")
    assert record["dw_pw_fused"] == 1
    np.testing.assert_allclose(load(out)(x.numpy())[0], ref, rtol=1e-4, atol=1e-5)


def test_both_design_spaces_match_torch():
    """The tuning rule gives two spaces (the depthwise input padded per row, or the whole
    map first), each sampling both convs' tiles; both loop orders equal torch."""
    from tvm import s_tir

    from edgec.passes.nchwc_schedule import (conv_shape, find_conv_block, schedule_any,
                                             tile_candidates, tuning_rule)
    from edgec.targets import get_target

    model, x = seeded(Inverted()), torch.randn(1, 16, 16, 16)
    with torch.no_grad():
        ref = model(x).numpy()
    res, _ = _lowered(model, x)
    gv = next(g for g, f in res.lowered.functions.items()
              if isinstance(f, tvm.tirx.PrimFunc) and "dwpw_conv2d_nchwc" in _blocks(f))
    target = get_target("x86-avx2").tvm_target()
    sch = s_tir.Schedule(res.lowered[gv])
    spaces = tuning_rule(sch, find_conv_block(sch))
    samples = [[i for i in space.trace.insts if i.kind.name == "SampleCategorical"]
               for space in spaces]  # the 1x1 tile's pixels and blocks, the depthwise pixels
    assert len(spaces) == 2 and [len(x) for x in samples] == [3, 3]
    for whole_map in (False, True):
        sch = s_tir.Schedule(res.lowered[gv])
        block = find_conv_block(sch)
        schedule_any(sch, block, *tile_candidates(*conv_shape(sch, block))[-1], second=whole_map)
        pad_outer = sch.get(sch.get_loops(sch.get_sblock("data_pad"))[0])
        assert pad_outer.same_as(sch.get(sch.get_loops(block)[0])) != whole_map
        mod = res.lowered.clone()
        mod[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
        with target:
            vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
        out = flatten_outputs(vm["main"](tvm.runtime.tensor(x.numpy())))[0]
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_onnx_mobilenet_block_fuses_and_matches_torch(tmp_path):
    """An exported ONNX block (ReLU6 as Clip): TVM's converter emitted Clip as opaque
    call_tirs, which blocked ConvertLayout and this fusion; edgec's frontend makes them
    Relax ops (``tvm_compat._onnx_clip_as_ops``), so the pair fuses, and it equals torch."""
    from edgec.compiler.frontend import import_model as load_model
    from edgec.compiler.peers import export_onnx

    model, x = seeded(Inverted()), torch.randn(1, 16, 16, 16)
    path = export_onnx(model, [x.numpy()], str(tmp_path / "block.onnx"))
    script = load_model(path).mod.script()
    assert "R.maximum(" in script and "R.minimum(" in script and "call_tir" not in script
    with torch.no_grad():
        ref = model(x).numpy()
    _, record = compile_nchwc(path, None, str(tmp_path / "onnx.so"), "host")
    assert record["dw_pw_fused"] == 1
    np.testing.assert_allclose(load(str(tmp_path / "onnx.so"))(x.numpy())[0], ref, rtol=1e-4,
                               atol=1e-5)
