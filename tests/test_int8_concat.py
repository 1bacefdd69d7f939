"""INT8 channel concat (passes/quantize_int8.py, ``_Realizer.concat``): branches whose
producers requantize to the range of the concat's consumers concat in int8 (squeezenet's
fire modules, inception blocks); a branch with a scale of its own keeps the FP32 concat.
Structural on the quantize step the pipeline runs, numeric against torch."""
import numpy as np
import torch
from torch import nn

from edgec.compiler.api import compile as compile_model
from edgec.compiler.config import PipelineConfig
from edgec.compiler.deploy.runtime import load
from edgec.compiler.frontend import import_model
from edgec.compiler.pipeline import run
from edgec.compiler.tvm_compat import relax


class Fire(nn.Module):
    """squeezenet's module: a 1x1 squeeze, then 1x1 and 3x3 expands concatenated;
    ``tap``: the 1x1 expand's output also feeds a conv of its own (its own range)."""

    def __init__(self, c, s, e, tap=False):
        super().__init__()
        self.squeeze, self.e1, self.e3 = nn.Conv2d(c, s, 1), nn.Conv2d(s, e, 1), nn.Conv2d(s, e, 3, padding=1)
        self.tap = nn.Conv2d(e, 2 * e, 1) if tap else None

    def forward(self, x):
        x = torch.relu(self.squeeze(x))
        a, b = torch.relu(self.e1(x)), torch.relu(self.e3(x))
        y = torch.cat([a, b], 1)
        return y + self.tap(a * 4.0) if self.tap is not None else y


def _model(tap=False):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, 2), nn.ReLU(), Fire(16, 8, 16), nn.MaxPool2d(2),
                         Fire(32, 8, 16, tap=tap), nn.Conv2d(32, 10, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


def _concat_dtypes(mod):
    found = []
    relax.analysis.post_order_visit(mod["main"].body, lambda e: found.append(str(e.ty.dtype))
                                    if isinstance(e, relax.Call)
                                    and getattr(e.op, "name", "") == "relax.concat" else None)
    return sorted(found)


def _data(n, size=24):
    return np.random.default_rng(n).standard_normal((n, 3, size, size)).astype("float32")


def _quantized(model):
    x = torch.from_numpy(_data(1)[:1])
    res = run(import_model(model, (x,)), PipelineConfig(target="host", tuning_logs=None, int8=True,
                                                        calib_samples=16),
              calib_data=_data(16), lower_only=True)
    return res.model.mod


def test_fire_branches_concat_in_int8():
    assert _concat_dtypes(_quantized(_model())) == ["uint8", "uint8"]


def test_a_branch_with_a_scale_of_its_own_keeps_the_float_concat():
    assert _concat_dtypes(_quantized(_model(tap=True))) == ["float32", "uint8"]


def test_int8_concat_stays_accurate(tmp_path):
    model, out = _model(), str(tmp_path / "fire.so")
    tests = _data(8)
    compile_model(model, (torch.from_numpy(tests[:1]),), output=out, calib_data=_data(16),
                  config=PipelineConfig(target="host", tuning_logs=None, int8=True,
                                        calib_samples=16))
    q = load(out)
    with torch.no_grad():
        pairs = [(q(t[None])[0], model(torch.from_numpy(t[None])).numpy()) for t in tests]
    err = sum(float(((a - b) ** 2).sum()) for a, b in pairs)
    signal = sum(float((b ** 2).sum()) for _, b in pairs)
    assert 10 * np.log10(signal / err) > 30  # dB
