"""ONNX Runtime QDQ models compile to edgec's int8 kernels (not to FP32 convs)."""
import re

import numpy as np
import pytest
import torch

from edgec.compiler.api import compile as compile_model
from edgec.compiler.config import PipelineConfig
from edgec.compiler.frontend import import_model
from edgec.compiler.peers import export_onnx
from edgec.compiler.deploy.runtime import load
from edgec.compiler.tvm_compat import relax
from edgec.passes.import_qdq import has_qdq, strip_qdq
from edgec.passes.quant_scheme import QuantScheme
from edgec.passes.sensitivity import sqnr_db


@pytest.fixture(scope="module")
def qdq_model(tmp_path_factory):
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    from conftest import TinyCNN, seeded

    torch.manual_seed(0)
    model = seeded(TinyCNN())
    data = np.random.default_rng(0).standard_normal((32, 1, 8, 8)).astype("float32")
    folder = tmp_path_factory.mktemp("qdq")
    fp32 = export_onnx(model, [data[:1]], str(folder / "fp32.onnx"))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"input0": data[i:i + 1]} for i in range(len(data))])

        def get_next(self):
            return next(self.items, None)

    path = str(folder / "qdq.onnx")
    quantize_static(fp32, path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    reduce_range=True)
    return path


def test_strip_qdq_gives_fp32_graph_and_plan(qdq_model):
    model = import_model(qdq_model)
    assert has_qdq(model)
    stripped, names, plan = strip_qdq(model, QuantScheme("uint8", True))
    ops = []
    relax.analysis.post_order_visit(stripped.mod["main"], lambda e: ops.append(e.op.name)
                                    if isinstance(e, relax.Call) else None)
    assert "relax.quantize" not in ops and "relax.dequantize" not in ops
    assert len(names) == 3 and names[-1] == "fc" and set(plan.ranges) == set(names)
    assert plan.ranges[names[1]][0] == 0.0  # the ReLU ORT folded into a zero point


def test_qdq_onnx_compiles_to_int8_and_matches_ort(qdq_model, tmp_path):
    import onnxruntime as ort

    out = str(tmp_path / "qdq.so")
    manifest = compile_model(qdq_model, config=PipelineConfig(dump_ir=str(tmp_path / "ir")),
                             output=out)
    step = manifest["passes"][0]
    assert step["name"] == "quantize_int8" and step["source"] == "onnx-qdq"
    assert step["layers_int8"] == 3
    ir = (tmp_path / "ir" / "03_quantize.py").read_text()
    plain = ir.count('dtype="int32") = R.nn.conv2d(')
    packed = len(re.findall(r"R\.call_tir\(cls\.conv2d_int8_(avx2|vnni)_", ir))  # x86 hosts
    assert plain + packed == 2
    assert 'dtype="int32") = R.matmul(' in ir and "R.dequantize" not in ir
    lib = load(out)
    sess = ort.InferenceSession(qdq_model, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(5).standard_normal((16, 1, 8, 8)).astype("float32")
    got = np.concatenate([lib(x[i:i + 1])[0] for i in range(len(x))])
    ref = np.concatenate([sess.run(None, {"input0": x[i:i + 1]})[0] for i in range(len(x))])
    assert sqnr_db(got, ref) >= 30.0
