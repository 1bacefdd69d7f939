"""A sample of public architectures, one per family, at reduced resolution: each
compiles and matches torch, compiles and runs pruned (``prune=0.3``) and INT8
(benchmarks/bench_coverage.py runs every torchvision classifier at full size)."""
import numpy as np
import pytest
import torch

from edgec.compiler import PipelineConfig, compile, load
from edgec.compiler.zoo import import_torchvision

pytestmark = pytest.mark.slow  # about 5 minutes on a quiet 2-core machine; CI runs it

# family -> (torchvision name, input size, also prune and INT8?): dense concat, grouped
# convs (RegNet), NAS mobile blocks, inception branches, depthwise 7x7 + LayerNorm + GELU
# (ConvNeXt), channel shuffle (ShuffleNet). CI's budget takes FP32 parity for all six,
# prune and INT8 for three (bench_coverage does all of them for every classifier)
SAMPLE = {
    "densenet": ("densenet121", 32, False),
    "regnet": ("regnet_x_400mf", 32, True),
    "mnasnet": ("mnasnet0_5", 32, True),
    "inception": ("googlenet", 32, False),
    "convnext": ("convnext_tiny", 32, False),
    "shufflenet": ("shufflenet_v2_x1_0", 32, True),
}


def _model(name):
    tv = import_torchvision()
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    return tv.models.get_model(name, weights=None, num_classes=10, **kwargs).eval()


_BUILT = {}


def _arch(family, tmp_path_factory):
    """(name, model, input, folder) of a family, made once per test session."""
    if family not in _BUILT:
        name, size, _ = SAMPLE[family]
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
        _BUILT[family] = (name, _model(name), x, tmp_path_factory.mktemp(name))
    return _BUILT[family]


COMPRESSED = sorted(f for f, (_, _, compress) in SAMPLE.items() if compress)


def _untuned(**fields):
    return PipelineConfig(tuning_logs=None, **fields)


@pytest.mark.parametrize("family", sorted(SAMPLE))
def test_fp32_matches_torch(family, tmp_path_factory):
    name, model, x, folder = _arch(family, tmp_path_factory)
    out = str(folder / "fp32.so")
    compile(model, (x,), output=out, config=_untuned())
    with torch.no_grad():
        ref = model(x).numpy()
    y = load(out)(x.numpy())[0]
    assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max(), name


@pytest.mark.parametrize("family", COMPRESSED)
def test_pruned_compiles_and_runs(family, tmp_path_factory):
    name, model, x, folder = _arch(family, tmp_path_factory)
    out = str(folder / "pruned.so")
    manifest = compile(model, (x,), output=out, config=_untuned(prune=0.3))
    record = next(p for p in manifest["passes"] if p["name"] == "prune_channels")
    assert record["macs_after"] <= record["macs_before"]
    y = load(out)(x.numpy())[0]
    assert y.shape == (1, 10) and np.isfinite(y).all()


@pytest.mark.parametrize("family", COMPRESSED)
def test_int8_compiles_and_runs(family, tmp_path_factory):
    name, model, x, folder = _arch(family, tmp_path_factory)
    rng = np.random.default_rng(2)
    calib = rng.standard_normal((8, *x.shape[1:])).astype("float32")
    out = str(folder / "int8.so")
    manifest = compile(model, (x,), output=out, calib_data=calib,
                       config=_untuned(int8=True, calib_samples=8))
    record = next(p for p in manifest["passes"] if p["name"] == "quantize_int8")
    assert record["layers_int8"] > 0
    y = load(out)(x.numpy())[0]
    with torch.no_grad():
        ref = model(x).numpy()
    assert y.shape == ref.shape and np.isfinite(y).all()
    # int8 of random weights: the logits keep their direction (cosine), not every digit
    cos = float((y * ref).sum() / (np.linalg.norm(y) * np.linalg.norm(ref)))
    assert cos > 0.8, (name, cos)
