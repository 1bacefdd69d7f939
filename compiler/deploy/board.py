"""An emulated aarch64 board: Debian arm64 user space + TVM's runtime under qemu-user.

Nothing runs under emulation while the rootfs is built: mmdebstrap only unpacks
Debian's arm64 packages, and the host's pip fetches PyPI's aarch64 wheels. The TVM
compiler library (~240 MB) is deleted, so the board is runtime-only like a real one
and ``import tvm`` takes seconds instead of ~17 s. The server runs in a private mount
namespace with its own /proc (TVM's server needs it), so nothing stays mounted on the
host and the rootfs can be deleted like any folder. Timings there mean nothing.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from edgec.compiler.errors import EdgecError
from edgec.compiler.deploy.rpc import EMULATED_MARKER, Process, start_server

BOARD_VERSION = 1  # bump when the recipe below changes: cached rootfs get rebuilt
SUITE = "bookworm"  # Python 3.11, like the cp311 wheels below
PY_SITE = "usr/local/lib/python3.11/dist-packages"
WHEELS = ["apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post1", "numpy", "ml_dtypes",
          "psutil", "tornado", "cloudpickle", "typing_extensions"]
RUNTIME_ONLY_DROP = ["tvm/lib/libtvm_compiler.so", "tvm/lib/libtvm_runtime_cuda.so"]
EMULATION_NOTE = "timings under qemu emulation are meaningless; outputs are real"
MARKER = ".edgec-board.json"
TOOLS = {"mmdebstrap": "mmdebstrap", "chroot": "coreutils", "unshare": "util-linux",
         "update-binfmts": "binfmt-support"}
APT = "apt-get install -y qemu-user-static binfmt-support mmdebstrap"


class BoardError(EdgecError):
    """The emulated board cannot be built or started here."""


def default_dir() -> str:
    """The rootfs cache, reused across runs (``$EDGEC_BOARD_DIR`` overrides)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("EDGEC_BOARD_DIR") or os.path.join(base, "edgec", "board-aarch64")


def check_host() -> None:
    """Root, the tools, and qemu-aarch64 registered with binfmt_misc (fixed up if possible)."""
    if os.geteuid() != 0:
        raise BoardError("the emulated board needs root (chroot, mount namespaces); run as root "
                         "or use a real board")
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    if missing:
        raise BoardError(f"missing {', '.join(missing)}; install with: {APT}")
    entry = "/proc/sys/fs/binfmt_misc/qemu-aarch64"
    if not os.path.exists(entry):
        if not os.path.exists("/proc/sys/fs/binfmt_misc/register"):
            _run(["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"],
                 "mounting binfmt_misc")
        _run(["update-binfmts", "--enable", "qemu-aarch64"], "enabling qemu-aarch64 in binfmt")
    with open(entry, encoding="ascii") as f:
        text = f.read()
    if not text.startswith("enabled") or "F" not in text.split("flags:")[1].split()[0]:
        raise BoardError(f"qemu-aarch64 binfmt entry is not enabled with the F flag: {text!r}; "
                         f"reinstall qemu-user-static ({APT})")


def _run(cmd, what, attempts: int = 1, fresh: str | None = None, **kw) -> None:
    """Run ``cmd``; downloads get ``attempts`` tries (mirrors fail transiently), each
    into an emptied ``fresh`` folder (mmdebstrap and pip --target want a clean one)."""
    for attempt in range(attempts):
        if fresh:
            shutil.rmtree(fresh, ignore_errors=True)
        result = subprocess.run(cmd, capture_output=True, text=True, **kw)
        if result.returncode == 0:
            return
        if attempt + 1 < attempts:
            time.sleep(5)
    tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
    raise BoardError(f"{what} failed (exit {result.returncode}): {' | '.join(tail)}")


def read_marker(root: str) -> dict | None:
    try:
        with open(os.path.join(root, MARKER), encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    return info if info.get("board_version") == BOARD_VERSION else None


def prepare(root: str, quiet: bool = False) -> dict:
    """Build the board's rootfs in ``root`` unless a current one is there; return its info.

    Built in ``root.partial`` and renamed into place, so an interrupted build never
    leaves a rootfs that looks ready. Two processes preparing the same folder at once (two
    ``edgec rpc board`` commands, or test workers) take turns on ``root.lock``: the second
    finds the first's rootfs ready instead of deleting its half-built one.
    """
    import fcntl

    check_host()
    info = read_marker(root)
    if info:
        return info
    os.makedirs(os.path.dirname(os.path.abspath(root)), exist_ok=True)
    with open(root.rstrip("/") + ".lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return read_marker(root) or _prepare_locked(root, quiet)


def _prepare_locked(root: str, quiet: bool) -> dict:
    partial = root.rstrip("/") + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    say = (lambda m: None) if quiet else (lambda m: print(f"board: {m}", file=sys.stderr, flush=True))
    try:
        _build(partial, say)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # nothing half-built stays behind
        raise
    info = {"board_version": BOARD_VERSION, "arch": "aarch64", "suite": SUITE,
            "tvm": "apache-tvm 0.27.0.post1 (runtime only)", "wheels": WHEELS}
    with open(os.path.join(partial, MARKER), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    shutil.rmtree(root, ignore_errors=True)
    os.replace(partial, root)
    return info


def _build(partial: str, say) -> None:
    """Unpack Debian arm64, add the aarch64 wheels, make TVM runtime-only, byte-compile."""
    mirror = os.environ.get("EDGEC_DEBIAN_MIRROR", "http://deb.debian.org/debian")
    security = os.environ.get("EDGEC_DEBIAN_SECURITY", "http://deb.debian.org/debian-security")
    say(f"unpacking Debian {SUITE} arm64 (python3) into {partial}")
    _run(["mmdebstrap", "--arch=arm64", "--variant=extract", "--include=python3,libstdc++6",
          "--quiet", SUITE, partial, f"deb {mirror} {SUITE} main",
          f"deb {security} {SUITE}-security main"], "mmdebstrap", attempts=3,
         fresh=partial)
    say("installing the aarch64 wheels: " + ", ".join(WHEELS))
    site = os.path.join(partial, PY_SITE)
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
          site, "--platform", "manylinux_2_28_aarch64",
          "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
          "--only-binary=:all:", *WHEELS], "pip install of the aarch64 wheels", attempts=3,
         fresh=site)
    for rel in RUNTIME_ONLY_DROP:
        path = os.path.join(partial, PY_SITE, rel)
        if os.path.exists(path):
            os.unlink(path)
    os.makedirs(os.path.join(partial, "proc"), exist_ok=True)
    say("byte-compiling Python inside the emulated rootfs")
    _run([shutil.which("chroot"), partial, "/usr/bin/python3", "-m", "compileall", "-q", "-j0",
          "/usr/lib/python3.11", "/" + PY_SITE], "compileall under emulation",
         env={"PATH": "/usr/bin:/bin"})


def start(root: str, port: int = 9095, tracker: str | None = None, key: str | None = None,
          timeout: float = 180, die_with_parent: bool = False,
          threads: int | None = None) -> Process:
    """Start TVM's RPC server inside the board on 127.0.0.1:``port``; stop() ends it.

    threads: the board runtime's thread pool (TVM_NUM_THREADS); unset, it takes every CPU
    qemu-user shows, which are this machine's: several boards on one machine then each
    spread over all its cores. One each lets N boards measure side by side on N cores."""
    if threads is not None and threads < 1:
        raise BoardError(f"threads must be >= 1, got {threads}")
    check_host()
    if read_marker(root) is None:
        raise BoardError(f"no prepared board in {root}; run 'edgec rpc emulate --prepare-only'")
    with open(os.path.join(root, EMULATED_MARKER.lstrip("/")), "w", encoding="utf-8") as f:
        f.write(EMULATION_NOTE + "\n")  # clients read it to label their timings
    # own mount namespace: /proc is mounted for the server only and vanishes with it
    script = 'mount -t proc proc "$0/proc" && exec chroot "$0" /usr/bin/python3 "$@"'
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
              os.path.abspath(root)]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "TVM_USE_RUNTIME_LIB": "1"}
    if threads is not None:
        env["TVM_NUM_THREADS"] = str(threads)
    # runtime-only TVM skips libtvm_runtime_extra, which holds the random fill that
    # MetaSchedule's RPC runner calls on the board: load it into every session
    extra = ["--load-library", f"/{PY_SITE}/tvm/lib/libtvm_runtime_extra.so"]
    proc = start_server(port, "127.0.0.1", tracker, key, prefix=prefix, env=env, timeout=timeout,
                        extra=extra, die_with_parent=die_with_parent)
    proc.extra.update(emulated=True, rootfs=os.path.abspath(root), note=EMULATION_NOTE)
    return proc
