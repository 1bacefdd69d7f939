import time

import numpy as np
import torch

from edgec.compiler.compare import Engine, compare, markdown_table
from edgec.compiler.peers import edgec_runner, export_onnx, onnxruntime_session, torch_eager


def test_compare_orders_engines_by_work():
    fast = Engine("fast", lambda: time.sleep(0.0005))
    slow = Engine("slow", lambda: time.sleep(0.003))
    r = compare([fast, slow], rounds=3, samples=2, warmup=1, quiet=True)
    assert r["baseline"] == "fast"
    assert r["engines"]["slow"]["ratio_to_fast"] > 2.0
    assert r["engines"]["fast"]["ratio_to_fast"] == 1.0
    assert r["machine"]["cores"] >= 1 and "cpu" in r["machine"]
    assert "| slow |" in markdown_table(r, "t")


def test_peers_agree_on_outputs(tiny_cnn, tmp_path):
    from edgec.compiler import compile

    model, x = tiny_cnn
    inputs = [x.numpy()]
    so = str(tmp_path / "m.so")
    compile(model, (x,), output=so)
    eager = torch_eager(model, inputs)().numpy()
    ort_out = onnxruntime_session(export_onnx(model, inputs, str(tmp_path / "m.onnx")), inputs)()[0]
    tvm_out = edgec_runner(so, inputs)()[0].numpy()
    np.testing.assert_allclose(ort_out, eager, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(tvm_out, eager, rtol=1e-4, atol=1e-5)
    assert torch.is_tensor(torch.from_numpy(tvm_out))
