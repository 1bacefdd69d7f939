"""Fast math: exp, sigmoid, tanh, erf (and SiLU, GELU, softmax, built on them) legalize to
vectorizable polynomial approximations instead of libm calls.

Relax's default legalizations compute ``sigmoid`` as ``1 / (1 + exp(-x))`` with LLVM's
``exp``, a call into libm that does not vectorize: every activation of an EfficientNet
(SiLU after each conv) costs a scalar call per element. In an untuned efficientnet_b0
the convs fused with SiLU took 52 of 63 ms on the AVX-512 Xeon, the first alone 9.8 ms
for 0.4 M elements. TOPI's ``fast_exp`` (Cody-Waite range reduction and a degree-6
polynomial, exact at integers of log2 e), ``fast_tanh`` and ``fast_erf`` (rational
approximations) are plain arithmetic that vectorizes inside the conv's register-tile
epilogue. ONNX Runtime (MLAS) does the same for its activations.

Accuracy, measured against float64 on 2^16 points over [-20, 20] (tests/test_fast_math.py;
libm's float32 in brackets): exp 1.1e-6 relative (6e-8), sigmoid 9e-8 absolute (9e-8),
tanh 3.6e-7 (9e-8), erf 3.4e-7 (5e-8), SiLU 1.1e-6 relative (1.7e-7), GELU 1.3e-6
absolute (4.5e-7): float32 noise next to INT8's, and to the 1e-4 the coverage checks ask.

``legalize_map()`` is a LegalizeOps map, used where the pipeline legalizes (the blocked-layout
pass and the fuse step) when ``PipelineConfig.fast_math`` is on (the default); float32
only, other dtypes keep Relax's legalization.
"""
from __future__ import annotations

import math

from edgec.compiler.tvm_compat import legalize_default, relax


def _float32(call) -> bool:
    ty = call.args[0].ty
    return isinstance(ty, relax.TensorType) and str(ty.dtype) == "float32"


def _sigmoid_te(x):
    from tvm import te, topi

    e = topi.fast_exp(topi.negative(x))
    return te.compute(x.shape, lambda *i: 1.0 / (1.0 + e(*i)), name="fast_sigmoid")


def _silu_te(x):
    from tvm import te

    s = _sigmoid_te(x)
    return te.compute(x.shape, lambda *i: x(*i) * s(*i), name="fast_silu")


def _gelu_te(x):
    from tvm import te, topi

    e = topi.fast_erf(topi.multiply(x, 1.0 / math.sqrt(2.0)))
    return te.compute(x.shape, lambda *i: x(*i) * (0.5 + 0.5 * e(*i)), name="fast_gelu")


def _gelu_tanh_te(x):
    from tvm import te, topi

    inner = te.compute(x.shape, lambda *i: math.sqrt(2.0 / math.pi) * (
        x(*i) + 0.044715 * x(*i) * x(*i) * x(*i)), name="gelu_inner")
    t = topi.fast_tanh(inner)
    return te.compute(x.shape, lambda *i: x(*i) * (0.5 + 0.5 * t(*i)), name="fast_gelu_tanh")


def _unary(te_fn, name):
    def legalize(bb, call):
        if not _float32(call):
            return legalize_default(bb, call)
        return bb.call_te(te_fn, call.args[0], primfunc_name_hint=name)
    return legalize


def _softmax(bb, call):
    from tvm import topi

    if not _float32(call):
        return legalize_default(bb, call)
    return bb.call_te(topi.nn.fast_softmax, call.args[0], int(call.attrs.axis),
                      primfunc_name_hint="fast_softmax")


def legalize_map() -> dict:
    """op name -> LegalizeOps function (float32 inputs; other dtypes: Relax's own)."""
    from tvm import topi

    return {
        "relax.exp": _unary(topi.fast_exp, "fast_exp"),
        "relax.tanh": _unary(topi.fast_tanh, "fast_tanh"),
        "relax.erf": _unary(topi.fast_erf, "fast_erf"),
        "relax.sigmoid": _unary(_sigmoid_te, "fast_sigmoid"),
        "relax.nn.silu": _unary(_silu_te, "fast_silu"),
        "relax.nn.gelu": _unary(_gelu_te, "fast_gelu"),
        "relax.nn.gelu_tanh": _unary(_gelu_tanh_te, "fast_gelu_tanh"),
        "relax.nn.softmax": _softmax,
    }
