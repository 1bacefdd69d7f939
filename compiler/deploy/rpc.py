"""TVM RPC for edgec: start trackers and servers, connect with bounded timeouts.

TVM's own client helpers retry for 60 s and its tracker request waits forever for a
free server; here every network step has a deadline and fails with one clear line.
Processes we start run in their own process group, so ``stop()`` ends the server
and the per-session children that hold its socket, and reaps them (no zombies).
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from edgec.compiler.errors import EdgecError

TRACKER_MAGIC = 0x2F271  # tvm.rpc.base.RPC_TRACKER_MAGIC
REQUEST, SUMMARY, SUCCESS = 4, 6, 0  # tvm.rpc.base.TrackerCode
LOOPBACK = ("127.0.0.1", "localhost", "::1")
EMULATED_MARKER = "/etc/edgec-emulated-board"  # present inside `edgec rpc emulate` boards
UNSAFE_BIND = ("WARNING: this RPC server listens on {host}, not on 127.0.0.1. A TVM RPC server "
               "runs ANY code a client sends it: bind it only on a trusted, private network.")


class RpcError(EdgecError):
    """A tracker or server could not be reached, or failed during a session."""


def parse_addr(text: str, what: str = "address") -> tuple[str, int]:
    """``host:port`` -> (host, port)."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RpcError(f"bad {what} {text!r}; expected HOST:PORT, e.g. 127.0.0.1:9190")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_warning(host: str) -> str | None:
    """The loud warning for a server bound beyond this machine (None on loopback)."""
    return None if is_loopback(host) else UNSAFE_BIND.format(host=host)


@dataclass
class Process:
    """A tracker or server we started, in its own process group; its log in ``log``."""

    popen: subprocess.Popen
    port: int
    log: str
    kind: str = "server"
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self, grace: float = 3.0, keep_log: bool = False) -> None:
        """End the whole process group (TERM, then KILL), reap the leader, drop the log."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                continue
            _wait_group_gone(self.popen.pid, grace, zombies_too=False)
            if not [pid for pid in group_members(self.popen.pid) if pid > 0]:
                break  # else a child outlived TERM: KILL the group
        self.popen.wait()
        _wait_group_gone(self.popen.pid, grace)
        if not keep_log and os.path.exists(self.log):
            os.unlink(self.log)


def _wait_group_gone(pgid: int, timeout: float, zombies_too: bool = True) -> None:
    """Wait briefly for the group to exit (and for init to reap children it adopted)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and [p for p in group_members(pgid) if zombies_too or p > 0]:
        time.sleep(0.05)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) pids in process group ``pgid``; zombies are listed as negative."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            found.append(-int(entry) if fields[0] == "Z" else int(entry))
    return found


# Runs a TVM module as __main__ in a process group that dies with its parent: a SIGHUP
# (the parent-death signal set by _die_with_parent) or a watchdog seeing a new parent
# pid kills the whole group, so the server's session and worker children go too.
GROUP_GUARD = """import os, runpy, signal, sys, threading, time
parent = int(sys.argv[1])
def end_group(*_):
    os.killpg(0, signal.SIGKILL)
signal.signal(signal.SIGHUP, end_group)
def watch():
    while os.getppid() == parent:
        time.sleep(0.2)
    end_group()
threading.Thread(target=watch, daemon=True).start()
module, sys.argv = sys.argv[2], sys.argv[2:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: the kernel sends SIGHUP when the parent dies (GROUP_GUARD
    turns it into SIGKILL for the group). Survives exec."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGHUP))


def guarded(python: list, module: str, args: list) -> list:
    """``python -m module args`` as a process group that ends when this process dies."""
    return [*python, "-c", GROUP_GUARD, str(os.getpid()), module, *args]


def spawn(cmd: list, port: int, kind: str, env=None, ready=None, timeout: float = 60,
          die_with_parent: bool = False) -> Process:
    """Start ``cmd`` in a new session; wait until its log says it bound ``port``.

    die_with_parent: the child gets a parent-death signal (use with ``guarded`` commands,
    from the main thread: Linux sends it when the *thread* that forked it ends).
    """
    fd, log = tempfile.mkstemp(prefix=f"edgec-{kind}-", suffix=".log")
    with os.fdopen(fd, "w") as out:
        popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True, env=env,
                                 preexec_fn=_die_with_parent if die_with_parent else None)
    proc = Process(popen, port, log, kind)
    deadline = time.monotonic() + timeout
    pattern = re.compile(r"bind to \S+:(\d+)")
    while time.monotonic() < deadline:
        match = pattern.search(proc.log_text())
        if match and (ready is None or ready(proc)):
            proc.port = int(match.group(1))
            return proc
        if not proc.alive():
            tail = proc.log_text().strip().splitlines()[-1:] or ["(no output)"]
            raise RpcError(f"{kind} exited at start (code {popen.returncode}): {tail[0]} "
                           f"(log: {log})")
        time.sleep(0.1)
    proc.stop(keep_log=True)
    raise RpcError(f"{kind} did not start listening on port {port} within {timeout:.0f}s; "
                   f"see {log}")


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now (for a tracker or server
    started here: tests, benchmarks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_tracker(port: int = 9190, host: str = "127.0.0.1", timeout: float = 60,
                  die_with_parent: bool = False) -> Process:
    """Start TVM's tracker on exactly ``host:port`` (``die_with_parent``: see ``spawn``)."""
    args = ["--host", host, "--port", str(port), "--port-end", str(port + 1)]
    cmd = (guarded([sys.executable], "tvm.exec.rpc_tracker", args) if die_with_parent
           else [sys.executable, "-m", "tvm.exec.rpc_tracker", *args])
    return spawn(cmd, port, "tracker", timeout=timeout, die_with_parent=die_with_parent)


def server_args(port: int, host: str, tracker: str | None, key: str | None) -> list:
    """Arguments of ``tvm.exec.rpc_server`` (one port, optional tracker registration)."""
    args = ["--host", host, "--port", str(port), "--port-end", str(port + 1)]
    if tracker:
        parse_addr(tracker, "tracker address")
        if not key:
            raise RpcError("a server registering with a tracker needs --key (e.g. rpi4)")
        args += ["--tracker", tracker, "--key", key]
    return args


def start_server(port: int = 9090, host: str = "127.0.0.1", tracker: str | None = None,
                 key: str | None = None, prefix=None, env=None, timeout: float = 60,
                 extra=(), die_with_parent: bool = False) -> Process:
    """Start TVM's RPC server (``prefix``: e.g. a chroot for an emulated board;
    ``extra``: more ``tvm.exec.rpc_server`` flags; ``die_with_parent``: the server and its
    children end when this process dies, even by SIGKILL; see ``spawn``).

    With a tracker, returns once the tracker lists the server under ``key``.
    """
    python = prefix or [sys.executable]
    args = [*server_args(port, host, tracker, key), *extra]
    cmd = (guarded(python, "tvm.exec.rpc_server", args) if die_with_parent
           else [*python, "-m", "tvm.exec.rpc_server", *args])
    ready = None
    if tracker:
        def ready(proc):
            info = tracker_status(tracker, timeout=5)
            return any(s["port"] == port
                       for s in info.get(key, {}).get("servers", []))
    proc = spawn(cmd, port, "server", env=env, ready=ready, timeout=timeout,
                 die_with_parent=die_with_parent)
    proc.extra.update(host=host, tracker=tracker, key=key)
    return proc


def _tracker_socket(addr: str, timeout: float) -> socket.socket:
    host, port = parse_addr(addr, "tracker address")
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.sendall(struct.pack("<i", TRACKER_MAGIC))
        magic = struct.unpack("<i", _recv(sock, 4))[0]
    except socket.timeout as e:
        raise RpcError(f"tracker {addr} did not answer within {timeout:g}s") from e
    except OSError as e:
        raise RpcError(f"cannot reach the RPC tracker at {addr}: {e.strerror or e}; "
                       "is 'edgec rpc tracker' running there?") from e
    if magic != TRACKER_MAGIC:
        sock.close()
        raise RpcError(f"{addr} answered, but it is not a TVM RPC tracker")
    return sock


def _recv(sock, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionResetError("connection closed by peer")
        data += chunk
    return data


def _send_json(sock, data) -> None:
    raw = json.dumps(data).encode()
    sock.sendall(struct.pack("<i", len(raw)) + raw)


def _recv_json(sock):
    (size,) = struct.unpack("<i", _recv(sock, 4))
    return json.loads(_recv(sock, size).decode())


def tracker_status(addr: str, timeout: float = 10) -> dict:
    """{key: {"total", "free", "pending", "servers": [{"host", "port"}]}} from the tracker."""
    with _tracker_socket(addr, timeout) as sock:
        try:
            _send_json(sock, [SUMMARY])
            reply = _recv_json(sock)
        except OSError as e:
            raise RpcError(f"tracker {addr} failed to answer a status query: {e}") from e
    if reply[0] != SUCCESS:
        raise RpcError(f"tracker {addr} refused a status query: {reply}")
    status = {}
    for info in reply[1]["server_info"]:
        key = info["key"].split(":", 1)[1]
        entry = status.setdefault(key, {"total": 0, "free": 0, "pending": 0, "servers": []})
        entry["total"] += 1
        entry["servers"].append({"host": info["addr"][0], "port": info["addr"][1]})
    for key, queue in reply[1]["queue_info"].items():
        if key in status or queue["pending"]:
            entry = status.setdefault(key, {"total": 0, "free": 0, "pending": 0, "servers": []})
            entry.update(free=queue["free"], pending=queue["pending"])
    return status


def request_server(addr: str, key: str, timeout: float, progress=None) -> tuple[str, int, str]:
    """Ask the tracker for a free ``key`` server; wait up to ``timeout`` s if all are busy.

    Returns (host, port, matchkey). Unknown keys fail at once, listing the known ones.
    """
    status = tracker_status(addr, timeout)
    if not status.get(key, {}).get("total"):
        known = ", ".join(f"{k} ({v['total']} server(s))" for k, v in sorted(status.items())
                          if v["total"]) or "none"
        raise RpcError(f"no server is registered under key {key!r} at tracker {addr}; "
                       f"keys there: {known}")
    with _tracker_socket(addr, timeout) as sock:
        _send_json(sock, [REQUEST, key, "", 1])
        reply = _await_server(sock, addr, key, timeout, progress)
    if reply[0] != SUCCESS:
        raise RpcError(f"tracker {addr} refused the request for {key!r}: {reply}")
    host, port, matchkey = reply[1]
    return host, int(port), matchkey


def _await_server(sock, addr: str, key: str, timeout: float, progress):
    """The tracker answers a request only when a server is free: wait, report, give up."""
    start = time.monotonic()
    while True:
        waited = time.monotonic() - start
        if waited >= timeout:
            raise RpcError(f"all {key!r} server(s) at {addr} stayed busy for {timeout:g}s "
                           "(--timeout); try again later or add servers")
        sock.settimeout(min(5.0, timeout - waited))
        try:
            return _recv_json(sock)
        except socket.timeout:
            if progress:  # the status query shares the request's deadline
                left = max(0.5, timeout - (time.monotonic() - start))
                s = tracker_status(addr, min(5.0, left)).get(key, {"total": 0, "free": 0, "pending": 0})
                progress(f"waiting for a free {key!r} server at {addr}: {s['total']} "
                         f"registered, {s['free']} free, {s['pending']} request(s) queued "
                         f"({time.monotonic() - start:.0f}s of {timeout:g}s)")
        except OSError as e:
            raise RpcError(f"tracker {addr} dropped the request for {key!r}: {e}") from e
