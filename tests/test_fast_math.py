"""Fast math (passes/fast_math.py): the legalizations' accuracy against float64 numpy, the
pipeline using them (no libm call left in a kernel) or not (``fast_math=False``), and a
SiLU/GELU/softmax model against torch."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from edgec.compiler import PipelineConfig, compile, load
from edgec.compiler.frontend import import_model
from edgec.compiler.pipeline import run
from edgec.compiler.tvm_compat import relax, tvm
from edgec.passes.fast_math import legalize_map

X = np.linspace(-20.0, 20.0, 1 << 16).astype("float32")
ERF = np.vectorize(math.erf)

# op -> (float64 reference, absolute tolerance, relative tolerance)
CASES = {
    "exp": (np.exp, 0.0, 1.5e-6),
    "sigmoid": (lambda x: 1.0 / (1.0 + np.exp(-x)), 1.5e-7, 0.0),
    "tanh": (np.tanh, 5e-7, 0.0),
    "erf": (ERF, 5e-7, 0.0),
    "nn.silu": (lambda x: x / (1.0 + np.exp(-x)), 1e-7, 1.5e-6),
    "nn.gelu": (lambda x: 0.5 * x * (1.0 + ERF(x / math.sqrt(2.0))), 2e-6, 0.0),
}


def _run(op_name, x, fast: bool):
    bb = relax.BlockBuilder()
    v = relax.Var("x", relax.TensorType(x.shape, "float32"))
    op = relax.op
    for part in op_name.split("."):
        op = getattr(op, part)
    with bb.function("main", [v]):
        with bb.dataflow():
            out = bb.emit_output(op(v))
        bb.emit_func_output(out)
    mod = relax.transform.LegalizeOps(legalize_map() if fast else None)(bb.get())
    text = "\n".join(f.script() for f in mod.functions.values()
                     if isinstance(f, tvm.tirx.PrimFunc))
    ex = tvm.compile(mod, target="llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy(), text


@pytest.mark.parametrize("op_name", sorted(CASES))
def test_accuracy_against_float64(op_name):
    """Each approximation is within its bound of the float64 value over [-20, 20] (and
    Relax's own legalization calls libm: the fast one does not)."""
    ref, atol, rtol = CASES[op_name]
    got, text = _run(op_name, X, fast=True)
    want = ref(X.astype("float64"))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, atol=atol, rtol=rtol)
    libm = ("T.exp(", "T.sigmoid(", "T.tanh(", "T.erf(")
    assert not any(call in text for call in libm), text
    _, default_text = _run(op_name, X[:8], fast=False)
    assert any(call in default_text for call in libm)


def test_softmax_sums_to_one_and_matches():
    x = np.random.default_rng(0).standard_normal((4, 1000)).astype("float32") * 8
    bb = relax.BlockBuilder()
    v = relax.Var("x", relax.TensorType(x.shape, "float32"))
    with bb.function("main", [v]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.softmax(v, axis=-1))
        bb.emit_func_output(out)
    mod = relax.transform.LegalizeOps(legalize_map())(bb.get())
    got = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())["main"](
        tvm.runtime.tensor(x)).numpy()
    e = np.exp(x.astype("float64") - x.max(axis=-1, keepdims=True))
    np.testing.assert_allclose(got, e / e.sum(axis=-1, keepdims=True), atol=1e-7, rtol=1e-5)


class Activations(nn.Module):
    """SiLU after a conv (EfficientNet), a sigmoid gate (squeeze-excite), GELU and tanh
    after a linear layer, softmax at the end."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.gate = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 32)
        self.out = nn.Linear(32, 10)

    def forward(self, x):
        y = nn.functional.silu(self.conv(x))
        y = y * torch.sigmoid(self.gate(y.mean(dim=(2, 3), keepdim=True)))
        z = torch.tanh(nn.functional.gelu(self.fc(y.mean(dim=(2, 3)))))
        return torch.softmax(self.out(z), dim=-1)


@pytest.mark.parametrize("fast", [True, False])
def test_pipeline_uses_it_and_equals_torch(tmp_path, fast):
    """The build with fast_math (the default) has no libm call left in any kernel (the SiLU
    is fused into the conv's epilogue); without it, Relax's legalizations; both equal
    torch."""
    torch.manual_seed(0)
    model = Activations().eval()
    x = torch.randn(1, 3, 16, 16)
    config = PipelineConfig(target="x86-avx2", tuning_logs=None, fast_math=fast)
    lowered = run(import_model(model, (x,)), config, lower_only=True).lowered
    text = "\n".join(f.script() for f in lowered.functions.values()
                     if isinstance(f, tvm.tirx.PrimFunc))
    assert ("T.exp(" in text or "T.sigmoid(" in text) != fast
    assert any("conv2d_nchwc" in gv.name_hint and "sigmoid" in gv.name_hint
               for gv in lowered.functions)  # the SiLU fused into the conv either way
    out = str(tmp_path / "a.so")
    manifest = compile(model, (x,), output=out, config=config)
    assert manifest["config"]["fast_math"] is fast
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(load(out)(x.numpy())[0], ref, rtol=1e-5, atol=1e-6)
