"""Winograd F(2x2, 3x3) convs in the blocked layout: which convs take it, the transforms
against a direct conv (odd sizes, any padding), end to end against torch, and tuning."""
import numpy as np
import pytest
import torch
from torch import nn

from conftest import compile_nchwc
from edgec.compiler import PipelineConfig, load
from edgec.compiler.config import KernelOptions
from edgec.compiler.frontend import import_model
from edgec.compiler.pipeline import run
from edgec.compiler.tvm_compat import tvm
from edgec.passes.winograd import use_winograd


class Net(nn.Module):
    """Two Winograd convs (the second with a residual add), one stride-2 and one 1x1 conv
    (direct), on an odd map (9x9: partial 2x2 tiles)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.b = nn.Conv2d(32, 32, 3, padding=1)
        self.down = nn.Conv2d(32, 32, 3, stride=2, padding=1)
        self.proj = nn.Conv2d(32, 16, 1)

    def forward(self, x):
        y = self.a(x)
        y = torch.relu(self.b(y) + y)
        return self.proj(torch.relu(self.down(y)))


def _model():
    torch.manual_seed(0)
    m = Net()
    with torch.no_grad():
        m.a[1].running_mean.uniform_(-0.5, 0.5)
        m.a[1].running_var.uniform_(0.5, 2.0)
    return m.eval()


def _kernels(mod, block):
    return [gv.name_hint for gv, f in mod.functions.items()
            if isinstance(f, tvm.tirx.PrimFunc) and f'T.sblock("{block}")' in f.script()]


def test_which_convs_take_winograd():
    assert use_winograd((1, 2, 14, 14, 16), (4, 32, 3, 3, 16), [1, 1], [1, 1], 1)
    assert not use_winograd((1, 2, 14, 14, 16), (4, 32, 3, 3, 16), [2, 2], [1, 1], 1)  # stride
    assert not use_winograd((1, 2, 14, 14, 16), (4, 32, 3, 3, 16), [1, 1], [2, 2], 1)  # dilation
    assert not use_winograd((1, 2, 14, 14, 16), (4, 32, 1, 1, 16), [1, 1], [1, 1], 1)  # 1x1
    assert not use_winograd((2, 2, 14, 14, 16), (4, 32, 3, 3, 16), [1, 1], [1, 1], 1)  # batch
    assert not use_winograd((1, 1, 14, 14, 8), (4, 8, 3, 3, 8), [1, 1], [1, 1], 1)  # 8 channels
    assert not use_winograd((1, 2, 6, 6, 16), (4, 32, 3, 3, 16), [1, 1], [1, 1], 1)  # 36 pixels


def test_winograd_structure():
    """The two 3x3 stride-1 convs become Winograd kernels with their epilogues (bias, ReLU,
    residual) fused and their weight transforms folded at compile time; the stride-2 and
    1x1 convs stay direct; --no-winograd leaves every conv direct."""
    x = torch.randn(1, 16, 9, 9)
    config = dict(target="x86-avx2", tuning_logs=None, conv_layout="NCHWc")
    res = run(import_model(_model(), (x,)), PipelineConfig(**config), lower_only=True)
    wino = _kernels(res.lowered, "winograd_bgemm")
    assert len(wino) == 2 and all("relu" in k for k in wino), wino
    assert any("add" in k and k.count("add") >= 2 for k in wino)  # bias + residual
    assert not any("winograd_weight" in gv.name_hint for gv in res.lowered.functions)
    assert len(_kernels(res.lowered, "conv2d_nchwc")) == 2
    layout = next(p for p in res.passes if p["name"] == "conv_layout")
    assert layout["winograd_kernels"] == 2
    res = run(import_model(_model(), (x,)), PipelineConfig(**config, winograd=False),
              lower_only=True)
    assert not _kernels(res.lowered, "winograd_bgemm")
    assert len(_kernels(res.lowered, "conv2d_nchwc")) == 4


@pytest.mark.parametrize("pad, size", [((1, 1, 1, 1), 9), ((0, 0, 0, 0), 12), ((2, 1, 0, 1), 8)])
def test_transforms_equal_a_direct_conv(pad, size):
    """The TE compute (unscheduled, and in both scheduled loop orders) equals the direct
    blocked conv for odd and even outputs and any padding."""
    from tvm import s_tir, te

    from edgec.passes.kernels.conv2d_nchwc import conv2d_nchwc
    from edgec.passes.nchwc_schedule import schedule_any
    from edgec.passes.winograd import conv2d_nchwc_winograd, weight_transform

    b, c, o = 8, 16, 24
    data = te.placeholder((1, c // b, size, size, b), name="data")
    kernel = te.placeholder((o // b, c, 3, 3, b), name="kernel")
    direct = te.create_prim_func([data, kernel, conv2d_nchwc(
        data, kernel, (1, 1), pad, (1, 1), 1, "float32")])
    wino_out = conv2d_nchwc_winograd(data, weight_transform(kernel), pad, "float32")
    plain = te.create_prim_func([data, kernel, wino_out])
    scheduled = []
    for second in (False, True):
        sch = s_tir.Schedule(plain)
        schedule_any(sch, sch.get_sblock("winograd_bgemm"), 2, 3, second=second)
        scheduled.append(sch.mod["main"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, c // b, size, size, b)).astype("float32")
    w = rng.standard_normal((o // b, c, 3, 3, b)).astype("float32")
    shape = (1, o // b, size + pad[0] + pad[2] - 2, size + pad[1] + pad[3] - 2, b)
    outs = []
    for func in (direct, plain, *scheduled):
        lib = tvm.compile(tvm.IRModule({"main": func}), target="llvm")
        out = tvm.runtime.tensor(np.zeros(shape, "float32"))
        lib(tvm.runtime.tensor(x), tvm.runtime.tensor(w), out)
        outs.append(out.numpy())
    assert np.abs(outs[0]).max() > 1  # a real conv, not zeros
    for out in outs[1:]:
        np.testing.assert_allclose(out, outs[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("target", ["x86-avx2", "x86-avx512"])
def test_winograd_build_matches_torch(tmp_path, target):
    """Numeric: the built library (heuristic tiles) equals torch."""
    from edgec.targets import cpu_flags

    model, x = _model(), torch.randn(1, 16, 9, 9)
    with torch.no_grad():
        ref = model(x).numpy()
    out = str(tmp_path / "w.so")
    _, layout = compile_nchwc(model, x, out, target)
    assert layout["winograd_kernels"] == 2 and layout["default_tiles"] == 4
    if target == "x86-avx512" and "avx512f" not in cpu_flags():
        pytest.skip("this CPU has no AVX-512 to run the library on")
    np.testing.assert_allclose(load(out)(x.numpy())[0], ref, rtol=1e-4, atol=1e-4)


def test_tuning_samples_the_winograd_tile_and_the_build_replays_it(tmp_path):
    """MetaSchedule tunes the Winograd GEMM's register tile with edgec's rule; the build
    replays the record (no heuristic tile left) and equals torch."""
    from edgec.compiler.tune.search import tune
    from edgec.compiler.tune.spec import TuneSpec

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()).eval()
    x = torch.randn(1, 16, 8, 8)
    log = str(tmp_path / "x86-avx2")
    summary = tune(import_model(model, (x,)), TuneSpec(
        target="x86-avx2", trials=6, log_dir=log, trials_per_iter=6, quiet=True,
        kernels=KernelOptions(conv_layout="NCHWc")))
    task = next(r for r in summary["per_task"] if "winograd" in r["task"])
    assert task["trials"] >= 2 and summary["failed"] == 0
    out = str(tmp_path / "tuned.so")
    _, layout = compile_nchwc(model, x, out, "x86-avx2", log)
    assert layout["winograd_kernels"] == 1 and layout["default_tiles"] == 0
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(load(out)(x.numpy())[0], ref, rtol=1e-4, atol=1e-4)


def test_a_used_up_design_space_ends_its_task():
    """A task whose candidates are all measured (a register-tile space is a few dozen at
    most) ends after NoRepeatSearch.EXHAUSTED rounds with nothing new, instead of
    evolving empty populations until the whole run's trials are spent."""
    from tvm import s_tir, te

    from edgec.compiler.tune.measure import NoRepeatSearch, _trace_key, ms

    a = te.placeholder((16,), name="a")
    sch = s_tir.Schedule(te.create_prim_func([a, te.compute((16,), lambda i: a[i] + 1.0)]))
    sch.split(sch.get_loops(sch.get_sblock("compute"))[0], [None, 4])
    again = ms.MeasureCandidate(sch, ms.arg_info.ArgInfo.from_entry_func(sch.mod, True))

    class Inner:  # stands in for the evolutionary search: it proposes the same schedule
        def generate_measure_candidates(self):
            return [again]

    search = NoRepeatSearch(Inner())
    search.per_iter = 4
    first = search.generate_measure_candidates()  # new: measured
    assert len(first) == 1 and _trace_key(first[0].sch.trace) in search.seen
    assert len(search.generate_measure_candidates()) == 0  # nothing new this round
    assert search.generate_measure_candidates() is None  # second empty round: done
