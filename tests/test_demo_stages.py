"""The pieces the demo's compression stages add: exit placement, a picklable exit model,
INT8 + early exit in one library, and the power proxy of packed INT8 kernels and stages."""
import io

import numpy as np
import pytest
import torch

from edgec.compiler.build import build
from edgec.compiler.config import PipelineConfig
from edgec.compiler.demo.context import DemoError
from edgec.compiler.demo.exits import exit_points
from edgec.compiler.frontend import import_model
from edgec.compiler.deploy.runtime import load
from edgec.compiler.train.exits import add_exits
from edgec.compiler.zoo import mnist_cnn

X = torch.zeros(1, 1, 28, 28)


class ThreeBlocks(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
        self.c2, self.b2 = torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
        self.c3 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(torch.max_pool2d(x, 2))))
        x = torch.relu(self.c3(torch.max_pool2d(x, 2)))
        return self.fc(x.mean((2, 3)))


def test_exit_points_take_block_outputs_never_the_last():
    assert exit_points(mnist_cnn(0), X) == ["bn1"]
    assert exit_points(ThreeBlocks().eval(), X) == ["b1", "b2"]
    assert exit_points(ThreeBlocks().eval(), X, most=1) == ["b1"]
    with pytest.raises(DemoError, match="no place for an early exit"):
        exit_points(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten()), X)


def test_exit_model_pickles_with_its_hooks():
    model = add_exits(mnist_cnn(0), ["bn1"], example=X)
    x = torch.randn(2, 1, 28, 28)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    for a, b in zip(model(x), again(x)):
        assert torch.equal(a, b)
    assert again(x)[0].shape == (2, 10)  # the hook of the loaded copy fills its own head


@pytest.fixture(scope="module")
def exit_model():
    torch.manual_seed(0)
    model = add_exits(mnist_cnn(0, c1=8, c2=16, hidden=32), ["bn1"], example=X).eval()
    calib = np.random.default_rng(0).random((32, 1, 28, 28), dtype=np.float32)
    return model, import_model(model, (X,)), calib


def test_int8_and_early_exit_build_one_library(exit_model, tmp_path):
    """The split keeps the INT8 pass's kernels; never exiting, it returns the INT8 final logits."""
    model, relax_model, calib = exit_model
    plain = build(relax_model, PipelineConfig(int8=True, tuning_logs=None),
                  str(tmp_path / "int8.so"), calib)
    split = build(relax_model, PipelineConfig(int8=True, early_exit=True, exit_thresholds=(1.0,),
                                              tuning_logs=None), str(tmp_path / "exit.so"), calib)
    assert [p["name"] for p in split["passes"]] == ["quantize_int8", "split_early_exits"]
    a, b = load(str(tmp_path / "int8.so")), load(str(tmp_path / "exit.so"))
    for x in calib[:4]:
        want, got = a(x[None]), b(x[None])
        np.testing.assert_array_equal(got[0], want[-1])
        assert b.exit_taken == 1
    lenient = build(relax_model, PipelineConfig(int8=True, early_exit=True, exit_thresholds=(0.0,),
                                                tuning_logs=None), str(tmp_path / "e0.so"), calib)
    assert lenient["passes"][-1]["num_exits"] == 1
    c = load(str(tmp_path / "e0.so"))
    np.testing.assert_array_equal(c(calib[:1])[0], a(calib[:1])[0])  # exit 0's INT8 logits
    assert c.exit_taken == 0


def test_power_proxy_counts_packed_int8_macs_and_each_stage(exit_model):
    from edgec.compiler.pipeline import run
    from edgec.compiler.demo.power import proxy_of, stage_proxies

    _, relax_model, calib = exit_model
    fp32 = proxy_of(relax_model)
    int8 = run(relax_model, PipelineConfig(int8=True, tuning_logs=None), calib,
               lower_only=True).model
    assert int8.mod.get_global_vars()  # sanity: the lowered module is there
    # packed kernels round channels up to their blocks: never fewer MACs than FP32
    assert fp32.macs <= proxy_of(int8).macs < 1.3 * fp32.macs
    cfg = PipelineConfig(early_exit=True, exit_thresholds=(0.5,), tuning_logs=None)
    split = run(relax_model, cfg, lower_only=True).model
    stages = stage_proxies(split)
    assert len(stages) == 2 and all(s.macs > 0 for s in stages)
    assert sum(s.macs for s in stages) == proxy_of(split).macs
    assert stages[0].macs < stages[1].macs  # conv1 + the head, then conv2 + the linears


def test_frozen_backbone_keeps_its_weights_and_batch_norm_statistics():
    from edgec.compiler.data import Split
    from edgec.compiler.train.exits import train_exits

    model = add_exits(mnist_cnn(0, c1=8, c2=16, hidden=32), ["bn1"], example=X)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    heads = {k: v.clone() for k, v in model.heads.state_dict().items()}
    rng = np.random.default_rng(0)
    data = Split(rng.random((64, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 64))
    train_exits(model, data, epochs=1, freeze_backbone=True, quiet=True)
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k  # running mean/var included
    assert any(not torch.equal(v, heads[k]) for k, v in model.heads.state_dict().items())
    assert model.frozen_backbone is False and model.train().backbone.training
