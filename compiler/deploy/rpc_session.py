"""An RPC session to a board (direct or via a tracker) or to this machine.

Local runs use TVM's ``LocalSession``: the same upload / load / VM / timer calls as
a remote board, so ``edgec bench`` has one code path. The remote architecture is
asked before anything is uploaded.
"""
from __future__ import annotations

import ctypes
import gc
import struct
import threading
from dataclasses import dataclass, field

from edgec.compiler.deploy.artifact import ELF_MACHINES
from edgec.compiler.deploy.rpc import (EMULATED_MARKER, RpcError, is_loopback, parse_addr,
                                       request_server)
from edgec.compiler.deploy.runtime import host_arch
from edgec.compiler.tvm_compat import rpc as tvm_rpc

EMULATED_NOTE = ("EMULATED board (qemu-user on this machine): timings are meaningless, "
                 "only outputs count")
TRIPLE_ARCH = {"x86_64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


_ABANDONED = []  # sessions given up on a stuck peer: pinned, never freed (see Bounded)


class Bounded:
    """Runs each call on a daemon thread and gives up after ``timeout`` seconds.

    TVM's C++ client blocks (with the GIL released) on a silent or stopped peer, and
    holds the session's lock meanwhile: any other use of the session, even freeing a
    remote handle (a destructor), then blocks too. So after a timeout the session is
    *abandoned*: further calls fail at once, and every remote object a call returned
    (the session, libraries, VMs, timers) is kept here and pinned (an extra reference
    that is never dropped), so no destructor ever waits on the dead peer, not even at
    interpreter exit. The stuck thread is a daemon: it never holds the process up.
    """

    def __init__(self, timeout: float, where: str):
        self.timeout, self.where = timeout, where
        self.abandoned = False
        self.kept = []  # remote objects returned by calls; released by close() unless abandoned

    def __call__(self, what: str, fn, *args, timeout: float | None = None):
        if self.abandoned:
            raise RpcError(f"{self.where} stopped answering earlier; not {what}")
        limit = self.timeout if timeout is None else timeout
        box = {}

        def work():
            try:
                box["value"] = fn(*args)
            except BaseException as e:  # noqa: BLE001  (handed to the caller below)
                box["error"] = e
        worker = threading.Thread(target=work, name="edgec-rpc", daemon=True)
        worker.start()
        try:
            worker.join(limit)
        except KeyboardInterrupt:  # the call may still hold the session's lock
            self.abandon()
            raise
        if worker.is_alive():
            self.abandon()
            raise RpcError(f"{self.where} did not answer within {limit:g}s while {what} "
                           "(--timeout)")
        if "error" in box:
            e = box.pop("error")
            if isinstance(e, RpcError):
                raise e
            # TVM raises RPCError/InternalError/OSError subclasses
            raise RpcError(f"{self.where} failed while {what}: {last_line(e)}") from e
        value = box.get("value")
        if _is_remote(value):
            self.kept.append(value)
        return value

    def abandon(self) -> None:
        """Give the session up: pin everything it returned so nothing is freed, ever."""
        if not self.abandoned:
            self.abandoned = True
            _ABANDONED.append(self)
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(self))

    def close(self):
        if not self.abandoned:
            self.kept.clear()


def _is_remote(value) -> bool:
    """Whether a call's result may hold a remote handle (anything but plain data)."""
    import numpy as np

    plain = (type(None), bool, int, float, str, bytes, bytearray, np.ndarray, np.generic)
    if isinstance(value, (list, tuple)):
        return any(_is_remote(v) for v in value)
    return not isinstance(value, plain)


def last_line(error) -> str:
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(error).__name__


@dataclass
class Session:
    """A live session: ``sess`` is a TVM RPCSession; every call goes through ``call``."""
    sess: object
    where: str
    host: str | None
    call: Bounded
    arch: str = "unknown"
    arch_source: str = ""
    modules: dict = field(default_factory=dict)  # library digest -> loaded module
    marked_emulated: bool = False  # the server has edgec's emulated-board marker

    @property
    def emulated(self) -> bool:
        """Marked as edgec's emulated board, or a foreign architecture answering on
        loopback (which can only be an emulator)."""
        return self.marked_emulated or (self.host is not None and is_loopback(self.host)
                                        and self.arch not in (host_arch(), "unknown"))

    def describe(self) -> dict:
        info = {"where": self.where, "arch": self.arch, "arch_source": self.arch_source,
                "emulated": self.emulated}
        if self.emulated:
            info["note"] = EMULATED_NOTE
        return info

    @property
    def abandoned(self) -> bool:
        """A call timed out: the peer is stuck and the session is given up (see Bounded)."""
        return self.call.abandoned

    def close(self) -> None:
        self.modules.clear()  # (an abandoned session keeps these in self.call.kept)
        self.sess = None  # TVM closes the socket when the session object is freed...
        self.call.close()
        # ...but a failed remote call's traceback (e.g. a probe for a missing file) keeps
        # it in a reference cycle; collect now, or the server stays busy for other clients
        gc.collect()


def connect(rpc: str | None = None, tracker: str | None = None, key: str | None = None,
            timeout: float = 30, progress=None) -> Session:
    """Open a session: ``rpc`` HOST:PORT, or ``tracker`` HOST:PORT with ``key``, or local."""
    if rpc and tracker:
        raise RpcError("give either --rpc HOST:PORT or --tracker HOST:PORT --key KEY, not both")
    if tracker:
        if not key:
            raise RpcError("--tracker needs --key (the key the board registered with, e.g. rpi4)")
        host, port, matchkey = request_server(tracker, key, timeout, progress)
        where = f"{host}:{port} (key {key!r} via tracker {tracker})"
    elif rpc:
        (host, port), matchkey = parse_addr(rpc, "server address"), ""
        where = f"{host}:{port}"
    else:
        import logging

        logging.getLogger("RPCServer").setLevel(logging.WARNING)  # quiet LocalSession loads
        call = Bounded(timeout, "this machine")
        session = Session(tvm_rpc().LocalSession(), "local", None, call, host_arch(), "local")
        return session
    call = Bounded(timeout, f"RPC server {where}")
    try:
        sess = call("connecting", tvm_rpc().connect, host, port, matchkey)
    except RpcError as e:
        if "did not answer" in str(e):
            raise
        raise RpcError(f"cannot reach the RPC server at {where} ({str(e).rsplit(': ', 1)[-1]}); "
                       "is 'edgec rpc server' running there?") from e
    session = Session(sess, where, host, call)
    session.arch, session.arch_source = remote_arch(session)
    session.marked_emulated = has_file(session, EMULATED_MARKER)
    return session


def has_file(session: Session, path: str) -> bool:
    """Whether the server can read ``path`` (a missing file is an error over there)."""
    try:
        session.call(f"looking for {path}", session.sess.download, path)
        return True
    except RpcError as e:
        if "did not answer" in str(e):
            raise
        return False


def remote_arch(session: Session) -> tuple[str, str]:
    """(arch, how it was found): LLVM's process triple when the server has the compiler
    library, otherwise the ELF header of the server's own executable (/proc/self/exe,
    which qemu-user maps to the emulated program)."""
    sess, call = session.sess, session.call
    try:
        triple = call("asking its target triple",
                      lambda: sess.get_function("target.llvm_get_system_triple")())
        arch = TRIPLE_ARCH.get(str(triple).split("-")[0])
        if arch:
            return arch, f"llvm triple {triple}"
    except RpcError:
        pass  # runtime-only servers (boards) have no LLVM
    try:
        head = bytes(call("reading its executable's ELF header",
                          lambda: sess.download("/proc/self/exe")[:20]))
    except RpcError as e:
        if "did not answer" in str(e):
            raise
        return "unknown", f"not found ({e})"
    if len(head) == 20 and head[:4] == b"\x7fELF":
        (machine,) = struct.unpack("<H" if head[5] == 1 else ">H", head[18:20])
        return ELF_MACHINES.get(machine, f"elf-machine-{machine}"), "ELF header of /proc/self/exe"
    return "unknown", "server executable is not ELF"
