"""Artifacts: model.so plus model.json, written atomically, checked on load."""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from contextlib import contextmanager

from edgec.compiler.errors import ArtifactError
from edgec.compiler.outputs import public_mode

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
        os.chmod(tmp, public_mode(final_path))  # mkstemp makes it 0600: outputs are shared files
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


EMBEDDED_SECTION = ".edgec.manifest"
# what the library carries of its manifest (the digest of the file cannot be inside it)
EMBEDDED_KEYS = ("format", "version", "inputs", "outputs", "target", "arch", "source",
                 "early_exit", "versions")


def embed_manifest(so_path: str, manifest: dict, cross_cc: str | None = None) -> bool:
    """Put the manifest's description of the library into the library itself (a non-loaded
    ELF section, added with objcopy), so a lone .so still says what it is. False (nothing
    changed) when no objcopy for its architecture is at hand."""
    import shutil
    import subprocess

    tool = cross_cc.rsplit("-", 1)[0] + "-objcopy" if cross_cc else "objcopy"
    if shutil.which(tool) is None:
        return False
    data = {k: manifest.get(k) for k in EMBEDDED_KEYS}
    fd, tmp = tempfile.mkstemp(prefix=".edgec-embed-", suffix=".json",
                               dir=os.path.dirname(os.path.abspath(so_path)))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, separators=(",", ":"))
        done = subprocess.run([tool, "--add-section", f"{EMBEDDED_SECTION}={tmp}",
                               "--set-section-flags", f"{EMBEDDED_SECTION}=noload,readonly",
                               so_path], capture_output=True, text=True)
    finally:
        os.unlink(tmp)
    return done.returncode == 0


def read_embedded(so_path: str) -> dict | None:
    """The manifest copy inside the library (None: none, or not an ELF file we can read)."""
    try:
        with open(so_path, "rb") as f:
            raw = _elf_section(f, EMBEDDED_SECTION)
        return json.loads(raw) if raw is not None else None
    except (OSError, ValueError, struct.error):
        return None


def _elf_section(f, name: str) -> bytes | None:
    head = f.read(64)
    if head[:4] != b"\x7fELF":
        return None
    wide, e = head[4] == 2, "<" if head[5] == 1 else ">"
    shoff, (shentsize, shnum, shstrndx) = (
        (struct.unpack(e + "Q", head[0x28:0x30])[0], struct.unpack(e + "HHH", head[0x3A:0x40]))
        if wide else
        (struct.unpack(e + "I", head[0x20:0x24])[0], struct.unpack(e + "HHH", head[0x2E:0x34])))
    sections = []
    for i in range(shnum):
        f.seek(shoff + i * shentsize)
        sh = f.read(shentsize)
        name_off = struct.unpack(e + "I", sh[:4])[0]
        off, size = (struct.unpack(e + "QQ", sh[24:40]) if wide else
                     struct.unpack(e + "II", sh[16:24]))
        sections.append((name_off, off, size))
    names_at = sections[shstrndx][1]
    for name_off, off, size in sections:
        f.seek(names_at + name_off)
        if f.read(len(name) + 1) == name.encode() + b"\0":
            f.seek(off)
            return f.read(size)
    return None


def read_manifest(so_path: str) -> dict:
    """Read and check the manifest that travels with ``so_path`` (or, when the .json is
    missing, the copy embedded in the library)."""
    path = manifest_path(so_path)
    if not os.path.isfile(so_path):
        raise ArtifactError(f"artifact not found: {so_path}")
    if not os.path.isfile(path):
        embedded = read_embedded(so_path)
        if embedded is not None:
            return dict(embedded, manifest_from="library")
        raise ArtifactError(f"manifest missing: {path} must travel with {os.path.basename(so_path)} "
                            "(rebuild with 'edgec compile')")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except UnicodeDecodeError as e:
        raise ArtifactError(f"manifest {path} is not UTF-8 text ({e.reason} at byte {e.start}); "
                            "it is damaged: rebuild with 'edgec compile'") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"manifest {path} is not valid JSON: {e}") from e
    if not isinstance(manifest, dict):
        raise ArtifactError(f"manifest {path} is not a JSON object; it was not written by edgec")
    for key in ("inputs", "outputs", "target", "arch"):
        if key not in manifest:
            raise ArtifactError(f"manifest {path} lacks '{key}'; it was not written by edgec")
    for key in ("inputs", "outputs"):
        _check_specs(path, key, manifest[key])
    return manifest


def _check_specs(path: str, key: str, specs) -> None:
    """Each input/output entry: a name, a shape of non-negative ints, a known dtype."""
    import numpy as np

    if not isinstance(specs, list):
        raise ArtifactError(f"manifest {path}: '{key}' is not a list; rebuild with 'edgec compile'")
    for i, spec in enumerate(specs):
        ok = (isinstance(spec, dict) and isinstance(spec.get("name"), str)
              and isinstance(spec.get("shape"), list)
              and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                      for d in spec["shape"]))
        try:
            ok = ok and np.dtype(spec["dtype"]) is not None
        except (TypeError, KeyError):
            ok = False
        if not ok:
            raise ArtifactError(f"manifest {path}: {key[:-1]} {i} {spec!r} is not a name, a shape "
                                "of non-negative integers and a dtype; the manifest was edited "
                                "or damaged: rebuild with 'edgec compile'")


def verify_library(so_path: str, manifest: dict) -> None:
    """Refuse a library whose bytes differ from the digest its manifest recorded at build
    (a damaged or swapped .so could crash the process when loaded)."""
    want = manifest.get("library_sha256")
    if not want:
        return  # written before edgec recorded the digest
    got = file_digest(so_path)
    if got[: len(want)] != want[: len(got)]:
        raise ArtifactError(f"{so_path} does not match its manifest {manifest_path(so_path)} "
                            f"(sha256 {got}, the manifest recorded {want}): the library was "
                            "changed or damaged after 'edgec compile'; rebuild it, or copy the "
                            ".so and its .json together again")


def bytecode_shapes(vm_text: str) -> list:
    """The fixed input shapes ``main`` checks, from the Relax VM executable's text (one list
    per input; None for a dimension it does not fix). [] when the text is not understood."""
    import re

    body = vm_text.split("@main:", 1)[1].split("\n@", 1)[0] if "@main:" in vm_text else ""
    shapes = {}
    for m in re.finditer(r"vm\.builtin\.match_shape in: %(\d+), %void, i(\d+),((?:\s*i-?\d+,)*)",
                         body):
        reg, ndim = int(m.group(1)), int(m.group(2))
        nums = [int(x) for x in re.findall(r"i(-?\d+)", m.group(3))]
        if reg in shapes or len(nums) < 2 * ndim:
            continue
        shapes[reg] = [v if k == 0 else None for k, v in zip(nums[0:2 * ndim:2], nums[1:2 * ndim:2])]
    regs = sorted(shapes)
    return [shapes[r] for r in regs] if regs == list(range(len(regs))) else []


def check_interface(so_path: str, manifest: dict, vm_text: str) -> None:
    """The manifest's inputs and outputs against the library's own copy of them (embedded
    at build), and its input shapes against those the library's bytecode checks. Catches a
    hand-edited manifest before a call fails inside the VM."""
    embedded = read_embedded(so_path)
    for key in ("inputs", "outputs"):
        if embedded is not None and embedded.get(key) != manifest[key]:
            for ours, theirs in zip(manifest[key], embedded.get(key) or []):
                if ours != theirs:
                    break
            else:
                ours, theirs = manifest[key], embedded.get(key)
            raise ArtifactError(f"manifest {manifest_path(so_path)} says {key[:-1]} {ours}, but "
                                f"the library's own copy says {theirs}; the manifest was "
                                "edited: restore it or rebuild with 'edgec compile'")
    for spec, shape in zip(manifest["inputs"], bytecode_shapes(vm_text)):
        if len(shape) != len(spec["shape"]) or any(
                b is not None and a != b for a, b in zip(spec["shape"], shape)):
            raise ArtifactError(f"manifest {manifest_path(so_path)} says input {spec['name']!r} "
                                f"has shape {spec['shape']}, but the library takes "
                                f"{['?' if d is None else d for d in shape]}; the manifest was "
                                "edited: rebuild with 'edgec compile' or restore it")
