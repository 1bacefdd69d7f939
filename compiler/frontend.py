"""Frontends: torch.nn.Module, a saved torch.export program (.pt2), or ONNX -> RelaxModel.

Unsupported operators are found before conversion and reported together,
each with the module path (torch) or node name (ONNX) it came from.
"""
from __future__ import annotations

import os
import re

import numpy as np

from edgec.compiler import onnx_prepare
from edgec.compiler.errors import FrontendError, UnsupportedOperatorError
from edgec.compiler.phases import native_output_captured, phase
from edgec.compiler.pt2_check import check_pt2
from edgec.compiler.tvm_compat import detach_params, onnx_frontend, relax, torch_frontend
from edgec.passes.graph import RelaxModel, TensorSpec, substitute

FORMATS = (".pt2", ".onnx")


def import_model(model, example_inputs=None, input_specs=None) -> RelaxModel:
    """Import ``model`` into Relax.

    model: a ``torch.nn.Module`` (needs ``example_inputs``), or a path to a
    ``.pt2`` (torch.export.save) or ``.onnx`` file. input_specs: optional
    ``TensorSpec``s giving names (and, for ONNX, shapes) to the inputs.
    """
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise FrontendError(f"model file not found: {path}")
        ext = os.path.splitext(path)[1].lower()
        if ext == ".onnx":
            return _from_onnx(path, input_specs)
        if ext == ".pt2":
            return _from_pt2(path, input_specs)
        raise FrontendError(f"unknown model format {ext or path!r}; valid: {', '.join(FORMATS)} "
                            "or a torch.nn.Module from Python")
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        return _from_exported(model, input_specs, "torch.export")
    if not isinstance(model, torch.nn.Module):
        raise FrontendError(f"cannot import a {type(model).__name__}; valid: torch.nn.Module, "
                            ".pt2 or .onnx path")
    if example_inputs is None:
        raise FrontendError("a torch.nn.Module needs example_inputs (a tensor or tuple of tensors)")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    try:
        ep = torch.export.export(model.eval(), tuple(example_inputs))
    except Exception as e:  # torch's message is long; keep its first line
        raise FrontendError(f"torch.export failed: {str(e).splitlines()[0]}") from e
    return _from_exported(ep, input_specs, type(model).__name__)


def _from_pt2(path, input_specs):
    import logging
    import warnings

    import torch


    check_pt2(path)  # refuses a file that would unpickle (run code) unless trusted
    # torch logs a traceback of its own before failing and warns (FutureWarning) about its
    # pytree deprecations on every load; our one line says what matters
    loggers = [logging.getLogger(n) for n in ("torch.export", "torch._export")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            for lg in loggers:
                lg.setLevel(logging.CRITICAL)
            ep = torch.export.load(path)
        except Exception as e:
            raise FrontendError(f"cannot read {path} as a torch.export program: "
                                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
        return _from_exported(ep, input_specs, os.path.basename(path))


def _torch_unsupported(ep) -> list[str]:
    importer = torch_frontend().exported_program_translator.ExportedProgramImporter()
    known = importer.create_convert_map()
    found = {}
    for node in ep.graph.nodes:
        if node.op == "call_function" and node.target.__name__ not in known:
            stack = node.meta.get("nn_module_stack") or {}
            where = list(stack.values())[-1][0] if stack else node.name
            found.setdefault(node.target.__name__, where or "top-level")
    return [f"{op} (at {where})" for op, where in sorted(found.items())]


def _from_exported(ep, input_specs, source) -> RelaxModel:
    ep = ep.run_decompositions()
    missing = _torch_unsupported(ep)
    if missing:
        raise UnsupportedOperatorError(
            f"{len(missing)} unsupported operator(s) in {source}: {'; '.join(missing)}")
    with phase("import"), native_output_captured(python_too=True):
        mod = torch_frontend().from_exported_program(ep, keep_params_as_input=True)
    mod, params = detach_params(mod)
    func = mod["main"]
    n_in = int(func.attrs["num_input"])
    weights = [p.name for p in func.params[n_in:]]
    values = {name: v.numpy() for name, v in zip(weights, params.get("main", []))}
    sig = {s.arg.name: s.target for s in ep.graph_signature.input_specs if s.target}
    torch_names = {w: sig.get(w, w) for w in weights}
    inputs = _input_specs(func, n_in, input_specs)
    mod = _rename_inputs(mod, inputs)
    return RelaxModel(mod, values, inputs, torch_names, source)


def _from_onnx(path, input_specs):
    import onnx

    try:
        proto = onnx.load(path)
        onnx.checker.check_model(proto)
    except Exception as e:
        raise FrontendError(f"cannot read {path} as ONNX: {str(e).splitlines()[0]}") from e
    proto, notes = onnx_prepare.prepare(proto, input_specs)
    frontend = onnx_frontend()
    known = frontend.onnx_frontend._get_convert_map()
    missing = sorted({f"{n.op_type} (at {n.name or n.output[0]})" for n in proto.graph.node
                      if n.op_type not in known})
    if missing:
        raise UnsupportedOperatorError(
            f"{len(missing)} unsupported operator(s) in {os.path.basename(path)}: {'; '.join(missing)}")
    dtype_dict = {name: s.dtype for name, s in
                  onnx_prepare.specs_by_input(proto, input_specs).items()} or "float32"
    with phase("import", where=_onnx_node), native_output_captured(python_too=True):
        mod = frontend.from_onnx(proto, dtype_dict=dtype_dict, keep_params_in_input=True)
    mod, params = detach_params(mod)
    func = mod["main"]
    n_in = int(func.attrs["num_input"]) if "num_input" in func.attrs else len(func.params)
    weights = [p.name for p in func.params[n_in:]]
    values = {name: v.numpy() for name, v in zip(weights, params.get("main", []))}
    inputs = _input_specs(func, n_in, None)
    return RelaxModel(mod, values, inputs, {}, os.path.basename(path), tuple(notes))


def _onnx_node(e):
    """(op type, 'node NAME') of the ONNX node whose conversion raised ``e``."""
    op, name = getattr(e, "edgec_onnx_node", (None, None))
    return op, f"ONNX node {name!r}" if name else None


def _input_specs(func, n_in, given) -> tuple:
    specs = []
    for i, p in enumerate(func.params[:n_in]):
        sinfo = p.ty
        shape = tuple(int(d) for d in sinfo.shape.values)
        name = given[i].name if given and i < len(given) else p.name
        specs.append(TensorSpec(_safe_name(name), shape, str(sinfo.dtype)))
    return tuple(specs)


def _safe_name(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


def _rename_inputs(mod, specs):
    """Give main's input vars the names in ``specs`` (a copy; weights untouched)."""
    func = mod["main"]
    n = len(specs)
    if all(p.name == s.name for p, s in zip(func.params[:n], specs)):
        return mod
    new_params = [relax.Var(s.name, p.ty) for p, s in zip(func.params[:n], specs)]
    new_params += list(func.params[n:])
    body = substitute(func.body, dict(zip(func.params[:n], new_params[:n])))
    new = relax.Function(new_params, body, func.ret_ty, func.is_pure, func.attrs)
    mod = mod.__class__(dict(mod.functions), attrs=mod.attrs)
    mod["main"] = new
    return mod


def example_from_specs(specs, seed=0) -> list:
    """Random inputs matching ``specs`` (for compiling files without example data)."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s.shape).astype(s.dtype) for s in specs]
