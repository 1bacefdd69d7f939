"""One error contract for failures inside TVM: one line naming the phase, the op and
where it came from, what to try, the full message in a log file; exit 2, nothing
written, no TVM log lines on stderr (compiler/phases.py)."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgec.compiler.cli import main
from edgec.compiler.phases import CompileError, native_output_captured, op_in_message


def _pad_wrap(path):
    """An ONNX Pad in mode 'wrap' at opset 18: the checker takes it, TVM's importer not."""
    graph = helper.make_graph(
        [helper.make_node("Pad", ["x", "p"], ["y"], mode="wrap", name="pad0")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b", "c", "d"])],
        [numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], "int64"), "p")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)


@pytest.fixture
def logs(tmp_path, monkeypatch):
    folder = tmp_path / "logs"
    monkeypatch.setenv("EDGEC_LOG_DIR", str(folder))
    return folder


def test_import_failure_names_phase_op_node_and_log(tmp_path, logs, capfd):
    path = str(tmp_path / "pad.onnx")
    _pad_wrap(path)
    rc = main(["compile", path, "-o", str(tmp_path / "m.so"), "--no-tuning"])
    out, err = capfd.readouterr()
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("edgec: error: import failed at Pad (ONNX node 'pad0'): ")
    assert "try " in lines[0] and "full message in " in lines[0]
    assert "Warning" not in err and "Error converting operator" not in out + err
    log = lines[0].rsplit("full message in ", 1)[1]
    assert log.startswith(str(logs))
    text = open(log, encoding="utf-8").read()
    assert "Traceback" in text and "Error converting operator Pad" in text
    assert not list(tmp_path.glob("m.*"))


def test_verbose_prints_the_full_message(tmp_path, logs, capfd):
    path = str(tmp_path / "pad.onnx")
    _pad_wrap(path)
    assert main(["compile", path, "-o", str(tmp_path / "m.so"), "--verbose"]) == 2
    err = capfd.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("edgec: error: import")


def test_failure_in_a_later_phase(tmp_path, logs, capfd, monkeypatch, tiny_cnn):
    """A TVM InternalError while lowering: phase and op named, exit 2, nothing written."""
    import torch

    from edgec.compiler.tvm_compat import tvm
    from edgec.compiler import lower

    def broken(mod, lanes):
        raise tvm.error.InternalError("Check failed: (x) is false: cannot schedule "
                                      "relax.matmul here")

    monkeypatch.setattr(lower, "apply_default_matmuls", broken)  # the matmul_tiles step
    model, x = tiny_cnn
    pt2 = str(tmp_path / "tiny.pt2")
    torch.export.save(torch.export.export(model, (x,)), pt2)
    rc = main(["compile", pt2, "-o", str(tmp_path / "m.so"), "--no-tuning"])
    err = capfd.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("edgec: error: lower failed at relax.matmul: "), err[0]
    assert "cannot schedule relax.matmul here" in err[0]
    assert not list(tmp_path.glob("m.*"))


def test_native_output_is_captured_and_filtered(capfd):
    import os

    with native_output_captured():
        os.write(2, b"[23:24:29] /project/src/tirx/op/op.cc:275: Warning: pow\n")
        os.write(2, b"something else\n")
    err = capfd.readouterr().err
    assert "Warning: pow" not in err and "something else" in err
    with pytest.raises(ValueError) as info, native_output_captured():
        os.write(2, b"said before failing\n")
        raise ValueError("boom")
    assert "said before failing" in info.value.edgec_captured
    assert "said before failing" not in capfd.readouterr().err


def test_op_in_message():
    assert op_in_message("Error converting operator Reshape, with inputs") == "Reshape"
    assert op_in_message("Offending call: R.nn.conv2d(x)") is None  # TVMScript, not an op name
    assert op_in_message("cannot legalize relax.nn.conv2d_transpose") == "relax.nn.conv2d_transpose"
    err = CompileError("layout", "relax.split", None, "bad", "--conv-layout NCHW", "/x.log")
    assert str(err) == ("layout failed at relax.split: bad; try --conv-layout NCHW; "
                        "full message in /x.log")
