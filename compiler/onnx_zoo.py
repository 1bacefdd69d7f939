"""ONNX files in the forms other tools write, for edgec's coverage tests and benchmark.

torch's exporter writes clean files; model zoos and other exporters do not. Each writer
here makes one such form on purpose, from seeded weights, so the importer is tested on
what users bring:

- ``legacy_zoo_file``: opset 9, IR version 3, every initializer also listed in
  ``graph.input`` (the classic model-zoo files);
- ``shape_subgraph_file``: a batch dim left dynamic and a flatten computed at run time,
  Shape -> Gather -> Unsqueeze -> Concat -> Reshape (tf2onnx / paddle2onnx style);
- ``computed_resize_file``: a Resize whose output size is computed from the input's
  Shape (x2 upsampling in an FPN), with H and W dynamic.
"""
from __future__ import annotations

import numpy as np

from edgec.compiler.zoo import mnist_cnn

CASES = ("legacy_zoo", "shape_subgraph", "computed_resize")


def _onnx():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    return onnx, TensorProto, helper, numpy_helper


def _conv_weights(rng, cout, cin, k=3):
    return (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype("float32")


def legacy_zoo_file(path: str, seed: int = 0) -> dict:
    """A small CNN exported by torch at opset 9, rewritten to IR version 3 with every
    initializer listed among the graph inputs. Returns {input name: shape}."""
    import torch

    onnx, _, _, _ = _onnx()

    model = mnist_cnn(seed=seed, c1=8, c2=16, hidden=32)
    x = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    torch.onnx.export(model, (x,), path, input_names=["data"], opset_version=9, dynamo=False,
                      do_constant_folding=True)
    proto = onnx.load(path)
    listed = {i.name for i in proto.graph.input}
    for init in proto.graph.initializer:
        if init.name not in listed:
            proto.graph.input.append(onnx.helper.make_tensor_value_info(
                init.name, init.data_type, list(init.dims)))
    proto.ir_version = 3
    onnx.save(proto, path)
    return {"data": (1, 1, 28, 28)}


def shape_subgraph_file(path: str, seed: int = 0) -> dict:
    """conv -> relu -> flatten computed from Shape (batch dim dynamic) -> Gemm.
    Returns {input name: the static shape to give with --input}."""
    _, _, helper, numpy_helper = _onnx()
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(_conv_weights(rng, 8, 3), "w"),
             numpy_helper.from_array(rng.standard_normal(8).astype("float32"), "b"),
             numpy_helper.from_array(np.array([0], "int64"), "zero"),
             numpy_helper.from_array(np.array([-1], "int64"), "minus_one"),
             numpy_helper.from_array((rng.standard_normal((8 * 8 * 8, 10)) / 23).astype(
                 "float32"), "fc")]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Shape", ["r"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["n"], name="batch", axis=0),
        helper.make_node("Concat", ["n", "minus_one"], ["new_shape"], name="concat", axis=0),
        helper.make_node("Reshape", ["r", "new_shape"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "fc"], ["y"], name="classifier"),
    ]
    _save(path, "shape_subgraph", nodes, inits, ["N", 3, 8, 8], ["N", 10])
    return {"x": (1, 3, 8, 8)}


def computed_resize_file(path: str, seed: int = 0) -> dict:
    """conv -> Resize to 2x the Shape-computed H, W (nearest) -> conv, H and W dynamic.
    Returns {input name: the static shape to give with --input}."""
    _, _, helper, numpy_helper = _onnx()
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(_conv_weights(rng, 16, 3), "w1"),
             numpy_helper.from_array(_conv_weights(rng, 4, 16), "w2"),
             numpy_helper.from_array(np.array([2], "int64"), "start"),
             numpy_helper.from_array(np.array([4], "int64"), "end"),
             numpy_helper.from_array(np.array([2], "int64"), "two"),
             numpy_helper.from_array(np.array([0], "int64"), "zero"),
             numpy_helper.from_array(np.array([2], "int64"), "nc_end")]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Shape", ["r1"], ["s"], name="shape"),
        helper.make_node("Slice", ["s", "start", "end"], ["hw"], name="hw"),
        helper.make_node("Mul", ["hw", "two"], ["hw2"], name="double"),
        helper.make_node("Slice", ["s", "zero", "nc_end"], ["nc"], name="nc"),
        helper.make_node("Concat", ["nc", "hw2"], ["sizes"], name="sizes", axis=0),
        helper.make_node("Resize", ["r1", "", "", "sizes"], ["up"], name="upsample",
                         mode="nearest", coordinate_transformation_mode="asymmetric",
                         nearest_mode="floor"),
        helper.make_node("Conv", ["up", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    _save(path, "computed_resize", nodes, inits, [1, 3, "H", "W"], [1, 4, "H2", "W2"])
    return {"x": (1, 3, 12, 16)}


def _save(path, name, nodes, inits, x_dims, y_dims) -> None:
    """One float input ``x`` and output ``y`` (dims: numbers or names), opset 13."""
    onnx, TensorProto, helper, _ = _onnx()
    graph = helper.make_graph(nodes, name,
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_dims)],
                              inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                                producer_name="edgec-onnx-zoo"), path)


WRITERS = {"legacy_zoo": legacy_zoo_file, "shape_subgraph": shape_subgraph_file,
           "computed_resize": computed_resize_file}


def write_case(name: str, path: str, seed: int = 0) -> dict:
    """Write case ``name`` (one of CASES) to ``path``; returns {input: static shape}."""
    if name not in WRITERS:
        raise ValueError(f"unknown ONNX case {name!r}; known: {', '.join(CASES)}")
    return WRITERS[name](path, seed)
