"""Torchvision families that failed somewhere in edgec (benchmarks/bench_coverage.py), as
tiny models built from torchvision's own blocks: each case compiles and matches torch
(issue 22). Seconds each; the full-size models run in the coverage benchmark."""
import numpy as np
import pytest
import torch

from conftest import torch_out
from edgec.compiler import PipelineConfig, compile, load
from edgec.compiler.frontend import import_model
from edgec.compiler.tvm_compat import is_tensor_constant, relax, tvm
from edgec.compiler.zoo import import_torchvision
from edgec.passes.channel_walk import analyze
from edgec.passes.prune_plan import make_plan

TOL = 1e-4


def _swin(v2=False):
    """Two stages of Swin (shifted windows: roll, the attention mask built with
    slice_scatter over arange), 16 wide, 4x4 windows, 32x32 input."""
    sw = import_torchvision().models.swin_transformer
    torch.manual_seed(0)
    extra = dict(block=sw.SwinTransformerBlockV2, downsample_layer=sw.PatchMergingV2) if v2 else {}
    model = sw.SwinTransformer([4, 4], 16, [2, 2], [2, 4], [4, 4], num_classes=10, **extra)
    return model.eval(), torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _rel(y, ref) -> float:
    return float(np.abs(y - ref).max() / np.abs(ref).max())


def test_int_imm_is_not_a_tensor_constant():
    # 0.27: IntImm subclasses tvm.ir.expr.Constant (payload a Python int)
    assert not is_tensor_constant(tvm.tirx.IntImm("int64", 0))
    assert is_tensor_constant(relax.const(np.ones(3, "float32")))


@pytest.mark.parametrize("v2", [False, True], ids=["swin", "swin_v2"])
def test_swin_prune_plan_skips_what_it_cannot_follow(v2):
    """Swin's shifted-window mask passes IntImm arguments (arange, slice_scatter); the
    channel analysis took them for weights and the plan crashed ('int' object has no
    attribute 'shape'). Now each group it cannot follow is skipped with its reason."""
    model, x = _swin(v2)
    relax_model = import_model(model, (x,))
    cg = analyze(relax_model.mod)
    assert all(is_tensor_constant(c) for c in cg.constants.values())
    plan = make_plan(relax_model, 0.3)
    assert plan.skipped and all(reason for _, reason in plan.skipped)
    assert plan.macs_after <= plan.macs_before


def test_swin_pruned_build_matches_torch(tmp_path):
    model, x = _swin()
    out = str(tmp_path / "swin.so")
    manifest = compile(model, (x,), output=out,
                       config=PipelineConfig(tuning_logs=None, prune=0.3))
    record = next(p for p in manifest["passes"] if p["name"] == "prune_channels")
    assert record["skipped"]
    # whatever was left unpruned computes as torch does
    if record["macs_after"] == record["macs_before"]:
        assert _rel(load(out)(x.numpy())[0], torch_out(model, x)) <= TOL
