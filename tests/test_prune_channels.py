"""Channel pruning surgery: numeric parity with masked torch, structure, plans, errors."""
import json

import numpy as np
import pytest
import torch

from edgec.compiler.deploy.artifact import write_json_atomic
from edgec.compiler import PipelineConfig, compile, load, zoo
from edgec.compiler.config import ConfigError
from edgec.compiler.frontend import import_model
from edgec.compiler.pipeline import run
from edgec.compiler.deploy.runtime import flatten_outputs
from edgec.compiler.train.prune_finetune import masked_copy
from edgec.compiler.tvm_compat import VirtualMachine, tensor, tvm
from edgec.passes.count_macs import count_macs
from edgec.passes.prune_channels import prune_channels
from edgec.passes.prune_plan import GroupPlan, PlanError, PrunePlan, make_plan
from conftest import seeded
from prune_models import concat_net, grouped_net

CONFIG = PipelineConfig(tuning_logs=None)


def _run(relax_model, x) -> np.ndarray:
    vm = VirtualMachine(run(relax_model, CONFIG).executable, tvm.cpu())
    return flatten_outputs(vm["main"](tensor(x.numpy())))[0]


def _parity(model, x, ratio=0.5, criterion="l1"):
    dense = import_model(model, (x,))
    plan = make_plan(dense, ratio, criterion, multiple=1)
    pruned = prune_channels(dense, plan)
    assert count_macs(pruned.mod) == plan.macs_after < plan.macs_before
    with torch.no_grad():
        ref = masked_copy(model, dense, plan)(x).numpy()
        full = model(x).numpy()
    assert np.abs(ref - full).max() > 1e-3  # the masks really changed the function
    np.testing.assert_allclose(_run(pruned, x), ref, rtol=1e-4, atol=1e-5)
    return dense, plan, pruned


def test_plain_cnn_equals_masked_torch():
    torch.manual_seed(0)
    _parity(seeded(zoo.MnistCNN(c1=8, c2=16, hidden=32)), torch.randn(2, 1, 28, 28))


def test_resnet18_residual_equals_masked_torch():
    model = seeded(zoo.torchvision_model("resnet18", num_classes=10))
    _, plan, pruned = _parity(model, torch.randn(1, 3, 64, 64), 0.5, "bn_scale")
    assert pruned.params["p_conv1_weight"].shape[0] == 32
    assert pruned.params["p_layer1_0_conv2_weight"].shape == (32, 32, 3, 3)


def test_mobilenet_v2_depthwise_equals_masked_torch():
    model = seeded(zoo.torchvision_model("mobilenet_v2", num_classes=10))
    _, _, pruned = _parity(model, torch.randn(1, 3, 64, 64), 0.5, "l2")
    assert pruned.params["p_features_1_conv_0_0_weight"].shape == (16, 1, 3, 3)


def test_concat_equals_masked_torch():
    model, x = concat_net()
    dense, plan, pruned = _parity(model, x)
    kept = {g.name: len(g.keep) for g in plan.groups}
    assert pruned.params["p_conv_c_weight"].shape == (kept["conv_c"], kept["conv_a"] + kept["conv_b"], 3, 3)


def test_weight_shapes_follow_plan_and_unprunable_untouched():
    model, x = grouped_net()
    dense = import_model(model, (x,))
    plan = make_plan(dense, 0.5, multiple=2)
    assert [g.name for g in plan.groups] == ["conv2"] and len(plan.groups[0].keep) == 4
    assert dict(plan.skipped)["gconv"] == "output of grouped conv2d (groups=2)"
    pruned = prune_channels(dense, plan)
    assert pruned.params["p_conv2_weight"].shape == (4, 8, 1, 1)
    assert pruned.params["p_fc_weight"].shape == (3, 4 * 16)
    for name in ("p_conv1_weight", "p_gconv_weight", "p_gconv_bias"):
        assert pruned.params[name] is dense.params[name]
    np.testing.assert_allclose(_run(pruned, x), masked_copy(model, dense, plan)(x).detach().numpy(),
                               rtol=1e-4, atol=1e-5)


def test_plan_json_roundtrip_and_pipeline_manifest(tmp_path):
    torch.manual_seed(0)
    model, x = seeded(zoo.MnistCNN(c1=8, c2=16, hidden=32)), torch.randn(1, 1, 28, 28)
    dense = import_model(model, (x,))
    plan = make_plan(dense, 0.5, "l1", multiple=4)
    path = str(tmp_path / "plan.json")
    write_json_atomic(path, plan.to_json())
    assert PrunePlan.load(path) == plan
    manifest = compile(model, (x,), config=PipelineConfig(prune_plan=path, tuning_logs=None),
                       output=str(tmp_path / "m.so"))
    (rec,) = [p for p in manifest["passes"] if p["name"] == "prune_channels"]
    assert rec["macs_after"] == plan.macs_after and rec["macs_before"] == count_macs(dense.mod)
    assert rec["weight_bytes_after"] < rec["weight_bytes_before"]
    y = load(str(tmp_path / "m.so"))(x.numpy())[0]
    np.testing.assert_allclose(y, masked_copy(model, dense, plan)(x).detach().numpy(), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = seeded(zoo.MnistCNN(c1=4, c2=8, hidden=16))
    return import_model(model, (torch.randn(1, 1, 28, 28),))


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_ratio_outside_range_is_rejected(small, ratio):
    with pytest.raises(PlanError, match=r"prune ratio must be in \[0, 1\)"):
        make_plan(small, ratio)
    with pytest.raises(ConfigError, match=r"prune must be a fraction in \[0, 1\)"):
        PipelineConfig(prune=ratio)


def test_bad_criterion_lists_choices(small):
    with pytest.raises(PlanError, match="valid: l1, l2, bn_scale"):
        make_plan(small, 0.5, "l3")
    with pytest.raises(ConfigError, match="valid: l1, l2, bn_scale"):
        PipelineConfig(prune=0.5, prune_criterion="l3")


def _edited(plan, **changes):
    g = plan.groups[0]
    return PrunePlan(**{**plan.__dict__, "groups": (GroupPlan(**{**g.__dict__, **changes}),)})


@pytest.mark.parametrize("changes,message", [
    ({"name": "conv9"}, "unknown group 'conv9'; prunable groups: conv1, conv2, fc1"),
    ({"keep": ()}, "keeps zero channels of group 'conv1'"),
    ({"keep": (0, 0)}, "distinct and in"),
    ({"channels": 5}, "has 4 channels, the plan says 5"),
    ({"name": "fc2"}, "cannot be pruned: reaches the model output"),
])
def test_bad_plans_are_rejected(small, changes, message):
    plan = make_plan(small, 0.5, multiple=1)
    with pytest.raises(PlanError, match=message.replace("(", r"\(")):
        prune_channels(small, _edited(plan, **changes))


def test_unreadable_plan_file(tmp_path):
    bad = tmp_path / "plan.json"
    bad.write_text("{not json")
    with pytest.raises(PlanError, match="is not JSON"):
        PrunePlan.load(str(bad))
    bad.write_text(json.dumps({"groups": []}))
    with pytest.raises(PlanError, match="not a prune plan"):
        PrunePlan.load(str(bad))


def test_onnx_model_prunes_like_zeroed_columns(tmp_path):
    """ONNX has no torch names: the reference is the dense Relax model with the
    consumer columns the plan removes set to zero (no surgery involved)."""
    from edgec.compiler.peers import export_onnx
    from edgec.passes.channel_groups import layout_indices
    from edgec.passes.channel_walk import analyze
    from edgec.passes.prune_plan import resolve

    torch.manual_seed(0)
    model, x = seeded(zoo.MnistCNN(c1=8, c2=16, hidden=32)), torch.randn(1, 1, 28, 28)
    dense = import_model(export_onnx(model, (x.numpy(),), str(tmp_path / "m.onnx")))
    plan = make_plan(dense, 0.5, multiple=2)
    cg = analyze(dense.mod)
    keep, zeroed = resolve(plan, dense, cg), dict(dense.params)
    for s in cg.slices:
        idx = layout_indices(s.layout, keep, cg)
        if s.role == "consumer" and idx is not None:
            drop = np.setdiff1d(np.arange(zeroed[s.name].shape[s.axis]), idx)
            zeroed[s.name] = zeroed[s.name].copy()
            np.moveaxis(zeroed[s.name], s.axis, 0)[drop] = 0.0
    pruned = prune_channels(dense, plan)
    assert pruned.params["fc1.weight"].shape == (16, 8 * 49)
    ref = _run(dense.with_module(dense.mod, zeroed), x)
    assert np.abs(ref - _run(dense, x)).max() > 1e-3
    np.testing.assert_allclose(_run(pruned, x), ref, rtol=1e-4, atol=1e-5)



def test_global_scope_and_rounding(small):
    layer = make_plan(small, 0.5, multiple=1)
    assert [len(g.keep) for g in layer.groups] == [2, 4, 8]
    rounded = make_plan(small, 0.5, multiple=4)
    assert [len(g.keep) for g in rounded.groups] == [4, 4, 8]  # rounded up, never above width
    glob = make_plan(small, 0.5, scope="global", multiple=1)
    kept = sum(len(g.keep) for g in glob.groups)
    assert 12 <= kept <= 16 and glob.macs_after < glob.macs_before
    assert all(list(g.keep) == sorted(set(g.keep)) for g in glob.groups)
