"""Is a ``.pt2`` safe to open? Checked before ``torch.export.load``, which unpickles.

A ``.pt2`` (torch.export.save) is a zip archive. Its graph is JSON and its weights are
normally raw tensor bytes, which load without running code. But torch also stores some
parts with pickle, and unpickling runs whatever code the file names: a weight or
constant saved with ``use_pickle`` (tensor subclasses), a pickled custom object, the
legacy format's weight file, sample inputs that need more than the weights-only
unpickler (torch then retries with full pickle), and AOTInductor code (a shared
library torch loads). Any of these makes the file code, not data: it is refused
unless the user says they trust it (``--trust-model``, ``trusting()``, or
``EDGEC_TRUST_MODEL=1``).
"""
from __future__ import annotations

import contextvars
import io
import json
import os
import zipfile
from contextlib import contextmanager

from edgec.compiler.errors import FrontendError

_TRUSTED = contextvars.ContextVar("edgec_trust_model", default=False)
TRUST_HINT = ("only if you trust whoever made the file, pass --trust-model (Python: "
              "edgec.compiler.pt2_check.trusting()); otherwise re-export it with "
              "torch.export.save from plain tensors")
CODE_SUFFIXES = (".so", ".dll", ".dylib", ".pyd")


class UntrustedModelError(FrontendError):
    """A model file would run code when loaded, and the user did not say they trust it."""


@contextmanager
def trusting(trust: bool = True):
    """Within the block, ``.pt2`` files that need pickle are loaded (when ``trust``)."""
    token = _TRUSTED.set(bool(trust))
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def trusted() -> bool:
    return _TRUSTED.get() or os.environ.get("EDGEC_TRUST_MODEL") == "1"


def check_pt2(path) -> None:
    """Raise unless ``path`` (or a binary file object) is a .pt2 archive that loads without
    unpickling (or is trusted)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise FrontendError(f"cannot read {_name(path)} as a torch.export program: not a .pt2 "
                            f"archive ({e}); save it with torch.export.save") from None
    with archive:
        try:
            reasons = pickle_uses(archive)
        except (zipfile.BadZipFile, ValueError, KeyError, OSError) as e:
            raise FrontendError(f"cannot read {_name(path)} as a torch.export program: damaged "
                                f"archive ({e})") from None
    if reasons and not trusted():
        raise UntrustedModelError(f"refused to load {_name(path)}: it would run code when loaded "
                                  f"({'; '.join(reasons[:3])}); {TRUST_HINT}")


def _name(path) -> str:
    return path if isinstance(path, (str, os.PathLike)) else "an in-memory .pt2"


def pickle_uses(archive: zipfile.ZipFile) -> list[str]:
    """Why loading ``archive`` would unpickle or load code ([] when it would not)."""
    names = archive.namelist()
    reasons = [f"{n} is compiled code" for n in names
               if n.endswith(CODE_SUFFIXES) or "/aotinductor/" in f"/{n}"]
    models = [n for n in names if _rel(n).startswith("models/") and n.endswith(".json")]
    if not models:
        return reasons + ["it is not in the current torch.export format (no models/*.json); "
                          "older formats pickle their weights"]
    for model in models:
        root, stem = model[: -len(_rel(model))], os.path.basename(model)[: -len(".json")]
        for kind in ("weights", "constants"):
            if f"{root}data/{kind}/{stem}.pt" in names:
                reasons.append(f"its {kind} are in the legacy pickled format")
            config = f"{root}data/{kind}/{stem}_{kind}_config.json"
            if config in names:
                reasons += _pickled_payloads(json.loads(archive.read(config)), kind)
        sample = f"{root}data/sample_inputs/{stem}.pt"
        if sample in names and not _weights_only_loads(archive.read(sample)):
            reasons.append("its sample inputs need full pickle")
    return reasons


def _rel(name: str) -> str:
    """A member's path inside the archive's root folder (``model/models/x.json`` -> ``models/x.json``)."""
    return name.split("/", 1)[1] if "/" in name else name


def _pickled_payloads(config: dict, kind: str) -> list[str]:
    out = []
    for fqn, meta in (config.get("config") or {}).items():
        path = str(meta.get("path_name", ""))
        if meta.get("use_pickle") or not path.startswith(("weight_", "tensor_")):
            out.append(f"{kind[:-1]} {fqn!r} is pickled")
    return out


def _weights_only_loads(data: bytes) -> bool:
    """Whether torch's restricted (weights-only) unpickler reads ``data``; it runs no code."""
    import warnings

    import torch

    if not data:
        return True
    try:
        with warnings.catch_warnings():  # torch's own pytree deprecation, not the user's
            warnings.simplefilter("ignore", FutureWarning)
            torch.load(io.BytesIO(data), weights_only=True)
    except Exception:  # noqa: BLE001  (any refusal means torch would retry with full pickle)
        return False
    return True
