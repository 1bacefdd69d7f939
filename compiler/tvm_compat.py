"""Every version-sensitive TVM import lives here (TVM 0.27).

When TVM moves a namespace, this file changes and nothing else. Other edgec
modules import ``tvm``/``relax``/``ms`` and helpers from here.
"""
from __future__ import annotations

import contextlib

import tvm
from tvm import relax
from tvm.relax.frontend import detach_params
from tvm.script import relax as R  # noqa: F401  (re-exported for passes)
from tvm.support import cc  # tvm.contrib.cc is gone in 0.27
from tvm_ffi import structural_hash  # 0.27: tvm.ir.structural_hash is gone

__all__ = ["tvm", "relax", "R", "Constant", "cc", "detach_params", "tensor", "VirtualMachine",
           "meta_schedule", "torch_frontend", "onnx_frontend", "cross_compiler", "tvm_version", "structural_hash", "is_tensor_constant"]

VirtualMachine = relax.VirtualMachine
# 0.27 moved Relax constants to tvm.ir (GenericConst <: tvm.ir.expr.Constant, payload in
# `.value`), renamed Var.name_hint -> .name and struct_info -> .ty (TensorType, TupleType).
Constant = tvm.ir.expr.Constant


def is_tensor_constant(expr) -> bool:
    """Whether ``expr`` is a Relax tensor constant (a weight, a BN statistic).

    In 0.27 ``tvm.ir.IntImm``/``FloatImm`` are ``Constant`` subclasses too, with a Python
    int/float as ``.value`` and a ``PrimType``: a Relax call takes them as attribute-like
    arguments (``arange``'s bounds, ``slice_scatter``'s axis in Swin's attention mask), and
    code expecting a tensor payload crashed on them (``'int' object has no attribute 'shape'``).
    """
    return isinstance(expr, Constant) and isinstance(expr.ty, relax.TensorType)


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
    """``tvm.relax.frontend.onnx``, with Clip emitted as Relax ops (``_onnx_clip_as_ops``)."""
    import tvm.relax.frontend.onnx as frontend

    _onnx_clip_as_ops()
    _onnx_node_on_error()
    return frontend


def _onnx_node_on_error() -> None:
    """Tag an exception raised while converting an ONNX node with ``edgec_onnx_node``
    = (op type, node name) (idempotent). TVM's importer only prints the op type and its
    inputs' IR; the one-line error names the node (edgec.compiler.phases)."""
    from tvm.relax.frontend.onnx import onnx_frontend as of

    importer = of.ONNXGraphImporter
    if getattr(importer, "_edgec_node_on_error", False):
        return
    convert = importer._convert_operator

    def tagged(self, op_name, inputs, attrs, opset):
        try:
            return convert(self, op_name, inputs, attrs, opset)
        except Exception as e:
            if not hasattr(e, "edgec_onnx_node"):
                e.edgec_onnx_node = (op_name, attrs.get("tvm_custom", {}).get("name"))
            raise

    importer._convert_operator = tagged
    importer._edgec_node_on_error = True


def _onnx_clip_as_ops() -> None:
    """Make TVM's ONNX Clip converter emit ``relax.op.maximum`` / ``minimum`` (idempotent).

    TVM 0.27 converts Clip (ReLU6 in every exported MobileNet) with ``emit_te(topi.maximum)``:
    a ``call_tir`` that Relax's graph passes cannot see into. ConvertLayout then unblocks the
    tensor before every ReLU6 and blocks it again after (an ONNX mobilenet_v2 compiled with
    NCHWc had 68 kernels against 30 from torch), and edgec's depthwise -> 1x1 fusion could
    not match a single pair. The Relax ops compute the same (NaN bounds still mean none)."""
    from tvm.relax.frontend.onnx import onnx_frontend as of

    if getattr(of.Clip, "_edgec_relax_ops", False):
        return

    def bound(bb, x, value, for_min):
        if isinstance(value, relax.Expr):
            return of.Clip._sanitize_nan_clip_bound(bb, value, for_min=for_min)
        return relax.const(value, str(x.ty.dtype))

    def clip(bb, x, lo, hi):
        if lo is not None:
            x = bb.emit(relax.op.maximum(x, bound(bb, x, lo, True)))
        if hi is not None:
            x = bb.emit(relax.op.minimum(x, bound(bb, x, hi, False)))
        return x

    def v1(cls, bb, inputs, attr, params):
        lo, hi = attr.get("min"), attr.get("max")
        return clip(bb, inputs[0], None if lo is None else float(lo),
                    None if hi is None else float(hi))

    def v13(cls, bb, inputs, attr, params):
        return clip(bb, inputs[0], inputs[1], inputs[2])

    of.Clip._impl_v1, of.Clip._impl_v11, of.Clip._impl_v13 = (
        classmethod(v1), classmethod(v13), classmethod(v13))
    of.Clip._edgec_relax_ops = True


def cross_compiler(compiler: str):
    """An ``fcompile`` for ``export_library`` that links with ``compiler``."""
    return cc.cross_compiler(compiler)


def tvm_version() -> str:
    return tvm.__version__


def rpc():
    """``tvm.rpc`` (client, tracker and server live under it)."""
    from tvm import rpc as tvm_rpc

    return tvm_rpc


# --- MetaSchedule: make builder workers usable on small, loaded machines ---------------
# Builder workers import tvm.s_tir.tensor_intrin, whose ~500 TVMScript prim_funcs each call
# inspect.stack(); that resolves every frame's source file and took 28-50 s here, longer
# than the builder's 30 s timeout, so every candidate "timed out". TVMScript only needs each
# frame's locals and its current source line, which a plain frame walk gives in microseconds.

def _frame_infos(frame, context: int = 1) -> list:
    import inspect
    import linecache

    infos = []
    while frame is not None:
        code = frame.f_code
        line = linecache.getline(code.co_filename, frame.f_lineno, frame.f_globals)
        infos.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno, code.co_name,
                                       [line] if context and line else None, 0 if line else None))
        frame = frame.f_back
    return infos


def _fast_stack(context: int = 1) -> list:
    import sys

    return _frame_infos(sys._getframe(1), context)


def _fast_outerframes(frame, context: int = 1) -> list:
    return _frame_infos(frame, context)


def fast_inspect_initializer() -> None:
    """Replace ``inspect.stack``/``getouterframes`` by a cheap frame walker (idempotent).

    Given to MetaSchedule's ``LocalBuilder``/``LocalRunner(initializer=...)`` and called in
    the tuning process itself; it changes no result, only the cost of TVMScript parsing.
    """
    import inspect

    inspect.stack = _fast_stack
    inspect.getouterframes = _fast_outerframes


@contextlib.contextmanager
def fast_inspect():
    """``fast_inspect_initializer``'s cheap ``inspect`` for the duration of a block only."""
    import inspect

    saved = inspect.stack, inspect.getouterframes
    inspect.stack, inspect.getouterframes = _fast_stack, _fast_outerframes
    try:
        yield
    finally:
        inspect.stack, inspect.getouterframes = saved


def import_tensor_intrinsics() -> None:
    """Import TVM's tensor intrinsics (``tvm.s_tir.tensor_intrin``: x86, ARM, CUDA, ...).

    Its ~500 TVMScript prim_funcs each call ``inspect.stack()``; inside an import, in a
    process that has imported torch, every frozen-importlib frame makes ``inspect`` scan all
    of ``sys.modules``. The first INT8 build for a VNNI or ARM target spent 120 s here
    (a tiny CNN's quantize for x86-avx512-vnni; 297 s under a profiler); with the cheap
    frame walk of ``fast_inspect``, 7 s.
    """
    with fast_inspect():
        import tvm.s_tir.tensor_intrin  # noqa: F401  (registers every intrinsic)


def fix_vnni_intrinsic() -> None:
    """Re-register ``dot_16x4_vnni`` with operand types LLVM 22 accepts and no heap
    allocation per tile (idempotent); same description.

    - **Operand types.** TVM's shipped impl passes ``<16 x i32>`` operands to
      ``vpdpbusd.512``; LLVM 22 wants ``<64 x i8>`` and rejects most candidates ("Call
      parameter type does not match function signature"): operands reinterpreted as
      u8x64 / i8x64.
    - **Temporaries bound with ``T.let``.** In TVM 0.27's TVMScript a plain assignment in a
      prim_func body (``vec_a = T.reinterpret(...)``) declares a *mutable local scalar*: a
      1-element buffer in the "local" scope. ``LowerTVMBuiltin`` keeps only "global"
      allocations on the stack, so every such temporary became a TVMBackendAllocWorkspace /
      FreeWorkspace pair run once per iteration of the kernel's parallel loop (8 calls in
      each packed VNNI conv; 12 per output row in the sdot one, 1.21 M of a 96 -> 576 1x1
      conv's 3.23 M instructions on the emulated Cortex-A76). TVM's ARM intrinsics had the
      same, re-registered in ``passes/arm_int8_intrin.py``.
    """
    import_tensor_intrinsics()  # registers the originals first
    from tvm.s_tir.tensor_intrin import x86
    from tvm.script import tirx as T
    from tvm.s_tir import TensorIntrin

    @T.prim_func(s_tir=True)
    def vnni_impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            a_i32: T.let = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            a_u8x64: T.let = T.reinterpret(T.broadcast(a_i32, 16), dtype="uint8x64")
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"), a_u8x64, B.vload([0, 0], dtype="int8x64"),
                dtype="int32x16")

    TensorIntrin.register(x86.VNNI_DOT_16x4_INTRIN, x86.dot_product_16x4_u8i8i32_desc,
                          vnni_impl, override=True)


def has_vnni(target) -> bool:
    """Whether a ``tvm.target.Target`` has AVX-512 VNNI (where ``dot_16x4_vnni`` is used)."""
    from tvm.target import codegen

    try:
        return bool(codegen.target_has_features("avx512vnni", target))
    except Exception:  # older API or non-x86 target
        return "avx512vnni" in str(target.attrs.get("mattr", "")) or \
            str(target.attrs.get("mcpu", "")) in ("znver4", "znver5", "cascadelake", "icelake-server",
                                                   "sapphirerapids")


# --- names other modules need from TVM's less stable corners (house rule: only this
# module imports them, so a TVM upgrade changes one file) ---
from tvm.ir.utils import derived_object  # noqa: E402  (MetaSchedule Py* subclasses)
from tvm_ffi import structural_equal  # noqa: E402  (0.27: tvm.ir.structural_equal is gone)


def kill_child_processes(pid: int) -> None:
    """Kill a process's children (a hung measurement worker's builders)."""
    from tvm.support.popen_pool import kill_child_processes as kill

    kill(pid)


def legalize_default(bb, call):
    """Relax's own legalization of ``call`` (the FLegalize registered on its op): for a
    rewrite that lowers one call to its TIR compute itself, or a LegalizeOps hook that
    declines a call."""
    return tvm.ir.Op.get(call.op.name).get_attr("FLegalize")(bb, call)


def legalize_conv2d_default(bb, call):
    """Relax's own legalization of ``relax.nn.conv2d`` (plain layouts), for a LegalizeOps
    hook that declines a conv; TVM keeps it under a private name."""
    from tvm.relax.transform.legalize_ops.nn import _nn_conv2d

    return _nn_conv2d(bb, call)


# --- schedulable TIR, for edgec's hand-scheduled kernels (issue #24) ---
def s_tir():
    """TVM's schedulable-TIR package (``tvm.s_tir`` in 0.27: ``Schedule``, ``TensorIntrin``;
    ``tvm.tir.schedule`` / ``tvm.tir.TensorIntrin`` before)."""
    import tvm.s_tir as module

    return module
