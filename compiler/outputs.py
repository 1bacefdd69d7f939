"""Output paths, checked before any work: writable, and never one of the command's inputs.

A command that writes over its own input destroys it (``edgec run m.so -o m.so``,
``edgec compile --prune-plan p.json -o p.so``, whose manifest is ``p.json``). Each
command names its outputs and inputs by flag; a clash is one line naming both.
"""
from __future__ import annotations

import os
import tempfile

from edgec.compiler.errors import EdgecError


class OutputError(EdgecError):
    """An output path would overwrite an input, or cannot be written."""


def _key(path: str) -> tuple:
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        return ("path", real)


def same_file(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` name one file (links and relative paths resolved)."""
    return _key(a) == _key(b)


def check_outputs(outputs: dict, inputs: dict) -> None:
    """``outputs`` / ``inputs``: {what (e.g. "-o"): path or None}. Raise OutputError when an
    output is an input (or inside an input folder), or when it cannot be written."""
    outs = {k: v for k, v in outputs.items() if v}
    ins = {k: os.fspath(v) for k, v in inputs.items() if v}
    for what, out in outs.items():
        for name, given in ins.items():
            inside = os.path.isdir(given) and os.path.realpath(out).startswith(
                os.path.realpath(given).rstrip(os.sep) + os.sep)
            if same_file(out, given) or inside:
                raise OutputError(f"{what} {out} would overwrite {name} {given}, an input of "
                                  "this command; write the output somewhere else")
        check_writable(out, what)


def check_stdout(inputs: dict) -> None:
    """Refuse to print over an input: ``edgec bench m.so --json > m.json`` (the shell has
    already emptied m.json, but the user learns it now, not when the manifest is missing)."""
    try:
        st = os.fstat(1)
    except OSError:
        return
    for name, given in inputs.items():
        if given and os.path.exists(given):
            other = os.stat(given)
            if (st.st_dev, st.st_ino) == (other.st_dev, other.st_ino):
                raise OutputError(f"standard output is {given}, {name} of this command: the "
                                  "shell emptied it before edgec ran; restore or rebuild it, "
                                  "and redirect the output to another file")


def check_writable(path: str, what: str = "output") -> None:
    """Raise unless ``path`` can be created or replaced (its folder writable, not a folder)."""
    if os.path.isdir(path):
        raise OutputError(f"{what} {path} is a folder; give a file path")
    folder = os.path.dirname(os.path.abspath(path))
    probe = folder
    while not os.path.exists(probe):  # the nearest existing ancestor is the one created in
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise OutputError(f"cannot write {what} {path}: {probe} is a file, not a folder")
    try:  # try it: os.access says yes to root even on a read-only file system
        fd, tmp = tempfile.mkstemp(prefix=".edgec-probe-", dir=probe)
    except OSError as e:
        raise OutputError(f"cannot write {what} {path}: folder {probe} is not writable "
                          f"({e.strerror}); choose another output path") from None
    os.close(fd)
    os.unlink(tmp)


def public_mode(path: str) -> int:
    """The mode a newly created ``path`` would get from ``open``/the linker: 0666 (0777 for a
    shared library) minus the umask, instead of mkstemp's private 0600."""
    base = 0o777 if path.endswith((".so", ".dylib", ".dll")) else 0o666
    return base & ~_umask()


def _umask() -> int:
    """The process umask, read without setting it (os.umask would change it for every
    thread for a moment)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
