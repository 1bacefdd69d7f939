"""Blocked conv layout (NCHW[b]c): convs, depthwise and grouped convs, the ops between
them, and the RGB stem compile to blocked kernels and equal torch."""
import re

import numpy as np
import pytest
import torch
from torch import nn

from conftest import compile_nchwc
from edgec.compiler import PipelineConfig, load
from edgec.compiler.config import ConfigError, KernelOptions
from edgec.compiler.frontend import import_model
from edgec.compiler.pipeline import run
from edgec.compiler.tvm_compat import relax, tvm
from edgec.passes.conv_layout import ConvLayoutError, block_for


class Mixed(nn.Module):
    """RGB stem (3 channels: stays NCHW), stride 2, dilation, a residual add, depthwise,
    a grouped conv (groups 2), a pool and the classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16),
                                  nn.ReLU())
        self.body = nn.Conv2d(16, 16, 3, padding=2, dilation=2)
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU6())
        self.grouped = nn.Conv2d(16, 32, 1, groups=2)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        y = self.stem(x)
        y = torch.relu(self.body(y) + y)
        y = self.pool(self.grouped(self.dw(y)))
        return self.fc(y.mean(dim=(2, 3)))


def _model():
    torch.manual_seed(0)
    m = Mixed()
    with torch.no_grad():  # non-trivial batch-norm statistics, so folding is exercised
        m.stem[1].running_mean.uniform_(-0.5, 0.5)
        m.stem[1].running_var.uniform_(0.5, 2.0)
    return m.eval()


def _avx2_build_equals_torch(model, x, out, **fields) -> dict:
    """Build ``model`` blocked for AVX2 (``fields``: more PipelineConfig) and check it
    against torch; returns the conv_layout record."""
    _, record = compile_nchwc(model, x, out, "x86-avx2", **fields)
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(load(out)(x.numpy())[0], ref, rtol=1e-4, atol=1e-5)
    return record


def _calls(mod, op_name):
    found = []
    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func.body, lambda e: found.append(e) if isinstance(
                e, relax.Call) and getattr(e.op, "name", "") == op_name else None)
    return found


def test_block_is_the_targets_fp32_lanes_and_bad_layouts_are_named():
    assert block_for("NCHWc", 256) == 8 and block_for("NCHWc", 512) == 16
    assert block_for("NCHWc", 128) == 4 and block_for("NCHW", 256) is None
    with pytest.raises(ConvLayoutError, match="valid choices: NCHW, NCHWc"):
        block_for("NHWC", 256)
    with pytest.raises(ConfigError, match="unknown conv_layout 'NHWC'; valid: NCHW, NCHWc"):
        PipelineConfig(conv_layout="NHWC")


def test_a_tensor_whose_channels_do_not_divide_takes_a_narrower_block():
    """On AVX-512 (16 lanes) a 24-channel tensor is blocked by 8 and the others by 16: the
    16 -> 24 conv writes NCHW8c, the 24 -> 16 conv reads it; no conv is left plain and no
    activation changes layout between the convs (mobilenet_v2's 24-channel layers)."""
    from edgec.passes.conv_layout import channel_block

    assert [channel_block(c, 16) for c in (32, 24, 3)] == [16, 8, 16]
    # AVX2: no 4-lane half block, but 4 where only 4 divides (shufflenet's 116 channels)
    assert [channel_block(c, 8) for c in (24, 12, 116)] == [8, 4, 4]
    assert [channel_block(c, 16) for c in (116, 6)] == [4, 16]  # 6: none divides, NCHW
    assert channel_block(12, 4) == 4
    x = torch.randn(1, 16, 8, 8)
    # without padding (by default 24 channels are padded to 32: passes.pad_channels)
    config = PipelineConfig(target="x86-avx512", tuning_logs=None, conv_layout="NCHWc",
                            pad_channels=False)
    for mid, narrow in ((24, 1), (32, 0)):
        model = nn.Sequential(nn.Conv2d(16, mid, 1), nn.ReLU(), nn.Conv2d(mid, 16, 1)).eval()
        res = run(import_model(model, (x,)), config, lower_only=True)
        record = next(p for p in res.passes if p["name"] == "conv_layout")
        assert record["layout"] == "NCHW16c" and record["narrow_convs"] == narrow
        plain = [gv.name_hint for gv, f in res.lowered.functions.items()
                 if isinstance(f, tvm.tirx.PrimFunc) and 'T.sblock("conv2d_nchw")' in f.script()]
        assert not plain
        shapes = [[int(d) for d in c.ty.shape] for c in _calls(res.lowered, "relax.call_tir")
                  if "conv2d" in c.args[0].name_hint]
        assert shapes == [[1, mid // (16 - 8 * narrow), 8, 8, 16 - 8 * narrow], [1, 1, 8, 8, 16]]
        transforms = [c for c in _calls(res.lowered, "relax.call_tir")
                      if "layout_transform" in c.args[0].name_hint]
        assert len(transforms) == 2  # the input into NCHW16c, the output out of it
    model = nn.Sequential(nn.Conv2d(16, 24, 1), nn.ReLU(), nn.Conv2d(24, 16, 1)).eval()
    res = run(import_model(model, (x,)), PipelineConfig(
        target="x86-avx512", tuning_logs=None, conv_layout="NCHWc"), lower_only=True)
    assert [p.get("narrow_convs") for p in res.passes] == [None, 0]  # padded, then all 16s


def test_blocked_layout_structure():
    """Every conv is a blocked kernel: the stem (3 channels) NCHW in -> blocked out (its
    layout transform moved into it, so its batch norm and ReLU run blocked), body and
    depthwise directly, the grouped conv (two 8-wide groups: whole AVX2 blocks) directly
    too; no conv2d op is left to the default legalizer, ReLU6 is fused (no layout
    transform around it), and activations change layout only at the graph's edges."""
    x = torch.randn(1, 3, 32, 32)
    res = run(import_model(_model(), (x,)), PipelineConfig(
        target="x86-avx2", tuning_logs=None, conv_layout="NCHWc"), lower_only=True)
    assert {"name": "conv_layout", "layout": "NCHW8c", "narrow_convs": 0, "dw_pw_fused": 0,
            "winograd_kernels": 0} in res.passes
    mod = res.lowered
    assert not _calls(mod, "relax.nn.conv2d")
    kernels = {gv.name_hint: f.script() for gv, f in mod.functions.items()
               if isinstance(f, tvm.tirx.PrimFunc)}
    convs = [k for k, text in kernels.items() if "conv2d" in text]
    blocked = [k for k in convs if 'T.sblock("conv2d_nchwc")' in kernels[k]]
    assert len(blocked) == 3, convs  # stem, body, grouped
    assert sum('T.sblock("depthwise_conv2d_nchwc")' in kernels[k] for k in convs) == 1
    assert not any('T.sblock("unblock_out")' in kernels[k] for k in blocked)
    assert not any('T.sblock("group_conv2d_nchw")' in kernels[k] for k in convs)
    assert any("minimum" in k for k in convs)  # ReLU6 fused into the depthwise kernel
    calls = []  # one activation transform is left: out of the blocked layout before fc
    relax.analysis.post_order_visit(mod["main"].body, lambda e: calls.append(
        e.args[0].name_hint) if isinstance(e, relax.Call) and getattr(e.op, "name", "")
        == "relax.call_tir" and "layout_transform" in e.args[0].name_hint else None)
    assert len(calls) == 1, calls


@pytest.mark.parametrize("target", ["x86-avx2", "x86-avx512", "rpi4"])
def test_blocked_layout_matches_torch(tmp_path, target):
    """Numeric: blocked builds (b = 8 on AVX2, 16 on AVX-512, 4 on NEON -- compiled, run
    where this CPU can) equal torch."""
    from edgec.targets import cpu_flags, get_target

    x = torch.randn(1, 3, 32, 32)
    model = _model()
    with torch.no_grad():
        ref = model(x).numpy()
    out = str(tmp_path / "m.so")
    manifest, record = compile_nchwc(model, x, out, target)
    block = get_target(target).vector_bits // 32
    assert record["layout"] == f"NCHW{block}c"
    # stem, body, depthwise, and the grouped conv where its 8-wide groups are whole blocks
    # (AVX2, NEON); on AVX-512 (b = 16, 8 inputs and 16 outputs a group) it runs unblocked
    assert record["default_tiles"] == (3 if block == 16 else 4)
    if target == "rpi4":  # cross-compiled; test_emulated_board runs it on an aarch64 board
        assert manifest["arch"] == "aarch64"
        return
    if target == "x86-avx512" and "avx512f" not in cpu_flags():
        pytest.skip("this CPU has no AVX-512 to run the library on")
    np.testing.assert_allclose(load(out)(x.numpy())[0], ref, rtol=1e-4, atol=1e-5)


def test_int8_keeps_its_own_layout():
    """INT8 models are packed by the quantizer (NCHW[4c] words): no blocked FP32 pass."""
    x = torch.randn(1, 3, 32, 32)
    res = run(import_model(_model(), (x,)), PipelineConfig(
        target="x86-avx2", tuning_logs=None, conv_layout="NCHWc", int8=True, calib_samples=2),
        calib_data=np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype("float32"),
        lower_only=True)
    assert all(p["name"] != "conv_layout" for p in res.passes)


def test_tuning_samples_the_register_tile_and_the_build_replays_it(tmp_path):
    """Tuning a blocked conv searches edgec's design space (the register tile, sampled;
    both loop orders); the build applies the best record instead of the heuristic tile,
    and equals torch. A blocked conv without a record borrows no other shape's trace."""
    from edgec.compiler.tune.search import tune
    from edgec.compiler.tune.spec import TuneSpec
    from edgec.compiler.tune.database import open_database
    from edgec.targets import get_target

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()).eval()
    x = torch.randn(1, 8, 16, 16)
    log = str(tmp_path / "x86-avx2")
    summary = tune(import_model(model, (x,)), TuneSpec(
        target="x86-avx2", trials=12, log_dir=log, trials_per_iter=8, quiet=True,
        kernels=KernelOptions(conv_layout="NCHWc")))
    conv = next(r for r in summary["per_task"] if "conv2d_nchwc" in r["task"])
    assert conv["trials"] >= 2 and summary["failed"] == 0
    db = open_database(log, get_target("x86-avx2"))
    traces = [str(r.trace) for r in db.get_all_tuning_records()]
    tiled = [t for t in traces if "sample_categorical" in t
             and 'ann_val="None"' in t]
    assert len(tiled) >= 2  # the rule's traces: sampled tile, blocks closed to other rules
    with torch.no_grad():
        ref = model(x).numpy()
    out = str(tmp_path / "tuned.so")
    manifest, record = compile_nchwc(model, x, out, "x86-avx2", log)
    assert record["default_tiles"] == 0 and manifest["tuning"]["tuned"] >= 1
    np.testing.assert_allclose(load(out)(x.numpy())[0], ref, rtol=1e-5, atol=1e-5)
    # a wider conv (no record of its own) keeps the heuristic tile: nothing transferred
    wide = nn.Sequential(nn.Conv2d(8, 24, 3, padding=1), nn.ReLU()).eval()
    _, record = compile_nchwc(wide, x, tmp_path / "wide.so", "x86-avx2", log)
    assert record["default_tiles"] == 1


def test_conv_without_out_dtype_keeps_its_input_dtype():
    """A Relax conv2d built without out_dtype (an ONNX or hand-written graph) is blocked and
    computes in its input's dtype."""
    from edgec.passes.conv_layout import convert_conv_layout

    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 16, 3, 3)).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 16, 8, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(relax.op.nn.conv2d(x, relax.const(w), padding=1)))
        bb.emit_func_output(out)
    mod = convert_conv_layout(bb.get(), 8)
    assert not _calls(mod, "relax.nn.conv2d")
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    data = rng.standard_normal((1, 16, 8, 8)).astype("float32")
    got = vm["main"](tvm.runtime.tensor(data)).numpy()
    ref = torch.nn.functional.conv2d(torch.from_numpy(data), torch.from_numpy(w), padding=1)
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_pad_per_row_or_whole_map(stride):
    """A depthwise conv's design spaces pad its input per output row (under the parallel
    row loop: one channel block, the kernel's rows) or over the whole map first; both
    equal torch."""
    from tvm import s_tir

    from edgec.passes.nchwc_schedule import conv_shape, default_tile, find_conv_block, schedule_any
    from edgec.targets import get_target

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 16, 3, stride=stride, padding=1, groups=16),
                          nn.ReLU6()).eval()
    x = torch.randn(1, 16, 14, 14)
    with torch.no_grad():
        ref = model(x).numpy()
    res = run(import_model(model, (x,)), PipelineConfig(
        target="x86-avx2", tuning_logs=None, conv_layout="NCHWc"), lower_only=True)
    gv = next(g for g in res.lowered.functions if "conv2d" in g.name_hint)
    func, target = res.lowered[gv], get_target("x86-avx2").tvm_target()
    for whole_map in (False, True):
        sch = s_tir.Schedule(func)
        block = find_conv_block(sch)
        schedule_any(sch, block, *default_tile(*conv_shape(sch, block)), second=whole_map)
        pad_loops = sch.get_loops(sch.get_sblock("data_pad"))
        conv_outer = sch.get_loops(block)[0]
        per_row = sch.get(pad_loops[0]).same_as(sch.get(conv_outer))
        assert per_row != whole_map  # per row: inside the conv's parallel row loop
        mod = res.lowered.clone()
        mod[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
        with target:
            vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
        got = vm["main"](tvm.runtime.tensor(x.numpy()))[0].numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("width,path", [(8, "blocks"), (16, "blocks"), (4, "block_diagonal"),
                                        (2, "block_diagonal"), (3, "unblocked")])
def test_grouped_convs_run_blocked(tmp_path, width, path):
    """Grouped convs (regnet, resnext) on AVX2 (b = 8): groups of whole blocks read their
    own input blocks in the conv2d_nchwc tile; groups narrower than a block run it on a
    block-diagonal weight (made at compile time: no weight transform is left to run);
    only groups that do not divide the block (3 of 24 channels) take the unblocked
    NCHW fallback. All equal torch."""
    torch.manual_seed(0)
    c = 24 if width == 3 else 32
    model = nn.Sequential(nn.Conv2d(8, c, 1), nn.ReLU(),
                          nn.Conv2d(c, c, 3, padding=1, groups=c // width), nn.ReLU(),
                          nn.Conv2d(c, c, 3, stride=2, padding=1, groups=c // width),
                          nn.Conv2d(c, 8, 1)).eval()
    x = torch.randn(1, 8, 12, 12)
    res = run(import_model(model, (x,)), PipelineConfig(target="x86-avx2", tuning_logs=None,
                                                         winograd=False), lower_only=True)
    texts = [f.script() for f in res.lowered.functions.values()
             if isinstance(f, tvm.tirx.PrimFunc)]
    assert sum('T.sblock("conv2d_nchwc")' in t for t in texts) == (2 if path == "unblocked" else 4)
    assert sum('T.sblock("group_conv2d_nchw")' in t for t in texts) == (
        2 if path == "unblocked" else 0)
    assert not any("block_diagonal_weight" in t for t in texts)  # folded into constants
    out = str(tmp_path / "g.so")
    _avx2_build_equals_torch(model, x, out)


def test_conv_with_odd_outputs_is_padded_and_sliced(tmp_path):
    """A conv whose output channels no block divides (16 -> 10, shufflenet_v2_x2_0's
    128 -> 122 before a channel shuffle) but whose inputs do runs blocked with its outputs
    zero-padded to the lanes, then sliced back to 10 channels (the 10 -> 16 conv after it,
    inputs not divisible by 4, takes the stem's kernel: NCHW in). No conv is left on TVM's
    plain NCHW schedule. Equals torch."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 10, 1), nn.ReLU(), nn.Conv2d(10, 16, 3, padding=1)).eval()
    x = torch.randn(1, 16, 8, 8)
    res = run(import_model(model, (x,)), PipelineConfig(target="x86-avx2", tuning_logs=None),
              lower_only=True)
    texts = {gv.name_hint: f.script() for gv, f in res.lowered.functions.items()
             if isinstance(f, tvm.tirx.PrimFunc)}
    blocked = [t for t in texts.values() if 'T.sblock("conv2d_nchwc")' in t]
    assert len(blocked) == 2
    # the padded conv: 16 outputs in two blocks of 8, then the slice to 10 channels
    assert any("T.Buffer((T.int64(1), T.int64(2), T.int64(8), T.int64(8), T.int64(8))" in t
               and "unblock_out" not in t for t in blocked)
    assert any("strided_slice" in name for name in texts)
    assert not any('T.sblock("conv2d_nchw")' in t for t in texts.values())
    out = str(tmp_path / "o.so")
    _avx2_build_equals_torch(model, x, out)


def test_a_head_conv_with_a_narrow_block_is_padded_to_the_lanes(tmp_path):
    """A head conv (its output reaches no other conv: squeezenet's 512 -> 1000 classifier)
    whose output channels only a narrower block divides (36 on AVX2: blocks of 4, half a
    vector) runs padded to the lanes (40, five blocks of 8) with its bias and ReLU in the
    tile, and is sliced back to 36 after them. The same widths inside the network (a conv
    after it) keep their block: a slice there would cost two layout transforms (channel
    padding, off here, would pad that group as a whole). Equals torch."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 36, 1), nn.ReLU(), nn.Conv2d(36, 36, 1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    x = torch.randn(1, 16, 9, 9)
    fields = dict(winograd=False, pad_channels=False)
    res = run(import_model(model, (x,)), PipelineConfig(target="x86-avx2", tuning_logs=None,
                                                         **fields), lower_only=True)
    texts = {gv.name_hint: f.script() for gv, f in res.lowered.functions.items()
             if isinstance(f, tvm.tirx.PrimFunc)}
    convs = {name: t for name, t in texts.items() if 'T.sblock("conv2d_nchwc")' in t}
    assert len(convs) == 2
    # the inner conv: 36 channels in nine blocks of 4; the head: 40 in five blocks of 8,
    # its bias add and ReLU fused in the same kernel, the slice to 36 after them
    padded = "T.int64(1), T.int64(5), T.int64(9), T.int64(9), T.int64(8)"
    head = [n for n, t in convs.items() if padded in t]
    inner = [n for n, t in convs.items()
             if "T.int64(1), T.int64(9), T.int64(9), T.int64(9), T.int64(4)" in t and padded not in t]
    assert len(head) == 1 and len(inner) == 1
    assert "add" in head[0] and "relu" in head[0]
    assert any(name.startswith("strided_slice") for name in texts)
    out = str(tmp_path / "h.so")
    _avx2_build_equals_torch(model, x, out, **fields)


def test_a_prime_width_gets_a_tile_with_a_tail(tmp_path):
    """A 13-wide output (squeezenet's classifier conv) in 8-lane blocks: no divisor of 13
    fits AVX2's 8 accumulators, so the heuristic takes 8 pixels with a tail instead of
    one pixel at a time (a 4x slower loop); widths with a divisor keep their tiles. The
    tail (pixels 8..12 of the second tile) computes right: equals torch."""
    from edgec.passes.nchwc_schedule import default_tile, tile_candidates

    assert (8, 1) in tile_candidates(13, 5, False, 8) and default_tile(13, 5, False, 8) == (8, 1)
    assert default_tile(56, 4, False, 8) == (4, 2) and default_tile(7, 4, False, 8) == (7, 1)
    assert all(13 % r == 0 for r, _ in tile_candidates(13, 4, False, 16))  # 13 fits in 28
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 40, 3, padding=1), nn.ReLU()).eval()
    x = torch.randn(1, 16, 13, 13)
    out = str(tmp_path / "t.so")
    assert _avx2_build_equals_torch(model, x, out, winograd=False)["default_tiles"] == 1


def test_an_epilogue_graph_runs_in_the_tile(tmp_path):
    """Hardswish after a conv (``y * clip(y + 3, 0, 6) / 6``: the conv's output read twice,
    so its ops form a graph, not a chain) is inlined whole into the register tile's
    write-back: no op is left as its own loop nest over the map (they ran scalar and on
    one thread: a MobileNetV3-style block took 2.8x as long). Equals torch."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 32, 1), nn.Hardswish(), nn.Conv2d(32, 16, 1)).eval()
    x = torch.randn(1, 16, 8, 8)
    res = run(import_model(model, (x,)), PipelineConfig(target="x86-avx2", tuning_logs=None),
              lower_only=False)
    (func,) = [f for gv, f in res.lowered.functions.items()
               if isinstance(f, tvm.tirx.PrimFunc) and "maximum" in gv.name_hint]
    text = func.script()
    blocks = re.findall(r'T\.sblock\("(\w+)"\)', text)
    assert not any(b.startswith(("T_add", "T_maximum", "T_minimum", "T_multiply", "T_divide"))
                   for b in blocks), blocks
    assert text.count("T.max(") >= 1 and "T.parallel" in text
    out = str(tmp_path / "h.so")
    _avx2_build_equals_torch(model, x, out)
