"""The RGB stem writes blocked output: the layout transform after it moves up through its
bias, activation and pool into the conv (``edgec.passes.stem_layout``)."""
import numpy as np
import pytest
import torch
from torch import nn

from edgec.compiler import PipelineConfig, compile, load
from edgec.compiler.frontend import import_model
from edgec.compiler.tvm_compat import Constant, relax, tvm
from edgec.passes.stem_layout import sink_stem_transforms


class Stem(nn.Module):
    """resnet's stem and first conv: conv(3 -> 16, stride 2) + BN + ReLU + pool, then a
    blocked conv; ``square`` puts an op with two variable operands in the chain."""

    def __init__(self, pool=nn.MaxPool2d(3, stride=2, padding=1), square=False, width=16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, stride=2, padding=3),
                                  nn.BatchNorm2d(width), nn.ReLU(), pool)
        self.body = nn.Conv2d(width, width, 3, padding=1)
        self.square = square

    def forward(self, x):
        y = self.stem(x)
        return torch.relu(self.body(y * y if self.square else y))


def _model(**kwargs):
    torch.manual_seed(0)
    m = Stem(**kwargs)
    with torch.no_grad():
        m.stem[1].running_mean.uniform_(-0.5, 0.5)
        m.stem[1].running_var.uniform_(0.5, 2.0)
    return m.eval()


def _ops(mod):
    ops = []
    relax.analysis.post_order_visit(mod["main"].body, lambda e: ops.append(
        (e.op.name, e)) if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) else None)
    return ops


def _converted(model, x):
    """The bound, simplified model after ConvertLayout to NCHW8c (what the sink receives)."""
    from edgec.compiler.graph import bind
    from edgec.compiler.pipeline import _simplify

    mod = _simplify(bind(import_model(model, (x,))), fold_batchnorm=True)
    mod = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NCHW8c", "OIHW8o"]})(mod)
    return relax.transform.EliminateCommonSubexpr()(mod)


def test_transform_moves_into_the_stem_conv():
    """Structure: the activation's layout transform is gone; the stem conv writes NCHW8c
    and its bias, ReLU and pool take the blocked layout (the bias constant is blocked)."""
    x = torch.randn(1, 3, 32, 32)
    before = _converted(_model(), x)
    assert sum(name == "relax.layout_transform" and len(c.args[0].ty.shape) == 4
               and not isinstance(c.args[0], Constant) for name, c in _ops(before)) == 1
    after = _ops(sink_stem_transforms(before))
    into_blocked = [c for name, c in after if name == "relax.layout_transform"
                    and len(c.args[0].ty.shape) == 4 and not isinstance(c.args[0], Constant)]
    assert not into_blocked  # (the output still leaves the blocked layout at the end)
    stem = next(c for name, c in after
                if name == "relax.nn.conv2d" and c.attrs.data_layout == "NCHW")
    assert stem.attrs.out_layout == "NCHW8c"
    assert [int(s) for s in stem.ty.shape] == [1, 2, 16, 16, 8]
    pool = next(c for name, c in after if name == "relax.nn.max_pool2d")
    assert pool.attrs.layout == pool.attrs.out_layout == "NCHW8c"


def test_a_chain_that_does_not_reach_a_conv_is_left_alone():
    """y * y (two variable operands) stops the chain: the transform stays where it was."""
    x = torch.randn(1, 3, 32, 32)
    before = _converted(_model(square=True), x)
    after = sink_stem_transforms(before)
    tvm.ir.assert_structural_equal(after, relax.transform.DeadCodeElimination()(before))
    assert any(name == "relax.layout_transform" and len(c.args[0].ty.shape) == 4
               and not isinstance(c.args[0], Constant) for name, c in _ops(after))


@pytest.mark.parametrize("target, pool, width", [
    ("x86-avx2", "max", 16), ("x86-avx2", "avg", 16), ("x86-avx512", "max", 16),
    ("x86-avx512", "avg", 24)])
def test_blocked_stem_matches_torch(tmp_path, target, pool, width):
    """Numeric: the stem with blocked output, its folded batch norm, ReLU and a max or
    average pool (padded, so count_include_pad matters) equal torch; 24 channels on
    AVX-512 take the narrower block (the stem writes NCHW8c)."""
    from edgec.targets import cpu_flags

    if target == "x86-avx512" and "avx512f" not in cpu_flags():
        pytest.skip("this CPU has no AVX-512 to run the library on")
    layer = (nn.MaxPool2d(3, stride=2, padding=1) if pool == "max"
             else nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False))
    model, x = _model(pool=layer, width=width), torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = model(x).numpy()
    out = str(tmp_path / "m.so")
    manifest = compile(model, (x,), output=out, config=PipelineConfig(
        target=target, tuning_logs=None, conv_layout="NCHWc"))
    record = next(p for p in manifest["passes"] if p["name"] == "conv_layout")
    assert record["narrow_convs"] == (2 if width == 24 else 0)  # the stem and the body
    np.testing.assert_allclose(load(out)(x.numpy())[0], ref, rtol=1e-4, atol=1e-5)
