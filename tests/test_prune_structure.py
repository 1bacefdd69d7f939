"""Channel pruning: a Before/Expected module, fine-tuning under masks, the prune-plan CLI."""
import json

import numpy as np
import pytest
import torch
from tvm.script import ir as I
from tvm.script import relax as R

from edgec.compiler import zoo
from edgec.compiler.cli import main
from edgec.compiler.frontend import import_model
from edgec.passes.graph import RelaxModel, TensorSpec
from edgec.compiler.data import mnist
from edgec.compiler.train.prune_finetune import masked_copy, prune_finetune, shrink_torch, torch_masks
from edgec.compiler.tvm_compat import tvm
from edgec.passes.prune_channels import prune_channels
from edgec.passes.prune_plan import GroupPlan, PrunePlan, make_plan
from conftest import seeded
from prune_models import concat_net
from test_prune_channels import _run


@I.ir_module
class Before:
    @R.function
    def main(x: R.Tensor((1, 2, 4, 4), "float32"), w1: R.Tensor((4, 2, 1, 1), "float32"),
             b1: R.Tensor((4,), "float32"), w2: R.Tensor((3, 4, 1, 1), "float32")):
        R.func_attr({"num_input": 1})
        with R.dataflow():
            y = R.nn.conv2d(x, w1)
            b = R.reshape(b1, R.shape([1, 4, 1, 1]))
            z = R.add(y, b)
            r = R.nn.relu(z)
            out = R.nn.conv2d(r, w2)
            R.output(out)
        return out


@I.ir_module
class Expected:
    @R.function
    def main(x: R.Tensor((1, 2, 4, 4), "float32"), w1: R.Tensor((2, 2, 1, 1), "float32"),
             b1: R.Tensor((2,), "float32"), w2: R.Tensor((3, 2, 1, 1), "float32")):
        R.func_attr({"num_input": 1})
        with R.dataflow():
            y = R.nn.conv2d(x, w1)
            b = R.reshape(b1, R.shape([1, 2, 1, 1]))
            z = R.add(y, b)
            r = R.nn.relu(z)
            out = R.nn.conv2d(r, w2)
            R.output(out)
        return out


def test_before_expected_and_sliced_values():
    rng = np.random.default_rng(0)
    params = {"w1": rng.standard_normal((4, 2, 1, 1)).astype("float32"),
              "b1": rng.standard_normal(4).astype("float32"),
              "w2": rng.standard_normal((3, 4, 1, 1)).astype("float32")}
    model = RelaxModel(Before, params, (TensorSpec("x", (1, 2, 4, 4), "float32"),))
    plan = PrunePlan("l1", 0.5, "layer", 1, 1, (GroupPlan("w1", ("w1",), 4, (1, 3)),))
    after = prune_channels(model, plan)
    tvm.ir.assert_structural_equal(after.mod["main"], Expected["main"])
    np.testing.assert_array_equal(after.params["w1"], params["w1"][[1, 3]])
    np.testing.assert_array_equal(after.params["b1"], params["b1"][[1, 3]])
    np.testing.assert_array_equal(after.params["w2"], params["w2"][:, [1, 3]])


def test_finetune_keeps_masks_and_compiles_to_the_same_function():
    data = mnist(0)
    torch.manual_seed(0)
    model = zoo.mnist_cnn(c1=4, c2=8, hidden=16)
    x = torch.from_numpy(data.test.x[:2])
    dense = import_model(model, (x,))
    plan = make_plan(dense, 0.5, multiple=1)
    tuned = prune_finetune(model, dense, plan, data.train.head(256), epochs=1, quiet=True)
    state = dict(tuned.named_parameters())
    masks = torch_masks(dense, plan)
    assert set(masks) == {"conv2.weight", "fc1.weight", "fc2.weight"}
    for name, mask in masks.items():
        assert float((state[name] * (1 - mask)).abs().max()) == 0.0
        assert not torch.equal(state[name], dict(model.named_parameters())[name])  # it trained
    pruned = prune_channels(import_model(tuned, (x,)), plan)
    with torch.no_grad():
        np.testing.assert_allclose(_run(pruned, x), tuned(x).numpy(), rtol=1e-4, atol=1e-5)


def test_prune_plan_cli(tmp_path, monkeypatch, capsys):
    (tmp_path / "tinymod.py").write_text(
        "from edgec.compiler import zoo\n"
        "def build():\n    return zoo.mnist_cnn(c1=8, c2=16, hidden=32)\n")
    monkeypatch.chdir(tmp_path)
    args = ["prune-plan", "tinymod:build", "-i", "x:1x1x28x28", "--ratio", "0.5",
            "--multiple", "4", "--json", "-o", "plan.json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert [len(g["keep"]) for g in out["groups"]] == [4, 8, 16]
    assert out["macs_after"] < out["macs_before"] and out["skipped"] == [["fc2", "reaches the model output"]]
    assert PrunePlan.load("plan.json") == PrunePlan.from_json(out)
    assert main(["prune-plan", "tinymod:build", "-i", "x:1x1x28x28", "--ratio", "1"]) == 2
    assert capsys.readouterr().err.strip() == "edgec: error: prune ratio must be in [0, 1), got 1.0"
    assert main(["compile", "tinymod:build", "-i", "x:1x1x28x28", "--prune-plan", "plan.json",
                 "--no-tuning", "-o", "m.so", "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["passes"][0]["macs_after"] == out["macs_after"]


@pytest.mark.parametrize("make", ["concat", "mobilenet_v2"])
def test_shrunk_torch_model_equals_masked(make):
    if make == "concat":
        model, x = concat_net()
    else:
        model, x = seeded(zoo.torchvision_model(make, num_classes=10)), torch.randn(1, 3, 32, 32)
    dense = import_model(model, (x,))
    plan = make_plan(dense, 0.5, multiple=1)
    small = shrink_torch(model, dense, plan)
    assert sum(p.numel() for p in small.parameters()) < 0.6 * sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        np.testing.assert_allclose(small(x).numpy(), masked_copy(model, dense, plan)(x).numpy(),
                                   rtol=1e-4, atol=1e-6)
