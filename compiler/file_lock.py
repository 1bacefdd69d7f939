"""An advisory lock on a file, and reading whole lines of a file others append to.

Writers of an append-only file (the tuning log) hold ``locked`` while they append whole
lines; readers take no lock and read only up to the last newline.
"""
from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager

from edgec.compiler.errors import EdgecError


class LockError(EdgecError):
    """A file stayed locked by another process for too long."""


@contextmanager
def locked(path: str, what: str, wait: float = 60.0):
    """Hold an exclusive ``flock`` on ``path`` (created if missing), waiting at most ``wait`` s."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "ab") as f:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LockError(f"{what} stayed locked by another process for {wait:g}s "
                                    f"({path}); is one stopped?") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def whole_lines(path: str, offset: int = 0, repair: bool = False) -> tuple[list, int]:
    """(complete lines from ``offset``, offset after the last one). ``repair`` (a writer,
    holding the lock): cut a torn last line, left by a writer killed mid-write, off the file."""
    if not os.path.exists(path):
        return [], 0
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    if repair and end < len(data):
        with open(path, "r+b") as f:
            f.truncate(offset + end)
    return [ln for ln in data[:end].split(b"\n") if ln.strip()], offset + end
