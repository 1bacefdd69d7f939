"""Artifacts: model.so plus model.json, written atomically, checked on load."""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from contextlib import contextmanager

from edgec.compiler.errors import ArtifactError

MANIFEST_VERSION = 1
ELF_MACHINES = {62: "x86_64", 183: "aarch64", 40: "arm", 3: "x86"}


def manifest_path(so_path: str) -> str:
    """``model.so`` -> ``model.json`` (same folder, same stem)."""
    return os.path.splitext(so_path)[0] + ".json"


@contextmanager
def atomic_path(final_path: str):
    """Yield a temp path beside ``final_path``; rename into place only on success."""
    folder = os.path.dirname(os.path.abspath(final_path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(final_path)[1]
    fd, tmp = tempfile.mkstemp(prefix=".edgec-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, final_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json_atomic(path: str, data) -> None:
    """Write JSON so that readers see the old file or the whole new one."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")


def elf_machine(path: str) -> str:
    """The architecture an ELF file was built for ("x86_64", "aarch64", ...)."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError as e:
        raise ArtifactError(f"cannot read {path}: {e.strerror}") from e
    if len(head) < 20 or head[:4] != b"\x7fELF":
        raise ArtifactError(f"{path} is not an ELF shared library")
    endian = "<" if head[5] == 1 else ">"
    (machine,) = struct.unpack(endian + "H", head[18:20])
    return ELF_MACHINES.get(machine, f"elf-machine-{machine}")


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def read_manifest(so_path: str) -> dict:
    """Read and check the manifest that travels with ``so_path``."""
    path = manifest_path(so_path)
    if not os.path.isfile(so_path):
        raise ArtifactError(f"artifact not found: {so_path}")
    if not os.path.isfile(path):
        raise ArtifactError(f"manifest missing: {path} must travel with {os.path.basename(so_path)} "
                            "(rebuild with 'edgec compile')")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"manifest {path} is not valid JSON: {e}") from e
    for key in ("inputs", "outputs", "target", "arch"):
        if key not in manifest:
            raise ArtifactError(f"manifest {path} lacks '{key}'; it was not written by edgec")
    return manifest
