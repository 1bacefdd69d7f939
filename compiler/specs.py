"""Parsing user-written specs: ``NAME:1x3x224x224:float32`` inputs, ``module:factory`` models."""
from __future__ import annotations

import importlib
import os
import sys

from edgec.compiler.errors import EdgecError
from edgec.passes.graph import TensorSpec

DTYPES = ("float32", "float16", "int8", "uint8", "int32", "int64")


def parse_input_spec(text: str) -> TensorSpec:
    """``x:1x3x224x224:float32`` (dtype optional, default float32) -> TensorSpec."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        raise EdgecError(f"bad --input {text!r}; expected NAME:DIMxDIM...[:DTYPE], "
                         "e.g. x:1x3x224x224:float32")
    name, dims = parts[0], parts[1]
    dtype = parts[2] if len(parts) == 3 else "float32"
    if dtype not in DTYPES:
        raise EdgecError(f"bad dtype {dtype!r} in --input {text!r}; valid: {', '.join(DTYPES)}")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        raise EdgecError(f"bad shape {dims!r} in --input {text!r}; expected e.g. 1x3x224x224") from None
    if any(d <= 0 for d in shape):
        raise EdgecError(f"bad shape {dims!r} in --input {text!r}: dimensions must be positive")
    return TensorSpec(name, shape, dtype)


def load_factory(spec: str):
    """``package.module:factory`` -> the object ``factory()`` returns (cwd is importable)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise EdgecError(f"bad model spec {spec!r}; expected a .onnx/.pt2 file or module:factory")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise EdgecError(f"cannot import module {module_name!r} from {spec!r}: {e}") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise EdgecError(f"{module_name} has no callable {attr!r} (from {spec!r})")
    return factory()


def is_factory(model: str) -> bool:
    """``package.module:factory`` (not an existing file, whatever dots it has)."""
    return ":" in model and not os.path.exists(model)


def factory_model(spec: str, specs) -> tuple:
    """Build ``spec``'s torch model and zero example inputs matching ``specs``."""
    import torch

    if not specs:
        raise EdgecError("a module:factory model needs --input NAME:SHAPE[:DTYPE] for each input")
    example = tuple(torch.zeros(s.shape, dtype=getattr(torch, s.dtype)) for s in specs)
    return load_factory(spec), example
