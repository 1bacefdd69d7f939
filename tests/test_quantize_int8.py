"""INT8 pass: structure (int8 ops, int32 accumulate, int8 weights), numerics, errors."""
import json
import re

import numpy as np
import pytest
import torch
from torch import nn

from edgec.compiler.deploy.artifact import write_json_atomic
from edgec.compiler.api import compile as compile_model
from edgec.compiler.config import ConfigError, PipelineConfig
from edgec.compiler.frontend import import_model
from edgec.passes.graph import constant_bytes
from edgec.compiler.deploy.runtime import load
from edgec.compiler.tvm_compat import relax, tvm
from edgec.passes.calibrate import CalibrationError, run_outputs
from edgec.passes.int8_kernels import KERNELS
from edgec.passes.int8_layers import find_layers, layer_names, prepare
from edgec.passes.quant_scheme import QuantError, QuantPlan, QuantScheme
from edgec.passes.int8_phase import quantize_model
from edgec.passes.sensitivity import keep_worst, layer_sensitivity, sqnr_db
from edgec.targets import get_target


def _calls(mod):
    calls = []
    relax.analysis.post_order_visit(mod["main"], lambda e: calls.append(e)
                                    if isinstance(e, relax.Call) else None)
    return calls


@pytest.fixture
def tiny(tiny_cnn):
    model, x = tiny_cnn
    rm = import_model(model, x)
    data = np.random.default_rng(0).standard_normal((48, 1, 8, 8)).astype("float32")
    return model, rm, data


def test_structure_int8_ops_and_weights(tiny):
    _, rm, data = tiny
    qmod, plan = quantize_model(rm, QuantScheme("uint8", True), data)
    convs = [c for c in _calls(qmod) if c.op.name in ("relax.nn.conv2d", "relax.matmul")]
    assert len(convs) == 3 and set(plan.ranges) == {"conv1", "conv2", "fc"}
    for c in convs:
        assert str(c.args[0].ty.dtype) == "uint8" and str(c.args[1].ty.dtype) == "int8"
        assert str(c.ty.dtype) == "int32"
    # BN folded, no float conv left; int8 weights make the constants ~4x smaller
    assert not [c for c in _calls(qmod) if c.op.name == "relax.nn.batch_norm"]
    assert constant_bytes(qmod) <= 0.30 * constant_bytes(prepare(rm))
    # max_pool2d runs on the int8 tensor between conv2 and fc
    pools = [c for c in _calls(qmod) if c.op.name == "relax.nn.max_pool2d"]
    assert pools and all(str(p.ty.dtype) == "uint8" for p in pools)


def test_pass_form_is_deterministic_and_equal(tiny):
    from edgec.passes.quantize_int8 import QuantizeInt8

    _, rm, data = tiny
    qmod, plan = quantize_model(rm, QuantScheme("uint8", True), data[:16])
    again = QuantizeInt8(plan, layer_names(rm))(prepare(rm))
    tvm.ir.assert_structural_equal(again, qmod, map_free_vars=True)


def test_lowered_conv_is_int8_with_int32_accumulator(tiny):
    _, rm, data = tiny
    qmod, _ = quantize_model(rm, QuantScheme("uint8", True), data)
    target = get_target("x86-avx2").tvm_target()
    with target:
        low = relax.get_pipeline("zero")(qmod)
    names = [gv.name_hint for gv in low.functions if gv.name_hint.startswith("fused_conv2d")]
    assert names and all("cast" in n and "clip" in n for n in names)  # requantize fused
    text = low[names[0]].script()
    signature = text[text.index("def main("):].split("\n")[0]
    assert '"uint8")' in signature and '"int8")' in signature  # int8 data, int8 weights
    assert re.search(r'conv2d_nchw_intermediate = T\.sblock_alloc_buffer\(.*"int32"\)', text)
    assert re.search(r'T\.Cast\("int32", pad_temp\[.*\]\) \* T\.Cast\("int32", param_0', text)
    lib = tvm.compile(low, target=target).mod
    asm = "".join(m.inspect_source("asm") for m in [lib, *lib.imports])
    # LLVM widens u8/s8 to s16 and multiply-adds pairs into s32 on AVX2
    assert "vpmaddwd" in asm and "vpmovzxbw" in asm


def test_packed_avx2_conv_is_bit_exact_and_uses_vpmaddubsw(tiny):
    _, rm, data = tiny
    plain, plan = quantize_model(rm, QuantScheme("uint8", True), data[:16])
    packed, _ = quantize_model(rm, QuantScheme("uint8", True), plan=plan, kernel=KERNELS["avx2"])
    target = get_target("x86-avx2").tvm_target()
    with target:
        low = relax.get_pipeline("zero")(packed)
    kernels = [gv.name_hint for gv in low.functions if gv.name_hint.startswith("conv2d_int8_avx2")]
    # conv2 (8 -> 16); conv1 has 1 input channel: padding it to 4 would quadruple its work,
    # so it runs as the 1x1 conv of its 9 taps (12 channels packed)
    assert sorted(kernels) == ["conv2d_int8_avx2_1x12x8x8_8x1_requant",
                               "conv2d_int8_avx2_1x8x10x10_16x3_requant"]
    func = low["conv2d_int8_avx2_1x8x10x10_16x3_requant"]
    assert "llvm.x86.avx2.pmadd.ub.sw" in func.script()
    # the requantize runs in the kernel's epilogue: it takes the int32 bias and float scale
    # and stores uint8 (the fc consumes it), no int32 tensor leaves the kernel
    dtypes = [str(p.dtype) for p in func.params]
    assert dtypes == ["uint8", "int8", "int32", "float32", "uint8"]
    # its input is packed (and zero-point padded, 8x8 -> 10x10) by the vectorized pack
    # kernel, not by Relax pad/reshape/permute_dims
    names = [gv.name_hint for gv in low.functions]
    assert "pack_nchw4c_1x8x10x10" in names and not any("transpose" in n for n in names)
    lib = tvm.compile(low, target=target).mod
    asm = "".join(m.inspect_source("asm") for m in [lib, *lib.imports])
    assert re.search(r"\bvpmaddubsw\b", asm) and re.search(r"\bvpmaddwd\b", asm)
    x = data[16:24]
    np.testing.assert_array_equal(run_outputs(packed, x, rm.inputs[0]),
                                  run_outputs(plain, x, rm.inputs[0]))


@pytest.mark.parametrize("target_name, kernel, instruction", [
    ("x86-avx512-vnni", "vnni", r"\bvpdpbusd\b"),
    ("rpi5", "sdot", r"\bsdot\b"),
    ("rpi4", "neon", r"\bsmull2?\b.*\n(.*\n)*.*\bsaddlp\b"),
])
def test_packed_kernel_per_cpu_uses_its_dot_instruction(tiny, target_name, kernel, instruction):
    """Each target's packed kernel (code generated only: no VNNI/ARM CPU needed here)."""
    from edgec.passes.int8_kernels import kernel_for
    from edgec.passes.quant_scheme import scheme_for_target

    _, rm, data = tiny
    target = get_target(target_name)
    scheme = scheme_for_target(target)
    chosen = kernel_for(target, scheme)
    assert chosen is KERNELS[kernel]
    qmod, _ = quantize_model(rm, scheme, data[:16], kernel=chosen)
    with target.tvm_target():
        low = relax.get_pipeline("zero")(qmod)
    names = [gv.name_hint for gv in low.functions if f"int8_{kernel}_" in gv.name_hint]
    assert chosen.oc_block == {"vnni": 16, "sdot": 4, "neon": 4}[kernel]
    # conv1 (1 -> 8 channels) runs as the 1x1 conv of its taps where 8 outputs fill whole
    # output blocks (4 lanes); with VNNI's 16 it stays a plain int8 conv
    taps = [] if kernel == "vnni" else [f"conv2d_int8_{kernel}_1x12x8x8_8x1_requant"]
    assert sorted(names) == taps + [f"conv2d_int8_{kernel}_1x8x10x10_16x3_requant"]
    lib = tvm.compile(low, target=target.tvm_target()).mod
    asm = "".join(m.inspect_source("asm") for m in [lib, *lib.imports])
    assert re.search(instruction, asm)


@pytest.mark.parametrize("size", [9, 112])
def test_rgb_stem_conv_packs_with_a_padded_channel_bit_exact(size):
    """3 input channels run packed as 4 (the 4th with zero weights), exactly as plain int8.
    The unpack back to NCHW reads each output channel's pixels strided from the tile, at
    most 16 per vector: a 112-wide row vectorized whole (mobilenet_v3's INT8 stem) took
    LLVM 120 s to compile (56 wide here -> vectors of 14, its largest divisor <= 16)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU()).eval()
    rm = import_model(model, (torch.randn(1, 3, size, size),))
    calib, tests = (16, 8) if size == 9 else (4, 2)
    data = np.random.default_rng(0).standard_normal((calib + tests, 3, size, size)).astype(
        "float32")
    plain, plan = quantize_model(rm, QuantScheme("uint8", True), data[:calib])
    packed, _ = quantize_model(rm, QuantScheme("uint8", True), plan=plan, kernel=KERNELS["avx2"])
    conv = packed[packed.get_global_var(f"conv2d_int8_avx2_1x4x{size + 2}x{size + 2}_8x3_requant")]
    widths = [int(w) for w in re.findall(r"T\.vectorized\((\d+)\)", conv.script())]
    assert widths and max(widths) <= 16 and (size == 9 or 14 in widths)
    np.testing.assert_array_equal(run_outputs(packed, data[calib:], rm.inputs[0]),
                                  run_outputs(plain, data[calib:], rm.inputs[0]))


@pytest.mark.parametrize("blocks, width, tile", [
    (4, 56, (4, 4)), (9, 56, (3, 4)), (12, 14, (3, 7)), (1, 56, (1, 8)),  # as measured before
    (4, 55, (4, 5)), (8, 27, (4, 3)), (63, 13, (7, 1)), (1, 55, (1, 5)),  # odd widths
    (4, 111, (4, 3)), (2, 1, (2, 1))])
def test_register_tile_rule(blocks, width, tile):
    """The packed conv's register tile (blocks of output channels x pixels), as measured
    in ``register_tile``'s docstring: widths no 8, 7, 6 or 4 divides (squeezenet's 111,
    55, 27, 13) took one pixel and one block, 2-3x slower than these tiles."""
    from edgec.passes.int8_kernels import register_tile

    assert register_tile(blocks, width) == tile
    b, p = register_tile(blocks, width)
    assert blocks % b == 0 and width % p == 0 and b * p <= 21


@pytest.mark.parametrize("kernel, blocks, width, reduction, span, tile", [
    ("sdot", 24, 112, 4, 1, (4, 2)), ("sdot", 36, 56, 6, 1, (4, 4)), ("sdot", 6, 56, 36, 1, (6, 4)),
    ("sdot", 144, 14, 24, 1, (3, 7)), ("sdot", 16, 56, 144, 1, (4, 4)), ("sdot", 320, 7, 80, 1, (4, 7)),
    ("sdot", 240, 7, 40, 1, (3, 7)), ("sdot", 128, 7, 1152, 1, (2, 7)),
    ("neon", 24, 112, 4, 4, (2, 2)), ("neon", 36, 56, 6, 2, (4, 4)), ("neon", 144, 14, 24, 4, (6, 2)),
    ("neon", 16, 56, 144, 4, (4, 2)), ("neon", 240, 7, 40, 4, (2, 7)), ("neon", 60, 28, 10, 2, (4, 4)),
    ("vnni", 24, 112, 4, 1, (6, 4))])  # x86 keeps its rule
def test_arm_register_tile_rule(kernel, blocks, width, reduction, span, tile):
    """ARM's tiles, as counted on the emulated boards (``register_tile``'s docstring,
    benchmarks/results/arm_int8_tiles.md): the best or within 5% of it."""
    from edgec.passes.int8_kernels import register_tile

    taps = 9 if reduction == 1152 else 1  # resnet18's last 3x3 conv; the others 1x1
    assert register_tile(blocks, width, kernel, reduction, span, taps) == tile
    if (kernel, width) == ("sdot", 7):  # writing NCHW (for a pool), 4x7 cost more in a model
        assert register_tile(blocks, width, kernel, reduction, span, taps, blocked_out=False) \
            == (3 if blocks % 3 == 0 else 2, 7)


@pytest.mark.parametrize("blocked", [False, True])
def test_a_conv_whose_width_takes_no_pixel_tile_keeps_its_rows_parallel(blocked):
    """A 13-wide output (no pixel tile divides it) gets a one-pixel register tile; its
    epilogues' loops are counted under the tile loops. Taken as "the last three", they
    were the parallel row loop itself, which became an unroll of every row: squeezenet1_1's
    INT8 stem (111 x 111) ran on one thread and took LLVM tens of minutes to compile."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 1)).eval()
    rm = import_model(model, (torch.randn(1, 64, 15, 15),))
    data = np.random.default_rng(0).standard_normal((10, 64, 15, 15)).astype("float32")
    plain, plan = quantize_model(rm, QuantScheme("uint8", True), data[:8])
    packed, _ = quantize_model(rm, QuantScheme("uint8", True), plan=plan,
                               kernel=KERNELS["avx2"], blocked=blocked)
    convs = [f.script() for gv, f in packed.functions.items()
             if gv.name_hint.startswith("conv2d_int8_avx2_1x64x15x15")]
    assert convs
    for text in convs:
        assert "T.parallel(" in text
        assert max(int(n) for n in re.findall(r"T\.unroll\((\d+)\)", text)) <= 64
    np.testing.assert_array_equal(run_outputs(packed, data[8:], rm.inputs[0]),
                                  run_outputs(plain, data[8:], rm.inputs[0]))


def test_packed_avx2_matmul_is_bit_exact(mlp):
    model, x = mlp
    rm = import_model(model, x)
    data = np.random.default_rng(0).standard_normal((16, 16)).astype("float32")
    plain, plan = quantize_model(rm, QuantScheme("uint8", True), data)
    packed, _ = quantize_model(rm, QuantScheme("uint8", True), plan=plan, kernel=KERNELS["avx2"])
    names = [gv.name_hint for gv in packed.functions]
    assert "matmul_int8_avx2_2x16x32" in names  # Linear(16, 32); Linear(32, 4): plain
    np.testing.assert_array_equal(run_outputs(packed, data, rm.inputs[0]),
                                  run_outputs(plain, data, rm.inputs[0]))


def test_packed_matmul_pads_its_columns_bit_exact():
    """N = 68 is not a multiple of the AVX2 kernel's 8: the weight is padded to 72 zero
    columns, sliced off after the kernel; exactly the plain int8 matmul's result."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 68), nn.ReLU(), nn.Linear(68, 4)).eval()
    rm = import_model(model, (torch.randn(2, 16),))
    data = np.random.default_rng(0).standard_normal((16, 16)).astype("float32")
    plain, plan = quantize_model(rm, QuantScheme("uint8", True), data)
    packed, _ = quantize_model(rm, QuantScheme("uint8", True), plan=plan, kernel=KERNELS["avx2"])
    names = [gv.name_hint for gv in packed.functions]
    assert "matmul_int8_avx2_2x16x68" in names
    kernel = packed[packed.get_global_var("matmul_int8_avx2_2x16x68")]
    assert [int(d) for d in kernel.params[-1].shape] == [2, 72]
    np.testing.assert_array_equal(run_outputs(packed, data, rm.inputs[0]),
                                  run_outputs(plain, data, rm.inputs[0]))


def test_small_cnn_sqnr_over_30db(tiny):
    _, rm, data = tiny
    qmod, _ = quantize_model(rm, QuantScheme("uint8", True), data[:32])
    ref = run_outputs(prepare(rm), data[32:], rm.inputs[0])
    out = run_outputs(qmod, data[32:], rm.inputs[0])
    assert sqnr_db(out, ref) >= 30.0


def test_symmetric_int8_activations_stay_accurate(tiny):
    _, rm, data = tiny
    qmod, _ = quantize_model(rm, QuantScheme("int8", False), data[:32])
    ops = [c for c in _calls(qmod) if c.op.name == "relax.nn.conv2d"]
    assert all(str(c.args[0].ty.dtype) == "int8" for c in ops)
    ref = run_outputs(prepare(rm), data[32:], rm.inputs[0])
    assert sqnr_db(run_outputs(qmod, data[32:], rm.inputs[0]), ref) >= 25.0


def test_entropy_and_percentile_clip_inside_minmax(tiny):
    _, rm, data = tiny
    plans = {m: quantize_model(rm, QuantScheme(calib_method=m), data[:32])[1]
             for m in ("minmax", "percentile", "entropy")}
    for method in ("percentile", "entropy"):
        for name, (lo, hi) in plans[method].ranges.items():
            mlo, mhi = plans["minmax"].ranges[name]
            assert mlo <= lo <= hi <= mhi
    assert plans["entropy"].ranges != plans["minmax"].ranges


def test_keep_fp32_and_sensitivity(tiny):
    _, rm, data = tiny
    mod = prepare(rm)
    layers = find_layers(mod, layer_names(rm))
    _, plan = quantize_model(rm, QuantScheme(), data[:32])
    rows = layer_sensitivity(mod, layers, plan, data[32:], rm.inputs[0])
    assert [r.sqnr_db for r in rows] == sorted(r.sqnr_db for r in rows) and len(rows) == 3
    worst = keep_worst(rows, 1)
    qmod, plan2 = quantize_model(rm, QuantScheme(), plan=plan, keep_fp32=worst)
    int8_ops = [c for c in _calls(qmod) if c.op.name in ("relax.nn.conv2d", "relax.matmul")
                and str(c.ty.dtype) == "int32"]
    assert len(int8_ops) == 2 and plan2.keep_fp32 == worst


def test_compile_int8_artifact(tiny, tmp_path):
    model, _, data = tiny
    x = torch.from_numpy(data[:1])
    out = str(tmp_path / "m.so")
    manifest = compile_model(model, x, config=PipelineConfig(int8=True, calib_samples=32),
                             output=out, calib_data=data[:32])
    names = [p["name"] for p in manifest["passes"]]
    assert names == ["quantize_int8"] and manifest["passes"][0]["layers_int8"] == 3
    assert manifest["passes"][0]["blocked"] == (manifest["passes"][0]["kernel"] != "nchw")
    assert manifest["weights_bytes"] <= 0.30 * manifest["weights_bytes_imported"]
    got = load(out)(data[40:41])[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(data[40:41])).numpy()
    assert sqnr_db(got, ref) >= 25.0


def test_scale_table_round_trip_and_unknown_layer(tiny, tmp_path):
    model, rm, data = tiny
    _, plan = quantize_model(rm, QuantScheme(), data[:16])
    path = tmp_path / "scales.json"
    write_json_atomic(str(path), plan.to_json())
    assert QuantPlan.load(str(path)).ranges == plan.ranges
    bad = json.loads(path.read_text())
    bad["activations"]["conv9"] = {"min": 0.0, "max": 1.0}
    path.write_text(json.dumps(bad))
    with pytest.raises(QuantError, match=r"unknown layer\(s\) \['conv9'\]"):
        quantize_model(rm, QuantScheme(), plan=QuantPlan.load(str(path)))
    config = PipelineConfig(int8=True, int8_scales=str(path))
    with pytest.raises(QuantError, match="conv9"):
        compile_model(model, torch.from_numpy(data[:1]), config=config,
                      output=str(tmp_path / "m.so"))


@pytest.mark.parametrize("data, message", [
    (None, "needs calibration data"),
    (np.zeros((0, 1, 8, 8), "float32"), "empty"),
    (np.full((4, 1, 8, 8), np.nan, "float32"), "NaN/inf in 4 sample"),
    (np.zeros((4, 3, 8, 8), "float32"), "shape"),
])
def test_bad_calibration_data(tiny, data, message):
    _, rm, _ = tiny
    with pytest.raises(CalibrationError, match=message):
        quantize_model(rm, QuantScheme(), data)


def test_bad_config():
    with pytest.raises(ConfigError, match="calib_method 'kl'"):
        PipelineConfig(int8=True, calib_method="kl")
    with pytest.raises(ConfigError, match="int8_activation"):
        PipelineConfig(int8_activation="int4")
    with pytest.raises(QuantError, match="percentile"):
        QuantScheme(percentile=10)


def test_cli_int8_flags(tmp_path):
    import subprocess
    import sys

    from conftest import TinyCNN, seeded

    model = seeded(TinyCNN())
    onnx_path = str(tmp_path / "m.onnx")
    torch.onnx.export(model, (torch.randn(1, 1, 8, 8),), onnx_path, input_names=["x"],
                      opset_version=17, dynamo=False)
    data = np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype("float32")
    np.save(tmp_path / "calib.npy", data)
    cli = [sys.executable, "-m", "edgec.compiler.cli", "compile", onnx_path, "-o",
           str(tmp_path / "m.so")]
    r = subprocess.run(cli + ["--int8", "--calib-data", str(tmp_path / "calib.npy"),
                              "--calib-method", "entropy", "--int8-keep-fp32", "1",
                              "--no-int8-blocked", "--json"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    step = json.loads(r.stdout)["passes"][0]
    assert step["source"] == "calibration:entropy" and len(step["keep_fp32"]) == 1
    assert step["blocked"] is False and json.loads(r.stdout)["config"]["int8_blocked"] is False
    assert step["keep_fp32"][0] == step["sensitivity"][0]["layer"]  # the worst layer
    r = subprocess.run(cli + ["--int8"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "needs calibration data" in r.stderr
    nan = data.copy()
    nan[3, 0, 2, 2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    r = subprocess.run(cli + ["--int8", "--calib-data", str(tmp_path / "nan.npy")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "NaN/inf in 1 sample(s), first at index 3" in r.stderr


def test_scheme_per_target_and_qparams():
    from edgec.passes.quant_scheme import scheme_for_target

    avx2 = scheme_for_target(get_target("x86-avx2"))
    assert (avx2.activation_dtype, avx2.reduce_range, avx2.weight_qmax) == ("uint8", True, 63)
    vnni = scheme_for_target(get_target("x86-avx512-vnni"))
    assert (vnni.activation_dtype, vnni.reduce_range) == ("uint8", False)
    arm = scheme_for_target(get_target("rpi5"))
    assert (arm.activation_dtype, arm.reduce_range) == ("int8", False)
    assert not scheme_for_target(get_target("x86-avx2"), reduce_range="off").reduce_range
    with pytest.raises(QuantError, match="valid: auto, on, off"):
        scheme_for_target(get_target("x86-avx2"), reduce_range="7bit")
    scale, zp = avx2.activation_qparams(-1.0, 3.0)
    assert zp == 64 and abs(scale - 4.0 / 255) < 1e-12  # 0.0 maps exactly to q = zp
    assert abs((255 - zp) * scale - 3.0) < scale and abs((0 - zp) * scale + 1.0) < scale
    w = np.array([[1.0, -0.5], [0.0, 0.0]], "float32")
    q, s = avx2.quantize_weight(w, 0)
    assert q.tolist() == [[63, -32], [0, 0]] and s[1] == 1.0


@pytest.mark.parametrize("channels,stride,padding", [(1, 1, 1), (2, 2, 1), (1, 1, 0)])
def test_few_channel_conv_packs_as_a_1x1_conv_of_its_taps_bit_exact(channels, stride, padding):
    """1 or 2 input channels (a grayscale stem): the 3x3 conv runs as the packed 1x1 conv of
    its 9 taps (9 * C -> a multiple of 4 channels), exactly as the plain int8 conv."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(channels, 8, 3, stride=stride, padding=padding),
                          nn.ReLU()).eval()
    rm = import_model(model, (torch.randn(1, channels, 9, 9),))
    data = np.random.default_rng(0).standard_normal((24, channels, 9, 9)).astype("float32")
    plain, plan = quantize_model(rm, QuantScheme("uint8", True), data[:16])
    packed, _ = quantize_model(rm, QuantScheme("uint8", True), plan=plan, kernel=KERNELS["avx2"])
    names = [gv.name_hint for gv in packed.functions]
    out = (9 + 2 * padding - 3) // stride + 1
    taps = 4 * -(-9 * channels // 4)  # 9 or 18 tap channels, padded to 12 or 20
    assert f"conv2d_int8_avx2_1x{taps}x{out}x{out}_8x1_requant" in names
    assert not any(c.op.name == "relax.nn.conv2d" for c in _calls(packed)
                   if isinstance(c.op, tvm.ir.Op))
    np.testing.assert_array_equal(run_outputs(packed, data[16:], rm.inputs[0]),
                                  run_outputs(plain, data[16:], rm.inputs[0]))


class PoolHead(nn.Module):
    """A conv whose int8 output feeds another conv and an average-pooled head."""

    def __init__(self, pool):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.pool, self.head, self.fc = pool, nn.Linear(8 * pool * pool, 4), nn.Linear(8 * 16, 4)

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        head = self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(h, self.pool), 1))
        body = self.fc(torch.flatten(nn.functional.max_pool2d(self.conv2(h), 2), 1))
        return head + body


@pytest.mark.parametrize("pool", [2, 4])
def test_avg_pool_of_an_int8_map_sums_in_int32(pool, monkeypatch):
    """An adaptive average pool reading an int8 map (an exit head's pool) sums the int8
    values in int32 and dequantizes the pooled result: the map is never converted to float
    whole. Numerically the same as pooling the dequantized map."""
    import edgec.passes.quantize_int8 as q8

    torch.manual_seed(0)
    rm = import_model(PoolHead(pool).eval(), (torch.randn(1, 3, 8, 8),))
    data = np.random.default_rng(0).standard_normal((24, 3, 8, 8)).astype("float32")
    qmod, plan = quantize_model(rm, QuantScheme("uint8", False), data[:16])

    def ops(mod):
        return [c.op.name for c in _calls(mod) if isinstance(c.op, tvm.ir.Op)]

    assert "relax.sum" in ops(qmod) and "relax.nn.adaptive_avg_pool2d" not in ops(qmod)
    to_float = [c for c in _calls(qmod) if isinstance(c.op, tvm.ir.Op)
                and c.op.name == "relax.astype" and str(c.attrs.dtype) == "float32"
                and str(c.args[0].ty.dtype) == "uint8"]
    assert not to_float  # conv1's uint8 map is not dequantized
    monkeypatch.setattr(q8, "int_avg_pool", lambda *a: None)  # the float pool, as before
    ref, _ = quantize_model(rm, QuantScheme("uint8", False), plan=plan)
    assert "relax.nn.adaptive_avg_pool2d" in ops(ref)
    np.testing.assert_allclose(run_outputs(qmod, data[16:], rm.inputs[0]),
                               run_outputs(ref, data[16:], rm.inputs[0]), rtol=1e-5, atol=1e-5)


class _Attention(nn.Module):
    """A linear layer, then a matmul of two activations (q @ k^T): the second has no
    weight to quantize and stays FP32."""

    def __init__(self):
        super().__init__()
        self.qk = nn.Linear(16, 16)

    def forward(self, x):
        q = self.qk(x)
        return q @ q.transpose(-1, -2)


def test_ops_left_fp32_are_listed(tmp_path):
    torch.manual_seed(0)
    model, x = _Attention().eval(), torch.randn(1, 8, 16)
    calib = np.concatenate([x.numpy(), np.random.default_rng(0).standard_normal(
        (3, 8, 16)).astype("float32")])  # x in range: no clipping of q
    out = str(tmp_path / "att.so")
    manifest = compile_model(model, (x,), output=out, calib_data=calib,
                             config=PipelineConfig(int8=True, tuning_logs=None))
    record = next(p for p in manifest["passes"] if p["name"] == "quantize_int8")
    assert record["layers_int8"] == 1
    assert record["fp32_ops"] == {"relax.matmul": 1}
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(load(out)(x.numpy())[0] - ref).max() <= 0.05 * np.abs(ref).max()
