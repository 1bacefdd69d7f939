"""An RPC session to a board (direct or via a tracker) or to this machine.

Local runs use TVM's ``LocalSession``: the same upload / load / VM / timer calls as
a remote board, so ``edgec bench`` has one code path. The remote architecture is
asked before anything is uploaded.
"""
from __future__ import annotations

import gc
import struct
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from edgec.compiler.artifact import ELF_MACHINES
from edgec.compiler.rpc import (EMULATED_MARKER, RpcError, is_loopback, parse_addr,
                                request_server)
from edgec.compiler.runtime import host_arch

EMULATED_NOTE = ("EMULATED board (qemu-user on this machine): timings are meaningless, "
                 "only outputs count")
TRIPLE_ARCH = {"x86_64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


class Bounded:
    """Runs calls on one worker thread and gives up after ``timeout`` seconds.

    TVM's C++ client blocks (with the GIL released) on a silent peer; the caller
    must not. A call that timed out leaves its thread behind, never the caller.
    """

    def __init__(self, timeout: float, where: str):
        self.timeout, self.where = timeout, where
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="edgec-rpc")

    def __call__(self, what: str, fn, *args, timeout: float | None = None):
        future = self._pool.submit(fn, *args)
        limit = self.timeout if timeout is None else timeout
        try:
            return future.result(limit)
        except FutureTimeout:
            self._pool.shutdown(wait=False)
            raise RpcError(f"{self.where} did not answer within {limit:g}s while {what} "
                           "(--timeout)") from None
        except RpcError:
            raise
        except Exception as e:  # TVM raises RPCError/InternalError/OSError subclasses
            raise RpcError(f"{self.where} failed while {what}: {last_line(e)}") from e

    def close(self):
        self._pool.shutdown(wait=False)


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

    def close(self) -> None:
        self.modules.clear()
        self.sess = None  # TVM closes the socket when the session object is freed...
        self.call.close()
        # ...but a failed remote call's traceback (e.g. a probe for a missing file) keeps
        # it in a reference cycle; collect now, or the server stays busy for other clients
        gc.collect()


def connect(rpc: str | None = None, tracker: str | None = None, key: str | None = None,
            timeout: float = 30, progress=None) -> Session:
    """Open a session: ``rpc`` HOST:PORT, or ``tracker`` HOST:PORT with ``key``, or local."""
    from edgec.compiler.tvm_compat import rpc as tvm_rpc

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
