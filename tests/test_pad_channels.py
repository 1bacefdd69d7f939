"""Channel padding for the blocked layout (``edgec.passes.pad_channels``): which groups
grow, the weights' shapes, and the same function before and after."""
import numpy as np
import pytest
import torch
from torch import nn

from conftest import compile_nchwc, seeded
from edgec.compiler import load
from edgec.compiler.frontend import import_model
from edgec.compiler.pipeline import run
from edgec.compiler.config import PipelineConfig
from edgec.compiler.deploy.runtime import flatten_outputs
from edgec.compiler.tvm_compat import VirtualMachine, tensor, tvm
from edgec.passes.pad_channels import pad_channels, padded_size


class Block(nn.Module):
    """mobilenet_v2's 24-channel stage in small: a conv into ``mid`` channels, an inverted
    residual on them (1x1 expand, depthwise, 1x1 project, residual add), a classifier."""

    def __init__(self, mid=24):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6())
        self.down = nn.Sequential(nn.Conv2d(16, mid, 1), nn.BatchNorm2d(mid))
        self.block = nn.Sequential(
            nn.Conv2d(mid, 3 * mid, 1), nn.BatchNorm2d(3 * mid), nn.ReLU6(),
            nn.Conv2d(3 * mid, 3 * mid, 3, padding=1, groups=3 * mid), nn.BatchNorm2d(3 * mid),
            nn.ReLU6(), nn.Conv2d(3 * mid, mid, 1), nn.BatchNorm2d(mid))
        self.fc = nn.Linear(mid * 4 * 4, 10)

    def forward(self, x):
        y = self.down(self.stem(x))
        y = y + self.block(y)
        return self.fc(torch.flatten(nn.functional.avg_pool2d(y, 2), 1))


def _model(mid=24):
    model = seeded(Block(mid))
    return model, torch.randn(1, 3, 8, 8)


def test_padded_size():
    # AVX-512 (16 lanes): to 16s when that costs <= 1.5x, else to 8s; AVX2: to 8s or as is
    assert [padded_size(c, 16) for c in (24, 40, 37, 20, 8, 12, 32, 1)] == \
        [32, 48, 48, 24, 8, 16, 32, 1]
    assert [padded_size(c, 8) for c in (24, 12, 37, 5, 3)] == [24, 16, 40, 5, 3]
    assert [padded_size(c, 4) for c in (6, 3, 2)] == [8, 4, 2]


def test_groups_grow_and_weights_follow():
    """Structure, 16 lanes: the 24-channel group (residual-coupled: the down conv, the
    project conv and the add) becomes 32, the 72-channel expand group 80; the classifier's
    output (the model's) and the 16-channel stem are left; the depthwise conv's groups
    follow its width."""
    model, x = _model()
    dense = import_model(model, (x,))
    padded, record = pad_channels(dense, 16)
    assert record["groups"] == 2 and record["channels"] == [[24, 32], [72, 80]]
    assert record["weight_bytes_after"] > record["weight_bytes_before"] == dense.weight_bytes
    shapes = {k: tuple(np.asarray(v).shape) for k, v in padded.params.items()}
    before = {k: tuple(np.asarray(v).shape) for k, v in dense.params.items()}
    changed = {k: (before[k], s) for k, s in shapes.items() if s != before[k]}
    assert ((24, 16, 1, 1), (32, 16, 1, 1)) in changed.values()  # down: 24 output rows -> 32
    assert ((72, 24, 1, 1), (80, 32, 1, 1)) in changed.values()  # expand: rows and columns
    assert ((10, 384), (10, 512)) in changed.values()  # the classifier reads 32 x 4 x 4
    assert ((24, 72, 1, 1), (32, 80, 1, 1)) in changed.values()  # project
    assert all(shapes[k] == before[k] for k in shapes if "stem" in k)
    assert "groups=80" in padded.mod.script() and "groups=72" not in padded.mod.script()
    # nothing to pad: the model is returned as is
    same, none = pad_channels(import_model(*_model(32)), 16)
    assert none is None


def _run(relax_model, x):
    vm = VirtualMachine(run(relax_model, PipelineConfig(tuning_logs=None)).executable, tvm.cpu())
    return flatten_outputs(vm["main"](tensor(x.numpy())))[0]


@pytest.mark.parametrize("lanes, onnx", [(16, False), (8, False), (16, True)])
def test_padded_model_computes_the_same(lanes, onnx, tmp_path):
    """Numeric: the padded model (plain NCHW, any CPU) equals torch, with every padded
    channel's consumer weights zero; at 8 lanes 24 stays and 72 is left too. From ONNX
    too (its convs carry no out_dtype: re-emitting the depthwise conv crashed on that)."""
    from edgec.compiler.peers import export_onnx

    model, x = _model()
    source = export_onnx(model, [x.numpy()], str(tmp_path / "m.onnx")) if onnx else model
    padded, record = pad_channels(import_model(source, None if onnx else (x,)), lanes)
    assert (record is None) == (lanes == 8)
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(_run(padded, x), ref, rtol=1e-4, atol=1e-5)


def test_compiled_nchwc_pads_and_matches_torch(tmp_path):
    """End to end on this machine's lanes: a 12-channel group pads to 16 on AVX2 and on
    AVX-512 alike; the build records it, no conv takes a narrow block, and the library
    equals torch; ``pad_channels=False`` keeps 12 (the convs left plain)."""
    model, x = _model(12)
    with torch.no_grad():
        ref = model(x).numpy()
    manifest, record = compile_nchwc(model, x, str(tmp_path / "p.so"), "host")
    pad = next(p for p in manifest["passes"] if p["name"] == "pad_channels")
    assert [12, 16] in pad["channels"] and record["narrow_convs"] == 0
    np.testing.assert_allclose(load(str(tmp_path / "p.so"))(x.numpy())[0], ref, rtol=1e-4,
                               atol=1e-5)
    manifest, _ = compile_nchwc(model, x, str(tmp_path / "n.so"), "host", pad_channels=False)
    assert not [p for p in manifest["passes"] if p["name"] == "pad_channels"]
    np.testing.assert_allclose(load(str(tmp_path / "n.so"))(x.numpy())[0], ref, rtol=1e-4,
                               atol=1e-5)
