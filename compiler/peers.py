"""Peer engines for benchmarks: PyTorch eager and ONNX Runtime, set up like edgec (batch 1)."""
from __future__ import annotations

import os
import tempfile

import numpy as np
import torch

from edgec.compiler.deploy.runtime import check_inputs, load
from edgec.compiler.tvm_compat import tensor


def torch_eager(model, inputs, threads: int | None = None):
    """A no-arg callable running ``model`` eagerly under no_grad."""
    if threads:
        torch.set_num_threads(threads)
    model = model.eval()
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in inputs]

    def run():
        with torch.no_grad():
            return model(*tensors)
    return run


def export_onnx(model, inputs, path: str | None = None) -> str:
    """Export with the legacy exporter (opset 17); returns the .onnx path."""
    if path is None:
        fd, path = tempfile.mkstemp(suffix=".onnx")
        os.close(fd)
    names = [f"input{i}" for i in range(len(inputs))]
    torch.onnx.export(model.eval(), tuple(torch.from_numpy(a) for a in inputs), path,
                      input_names=names, opset_version=17, dynamo=False)
    return path


def onnxruntime_session(onnx_path: str, inputs, threads: int | None = None):
    """A no-arg callable running the model in ONNX Runtime (CPU EP, full graph optimisation)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
    feed = {i.name: a for i, a in zip(sess.get_inputs(), inputs)}
    return lambda: sess.run(None, feed)


def edgec_runner(so_path: str, inputs):
    """A no-arg callable running a compiled edgec artifact (inputs converted once)."""
    model = load(so_path)
    args = [tensor(a) for a in check_inputs(model.manifest, tuple(inputs), {})]
    fn = model._vm["main"]
    return lambda: fn(*args)


def onnxruntime_qdq(fp32_onnx: str, calib: np.ndarray, out: str, reduce_range: bool = False,
                    pre_process: bool = True) -> str:
    """ONNX Runtime's static QDQ INT8 of ``fp32_onnx`` (its fastest INT8 on these CPUs):
    ``quant_pre_process`` first, as its docs ask (``pre_process``), then per-channel S8
    weights and U8 activations calibrated on ``calib``, one sample at a time. Returns ``out``."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = onnx.load(fp32_onnx, load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{name: calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.items, None)

    source = fp32_onnx
    if pre_process:
        source = os.path.splitext(out)[0] + "-pre.onnx"
        quant_pre_process(fp32_onnx, source)
    quantize_static(source, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    reduce_range=reduce_range)
    return out
