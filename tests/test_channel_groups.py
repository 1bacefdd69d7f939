"""Channel dependency analysis: groups, slices, reasons, MAC counts."""
import pytest
import torch

from edgec.compiler import zoo
from edgec.compiler.frontend import import_model
from edgec.passes.channel_walk import analyze
from edgec.passes.count_macs import count_macs
from edgec.passes.prune_plan import estimate, group_name
from prune_models import concat_net, grouped_net, softmax_net


def _groups(model):
    cg = analyze(model.mod)
    return cg, {group_name(g, model.torch_names): g for g in cg.groups()}


@pytest.fixture(scope="module")
def mnist():
    return import_model(zoo.mnist_cnn(c1=4, c2=8, hidden=16), (torch.randn(1, 1, 28, 28),))


def test_plain_cnn_groups_and_flatten_blocks(mnist):
    cg, groups = _groups(mnist)
    assert list(groups) == ["conv1", "conv2", "fc1", "fc2"]
    assert [groups[n].prunable for n in groups] == [True, True, True, False]
    assert groups["fc2"].reasons == ["reaches the model output"]
    conv2 = {(s.name, s.axis, s.role) for s in cg.slices_of(groups["conv2"].space)}
    assert conv2 >= {("p_conv2_weight", 0, "producer"), ("p_conv2_bias", 0, "member"),
                     ("p_bn2_weight", 0, "bn"), ("p_bn2_bias", 0, "member")}
    # batch-norm running statistics are Relax constants, sliced too
    assert sum(s.kind == "const" for s in cg.slices_of(groups["conv2"].space)) == 2
    fc1_in = [s for s in cg.slices if s.name == "p_fc1_weight" and s.role == "consumer"]
    assert len(fc1_in) == 1 and fc1_in[0].axis == 1 and fc1_in[0].layout.block == 49


def test_mac_count_matches_hand_count(mnist):
    cg, _ = _groups(mnist)
    hand = 4 * 9 * 28 * 28 + 8 * 4 * 9 * 14 * 14 + 392 * 16 + 16 * 10
    assert count_macs(mnist.mod) == hand == estimate(mnist, cg, {})[0]


def test_resnet18_residual_adds_tie_groups():
    m = zoo.torchvision_model("resnet18", num_classes=10)
    model = import_model(m, (torch.randn(1, 3, 32, 32),))
    _, groups = _groups(model)
    stem = [model.torch_names[p] for p in groups["conv1"].producers]
    assert stem == ["conv1.weight", "layer1.0.conv2.weight", "layer1.1.conv2.weight"]
    assert "layer2.0.downsample.0.weight" in [model.torch_names[p] for p in
                                              groups["layer2.0.conv2"].producers]
    assert sum(g.prunable for g in groups.values()) == 12 and not groups["fc"].prunable


def test_mobilenet_depthwise_ties_input_to_output():
    m = zoo.torchvision_model("mobilenet_v2", num_classes=10)
    model = import_model(m, (torch.randn(1, 3, 32, 32),))
    cg, groups = _groups(model)
    assert len(cg.depthwise) == 17
    stem = {s.name for s in cg.slices_of(groups["features.0.0"].space)}
    assert "p_features_1_conv_0_0_weight" in stem  # the depthwise kernel follows its input
    assert all(g.prunable for n, g in groups.items() if n != "classifier.1")


def test_concat_maps_offsets():
    model = import_model(*concat_net())
    cg, groups = _groups(model)
    (s,) = [s for s in cg.slices if s.name == "p_conv_c_weight" and s.role == "consumer"]
    roots = [cg.group_of(sp) for sp, _ in s.layout.segments]
    assert roots == [groups["conv_a"].space, groups["conv_b"].space]
    assert [n for _, n in s.layout.segments] == [6, 4]


@pytest.mark.parametrize("make,name,reason", [
    (grouped_net, "conv1", "grouped conv2d (groups=2)"),
    (grouped_net, "gconv", "output of grouped conv2d (groups=2)"),
    (softmax_net, "conv1", "consumed by relax.nn.softmax"),
])
def test_unfollowed_structure_is_unprunable_with_reason(make, name, reason):
    model = import_model(*make())
    _, groups = _groups(model)
    assert not groups[name].prunable and reason in groups[name].reasons
    assert groups["conv2"].prunable
