"""tvm_compat's cheap ``inspect``: same frames as the real one, and only inside its block."""
import inspect
import traceback

import pytest

from edgec.compiler.tvm_compat import _fast_stack, fast_inspect, import_tensor_intrinsics


def test_fast_inspect_gives_the_real_frames_and_is_undone():
    # what was there before (the real inspect, or the tuner's process-wide cheap one)
    real_stack, real_outer = inspect.stack, inspect.getouterframes
    with fast_inspect():
        assert inspect.stack is _fast_stack
        got = inspect.stack()
        here = traceback.extract_stack()  # the interpreter's own walk: innermost last
    got = [(f.filename, f.function, (f.code_context or [""])[0].strip()) for f in got[1:]]
    want = [(f.filename, f.name, f.line or "") for f in reversed(here[:-1])]
    assert got == want  # from this function's caller outwards
    assert (inspect.stack, inspect.getouterframes) == (real_stack, real_outer)
    with pytest.raises(RuntimeError), fast_inspect():
        raise RuntimeError("restored on errors too")
    assert (inspect.stack, inspect.getouterframes) == (real_stack, real_outer)


def test_tensor_intrinsics_are_registered():
    from tvm.s_tir import TensorIntrin

    import_tensor_intrinsics()
    for name in ("dot_4x4_i8i8s32_sdot", "dot_4x4_i8i8s32_neon", "dot_16x4_vnni"):
        assert TensorIntrin.get(name) is not None
