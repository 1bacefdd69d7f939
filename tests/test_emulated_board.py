"""aarch64 end to end on the emulated board (qemu-user + Debian arm64 + TVM runtime).

The rootfs is cached outside the checkout (``~/.cache/edgec/board-aarch64``, or
``$EDGEC_BOARD_DIR``) and built once (~1-2 min) when missing. Needs root and
qemu-user-static, binfmt-support, mmdebstrap (``.ci/run`` installs them).
"""

import subprocess

import numpy as np
import pytest
import torch

from edgec.compiler import compile
from edgec.compiler.deploy import board
from edgec.compiler.deploy.bench import BenchConfig, RemoteModel, benchmark, format_report
from edgec.compiler.errors import ArtifactError
from edgec.compiler.deploy.rpc import group_members
from edgec.compiler.deploy.rpc_session import connect
from edgec.compiler.zoo import mnist_cnn
from rpc_helpers import free_port, require_board_host, result_within

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def emulated_board():
    require_board_host()
    root = board.default_dir()
    board.prepare(root)
    proc = board.start(root, free_port())
    try:
        yield proc
    finally:
        proc.stop()
    assert group_members(proc.pid) == []


def test_mnist_cnn_aarch64_matches_pytorch(emulated_board, tmp_path):
    model = mnist_cnn(seed=0).eval()
    x = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    so = str(tmp_path / "mnist_arm.so")
    manifest = compile(model, (x,), target="aarch64", output=so)
    assert manifest["arch"] == "aarch64"
    with torch.no_grad():
        expected = model(x).numpy()
    session = connect(rpc=f"127.0.0.1:{emulated_board.port}", timeout=120)
    try:
        assert session.arch == "aarch64" and session.emulated  # from the server's own ELF
        assert session.marked_emulated  # the board's marker file, not only the loopback guess
        out = RemoteModel(session, so)(x.numpy())[0]
        report = benchmark(session, [so], BenchConfig(repeat=2, number=1, warmup=1, timeout=120),
                           quiet=True)
    finally:
        session.close()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    assert report["device"]["emulated"] and not report["timing_valid"]
    text = format_report(report)
    latency_lines = [ln for ln in text.splitlines() if " ms" in ln]
    assert latency_lines and all(ln.startswith("[EMULATED, meaningless]") for ln in latency_lines)
    assert "timings are meaningless" in text


@pytest.mark.parametrize("target, kernel", [("rpi5", "packed-sdot"), ("rpi4", "packed-neon")])
def test_int8_packed_arm_kernels_match_plain_int8_on_board(emulated_board, tmp_path, tiny_cnn,
                                                           target, kernel):
    """sdot (dotprod) and smull/saddlp (NEON) kernels run on the (emulated) board and give
    exactly the plain int8 convs' outputs: same plan, integer accumulation."""
    from edgec.compiler import PipelineConfig

    model, x = tiny_cnn
    calib = np.random.default_rng(0).standard_normal((32, 1, 8, 8)).astype("float32")
    outs, kernels = [], []
    session = connect(rpc=f"127.0.0.1:{emulated_board.port}", timeout=120)
    try:
        for mode in ("auto", "nchw"):
            so = str(tmp_path / f"int8_{mode}.so")
            manifest = compile(model, (x,), output=so, calib_data=calib, config=PipelineConfig(
                target=target, int8=True, int8_kernel=mode))
            kernels.append(next(p["kernel"] for p in manifest["passes"]
                                if p["name"] == "quantize_int8"))
            remote = RemoteModel(session, so)
            outs.append(np.concatenate([remote(calib[i:i + 1])[0] for i in range(8)]))
    finally:
        session.close()
    assert kernels == [kernel, "nchw"]
    np.testing.assert_array_equal(outs[0], outs[1])
    with torch.no_grad():  # and both are the FP32 model's outputs, up to int8 rounding
        ref = model(torch.from_numpy(calib[:8])).numpy()
    assert np.abs(outs[0] - ref).max() < 0.1 * np.abs(ref).max()


def test_int8_neon_channel_pairs_match_plain_int8_on_board(emulated_board, tmp_path,
                                                           monkeypatch):
    """rpi4 (no dot product): convs with an even number of 4-channel input blocks use
    ``dot_4x8_neon`` (two blocks per call, their products summed in int16: SMLAL in the
    code), with a multiple of four ``dot_4x16_neon`` (two such pairs widened and added in
    int32: SADALP); outputs equal TVM's 4-channel NEON kernel's and the plain int8 convs'
    exactly. The grouped conv (3 groups of 8) runs packed too, each block reading its
    group. The 16 -> 24 conv takes four blocks a call, the grouped and the 24 -> 8 two."""
    from edgec.compiler import PipelineConfig
    from edgec.passes import int8_kernels
    from edgec.passes.arm_int8_intrin import pairs_ok

    # two products in int16: |-128 * -128| * 2 would overflow, so a -128 weight keeps fours
    assert pairs_ok(np.array([-127, 0, 127], "int8"))
    assert not pairs_ok(np.array([-128, 1], "int8"))
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 24, 3, padding=1),
        torch.nn.ReLU(), torch.nn.Conv2d(24, 24, 3, padding=1, groups=3), torch.nn.ReLU(),
        torch.nn.Conv2d(24, 8, 1)).eval()
    x = torch.randn(1, 3, 12, 12)
    calib = np.random.default_rng(0).standard_normal((8, 3, 12, 12)).astype("float32")
    outs = {}
    session = connect(rpc=f"127.0.0.1:{emulated_board.port}", timeout=120)
    try:
        for mode in ("pairs", "fours", "nchw"):
            if mode == "fours":
                monkeypatch.setattr(int8_kernels, "pairs_ok", lambda wq: False)
            so = str(tmp_path / f"{mode}.so")
            compile(model, (x,), output=so, calib_data=calib, config=PipelineConfig(
                target="rpi4", int8=True, int8_kernel="nchw" if mode == "nchw" else "auto"))
            outs[mode] = RemoteModel(session, so)(calib[:1])[0]
            if mode != "nchw":  # the cross toolchain's objdump (CI installs it with g++)
                asm = subprocess.run(["aarch64-linux-gnu-objdump", "-d", so], check=True,
                                     capture_output=True, text=True).stdout
                assert ("smlal" in asm) == (mode == "pairs")
                assert ("sadalp" in asm) == (mode == "pairs")
                assert "conv2d_int8_neon_nchw4c_g3_" in asm
    finally:
        session.close()
    np.testing.assert_array_equal(outs["pairs"], outs["fours"])
    np.testing.assert_array_equal(outs["pairs"], outs["nchw"])
    assert np.abs(outs["pairs"]).max() > 0


@pytest.mark.parametrize("target", ["rpi5", "rpi4"])
def test_int8_blocked_arm_kernels_match_nchw_on_board(emulated_board, tmp_path, target):
    """The blocked int8 path on ARM (block 4: sdot on rpi5, NEON on rpi4): packed convs
    writing blocks, the blocked depthwise kernel, a residual add in an epilogue, run on the
    board against the same kernels with NCHW between layers (tests/test_int8_blocked.py's
    network; the fused add rounds once, see there: SQNR >= 40 dB)."""
    from edgec.compiler import PipelineConfig
    from edgec.passes.sensitivity import sqnr_db
    from test_int8_blocked import Net
    from conftest import seeded

    torch.manual_seed(0)
    model, x = seeded(Net()), torch.randn(1, 3, 28, 28)
    calib = np.random.default_rng(0).standard_normal((16, 3, 28, 28)).astype("float32")
    outs, records = [], []
    session = connect(rpc=f"127.0.0.1:{emulated_board.port}", timeout=120)
    try:
        for blocked in (True, False):
            so = str(tmp_path / f"int8_{blocked}.so")
            manifest = compile(model, (x,), output=so, calib_data=calib, config=PipelineConfig(
                target=target, int8=True, int8_blocked=blocked))
            records.append(next(p for p in manifest["passes"] if p["name"] == "quantize_int8"))
            remote = RemoteModel(session, so)
            outs.append(np.concatenate([remote(calib[i:i + 1])[0] for i in range(4)]))
    finally:
        session.close()
    assert [r["blocked"] for r in records] == [True, False]
    assert records[0]["layers_blocked"] >= 8 and records[1]["layers_blocked"] == 0
    assert sqnr_db(outs[0], outs[1]) >= 40.0 and np.abs(outs[0]).max() > 0


def test_x86_artifact_refused_by_aarch64_board(emulated_board, tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(8, 4)).eval()
    so = str(tmp_path / "x86.so")
    compile(model, (torch.randn(1, 8),), target="host", output=so)
    loads = emulated_board.log_text().count("load_module")
    session = connect(rpc=f"127.0.0.1:{emulated_board.port}", timeout=120)
    try:
        with pytest.raises(ArtifactError, match=r"refused before upload: .*x86\.so is x86_64 .* "
                                                r"is aarch64"):
            RemoteModel(session, so)
    finally:
        session.close()
    assert emulated_board.log_text().count("load_module") == loads


def test_metaschedule_rpc_runner_measures_on_board_via_tracker(tmp_path):
    """The tuning runner's path: tracker -> board key -> upload, random-fill args, time."""
    from tvm import te

    from edgec.compiler.deploy import rpc
    from edgec.compiler.tvm_compat import cross_compiler, meta_schedule, tvm

    require_board_host()
    ms = meta_schedule()
    a = te.placeholder((64,), name="a")
    func = te.create_prim_func([a, te.compute((64,), lambda i: a[i] + 1.0, name="b")])
    target = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})
    so = str(tmp_path / "cand.so")
    tvm.compile(tvm.IRModule({"main": func}), target=target).export_library(
        so, fcompile=cross_compiler("aarch64-linux-gnu-g++"))
    tracker = rpc.start_tracker(free_port())
    procs = [tracker]
    try:
        procs.append(board.start(board.default_dir(), free_port(),
                                 tracker=f"127.0.0.1:{tracker.port}", key="emulated-rpi"))
        runner = ms.runner.RPCRunner(
            rpc_config=ms.runner.RPCConfig(tracker_host="127.0.0.1", tracker_port=tracker.port,
                                           tracker_key="emulated-rpi", session_timeout_sec=120),
            evaluator_config=ms.runner.EvaluatorConfig(number=2, repeat=1, min_repeat_ms=0,
                                                       enable_cpu_cache_flush=False),
            max_workers=1)
        inputs = [ms.runner.RunnerInput(so, "cpu", ms.arg_info.ArgInfo.from_prim_func(func))]
        result = result_within(runner.run(inputs)[0], 300)
    finally:
        for p in reversed(procs):
            p.stop()
    assert result.error_msg is None, result.error_msg
    assert len(result.run_secs) == 1 and float(result.run_secs[0]) > 0


def _blocked_on_board(board, model, x, so):
    """Compile ``model`` for rpi4 with NCHWc to ``so``, run it on the board; returns the
    conv_layout record, the board's output and torch's."""
    from edgec.compiler import PipelineConfig

    manifest = compile(model, (x,), output=so, config=PipelineConfig(
        target="rpi4", tuning_logs=None, conv_layout="NCHWc"))
    record = next(p for p in manifest["passes"] if p["name"] == "conv_layout")
    with torch.no_grad():
        expected = model(x).numpy()
    session = connect(rpc=f"127.0.0.1:{board.port}", timeout=120)
    try:
        return record, RemoteModel(session, so)(x.numpy())[0], expected
    finally:
        session.close()


def test_blocked_conv_layout_matches_pytorch_on_board(emulated_board, tmp_path):
    """NCHW[4c] on NEON (rpi4): the blocked RGB stem, conv, depthwise and grouped convs with
    their register tiles, cross-compiled, equal torch on the aarch64 board."""
    from test_conv_layout import _model

    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    record, out, expected = _blocked_on_board(emulated_board, _model(), x,
                                              str(tmp_path / "blocked_arm.so"))
    # stem, conv, depthwise and the grouped conv (8-wide groups: whole NEON blocks)
    assert record["layout"] == "NCHW4c" and record["default_tiles"] == 4
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_fused_depthwise_pointwise_matches_pytorch_on_board(emulated_board, tmp_path):
    """The depthwise -> 1x1 pair as one kernel (``passes.dw_pw_fuse``) in NCHW[4c] on NEON:
    cross-compiled, equal to torch on the aarch64 board."""
    from conftest import seeded
    from test_dw_pw_fuse import Inverted

    x = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    record, out, expected = _blocked_on_board(emulated_board, seeded(Inverted()), x,
                                              str(tmp_path / "dw_pw_arm.so"))
    assert record["layout"] == "NCHW4c" and record["dw_pw_fused"] == 1
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
