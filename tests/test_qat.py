"""A trained MNIST CNN: PTQ and QAT INT8 accuracy against FP32, through built .so files."""
import copy

import numpy as np
import pytest
import torch

from edgec.compiler.api import compile as compile_model
from edgec.compiler.config import PipelineConfig
from edgec.compiler.deploy.runtime import load
from edgec.compiler.data import mnist
from edgec.compiler.train.fit import accuracy, fit
from edgec.compiler.train.qat import prepare_qat
from edgec.compiler.zoo import mnist_cnn
from edgec.passes.quant_scheme import QuantPlan, QuantScheme

BATCH = 100


@pytest.fixture(scope="module")
def trained():
    ds = mnist(0)
    model = mnist_cnn(0, c1=8, c2=16, hidden=32)
    fit(model, ds.train, epochs=2, lr=3e-3, quiet=True)
    return ds, model


def _logits(model, ds, path, config, calib=None):
    example = torch.from_numpy(ds.test.x[:BATCH])
    manifest = compile_model(model, example, config=config, output=path, calib_data=calib)
    lib = load(path)
    out = np.concatenate([lib(ds.test.x[i:i + BATCH])[0] for i in range(0, len(ds.test), BATCH)])
    return out, manifest


@pytest.fixture(scope="module")
def fp32_logits(trained, tmp_path_factory):
    ds, model = trained
    return _logits(model, ds, str(tmp_path_factory.mktemp("fp") / "fp.so"), PipelineConfig())[0]


def test_ptq_accuracy_and_agreement(trained, fp32_logits, tmp_path):
    ds, model = trained
    config = PipelineConfig(int8=True, calib_samples=300)
    q, manifest = _logits(model, ds, str(tmp_path / "q.so"), config, ds.train.x[:300])
    fp_acc, q_acc = accuracy(fp32_logits, ds.test.y), accuracy(q, ds.test.y)
    assert fp_acc > 85.0  # a trained model, so agreement means something
    assert abs(fp_acc - q_acc) <= 1.0
    assert (q.argmax(1) == fp32_logits.argmax(1)).mean() >= 0.99
    assert manifest["weights_bytes"] <= 0.27 * manifest["weights_bytes_imported"]


def test_qat_scale_table_compiles_within_half_a_point(trained, fp32_logits, tmp_path):
    ds, model = trained
    student = copy.deepcopy(model)
    qat = prepare_qat(student, QuantScheme("uint8", True), ds.train.x[:300])
    fake_quant_out = student(torch.from_numpy(ds.test.x[:8]))
    fit(student, ds.train, epochs=1, lr=3e-4, quiet=True)
    plan = qat.finish(str(tmp_path / "scales.json"))
    assert set(plan.ranges) == {"conv1", "conv2", "fc1", "fc2"} and plan.source == "qat"
    assert QuantPlan.load(str(tmp_path / "scales.json")).ranges == plan.ranges
    assert not torch.allclose(fake_quant_out, model(torch.from_numpy(ds.test.x[:8])))
    config = PipelineConfig(int8=True, int8_scales=str(tmp_path / "scales.json"))
    q, manifest = _logits(student, ds, str(tmp_path / "qat.so"), config)
    assert manifest["passes"][0]["source"] == "qat"
    assert accuracy(q, ds.test.y) >= accuracy(fp32_logits, ds.test.y) - 0.5
