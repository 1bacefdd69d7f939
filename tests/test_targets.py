import pytest

from edgec.targets import TARGETS, UnknownTargetError, detect_host, get_target


def test_required_targets_exist():
    for name in ["x86-64", "x86-avx2", "x86-avx512", "aarch64", "rpi4", "rpi5", "neoverse-n1",
                 "graviton2", "jetson-orin-cpu", "host"]:
        t = get_target(name)
        assert t.tvm["kind"] == "llvm"
        assert t.rpc_key


def test_arm_targets_cross_compile_and_carry_triple():
    for t in TARGETS.values():
        if t.arch == "aarch64":
            assert t.cross_cc == "aarch64-linux-gnu-g++"
            assert t.tvm["mtriple"] == "aarch64-linux-gnu"
            assert t.tvm_target().attrs["feature.is_aarch64"]
    assert "dotprod" in get_target("rpi5").features
    assert get_target("rpi4").tvm["mcpu"] == "cortex-a72" and get_target("rpi4").num_cores == 4


def test_unknown_target_lists_known():
    with pytest.raises(UnknownTargetError, match=r"unknown target 'rpi9'; known: host, .*rpi4"):
        get_target("rpi9")


@pytest.mark.parametrize("flags,expected", [
    ({"avx2", "fma"}, "x86-avx2"),
    ({"avx2", "fma", "avx512f", "avx512bw"}, "x86-avx512"),
    ({"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"}, "x86-avx512-vnni"),
    (set(), "x86-64"),
])
def test_host_detection_follows_flags(flags, expected, monkeypatch):
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    host = detect_host(flags, cores=2)
    assert host.tvm["mcpu"] == TARGETS[expected].tvm["mcpu"]
    assert host.int8 == TARGETS[expected].int8
    assert host.num_cores == 2


def test_portable_x86_targets_leave_out_amd_only_instructions():
    """mcpu=znver* enables SSE4A, which Intel CPUs lack: LLVM emitted its insertq in an int8
    conv epilogue and the process died with SIGILL on an Intel Xeon. Every x86 target (and
    the detected host) has it off; logs tuned before the flag still validate."""
    import tvm
    from tvm.target import codegen

    from edgec.compiler.tune.database import isa_of

    raw = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver4"}
    assert codegen.target_has_features("sse4a", tvm.target.Target(raw))  # the check can fail
    x86 = [t for t in TARGETS.values() if t.arch == "x86_64"]
    for t in x86 + [detect_host({"avx512f", "avx512bw", "avx512_vnni", "avx2", "fma"}, 2)]:
        assert not codegen.target_has_features("sse4a", t.tvm_target()), t.name
    vnni = get_target("x86-avx512-vnni")
    assert codegen.target_has_features("avx512vnni", vnni.tvm_target())
    assert isa_of(dict(raw, **{"num-cores": 2})) == isa_of(vnni.tvm)
