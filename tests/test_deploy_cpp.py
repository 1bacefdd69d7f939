"""The C++ deploy path: deploy/cpp/edgec_run (TVM's C++ runtime, no Python) gives the
Python runtime's outputs bit for bit, on x86 and on the emulated aarch64 board."""
import json
import os
import shutil
import subprocess
import uuid

import numpy as np
import pytest
import torch

from conftest import seeded
from edgec.compiler import PipelineConfig, compile, load
from edgec.compiler.train.exits import add_exits
from edgec.compiler.zoo import MnistCNN

CPP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "deploy", "cpp")
BOARD_SITE = "usr/local/lib/python3.11/dist-packages"  # the board's wheels (compiler/board.py)


def make_runner(out: str, **variables) -> str:
    """``make -C deploy/cpp`` (the README's command) into ``out``; returns its path."""
    import sys

    args = [f"{k}={v}" for k, v in {"PYTHON": sys.executable, "OUT": out, **variables}.items()]
    result = subprocess.run(["make", "-s", "-C", CPP, *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def run(runner: str, *args, prefix=(), cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, runner, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    return make_runner(str(tmp_path_factory.mktemp("cpp") / "edgec_run"))


@pytest.fixture(scope="module")
def exit_model():
    torch.manual_seed(0)
    model = add_exits(seeded(MnistCNN(c1=4, c2=8, hidden=16)), after=["bn1", "bn2"])
    return model, torch.randn(1, 1, 28, 28)


EXIT_CONFIG = PipelineConfig(early_exit=True, thresholds_as_input=True, exit_thresholds=(0.5, 0.5))
# thresholds -> the exit the library takes (1.0: never leave; 0.0: always)
THRESHOLDS = (((1.0, 1.0), 2), ((1.0, 0.0), 1), ((0.0, 0.0), 0))


def read_outputs(folder: str, manifest: dict) -> list:
    return [np.load(os.path.join(folder, s["name"] + ".npy")) for s in manifest["outputs"]]


def test_plain_model_matches_python_bit_for_bit(runner, tiny_cnn, tmp_path):
    model, x = tiny_cnn
    so = str(tmp_path / "tiny.so")
    manifest = compile(model, (x,), output=so)
    np.save(tmp_path / "x.npy", x.numpy())
    x.numpy().tofile(tmp_path / "x.raw")  # raw bytes work as well as .npy
    expected = load(so)(x.numpy())
    for name, given in (("npy", str(tmp_path / "x.npy")), ("raw", f"x={tmp_path / 'x.raw'}")):
        out = tmp_path / name
        out.mkdir()
        result = run(runner, so, given, "--out", str(out), "--repeat", "20", "--json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["exit_taken"] is None and report["latency_us"]["calls"] == 20
        assert 0 < report["latency_us"]["min"] <= report["latency_us"]["median"]
        got = read_outputs(str(out), manifest)
        assert len(got) == len(expected) == 1
        assert got[0].dtype == expected[0].dtype and got[0].shape == expected[0].shape
        np.testing.assert_array_equal(got[0], expected[0])
    text = run(runner, so, str(tmp_path / "x.npy"), "--print", "3", "--repeat", "5")
    assert text.returncode == 0
    assert text.stdout.startswith("output0 float32[1,10]: ") and "... (10 values)" in text.stdout
    assert "latency: median" in text.stdout and "over 5 calls" in text.stdout


def test_early_exit_index_and_thresholds(runner, exit_model, tmp_path):
    model, x = exit_model
    so = str(tmp_path / "exits.so")
    manifest = compile(model, (x,), config=EXIT_CONFIG, output=so)
    np.save(tmp_path / "x.npy", x.numpy())
    m = load(so)
    for thr, expect in THRESHOLDS:
        t = tmp_path / f"t{expect}.npy"
        np.save(t, np.array(thr, "float32"))
        out = tmp_path / f"out{expect}"
        out.mkdir()
        result = run(runner, so, str(tmp_path / "x.npy"), f"exit_thresholds={t}", "--out", str(out))
        assert result.returncode == 0, result.stderr
        assert f"exit taken: {expect} of 0..2 (2: the final head)" in result.stdout
        expected = m(x.numpy(), np.array(thr, "float32"))
        assert m.exit_taken == expect
        for got, want in zip(read_outputs(str(out), manifest), expected, strict=True):
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, want)
    # left out, the thresholds input takes the manifest's default (0.5, 0.5), as in Python
    result = run(runner, so, str(tmp_path / "x.npy"), "--json", "--repeat", "0")
    m(x.numpy())
    assert result.returncode == 0 and json.loads(result.stdout)["exit_taken"] == m.exit_taken


def test_errors_are_one_line_with_the_valid_choices(runner, tiny_cnn, tmp_path):
    model, x = tiny_cnn
    so = str(tmp_path / "tiny.so")
    compile(model, (x,), output=so)
    np.save(tmp_path / "bad.npy", np.zeros((1, 1, 4, 4), "float32"))
    np.save(tmp_path / "f64.npy", np.zeros((1, 1, 8, 8), "float64"))
    cases = [
        ((so,), "missing input 'x' (float32[1,1,8,8]); the model takes, in order: x"),
        ((so, str(tmp_path / "bad.npy")), "is <f4[1,1,4,4], expected float32[1,1,8,8]"),
        ((so, str(tmp_path / "f64.npy")), "is <f8[1,1,8,8], expected float32[1,1,8,8] (<f4)"),
        ((so, str(tmp_path / "bad.npy"), "--repeat", "x"), "--repeat takes an integer, got 'x'"),
        ((so, "--fast"), "unknown option --fast; valid: --repeat --warmup --out --print --json"),
        ((str(tmp_path / "none.so"),), "cannot read"),
    ]
    # a manifest edited by hand (or cut short): one line naming the file and the field
    manifest = json.loads((tmp_path / "tiny.json").read_text())
    for name, edit, message in [
            ("noinputs", lambda m: m.pop("inputs"), 'noinputs.json has no "inputs"'),
            ("noshape", lambda m: m["inputs"][0].pop("shape"),
             "noshape.json's inputs has no \"shape\""),
            ("badshape", lambda m: m["inputs"][0].update(shape="1x1x8x8"),
             "badshape.json is not a valid edgec manifest: ")]:
        bad = json.loads(json.dumps(manifest))
        edit(bad)
        shutil.copy(so, tmp_path / f"{name}.so")
        (tmp_path / f"{name}.json").write_text(json.dumps(bad))
        cases.append(((str(tmp_path / f"{name}.so"), str(tmp_path / "bad.npy")), message))
    for args, message in cases:
        result = run(runner, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def _board_root() -> str:
    from edgec.compiler.deploy import board
    from rpc_helpers import require_board_host

    require_board_host()
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.fail("aarch64-linux-gnu-g++ missing: apt-get install -y g++-aarch64-linux-gnu")
    root = board.default_dir()
    board.prepare(root)
    return root


@pytest.mark.slow
def test_aarch64_runner_matches_python_runtime_on_emulated_board(exit_model, tmp_path):
    """Cross-compiled runner and model, run under qemu-user in the board's rootfs; the same
    artifact run by edgec's Python runtime on the board (over RPC) gives the same bits."""
    from edgec.compiler.deploy import board
    from edgec.compiler.deploy.bench import RemoteModel
    from edgec.compiler.deploy.rpc_session import connect
    from rpc_helpers import free_port

    root = _board_root()
    site = os.path.join(root, BOARD_SITE)
    work = os.path.join(root, "tmp", f"edgec-cpp-{uuid.uuid4().hex[:8]}")  # inside the chroot
    os.makedirs(work)
    try:
        make_runner(os.path.join(work, "edgec_run"), CXX="aarch64-linux-gnu-g++", TVM_SITE=site,
                    RPATH_SITE="/" + BOARD_SITE)
        model, x = exit_model
        so = os.path.join(work, "exits.so")
        manifest = compile(model, (x,), output=so, config=PipelineConfig(
            target="aarch64", early_exit=True, thresholds_as_input=True, exit_thresholds=(0.5, 0.5)))
        assert manifest["arch"] == "aarch64"
        inside = "/" + os.path.relpath(work, root)
        np.save(os.path.join(work, "x.npy"), x.numpy())
        got = {}
        for thr, expect in THRESHOLDS:
            np.save(os.path.join(work, f"t{expect}.npy"), np.array(thr, "float32"))
            os.makedirs(os.path.join(work, f"out{expect}"))
            result = run(f"{inside}/edgec_run", f"{inside}/exits.so", f"{inside}/x.npy",
                         f"exit_thresholds={inside}/t{expect}.npy", "--out", f"{inside}/out{expect}",
                         "--repeat", "3", prefix=(shutil.which("chroot"), root))
            assert result.returncode == 0, result.stderr
            assert f"exit taken: {expect} of 0..2" in result.stdout
            got[expect] = read_outputs(os.path.join(work, f"out{expect}"), manifest)
        proc = board.start(root, free_port())
        try:
            session = connect(rpc=f"127.0.0.1:{proc.port}", timeout=120)
            try:
                remote = RemoteModel(session, so)
                expected = {k: remote(x.numpy(), np.array(thr, "float32")) for thr, k in THRESHOLDS}
            finally:
                session.close()
        finally:
            proc.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for k, outs in got.items():
        assert int(expected[k][1]) == k
        for a, b in zip(outs, expected[k], strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)
