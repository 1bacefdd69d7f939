"""ONNX files as other tools write them, made ready for TVM's importer.

TVM's Relax importer takes a clean, static graph. Files from model zoos and other
exporters are not: old files (IR < 4) list every initializer in ``graph.input``; a
paddle2onnx or tf2onnx file computes shapes at run time (Shape -> Gather -> Concat ->
Reshape) and leaves H and W dynamic; old opsets name ops TVM converts only from a
later version. ``prepare`` fixes each before TVM sees the graph:

1. initializers listed as inputs are weights, not inputs (dropped from ``graph.input``);
2. every real input gets a static shape: the file's, or the one given with ``--input``;
   a dynamic dim with no shape given is one error naming the input, the dim and the flag;
3. opsets below ``MIN_OPSET`` are converted with ``onnx.version_converter``;
4. onnxslim (pinned in pyproject.toml) folds the shape-computing subgraphs to constants
   and runs ONNX shape inference, with the input shapes now fixed. onnxslim was chosen
   over onnx-simplifier because it is pure Python (no native build on a board's Python,
   no onnxruntime call of its own) and kept up to date with ONNX releases.
"""
from __future__ import annotations

import contextlib
import io
import logging
import re

from edgec.compiler.errors import FrontendError

MIN_OPSET = 11  # TVM's Relax importer converts several ops (Resize, Pad, Clip...) from 11 on
TARGET_OPSET = 13


def prepare(proto, input_specs=None):
    """Return ``(proto, notes)``: the model ready for TVM and a list of what was done."""
    notes = []
    dropped = drop_initializer_inputs(proto)
    if dropped:
        notes.append(f"{dropped} initializer(s) listed as graph inputs treated as weights")
    shapes = static_input_shapes(proto, input_specs)
    proto, converted = convert_opset(proto)
    if converted:
        notes.append(converted)
    proto, slimmed = simplify(proto, shapes)
    if slimmed:
        notes.append(slimmed)
    scalars_as_constants(proto)
    return proto, notes


def default_opset(proto) -> int:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def drop_initializer_inputs(proto) -> int:
    """ONNX IR < 4 lists initializers among ``graph.input``; TVM then makes each one a
    function parameter and fails on a duplicate name. Drop them from the inputs."""
    weights = {init.name for init in proto.graph.initializer}
    keep = [i for i in proto.graph.input if i.name not in weights]
    dropped = len(proto.graph.input) - len(keep)
    if dropped:
        del proto.graph.input[:]
        proto.graph.input.extend(keep)
        proto.ir_version = max(proto.ir_version, 4)  # what the file now is (IR 4 semantics)
    return dropped


def static_input_shapes(proto, input_specs=None) -> dict:
    """{input name: static shape}: the shapes given (``--input NAME:SHAPE``) or the file's;
    a dynamic dim left over is a FrontendError naming the input, the dim and the flag."""
    names = [i.name for i in proto.graph.input]
    given = {name: tuple(int(d) for d in spec.shape)
             for name, spec in specs_by_input(proto, input_specs).items()}
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise FrontendError(f"--input names {', '.join(unknown)}, not an input of the model; "
                            f"its inputs: {', '.join(names)}")
    shapes = {}
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name in given:
            shape = given[value.name]
            if len(shape) != len(dims):
                raise FrontendError(f"--input {value.name} has {len(shape)} dims; the model's "
                                    f"input {value.name} has {len(dims)}: {_dims_text(dims)}")
            for d, (dim, n) in enumerate(zip(dims, shape)):
                if dim.HasField("dim_value") and dim.dim_value > 0 and dim.dim_value != n:
                    raise FrontendError(f"--input {value.name}: dim {d} is {n}, but the model "
                                        f"fixes it to {dim.dim_value} ({_dims_text(dims)})")
        else:
            dynamic = [d for d, dim in enumerate(dims)
                       if not (dim.HasField("dim_value") and dim.dim_value > 0)]
            if dynamic:
                d = dynamic[0]
                raise FrontendError(
                    f"input {value.name!r} has a dynamic dim {d} "
                    f"({dims[d].dim_param or '?'}) in {_dims_text(dims)}; give every dim with "
                    f"--input {value.name}:{'x'.join(_example(dims))}")
            shape = tuple(int(dim.dim_value) for dim in dims)
        shapes[value.name] = shape
        for dim, n in zip(dims, shape):  # fix the shape in the file itself
            dim.Clear()
            dim.dim_value = n
    return shapes


def specs_by_input(proto, input_specs) -> dict:
    """{the model's input name: the TensorSpec given for it}; a spec may name an input as
    written in the file (``input.1``) or as edgec names it (``input_1``)."""
    names = [i.name for i in proto.graph.input]
    by_safe = {re.sub(r"[^0-9A-Za-z_]", "_", n): n for n in names}
    return {s.name if s.name in names else by_safe.get(s.name, s.name): s
            for s in input_specs or []}


def _dims_text(dims) -> str:
    return "[" + ", ".join(str(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0
                           else (d.dim_param or "?") for d in dims) + "]"


def _example(dims) -> list:
    image = ("1", "3", "224", "224")  # N, C, H, W where the dim is free
    return [str(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0
            else (image[i] if len(dims) == 4 else "1") for i, d in enumerate(dims)]


def convert_opset(proto):
    """Opsets below MIN_OPSET go up to TARGET_OPSET with ONNX's own converter."""
    opset = default_opset(proto)
    if opset >= MIN_OPSET:
        return proto, None
    import onnx

    try:
        converted = onnx.version_converter.convert_version(proto, TARGET_OPSET)
    except Exception as e:  # the converter lacks an adapter: TVM may still take the file
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        return proto, f"opset {opset} kept (ONNX's version converter failed: {first})"
    return converted, f"opset {opset} converted to {TARGET_OPSET}"


def simplify(proto, shapes: dict):
    """Fold shape subgraphs to constants and infer shapes (onnxslim), inputs fixed."""
    import onnxslim

    spec = [f"{name}:{','.join(str(n) for n in shape)}" for name, shape in shapes.items()]
    before = len(proto.graph.node)
    quiet = io.StringIO()
    logger = logging.getLogger("onnxslim")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            slim = onnxslim.slim(proto, input_shapes=spec or None)
    except Exception as e:  # keep the unsimplified graph; TVM may still take it
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        return _infer_shapes(proto), f"onnxslim failed ({first}); graph kept as written"
    finally:
        logger.setLevel(level)
    if slim is None:
        return _infer_shapes(proto), "onnxslim returned no model; graph kept as written"
    return slim, f"onnxslim: {before} -> {len(slim.graph.node)} nodes (shape subgraphs folded)"


_WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization"}


def scalars_as_constants(proto) -> int:
    """One-element initializers read only by ops without weights (Clip's bounds, a
    scale) become Constant nodes again. onnxslim turns Constant nodes into shared
    initializers; TVM's importer makes every initializer a weight parameter, and its
    converters then emit run-time code for what was a constant (Clip: NaN checks around
    a variable bound, so the ReLU6 no longer reads as max/min of constants and edgec's
    depthwise -> 1x1 fusion misses the pair). Returns how many moved."""
    from onnx import helper

    readers = {}
    for node in proto.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    outputs = {o.name for o in proto.graph.output}
    moved = [init for init in proto.graph.initializer
             if _elements(init) <= 1 and init.name not in outputs
             and not (readers.get(init.name, set()) & _WEIGHTED)]
    if not moved:
        return 0
    constants = [helper.make_node("Constant", [], [init.name], value=init,
                                  name=f"{init.name}_constant") for init in moved]
    names = {init.name for init in moved}
    keep = [init for init in proto.graph.initializer if init.name not in names]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
    nodes = constants + list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return len(moved)


def _elements(init) -> int:
    n = 1
    for d in init.dims:
        n *= d
    return n


def _infer_shapes(proto):
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(proto)
    except Exception:  # shape inference is a help, not a requirement
        return proto
