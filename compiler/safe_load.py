"""Load a cached torch model without running code from the file.

The demo's cache keeps each stage's model as ``model.pt`` (torch.save of the module, so a
pruned or exit-headed architecture comes back as it was). ``torch.load`` with full pickle
would run whatever a planted file names; here the file is read with torch's weights-only
unpickler, and the only classes it may build are ``nn.Module`` subclasses from
``torch.nn`` / ``torch.ao.nn``, edgec's own classes, and classes from the user's own
model module (whose code the run executes anyway, by design). Functions are refused,
except edgec's loader of a saved torch.export program, which checks the program first
(``pt2_check``). Anything else: the entry is not a model edgec wrote.
"""
from __future__ import annotations

import importlib

from edgec.compiler.errors import EdgecError

MODULE_PACKAGES = ("torch.nn.", "torch.ao.nn.")
# functions a cached model may name: edgec's loader of an ExportedModule (checks its bytes)
ALLOWED_FUNCTIONS = ("edgec.compiler.demo.model._exported_from_bytes",)
# plain classes a cached model may hold: the early-exit model's forward hook (it only stores
# a layer's output in a dict)
ALLOWED_CLASSES = ("edgec.compiler.train.exits.FeatureTap",)


class CacheEntryError(EdgecError):
    """A cache entry is damaged or is not a model edgec wrote."""


def load_module(path: str, user_packages=()):
    """The ``nn.Module`` saved at ``path``; CacheEntryError if it is anything else or names a
    class or function outside the allowlist (nothing from the file runs)."""
    import torch

    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as e:  # noqa: BLE001  (not a torch file at all)
        raise CacheEntryError(f"{path} is not a saved model ({_first_line(e)}); delete it or "
                              "rerun with --fresh") from None
    allowed = [_resolve(name, path, tuple(user_packages)) for name in names]
    try:
        with torch.serialization.safe_globals(allowed):
            model = torch.load(path, weights_only=True)
    except Exception as e:  # noqa: BLE001  (the weights-only unpickler refused or failed)
        raise CacheEntryError(f"{path} cannot be read as a model ({_first_line(e)}); delete "
                              "it or rerun with --fresh") from None
    if not isinstance(model, torch.nn.Module):
        raise CacheEntryError(f"{path} holds a {type(model).__name__}, not a model; delete it or "
                              "rerun with --fresh")
    return model


def _resolve(name: str, path: str, user_packages: tuple):
    """The object ``name`` (module.qualname) if the policy allows it, else CacheEntryError."""
    import torch

    refuse = CacheEntryError(f"{path} names {name}, which a cached model may not (only model "
                             "classes of torch.nn, edgec and your model's module); it was not "
                             "written by edgec: delete it or rerun with --fresh")
    top = name.split(".", 1)[0]
    if top not in ("torch", "edgec") and top not in user_packages:
        raise refuse  # never import a module a planted file names
    obj = _lookup(name)
    if obj is None:
        raise refuse
    if name in ALLOWED_FUNCTIONS or name in ALLOWED_CLASSES:
        return obj
    if not (isinstance(obj, type) and issubclass(obj, torch.nn.Module)):
        raise refuse
    if top == "torch" and not name.startswith(MODULE_PACKAGES):
        raise refuse  # e.g. torch.fx.GraphModule rebuilds itself by exec'ing code
    return obj


def _lookup(name: str):
    """Import the longest module prefix of ``name`` and walk the rest as attributes."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr, None)
        return obj
    return None


def _first_line(error) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
