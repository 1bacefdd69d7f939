"""Torchvision families that failed somewhere in edgec (benchmarks/bench_coverage.py), as
tiny models built from torchvision's own blocks: each case compiles and matches torch
(issue 22). Seconds each; the full-size models run in the coverage benchmark."""
import json

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
    """The whole pipeline on a pruned Swin: equal to torch with the same channels zeroed."""
    model, x = _swin()
    plan = make_plan(import_model(model, (x,)), 0.3)
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan.to_json()))
    out = str(tmp_path / "swin.so")
    manifest = compile(model, (x,), output=out,
                       config=PipelineConfig(tuning_logs=None, prune_plan=str(plan_path)))
    record = next(p for p in manifest["passes"] if p["name"] == "prune_channels")
    assert record["skipped"] and record["macs_after"] < record["macs_before"]
    y = load(out)(x.numpy())[0]
    with torch.no_grad():
        assert _rel(y, torch_out(_zeroed(model, plan), x)) <= TOL

def _convnext():
    """Two ConvNeXt stages, 16 and 32 wide: NHWC LayerNorm and a Linear MLP per block."""
    cn = import_torchvision().models.convnext
    torch.manual_seed(0)
    model = cn.ConvNeXt([cn.CNBlockConfig(16, 32, 1), cn.CNBlockConfig(32, None, 1)],
                        num_classes=10)
    return model.eval(), torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _vit():
    """Two ViT encoder layers, 16 wide; torchvision zero-inits the head: re-seeded."""
    vt = import_torchvision().models.vision_transformer
    torch.manual_seed(0)
    model = vt.VisionTransformer(32, 8, 2, 2, 16, 32, num_classes=10)
    torch.nn.init.normal_(model.heads.head.weight, std=0.2)
    return model.eval(), torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _zeroed(model, plan):
    """``model`` with each pruned group's dropped output rows (and biases) zeroed."""
    state = model.state_dict()
    for g in plan.groups:
        drop = sorted(set(range(g.channels)) - set(g.keep))
        for weight in g.producers:
            state[weight][drop] = 0
            bias = weight[:-len("weight")] + "bias"
            if bias in state:
                state[bias][drop] = 0
    model.load_state_dict(state)
    return model


@pytest.mark.parametrize("family", ["convnext", "vit"])
def test_mlp_hidden_channels_prune_like_torch(family):
    """A Linear on NHWC pixels or tokens flattens to 2-D and back (reshapes that keep the
    channel axis last): the walk follows them, so each MLP's hidden width is a group
    (before, every ConvNeXt/ViT/Swin group was skipped: 'nothing prunable')."""
    from edgec.passes.calibrate import run_outputs
    from edgec.passes.graph import bind
    from edgec.passes.prune_channels import prune_channels

    model, x = _convnext() if family == "convnext" else _vit()
    relax_model = import_model(model, (x,))
    plan = make_plan(relax_model, 0.5)
    hidden = [g for g in plan.groups if len(g.keep) < g.channels]
    assert len(hidden) == 2 and plan.macs_after < plan.macs_before
    y = run_outputs(bind(prune_channels(relax_model, plan)), x.numpy(), relax_model.inputs[0])
    with torch.no_grad():
        ref = torch_out(_zeroed(model, plan), x)
    assert _rel(y, ref) <= TOL


class _FadingSignal(torch.nn.Module):
    """A layer whose input range is tiny next to its bias (random-weight inception_v3's
    classifier sees activations of ~1e-9 and a bias of ~0.02)."""

    def __init__(self):
        super().__init__()
        self.fade = torch.nn.Conv2d(4, 8, 1)
        self.head = torch.nn.Conv2d(8, 8, 1)
        with torch.no_grad():
            self.fade.weight.mul_(1e-9)
            self.fade.bias.zero_()

    def forward(self, x):
        return self.head(torch.relu(self.fade(x))).mean((2, 3))


def test_int8_layer_whose_bias_overflows_int32_stays_fp32(tmp_path):
    """Its bias in the accumulator's scale (s_in * s_w ~ 1e-12) does not fit int32: it
    saturated, and the output was wrong (inception_v3: SQNR 0 dB vs FP32, 142 dB after)."""
    torch.manual_seed(0)
    model, x = _FadingSignal().eval(), torch.randn(1, 4, 6, 6)
    calib = np.random.default_rng(2).standard_normal((8, 4, 6, 6)).astype("float32")
    out = str(tmp_path / "fading.so")
    manifest = compile(model, (x,), output=out, calib_data=calib,
                       config=PipelineConfig(tuning_logs=None, int8=True, calib_samples=8))
    record = next(p for p in manifest["passes"] if p["name"] == "quantize_int8")
    assert record["fp32_int32_overflow"] == ["head"] and record["layers_int8"] == 1
    assert _rel(load(out)(x.numpy())[0], torch_out(model, x)) <= 1e-3
