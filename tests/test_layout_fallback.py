"""Convs the blocked layout cannot express run in NCHW alone; channel splits, slices and
mixed-block concats run plain (passes/layout_fallback.py, passes/conv_layout.py)."""
import numpy as np
import pytest
import torch
from torch import nn

from conftest import seeded, torch_out
from edgec.compiler import PipelineConfig, compile, load
from edgec.compiler.frontend import import_model
from edgec.passes.graph import bind
from edgec.compiler.tvm_compat import relax
from edgec.passes import conv_layout, layout_fallback


class ConvTranspose(nn.Module):
    """A blocked conv feeding a transposed conv (an FPN's upsampling)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(16, 32, 3, padding=1)
        self.up = nn.ConvTranspose2d(32, 16, 2, stride=2)

    def forward(self, x):
        return self.up(torch.relu(self.conv(x)))


class MixedKernels(nn.Module):
    """Split -> depthwise convs of 3x3 and 5x5 -> concat (MixConv)."""

    def __init__(self):
        super().__init__()
        self.expand = nn.Conv2d(16, 48, 1)
        self.k3 = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.k5 = nn.Conv2d(32, 32, 5, padding=2, groups=32)
        self.project = nn.Conv2d(48, 16, 1)

    def forward(self, x):
        a, b = torch.split(self.expand(x), [16, 32], 1)
        return self.project(torch.cat([self.k3(a), self.k5(b)], 1))


class Ghost(nn.Module):
    """A ghost module: a 1x1 conv's 8 channels and their cheap depthwise copy, concat
    into 16, sliced to 12, then a conv."""

    def __init__(self):
        super().__init__()
        self.primary = nn.Conv2d(16, 8, 1)
        self.cheap = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.after = nn.Conv2d(12, 16, 1)

    def forward(self, x):
        y = self.primary(x)
        return self.after(torch.cat([y, self.cheap(y)], 1)[:, :12])


MODELS = {"conv_transpose": ConvTranspose, "mixed_kernels": MixedKernels, "ghost": Ghost}


def _bound(model, x):
    return relax.transform.FoldConstant()(bind(import_model(model, (x,))))


def _ops(mod) -> list:
    found = []
    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, lambda e: found.append(e.op.name) if isinstance(
                e, relax.Call) and hasattr(e.op, "name") else None)
    return found


@pytest.mark.parametrize("name", sorted(MODELS))
def test_blocked_layout_compiles_and_matches_torch(name, tmp_path):
    torch.manual_seed(0)
    model, x = seeded(MODELS[name]()), torch.randn(1, 16, 8, 8)
    out = str(tmp_path / f"{name}.so")
    manifest = compile(model, (x,), output=out, config=PipelineConfig(
        target="host", tuning_logs=None))
    record = next(p for p in manifest["passes"] if p["name"] == "conv_layout")
    assert record["layout"].startswith("NCHW") and record["layout"].endswith("c")
    assert "nchw_convs" not in record  # every conv blocked: no fallback needed
    ref = torch_out(model, x)
    np.testing.assert_allclose(load(out)(x.numpy())[0], ref, rtol=1e-4,
                               atol=1e-5 * np.abs(ref).max())


def test_channel_ops_run_plain_before_convert_layout():
    """Structure: the split and the mixed-block concat become call_tir before
    ConvertLayout, every conv is blocked, and no relax.split is left."""
    torch.manual_seed(0)
    mod = _bound(seeded(MixedKernels()), torch.randn(1, 16, 8, 8))
    assert "relax.split" in _ops(mod)
    blocks = []
    out = conv_layout.convert_conv_layout(mod, 16, winograd=False, blocks=blocks)
    ops = _ops(out)
    assert "relax.split" not in ops and "relax.nn.conv2d" not in ops
    assert len(blocks) == 4  # all four convs legalized blocked
    prims = [gv.name_hint for gv in out.functions if not isinstance(out[gv], relax.Function)]
    assert any(n.startswith("split") for n in prims)


def test_fallback_finds_the_conv_tvm_cannot_block(monkeypatch, tmp_path):
    """Without the conv2d_transpose rule TVM fails inside ConvertLayout; the fallback
    keeps exactly the conv feeding it in NCHW, blocks the rest, and computes the same."""
    monkeypatch.setattr(conv_layout, "_PLAIN_ONLY", {})
    torch.manual_seed(0)
    model, x = seeded(ConvTranspose()), torch.randn(1, 16, 8, 8)
    mod = _bound(model, x)
    with pytest.raises(Exception, match="Layouts must have the same size"):
        conv_layout.convert_conv_layout(mod, 16)
    out, record = layout_fallback.blocked_layout(mod, 16)
    assert record["layout"] == "NCHW16c" and record["nchw_convs"] == 1
    assert "Layouts must have the same size" in record["fallback_reason"]
    so = str(tmp_path / "convt.so")
    manifest = compile(model, (x,), output=so, config=PipelineConfig(
        target="host", tuning_logs=None))
    assert next(p for p in manifest["passes"] if p["name"] == "conv_layout")["nchw_convs"] == 1
    np.testing.assert_allclose(load(so)(x.numpy())[0], torch_out(model, x), rtol=1e-4, atol=1e-5)


def test_fallback_to_plain_layout_when_no_conv_is_to_blame(monkeypatch):
    def fails(*args, **kwargs):
        raise ValueError("not a conv's doing")

    monkeypatch.setattr(layout_fallback, "convert_conv_layout", fails)
    mod = _bound(seeded(Ghost()), torch.randn(1, 16, 8, 8))
    out, record = layout_fallback.blocked_layout(mod, 16)
    assert out is mod
    assert record == {"name": "conv_layout", "layout": "NCHW", "nchw_convs": 3,
                      "fallback_reason": "not a conv's doing"}
