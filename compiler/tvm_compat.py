"""Every version-sensitive TVM import lives here (TVM 0.27).

When TVM moves a namespace, this file changes and nothing else. Other edgec
modules import ``tvm``/``relax``/``ms`` and helpers from here.
"""
from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.frontend import detach_params
from tvm.script import relax as R  # noqa: F401  (re-exported for passes)
from tvm.support import cc  # tvm.contrib.cc is gone in 0.27

__all__ = ["tvm", "relax", "R", "Constant", "cc", "detach_params", "tensor", "VirtualMachine",
           "meta_schedule", "torch_frontend", "onnx_frontend", "cross_compiler", "tvm_version"]

VirtualMachine = relax.VirtualMachine
# 0.27 moved Relax constants to tvm.ir (GenericConst <: tvm.ir.expr.Constant, payload in
# `.value`), renamed Var.name_hint -> .name and struct_info -> .ty (TensorType, TupleType).
Constant = tvm.ir.expr.Constant


def tensor(array, device=None):
    """A TVM runtime tensor from a numpy array (0.27: ``tvm.runtime.tensor``)."""
    return tvm.runtime.tensor(array, device or tvm.cpu())


def meta_schedule():
    """The MetaSchedule package (moved to ``tvm.s_tir.meta_schedule`` in 0.27)."""
    import tvm.s_tir.meta_schedule as ms

    return ms


def torch_frontend():
    """``tvm.relax.frontend.torch``; ``import tvm`` alone does not load it."""
    import tvm.relax.frontend.torch as frontend

    return frontend


def onnx_frontend():
    """``tvm.relax.frontend.onnx``."""
    import tvm.relax.frontend.onnx as frontend

    return frontend


def cross_compiler(compiler: str):
    """An ``fcompile`` for ``export_library`` that links with ``compiler``."""
    return cc.cross_compiler(compiler)


def tvm_version() -> str:
    return tvm.__version__


def rpc():
    """``tvm.rpc`` (client, tracker and server live under it)."""
    from tvm import rpc as tvm_rpc

    return tvm_rpc
