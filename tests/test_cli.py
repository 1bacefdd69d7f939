import json
import os
import subprocess
import sys

import numpy as np
import torch

from conftest import TinyCNN, seeded, torch_out


def edgec(*args, cwd=None):
    cmd = [sys.executable, "-m", "edgec.compiler.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=600)


def test_targets_lists_table_and_json():
    r = edgec("targets")
    assert r.returncode == 0 and "rpi4" in r.stdout and "host" in r.stdout
    data = json.loads(edgec("targets", "--json").stdout)
    assert {"x86-avx2", "rpi5", "jetson-orin-cpu"} <= {t["name"] for t in data}


def test_compile_run_info_onnx(tmp_path):
    model = seeded(TinyCNN())
    x = torch.randn(1, 1, 8, 8)
    onnx_path = tmp_path / "m.onnx"
    torch.onnx.export(model, (x,), str(onnx_path), input_names=["x"], opset_version=17, dynamo=False)
    so = tmp_path / "m.so"
    r = edgec("compile", str(onnx_path), "--target", "host", "-o", str(so), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["outputs"][0]["shape"] == [1, 10]
    np.save(tmp_path / "x.npy", x.numpy())
    r = edgec("run", str(so), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy"))
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), torch_out(model, x), rtol=1e-4, atol=1e-5)
    r = edgec("info", str(so))
    assert r.returncode == 0 and "inputs:  x 1x1x8x8 float32" in r.stdout


def test_compile_module_factory(tmp_path):
    (tmp_path / "mymodels.py").write_text(
        "import torch\ndef small():\n    return torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()\n")
    r = edgec("compile", "mymodels:small", "--input", "x:2x4:float32", "-o", "s.so", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert os.path.isfile(tmp_path / "s.so") and os.path.isfile(tmp_path / "s.json")
    # a dotted package path is a factory, not a file with an extension
    r = edgec("compile", "edgec.compiler.zoo:mnist_cnn", "--input", "x:1x1x28x28", "-o", "z.so",
              "--conv-layout", "NCHWc", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "z.json").read_text())
    layout = next(p for p in manifest["passes"] if p["name"] == "conv_layout")
    assert layout["winograd_kernels"] == 1  # conv2 (32 -> 64 channels, 14x14)
    r = edgec("compile", "edgec.compiler.zoo:mnist_cnn", "--input", "x:1x1x28x28", "-o", "d.so",
              "--conv-layout", "NCHWc", "--no-winograd", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "d.json").read_text())
    layout = next(p for p in manifest["passes"] if p["name"] == "conv_layout")
    assert layout["winograd_kernels"] == 0


def test_errors_are_one_line_exit_2(tmp_path):
    cases = [
        ("compile", "missing.onnx"),
        ("compile", "x.onnx", "--target", "rpi9"),
        ("compile", "mymod:f", "--input", "x:1xA"),
        ("compile", "x.onnx", "--conv-layout", "NHWC"),
        ("run", str(tmp_path / "none.so"), "--input", "x.npy"),
        ("nonsense",),
    ]
    for args in cases:
        r = edgec(*args)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("edgec: error:"), (args, r.stderr)
        assert "Traceback" not in r.stderr
    assert "known: host" in edgec("compile", "x.onnx", "--target", "rpi9").stderr
    assert "'NCHW', 'NCHWc'" in edgec("compile", "x.onnx", "--conv-layout", "NHWC").stderr


def test_run_wrong_shape_is_clear(tmp_path):
    model = seeded(TinyCNN())
    so = tmp_path / "m.so"
    from edgec.compiler import compile
    compile(model, (torch.randn(1, 1, 8, 8),), output=str(so))
    np.save(tmp_path / "bad.npy", np.zeros((1, 1, 9, 9), np.float32))
    r = edgec("run", str(so), "--input", str(tmp_path / "bad.npy"))
    assert r.returncode == 2
    assert "has shape [1, 1, 9, 9], expected [1, 1, 8, 8]" in r.stderr
