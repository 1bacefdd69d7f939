"""edgec: an edge-model compiler on Apache TVM.

Python API::

    from edgec.compiler import compile, load, PipelineConfig
    compile(torch_model, (x,), target="rpi4", output="model.so")
    y = load("model.so")(x.numpy())
"""
__version__ = "0.1.0"

_LAZY = {
    "compile": ("edgec.compiler.api", "compile"),
    "load": ("edgec.compiler.deploy.runtime", "load"),
    "import_model": ("edgec.compiler.frontend", "import_model"),
    "PipelineConfig": ("edgec.compiler.config", "PipelineConfig"),
    "EdgecError": ("edgec.compiler.errors", "EdgecError"),
}


def __getattr__(name):
    # Lazy so that `edgec --help` and error paths do not pay TVM's import time.
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'edgec.compiler' has no attribute {name!r}")


__all__ = list(_LAZY)
