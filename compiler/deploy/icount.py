"""Instructions per inference on the emulated aarch64 board (qemu-user + a TCG plugin).

There is no ARM board here, and timings under qemu mean nothing; the number of guest
instructions an inference executes is deterministic and comparable between builds and
engines. ``deploy/qemu_plugin/icount.c`` counts them by class while the dynamic
``qemu-aarch64`` runs a program with the board's rootfs as ``-L``.

Per inference: a program is run with N and with 2N inferences, and the difference
divided by N, so loading, input preparation and start-up cancel out.

What the number is not: no caches, no memory stalls, no frequency, no issue width or
latencies. A kernel that executes fewer instructions is not always faster on a real
core, and one thread only is counted (TVM_NUM_THREADS=1: the count of a spinning
thread pool would depend on scheduling).

Stdlib and subprocess only: nothing here imports TVM or torch.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

from edgec.compiler.errors import EdgecError

LABEL = "instruction counts under qemu-user, not time"
CLASSES = ("fp_mac", "int_mac", "dot", "load", "store", "simd_fp", "scalar_madd", "other")
# SIMD/FP multiply-accumulate in one instruction: FMLA/FMLS/FMADD, MLA/MLS/SMLAL/UMLAL,
# SDOT/UDOT/USDOT/SMMLA. Scalar integer MADD (mostly address arithmetic) is not one.
MAC_CLASSES = ("fp_mac", "int_mac", "dot")
# lseek(-1, MARK, 0) from the guest (EBADF, harmless) opens / closes the counting window:
# the calling thread's instructions in between are counted (see icount.c)
MARK_START, MARK_STOP = 0x6564676563000001, 0x6564676563000002
QEMU = "qemu-aarch64"  # the dynamic build (Debian qemu-user); qemu-aarch64-static has no plugins
APT = "apt-get install -y --no-install-recommends qemu-user make gcc"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo
PLUGIN_DIR = os.path.join(REPO, "deploy", "qemu_plugin")
RUNNER_DIR = os.path.join(REPO, "deploy", "cpp")
ONE_THREAD = {"TVM_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


class IcountError(EdgecError):
    """The instruction counter cannot be built or run here."""


@dataclass(frozen=True)
class Counts:
    """Executed guest instructions by class (see deploy/qemu_plugin/icount.c)."""

    total: int
    classes: dict = field(default_factory=dict)
    vcpus: int = 1
    scope: str = "all threads"  # or "window": one thread between MARK_START and MARK_STOP

    @property
    def mac(self) -> int:
        return sum(self.classes.get(c, 0) for c in MAC_CLASSES)

    def __sub__(self, other: "Counts") -> "Counts":
        if self.scope != other.scope:
            raise IcountError(f"cannot subtract counts of {other.scope} from {self.scope}")
        return Counts(self.total - other.total,
                      {c: self.classes.get(c, 0) - other.classes.get(c, 0) for c in CLASSES},
                      max(self.vcpus, other.vcpus), self.scope)


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "edgec", "icount")


def _digest(paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:12]


def _make(folder: str, out: str, what: str, target: str = "", out_var: str = "OUT",
          **variables) -> str:
    """``make -C folder [target] OUT=...`` into a private name, renamed to ``out`` when done."""
    if shutil.which("make") is None:
        raise IcountError(f"cannot build {what}: 'make' is missing; install with: {APT}")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = f"{out}.{os.getpid()}"
    args = [f"{k}={v}" for k, v in {**variables, out_var: tmp}.items()]
    result = subprocess.run(["make", "-s", "-C", folder, *([target] if target else []), *args],
                            capture_output=True, text=True)
    if result.returncode != 0:
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise IcountError(f"cannot build {what} (make exit {result.returncode}): {tail}")
    os.replace(tmp, out)
    return out


def check_qemu() -> str:
    """The dynamic qemu-aarch64, checked to accept ``-plugin`` (the static one does not)."""
    qemu = shutil.which(QEMU)
    if qemu is None:
        raise IcountError(f"{QEMU} (the dynamic qemu-user) is missing; install with: {APT}")
    probe = subprocess.run([qemu, "-plugin", "help"], capture_output=True, text=True)
    if "unknown option" in probe.stderr:
        raise IcountError(f"{qemu} cannot load TCG plugins (a static build?); install "
                          f"Debian's dynamic qemu-user: {APT}")
    return qemu


def build_plugin() -> str:
    """The plugin's .so, built once per source version into the cache."""
    if not os.path.isfile(os.path.join(PLUGIN_DIR, "icount.c")):
        raise IcountError(f"the plugin source {PLUGIN_DIR}/icount.c is missing (edgec installed "
                          "without its repository? use an editable install)")
    if shutil.which(os.environ.get("CC", "cc")) is None:
        raise IcountError(f"cannot build the QEMU plugin: no C compiler; install with: {APT}")
    srcs = [os.path.join(PLUGIN_DIR, f) for f in ("icount.c", "qemu-plugin.h", "Makefile")]
    out = os.path.join(cache_dir(), f"icount-{_digest(srcs)}.so")
    return out if os.path.exists(out) else _make(PLUGIN_DIR, out, "the QEMU plugin")


def _need_cross(what: str, tool: str = "aarch64-linux-gnu-g++") -> None:
    if shutil.which(tool) is None:
        raise IcountError(f"cannot build {what}: {tool} is missing; install with: "
                          "apt-get install -y g++-aarch64-linux-gnu")


def build_runner(rootfs: str, site: str) -> str:
    """deploy/cpp's edgec_run cross-compiled against the board's TVM wheels (``site``,
    relative to the rootfs), cached per source version."""
    _need_cross("the aarch64 runner")
    srcs = [os.path.join(RUNNER_DIR, f) for f in ("edgec_run.cc", "Makefile")]
    out = os.path.join(cache_dir(), f"edgec_run-aarch64-{_digest(srcs)}")
    if os.path.exists(out):
        return out
    return _make(RUNNER_DIR, out, "the aarch64 runner", CXX="aarch64-linux-gnu-g++",
                 TVM_SITE=os.path.join(rootfs, site), RPATH_SITE="/" + site.strip("/"))


def build_fake_clock() -> str:
    """The aarch64 ``clock_gettime`` that advances 1 us per call (LD_PRELOADed by
    ``count``): a runner's timing code, e.g. edgec_run sorting its latencies, then runs
    the same instructions every time and counts repeat exactly."""
    _need_cross("the fake clock", "aarch64-linux-gnu-gcc")
    srcs = [os.path.join(PLUGIN_DIR, f) for f in ("fake_clock.c", "Makefile")]
    out = os.path.join(cache_dir(), f"fake_clock-{_digest(srcs)}.so")
    return out if os.path.exists(out) else _make(PLUGIN_DIR, out, "the fake clock", "clock",
                                                 "CLOCK_OUT")


# /proc/cpuinfo of an emulated core: qemu-user 7.2 shows the guest the host's x86 file,
# on which the cpuinfo library inside ONNX Runtime crashes (NULL read at import).
# (variant, part, revision, features) as the Linux kernel prints them.
CPUINFO = {
    "cortex-a72": ("0x0", "0xd08", "3", "fp asimd evtstrm crc32 cpuid"),
    "cortex-a76": ("0x4", "0xd0b", "1", "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics "
                   "fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"),
    "neoverse-n1": ("0x3", "0xd0c", "1", "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics "
                    "fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"),
}


def _cpuinfo_text(cpu: str) -> str:
    variant, part, rev, features = CPUINFO[cpu]
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        n = sum(1 for line in f if line.startswith("processor")) or 1
    return "".join(f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\n"
                   f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: {variant}\n"
                   f"CPU part\t: {part}\nCPU revision\t: {rev}\n\n" for i in range(n))


def counting_root(board_root: str, cpu: str) -> str:
    """A hard-linked copy of the board's rootfs (no space, ~0.3 s) whose /proc/cpuinfo
    describes ``cpu``; qemu's -L serves it. Rebuilt when the board is."""
    if cpu not in CPUINFO:
        raise IcountError(f"no /proc/cpuinfo for qemu cpu {cpu!r}; known: {', '.join(CPUINFO)}")
    st = os.stat(board_root)
    dest = os.path.join(cache_dir(), f"rootfs-{cpu}-{st.st_ino}-{st.st_mtime_ns}")
    if os.path.isfile(os.path.join(dest, "proc", "cpuinfo")):
        return dest
    partial = f"{dest}.{os.getpid()}"
    os.makedirs(cache_dir(), exist_ok=True)
    result = subprocess.run(["cp", "-al", board_root, partial], capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise IcountError(f"cannot hard-link the board {board_root} into {cache_dir()} (same "
                          f"file system needed): {result.stderr.strip()[-200:]}")
    os.makedirs(os.path.join(partial, "proc"), exist_ok=True)
    with open(os.path.join(partial, "proc", "cpuinfo"), "w", encoding="utf-8") as f:
        f.write(_cpuinfo_text(cpu))
    os.replace(partial, dest)
    for old in os.listdir(cache_dir()):  # copies of an earlier board
        if (old.startswith(f"rootfs-{cpu}-") and "." not in old
                and os.path.join(cache_dir(), old) != dest):
            shutil.rmtree(os.path.join(cache_dir(), old), ignore_errors=True)
    return dest


def qemu_cpus(qemu: str | None = None) -> list[str]:
    """The CPU models this qemu-aarch64 emulates (``-cpu help``)."""
    text = subprocess.run([qemu or check_qemu(), "-cpu", "help"], capture_output=True,
                          text=True).stdout
    return [w for line in text.splitlines()[1:] for w in line.split()]


def _run(argv: list, rootfs: str, cpu: str, env: dict | None, timeout: float) -> tuple:
    """Run ``argv`` under qemu-aarch64 with the plugin: (the plugin's JSON, the program's
    stdout)."""
    qemu, plugin = check_qemu(), build_plugin()
    with tempfile.TemporaryDirectory(prefix="edgec-icount-") as tmp:
        out = os.path.join(tmp, "counts.json")
        guest_env = {"PATH": "/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
                     "PYTHONHASHSEED": "0", "LD_PRELOAD": build_fake_clock(), **ONE_THREAD,
                     **(env or {})}
        cmd = [qemu, "-L", rootfs, "-cpu", cpu, "-plugin", f"{plugin},outfile={out}"]
        for k, v in guest_env.items():
            cmd += ["-E", f"{k}={v}"]
        if shutil.which("setarch"):
            cmd = ["setarch", "x86_64", "-R", *cmd]
        result = subprocess.run([*cmd, *map(str, argv)], capture_output=True, text=True,
                                timeout=timeout, env={"PATH": os.environ.get("PATH", "")})
        if result.returncode != 0:
            tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-4:])
            raise IcountError(f"{os.path.basename(str(argv[0]))} failed under {QEMU} -cpu {cpu} "
                              f"(exit {result.returncode}): {tail}")
        try:
            with open(out, encoding="utf-8") as f:
                return json.load(f), result.stdout
        except (OSError, ValueError) as e:
            raise IcountError(f"the plugin wrote no counts ({e}); qemu said: "
                              f"{result.stderr.strip()[-300:]}") from None


def _classes(row: dict) -> dict:
    return {c: int(row[c]) for c in CLASSES}


def count(argv: list, rootfs: str, cpu: str = "max", env: dict | None = None,
          timeout: float = 3600) -> Counts:
    """Run ``argv`` (argv[0]: an aarch64 program) under qemu-aarch64 with the plugin;
    libraries resolve in ``rootfs`` (-L). ``cpu``: the emulated core (its features are
    what the program's run-time dispatch sees). One thread, host ASLR off and a fake clock
    (``build_fake_clock``), so a run repeats its count exactly. A program that marks a
    window (MARK_START/MARK_STOP) is counted in it, on the marking thread only."""
    data, _ = _run(argv, rootfs, cpu, env, timeout)
    if "window" in data:
        window = _classes(data["window"]["classes"])
        return Counts(sum(window.values()), window, int(data["vcpus"]), "window")
    return Counts(int(data["total"]), _classes(data["classes"]), int(data["vcpus"]))


def kernel_counts(runner: str, so: str, inputs: list, rootfs: str, cpu: str = "max",
                  timeout: float = 3600) -> list:
    """Instructions of each kernel launch of one call: edgec_run ``--mark-kernels`` puts
    every PrimFunc of one more call between the plugin's marks. Returns [{"kernel",
    "total", "classes"}] summed per kernel symbol (a symbol launched twice adds up), the
    largest first. The VM's own work between launches is not in any kernel's count."""
    data, stdout = _run([runner, so, *inputs, "--repeat", "0", "--warmup", "0",
                         "--mark-kernels", "--json"], rootfs, cpu, None, timeout)
    try:
        names = json.loads(stdout.strip().splitlines()[-1])["kernels"]
    except (IndexError, KeyError, ValueError):
        raise IcountError(f"edgec_run printed no kernel list: {stdout.strip()[-200:]!r}") from None
    windows = data.get("windows", [])
    if len(windows) != len(names):
        raise IcountError(f"edgec_run launched {len(names)} kernels, the plugin closed "
                          f"{len(windows)} windows")
    per: dict = {}
    for name, row in zip(names, windows):
        acc = per.setdefault(name, {"kernel": name, "launches": 0, "classes": dict.fromkeys(CLASSES, 0)})
        acc["launches"] += 1
        for c in CLASSES:
            acc["classes"][c] += int(row[c])
    out = [{**k, "total": sum(k["classes"].values())} for k in per.values()]
    return sorted(out, key=lambda k: -k["total"])


def per_inference(argv_for, n: int, rootfs: str, **kw) -> dict:
    """Instructions per inference: ``argv_for(k)`` runs k inferences; runs k = n and 2n
    and divides the difference by n. Returns the two raw counts and the per-inference ones."""
    if n < 1:
        raise IcountError(f"n must be >= 1, got {n}")
    a, b = count(argv_for(n), rootfs, **kw), count(argv_for(2 * n), rootfs, **kw)
    d = b - a
    if d.total <= 0:
        raise IcountError(f"{2 * n} inferences counted {b.total}, {n} counted {a.total}: the "
                          "program does not scale with the inference count")
    return {"n": n, "total": d.total / n, "classes": {c: d.classes[c] / n for c in CLASSES},
            "mac_share": d.mac / d.total, "threads": d.vcpus, "scope": d.scope,
            "raw": {str(n): a.total, str(2 * n): b.total}}


def runner_argv(runner: str, so: str, inputs: list) -> "callable":
    """``argv_for(k)``: edgec_run calling the model once, then k more times (no warm-up)."""
    return lambda k: [runner, so, *inputs, "--repeat", str(k), "--warmup", "0", "--json"]

