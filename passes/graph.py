"""The model as it travels through the pipeline: a Relax module plus named weights.

``main(inputs..., weights...)`` carries ``num_input``; ``params`` holds the
weights by parameter name, in the order they follow the inputs. Keeping weights
as named parameters (instead of binding them at import) lets plans and
torch-side helpers name layers; ``bind`` turns them into constants for lowering.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from edgec.compiler.tvm_compat import Constant, relax, tensor, tvm


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one model input or output."""

    name: str
    shape: tuple
    dtype: str

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, d: dict) -> "TensorSpec":
        return cls(d["name"], tuple(int(s) for s in d["shape"]), d["dtype"])


@dataclass(frozen=True)
class RelaxModel:
    """An imported model: Relax module, weights by name, input specs.

    ``torch_names`` maps Relax parameter names to the torch ``state_dict`` keys
    they came from (empty for ONNX), so plans can be applied on either side.
    """

    mod: tvm.IRModule
    params: dict
    inputs: tuple
    torch_names: dict = field(default_factory=dict)
    source: str = ""
    import_notes: tuple = ()  # what the frontend did to take the file (onnx_prepare)

    def with_module(self, mod, params=None) -> "RelaxModel":
        return replace(self, mod=mod, params=self.params if params is None else params)

    @property
    def weight_bytes(self) -> int:
        return int(sum(np.asarray(p).nbytes for p in self.params.values())) + constant_bytes(self.mod)

    def outputs(self) -> tuple:
        return output_specs(self.mod)


def param_names(mod, func="main") -> list[str]:
    """Names of ``func``'s weight parameters (those after ``num_input``)."""
    f = mod[func]
    n = int(f.attrs["num_input"]) if f.attrs and "num_input" in f.attrs else len(f.params)
    return [p.name for p in f.params[n:]]


def bind(model: RelaxModel) -> tvm.IRModule:
    """Bind every weight as a constant; the result takes only the real inputs."""
    params = {k: tensor(np.ascontiguousarray(v)) for k, v in model.params.items()}
    mod = relax.transform.BindParams("main", params)(model.mod)
    f = mod["main"]
    if f.attrs and "num_input" in f.attrs:
        mod["main"] = f.without_attr("num_input")
    return mod


def constant_bytes(mod) -> int:
    """Bytes held in Relax constants of every function (weights bound into the IR)."""
    seen, total = set(), 0

    def visit(e):
        nonlocal total
        value = getattr(e, "value", None)
        if isinstance(e, Constant) and hasattr(value, "shape") and e not in seen:
            seen.add(e)
            total += int(np.prod(value.shape, dtype=np.int64)) * tvm.DataType(value.dtype).bits // 8

    for _, f in mod.functions.items():
        if isinstance(f, relax.Function):
            relax.analysis.post_order_visit(f, visit)
    return total


def _leaf_specs(sinfo, prefix) -> list:
    if isinstance(sinfo, relax.TupleType):
        out = []
        for i, s in enumerate(sinfo.fields):
            out += _leaf_specs(s, f"{prefix}{i}" if prefix == "output" else f"{prefix}_{i}")
        return out
    shape = tuple(int(d) for d in sinfo.shape.values) if sinfo.shape is not None else ()
    return [TensorSpec(prefix, shape, str(sinfo.dtype))]


def output_specs(mod, func="main") -> tuple:
    """Flattened output specs of ``func`` (``output0``, ``output1``... for tuples)."""
    return tuple(_leaf_specs(mod[func].ret_ty, "output"))


@relax.expr_functor.mutator
class _Substitute(relax.PyExprMutator):
    """Replace Vars (dataflow or not) by ``lookup(var)``."""

    def __init__(self, lookup):
        super().__init__()
        self.lookup = lookup

    def visit_var_(self, op):
        return self.lookup(op)

    def visit_dataflow_var_(self, op):
        return self.lookup(op)


def substitute(expr, mapping):
    """``expr`` with its Vars replaced: ``mapping`` is a dict (Vars not in it stay)
    or a function ``var -> expr`` called for every Var."""
    lookup = mapping if callable(mapping) else (lambda v: mapping.get(v, v))
    return _Substitute(lookup).visit_expr(expr)
