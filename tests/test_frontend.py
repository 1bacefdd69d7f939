import numpy as np
import pytest
import torch

from edgec.compiler.errors import FrontendError, UnsupportedOperatorError
from edgec.compiler.frontend import import_model
from edgec.passes.graph import TensorSpec, param_names


def test_torch_module_named_inputs_and_weights(tiny_cnn):
    model, x = tiny_cnn
    m = import_model(model, (x,), [TensorSpec("image", (1, 1, 8, 8), "float32")])
    assert [s.name for s in m.inputs] == ["image"]
    assert m.inputs[0].shape == (1, 1, 8, 8)
    names = param_names(m.mod)
    assert names == list(m.params)
    # every weight maps back to its torch state_dict key with the same values
    state = model.state_dict()
    for relax_name, torch_name in m.torch_names.items():
        np.testing.assert_array_equal(m.params[relax_name], state[torch_name].numpy())
    assert "conv1.weight" in m.torch_names.values()
    assert m.outputs()[0].shape == (1, 10)


def test_pt2_roundtrip(tiny_cnn, tmp_path):
    model, x = tiny_cnn
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(path))
    m = import_model(str(path))
    assert m.inputs[0].shape == (1, 1, 8, 8)
    assert len(m.params) == len(list(model.parameters()))


def test_onnx_import(tiny_cnn, tmp_path):
    model, x = tiny_cnn
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["data"], opset_version=17, dynamo=False)
    m = import_model(str(path))
    assert [s.name for s in m.inputs] == ["data"]
    assert m.outputs()[0].shape == (1, 10)


class Unsupported(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Linear(3, 3)

    def forward(self, x):
        return torch.special.bessel_j0(self.inner(x)) + torch.special.i1e(x)


def test_unsupported_ops_listed_together():
    with pytest.raises(UnsupportedOperatorError) as e:
        import_model(Unsupported(), (torch.randn(2, 3),))
    msg = str(e.value)
    assert "2 unsupported operator(s)" in msg
    assert "special_bessel_j0" in msg and "special_i1e" in msg


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FrontendError, match="model file not found"):
        import_model(str(tmp_path / "nope.onnx"))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(FrontendError, match="cannot read .* as ONNX"):
        import_model(str(bad))
    bad_pt2 = tmp_path / "bad.pt2"
    bad_pt2.write_bytes(b"garbage")
    with pytest.raises(FrontendError, match="torch.export program"):
        import_model(str(bad_pt2))
    other = tmp_path / "m.tflite"
    other.write_bytes(b"x")
    with pytest.raises(FrontendError, match="unknown model format '.tflite'; valid: .pt2, .onnx"):
        import_model(str(other))


def test_module_without_example_inputs():
    with pytest.raises(FrontendError, match="needs example_inputs"):
        import_model(torch.nn.Linear(2, 2))
