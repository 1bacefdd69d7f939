"""Targets as data: one frozen dataclass per board or CPU class.

Adding a board is adding one entry to ``TARGETS``. ``host`` is not a fixed
entry: it is detected from this machine's CPU (``/proc/cpuinfo``) each time.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass, field

AARCH64_CC = "aarch64-linux-gnu-g++"


class UnknownTargetError(ValueError):
    """A target name that is not in the table (``edgec.compiler.errors.USER_ERRORS``
    counts it among the errors reported in one line; targets import nothing of edgec)."""


@dataclass(frozen=True)
class Target:
    """A compilation target.

    name: edgec's name for it; tvm: the TVM target as a JSON dict;
    host: the host target dict (None: same as tvm); cross_cc: the C++
    cross compiler that links the .so (None: host compiler); rpc_key: the
    default key its boards register under; arch: ELF machine family
    ("x86_64" or "aarch64"); vector_bits: SIMD width, used to round pruned
    channel counts; int8: which int8 dot-product path it has.
    tuning_key: the ``tuning_logs/`` directory whose records fit this target (default:
    its name; ``host`` uses the base target it compiles like, e.g. ``x86-avx2``).
    """

    name: str
    tvm: dict
    description: str
    arch: str = "x86_64"
    host: dict | None = None
    cross_cc: str | None = None
    rpc_key: str | None = None
    vector_bits: int = 256
    int8: str = "none"
    features: tuple = field(default_factory=tuple)
    tuning_key: str | None = None

    def __post_init__(self):
        if self.tuning_key is None:
            object.__setattr__(self, "tuning_key", self.name)

    def tvm_target(self):
        """The ``tvm.target.Target`` for this entry."""
        import tvm

        if self.host is None:
            return tvm.target.Target(self.tvm)
        return tvm.target.Target(self.tvm, host=self.host)

    @property
    def num_cores(self) -> int:
        return int(self.tvm.get("num-cores", 1))


# AMD-only extensions that an ``mcpu=znver*`` tuning turns on. LLVM then emits SSE4A's
# insertq/extrq for some byte shuffles (measured: an int8 conv epilogue), which kill the
# process with SIGILL on Intel CPUs. The portable targets must run on both vendors.
AMD_ONLY = ("-sse4a",)


def _x86(name, mcpu, desc, bits, int8, cores=2, mattr=None, features=()):
    tvm = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu, "num-cores": cores}
    mattr = list(mattr or []) + (list(AMD_ONLY) if mcpu.startswith("znver") else [])
    if mattr:
        tvm["mattr"] = mattr
    return Target(name, tvm, desc, "x86_64", None, None, f"{name}", bits, int8, tuple(features))


def _arm(name, mcpu, desc, cores, mattr, int8="neon", key=None):
    tvm = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": mcpu,
           "mattr": list(mattr), "num-cores": cores}
    return Target(name, tvm, desc, "aarch64", None, AARCH64_CC, key or name, 128, int8,
                  tuple(m.lstrip("+") for m in mattr))


TARGETS: dict[str, Target] = {
    t.name: t
    for t in [
        _x86("x86-64", "x86-64", "generic x86-64 (SSE2): runs on any 64-bit x86", 128, "none"),
        _x86("x86-avx2", "znver1", "AVX2 + FMA (Haswell, Zen1 and later), 2 cores; "
             "portable across these machines", 256, "avx2", features=("avx2", "fma")),
        _x86("x86-avx512", "skylake-avx512", "AVX-512 (Skylake-SP and later), 2 cores",
             512, "avx512", features=("avx512f", "avx512bw")),
        _x86("x86-avx512-vnni", "znver4", "AVX-512 + VNNI (Zen4, Cascade Lake+), 2 cores",
             512, "vnni", features=("avx512f", "avx512bw", "avx512vnni")),
        _arm("aarch64", "generic", "generic AArch64 with NEON", 4, ["+neon"]),
        _arm("rpi4", "cortex-a72", "Raspberry Pi 4 (Cortex-A72, 4 cores)", 4, ["+neon"]),
        _arm("rpi5", "cortex-a76", "Raspberry Pi 5 (Cortex-A76 + dotprod, 4 cores)", 4,
             ["+neon", "+dotprod"], "dotprod"),
        _arm("neoverse-n1", "neoverse-n1", "AWS Graviton2 / Neoverse-N1 (dotprod), 4 cores",
             4, ["+neon", "+dotprod"], "dotprod", key="graviton2"),
        _arm("jetson-orin-cpu", "cortex-a78", "NVIDIA Jetson Orin CPU (Cortex-A78AE), 6 cores",
             6, ["+neon", "+dotprod"], "dotprod"),
    ]
}
ALIASES = {"graviton2": "neoverse-n1", "rpi": "rpi4"}


def cpu_flags() -> set[str]:
    """The CPU feature flags of this machine (empty set if unknown)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def detect_host(flags: set[str] | None = None, cores: int | None = None) -> Target:
    """Build the ``host`` target from this CPU's flags; never assumes one."""
    import os

    flags = cpu_flags() if flags is None else flags
    cores = cores or os.cpu_count() or 1
    machine = platform.machine()
    if machine in ("aarch64", "arm64"):
        mattr = ["+neon"] + (["+dotprod"] if "asimddp" in flags else [])
        return _arm("host", "generic", f"this machine: aarch64, {cores} cores", cores, mattr,
                    "dotprod" if "asimddp" in flags else "neon", key="host")
    if {"avx512f", "avx512bw", "avx512_vnni"} <= flags:
        base = TARGETS["x86-avx512-vnni"]
    elif {"avx512f", "avx512bw"} <= flags:
        base = TARGETS["x86-avx512"]
    elif {"avx2", "fma"} <= flags:
        base = TARGETS["x86-avx2"]
    else:
        base = TARGETS["x86-64"]
    tvm = dict(base.tvm, **{"num-cores": cores})
    isa = {"x86-avx512-vnni": "AVX-512 + VNNI", "x86-avx512": "AVX-512",
           "x86-avx2": "AVX2 + FMA"}.get(base.name, "x86-64")
    desc = f"this machine: {isa}, {cores} cores (compiles like {base.name})"
    return Target("host", tvm, desc, "x86_64", None, None, "host", base.vector_bits,
                  base.int8, base.features, tuning_key=base.name)


def get_target(name: str) -> Target:
    """Look a target up by name (or alias); ``host`` is detected."""
    if isinstance(name, Target):
        return name
    key = ALIASES.get(name, name)
    if key == "host":
        return detect_host()
    if key not in TARGETS:
        known = ", ".join(["host", *TARGETS, *ALIASES])
        raise UnknownTargetError(f"unknown target {name!r}; known: {known}")
    return TARGETS[key]


def list_targets() -> list[Target]:
    """Every target: the detected host first, then the table."""
    return [detect_host(), *TARGETS.values()]
