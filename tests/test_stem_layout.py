"""The RGB stem writes blocked output: the layout transform after it moves up through its
bias, activation and pool into the conv (``edgec.passes.stem_layout``)."""
import numpy as np
import pytest
import torch
from torch import nn

from conftest import compile_nchwc
from edgec.compiler import load
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
    from edgec.passes.graph import bind
    from edgec.passes.simplify import Simplify

    mod = Simplify(fold_batchnorm=True)(bind(import_model(model, (x,))))
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
    _, record = compile_nchwc(model, x, out, target, pad_channels=False)  # 24 stays 24
    # the stem takes the narrower block; the body's conv, the last (a head), is padded to
    # the lanes instead (conv_layout._narrow_head)
    assert record["narrow_convs"] == (1 if width == 24 else 0)
    np.testing.assert_allclose(load(out)(x.numpy())[0], ref, rtol=1e-4, atol=1e-5)


def test_stem_without_out_dtype():
    """A Relax stem conv built without out_dtype (an ONNX or hand-written graph) takes the
    transform too, keeps its input's dtype and equals torch."""
    from edgec.passes.conv_layout import convert_conv_layout

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype("float32")
    w2 = rng.standard_normal((8, 8, 3, 3)).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 3, 8, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(x, relax.const(w1), padding=1)))
            out = bb.emit_output(bb.emit(relax.op.nn.conv2d(y, relax.const(w2), padding=1)))
        bb.emit_func_output(out)
    mod = convert_conv_layout(bb.get(), 8)
    transforms = [name for name, arg in _calls_tir(mod)
                  if "layout_transform" in name and not isinstance(arg, Constant)]
    assert len(transforms) == 1  # of activations, only the output leaves the blocked layout
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    data = rng.standard_normal((1, 3, 8, 8)).astype("float32")
    got = vm["main"](tvm.runtime.tensor(data)).numpy()
    conv = torch.nn.functional.conv2d
    ref = conv(torch.relu(conv(torch.from_numpy(data), torch.from_numpy(w1), padding=1)),
               torch.from_numpy(w2), padding=1)
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-4, atol=1e-4)


def _calls_tir(mod):
    """(callee name, first argument) of each call_tir in main."""
    calls = []
    relax.analysis.post_order_visit(mod["main"].body, lambda e: calls.append(
        (e.args[0].name_hint, e.args[1].fields[0])) if isinstance(e, relax.Call)
        and getattr(e.op, "name", "") == "relax.call_tir" else None)
    return calls
