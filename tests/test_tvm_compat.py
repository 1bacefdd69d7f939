"""tvm_compat's cheap ``inspect``: same frames as the real one, and only inside its block."""
import inspect

import pytest

from edgec.compiler.tvm_compat import fast_inspect, import_tensor_intrinsics


def _frames(stack):
    return [(f.filename, f.lineno, f.function, f.code_context) for f in stack]


def test_fast_inspect_gives_the_real_frames_and_is_undone():
    real_stack, real_outer = inspect.stack, inspect.getouterframes
    expected = _frames(inspect.stack())[1:]  # from this function's caller outwards
    with fast_inspect():
        assert inspect.stack is not real_stack
        got = _frames(inspect.stack())[1:]
    assert got == expected
    assert (inspect.stack, inspect.getouterframes) == (real_stack, real_outer)
    with pytest.raises(RuntimeError), fast_inspect():
        raise RuntimeError("restored on errors too")
    assert (inspect.stack, inspect.getouterframes) == (real_stack, real_outer)


def test_tensor_intrinsics_are_registered():
    from tvm.s_tir import TensorIntrin

    import_tensor_intrinsics()
    for name in ("dot_4x4_i8i8s32_sdot", "dot_4x4_i8i8s32_neon", "dot_16x4_vnni"):
        assert TensorIntrin.get(name) is not None
