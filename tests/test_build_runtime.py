import os

import numpy as np
import pytest
import torch

from conftest import torch_out
from edgec.compiler import PipelineConfig, compile, load
from edgec.compiler.deploy.artifact import elf_machine, read_manifest
from edgec.compiler.errors import ArtifactError, BuildError, InputError


def test_mlp_parity_and_manifest(mlp, tmp_path):
    model, x = mlp
    out = str(tmp_path / "mlp.so")
    manifest = compile(model, (x,), target="host", output=out)
    assert os.path.isfile(out) and os.path.isfile(str(tmp_path / "mlp.json"))
    assert manifest["inputs"][0]["shape"] == [2, 16]
    assert manifest["outputs"][0]["shape"] == [2, 4]
    assert manifest["arch"] == "x86_64" and manifest["versions"]["tvm"]
    assert manifest["weights_bytes"] == sum(p.numel() * 4 for p in model.parameters())
    steps = manifest["step_seconds"]  # where the build's time went, in pipeline order
    assert {"bind", "fuse", "build"} <= set(steps) and "quantize" not in steps
    assert all(v >= 0 for v in steps.values()) and list(steps)[-1] == "build"
    y = load(out)(x.numpy())[0]
    np.testing.assert_allclose(y, torch_out(model, x), rtol=1e-5, atol=1e-5)


def test_cnn_parity_fused(tiny_cnn, tmp_path):
    model, x = tiny_cnn
    out = str(tmp_path / "cnn.so")
    compile(model, (x,), config=PipelineConfig(dump_ir=str(tmp_path / "ir")), output=out)
    fused = (tmp_path / "ir" / "08_fuse.py").read_text()
    assert "fused_conv2d" in fused  # legalize + FuseOps ran (tvm.compile alone does not fuse)
    assert "batch_norm" not in fused  # folded into the conv weights
    m = load(out)
    np.testing.assert_allclose(m(x.numpy())[0], torch_out(model, x), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m({"x": x.numpy()})[0], torch_out(model, x), rtol=1e-4, atol=1e-5)
    times = m.time(x.numpy(), repeat=3, warmup=1)
    assert times.shape == (3,) and (times > 0).all()


def test_recompiled_to_the_same_path_loads_the_new_model(mlp, tmp_path):
    """Compile, load, change the model, compile to the same path, load again in the same
    process: the second load runs the new model (the dynamic loader would hand back the
    library it mapped first under that name)."""
    model, x = mlp
    out = str(tmp_path / "m.so")
    compile(model, (x,), target="host", output=out)
    first = load(out)
    np.testing.assert_allclose(first(x.numpy())[0], torch_out(model, x), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-2.0)
    compile(model, (x,), target="host", output=out)
    np.testing.assert_allclose(load(out)(x.numpy())[0], torch_out(model, x), rtol=1e-5,
                               atol=1e-5)
    assert not np.allclose(first(x.numpy())[0], torch_out(model, x))  # the first kept its own


def test_aarch64_cross_compile(tiny_cnn, tmp_path):
    model, x = tiny_cnn
    out = str(tmp_path / "arm.so")
    manifest = compile(model, (x,), target="rpi4", output=out)
    assert elf_machine(out) == "aarch64" and manifest["arch"] == "aarch64"
    with open(out, "rb") as f:
        head = f.read(20)
    assert int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64
    with pytest.raises(ArtifactError, match="built for aarch64 .*this machine is x86_64"):
        load(out)


def test_missing_cross_compiler_writes_nothing(tiny_cnn, tmp_path, monkeypatch):
    model, x = tiny_cnn
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    out = tmp_path / "arm.so"
    with pytest.raises(BuildError, match="aarch64-linux-gnu-g\\+\\+.*apt-get install"):
        compile(model, (x,), target="rpi4", output=str(out))
    assert list(tmp_path.iterdir()) == []


def test_failed_link_leaves_no_partial_file(tiny_cnn, tmp_path, monkeypatch):
    model, x = tiny_cnn
    fake = tmp_path / "bin"
    fake.mkdir()
    cc = fake / "aarch64-linux-gnu-g++"
    cc.write_text("#!/bin/sh\necho 'fake linker failure' >&2\nexit 1\n")
    cc.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    out = tmp_path / "out" / "arm.so"
    with pytest.raises(BuildError, match="linking the library failed"):
        compile(model, (x,), target="rpi4", output=str(out))
    assert not out.exists() and not (tmp_path / "out" / "arm.json").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == []


def test_runtime_input_errors(mlp, tmp_path):
    model, x = mlp
    out = str(tmp_path / "m.so")
    compile(model, (x,), output=out)
    m = load(out)
    with pytest.raises(InputError, match=r"input 'input' has shape \[1, 16\], expected \[2, 16\]"):
        m(np.zeros((1, 16), np.float32))
    with pytest.raises(InputError, match="has dtype float64, expected float32"):
        m(np.zeros((2, 16)))
    with pytest.raises(InputError, match=r"unknown input name\(s\) \['y'\]; valid: \['input'\]"):
        m(y=np.zeros((2, 16), np.float32))
    with pytest.raises(InputError, match="takes 1 input"):
        m(x.numpy(), x.numpy())


def test_missing_manifest(mlp, tmp_path):
    """Without model.json a library describes itself from its embedded copy; one without
    that copy (objcopy removed it) needs its manifest."""
    import subprocess

    from edgec.compiler.deploy.artifact import EMBEDDED_SECTION

    model, x = mlp
    out = tmp_path / "m.so"
    compile(model, (x,), output=str(out))
    (tmp_path / "m.json").unlink()
    lone = load(str(out))
    assert lone.manifest["manifest_from"] == "library"
    assert np.allclose(lone(x.numpy())[0], model(x).detach().numpy(), atol=1e-5)
    bare = tmp_path / "bare.so"
    subprocess.run(["objcopy", "--remove-section", EMBEDDED_SECTION, str(out), str(bare)],
                   check=True)
    with pytest.raises(ArtifactError, match="manifest missing"):
        load(str(bare))
    with pytest.raises(ArtifactError, match="artifact not found"):
        read_manifest(str(tmp_path / "other.so"))


def test_unknown_target_writes_nothing(mlp, tmp_path):
    model, x = mlp
    with pytest.raises(ValueError, match="unknown target 'pi9'; known:"):
        compile(model, (x,), target="pi9", output=str(tmp_path / "m.so"))
    assert list(tmp_path.iterdir()) == []
