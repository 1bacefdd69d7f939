"""compiler/deploy/icount.py and deploy/qemu_plugin: exact instruction counts under qemu-user.

A static aarch64 loop of known instructions is counted exactly (the difference between
two loop lengths is the loop body, class by class); a one-conv edgec model built for
rpi4 runs on the emulated board with a positive count per inference that repeats.
"""
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

from edgec.compiler.deploy import icount

# (instruction, class the plugin must give it): the loop body of the test program
BODY = [
    ("fmla v0.4s, v1.4s, v2.4s", "fp_mac"), ("fmls v3.2d, v1.2d, v2.2d", "fp_mac"),
    ("fmla v4.8h, v1.8h, v2.8h", "fp_mac"), ("fmla v5.4s, v1.4s, v2.s[1]", "fp_mac"),
    ("fmls s6, s1, v2.s[3]", "fp_mac"), ("fmadd s7, s1, s2, s3", "fp_mac"),
    ("fnmsub d8, d1, d2, d3", "fp_mac"),
    ("mla v9.4s, v1.4s, v2.4s", "int_mac"), ("mls v10.8h, v1.8h, v2.h[2]", "int_mac"),
    ("smlal v11.4s, v1.4h, v2.4h", "int_mac"), ("umlal2 v12.8h, v1.16b, v2.16b", "int_mac"),
    ("smlsl v13.4s, v1.4h, v2.h[1]", "int_mac"),
    ("sdot v14.4s, v1.16b, v2.16b", "dot"), ("udot v15.4s, v1.16b, v2.4b[3]", "dot"),
    ("usdot v16.4s, v1.16b, v2.16b", "dot"), ("smmla v17.4s, v1.16b, v2.16b", "dot"),
    ("ldr q18, [%1]", "load"), ("ldp x10, x11, [%1]", "load"), ("ldrb w12, [%1, #3]", "load"),
    ("ld1 {v19.4s}, [%1]", "load"), ("ldr x13, 1b", "load"), ("prfm pldl1keep, [%1]", "load"),
    ("ldadd w10, w11, [%1]", "load"), ("cas w10, w11, [%1]", "load"), ("ldar x12, [%1]", "load"),
    ("str q18, [%1, #16]", "store"), ("stp x10, x11, [%1, #16]", "store"),
    ("st1 {v19.4s}, [%1]", "store"), ("strb w12, [%1, #4]", "store"),
    ("stlr x12, [%1]", "store"),
    ("fmul v20.4s, v1.4s, v2.4s", "simd_fp"), ("fadd s21, s1, s2", "simd_fp"),
    ("smull v22.4s, v1.4h, v2.4h", "simd_fp"), ("scvtf v23.4s, v1.4s", "simd_fp"),
    ("madd x14, x10, x11, x12", "scalar_madd"), ("mul x14, x10, x11", "other"),
    ("add x15, x15, #1", "other"),
]
LOOP_TAIL = 2  # subs + b.ne, class "other"

PROGRAM = r"""
#include <stdlib.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    int windows = argc > 2 ? atoi(argv[2]) : 0;  /* marked windows, each running the loop */
    static unsigned char buf[64] __attribute__((aligned(16)));
    for (int w = 0; w < (windows ? windows : 1); w++) {
    if (windows) syscall(SYS_lseek, -1L, MARK_START, 0);
    __asm__ volatile(
        "mov x9, %0\n cbz x9, 2f\n 1:\n"
        BODY
        "subs x9, x9, #1\n b.ne 1b\n 2:\n"
        :: "r"(n), "r"(buf) : "x9", "x10", "x11", "x12", "x13", "x14", "x15", "v0", "v1",
           "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9", "v10", "v11", "v12", "v13", "v14",
           "v15", "v16", "v17", "v18", "v19", "v20", "v21", "v22", "v23", "memory", "cc");
    if (windows) syscall(SYS_lseek, -1L, MARK_STOP, 0);
    }
    return 0;
}
"""


def require_counter() -> None:
    """Skip, saying why, where qemu-aarch64 with plugins or the cross compiler is missing."""
    try:
        icount.check_qemu()
        icount.build_plugin()
        icount.build_fake_clock()
    except icount.IcountError as e:
        pytest.skip(f"instruction counter unavailable: {e}")


@pytest.fixture(scope="module")
def loop_program(tmp_path_factory):
    require_counter()
    folder = tmp_path_factory.mktemp("icount")
    body = "".join(f'"{insn}\\n"\n' for insn, _ in BODY)
    (folder / "loop.c").write_text(PROGRAM.replace("BODY", body)
                                   .replace("MARK_START", f"{icount.MARK_START:#x}ULL")
                                   .replace("MARK_STOP", f"{icount.MARK_STOP:#x}ULL"))
    result = subprocess.run(["aarch64-linux-gnu-gcc", "-O1", "-static",
                             "-march=armv8.6-a+fp16+dotprod+i8mm", "-o", str(folder / "loop"),
                             str(folder / "loop.c")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return str(folder / "loop")


def test_plugin_counts_a_known_loop_exactly_by_class(loop_program, tmp_path):
    short = icount.count([loop_program, 1000], str(tmp_path))
    long = icount.count([loop_program, 3000], str(tmp_path))
    for c in (short, long):
        assert sum(c.classes.values()) == c.total and c.vcpus == 1
    per_iter = {k: v / 2000 for k, v in (long - short).classes.items()}
    expected = {k: 0 for k in icount.CLASSES}
    for _, cls in BODY:
        expected[cls] += 1
    expected["other"] += LOOP_TAIL
    assert per_iter == expected
    assert (long - short).total == 2000 * (len(BODY) + LOOP_TAIL)
    # the loop helper divides the same way: the per-iteration counts again
    again = icount.per_inference(lambda k: [loop_program, 1000 * k], 1, str(tmp_path))
    assert again["total"] == 1000 * (len(BODY) + LOOP_TAIL)
    assert again["mac_share"] == sum(expected[c] for c in icount.MAC_CLASSES) / (len(BODY) + 2)


def test_a_marked_window_counts_only_the_loop(loop_program, tmp_path):
    """lseek(-1, MARK_START/MARK_STOP, 0) around the loop: the window holds the loop and
    a few instructions of the syscall wrappers, not the program's start-up."""
    per_iter = len(BODY) + LOOP_TAIL
    whole = icount.count([loop_program, 1000], str(tmp_path))
    a = icount.count([loop_program, 1000, 1], str(tmp_path))
    b = icount.count([loop_program, 3000, 1], str(tmp_path))
    assert a.scope == b.scope == "window" and whole.scope == "all threads"
    assert 0 <= a.total - 1000 * per_iter < 100 < whole.total - 1000 * per_iter
    assert (b - a).total == 2000 * per_iter
    assert (b - a).classes["dot"] == 2000 * 4


def test_every_marked_window_is_kept_in_order(loop_program, tmp_path):
    """Three windows (edgec_run --mark-kernels marks one per kernel): each holds one run of
    the loop, the same count each time, and the first is also the "window"."""
    data, _ = icount._run([loop_program, 1000, 3], str(tmp_path), "max", None, 60)
    windows = [sum(w.values()) for w in data["windows"]]
    per_iter = len(BODY) + LOOP_TAIL
    assert len(windows) == 3 and windows[0] == windows[1] == windows[2]
    assert 0 <= windows[0] - 1000 * per_iter < 100
    assert data["window"]["classes"] == data["windows"][0]
    assert all(w["dot"] == 1000 * 4 for w in data["windows"])


def test_emulated_cpu_is_the_targets_core(loop_program, tmp_path):
    """-cpu cortex-a72 (rpi4) has no dot product: the loop's SDOT is an illegal instruction."""
    with pytest.raises(icount.IcountError, match=r"-cpu cortex-a72 \(exit"):
        icount.count([loop_program, 1], str(tmp_path), cpu="cortex-a72")
    assert {"cortex-a72", "cortex-a76"} <= set(icount.qemu_cpus())


def _board_root() -> str:
    from edgec.compiler.deploy import board
    from rpc_helpers import require_board_host

    require_counter()
    require_board_host()
    root = board.default_dir()
    board.prepare(root)
    return root


def test_python_on_the_board_marks_a_window(tmp_path):
    """The counting rootfs (a hard-linked copy with the core's /proc/cpuinfo) runs the
    board's Python; a window marked from Python (as the ONNX Runtime script does) repeats
    exactly and grows with the work inside it."""
    board_root = _board_root()
    root = icount.counting_root(board_root, "cortex-a76")
    python = os.path.join(root, "usr/bin/python3")
    assert os.path.samefile(python, os.path.join(board_root, "usr/bin/python3"))
    with open(os.path.join(root, "proc", "cpuinfo"), encoding="utf-8") as f:
        assert "CPU part\t: 0xd0b" in f.read()
    script = tmp_path / "loop.py"
    script.write_text("import os, sys\n"
                      "def mark(m):\n    try:\n        os.lseek(-1, m, 0)\n"
                      "    except OSError:\n        pass\n"
                      f"mark({icount.MARK_START:#x})\n"
                      "s = sum(i * i for i in range(int(sys.argv[1])))\n"
                      f"mark({icount.MARK_STOP:#x})\n")
    a, b = (icount.count([python, script, 1000], root, cpu="cortex-a76") for _ in range(2))
    c = icount.count([python, script, 2000], root, cpu="cortex-a76")
    assert a == b and a.scope == "window"
    assert 0 < a.total < c.total < 2.5 * a.total


def test_one_conv_model_on_the_emulated_board(tmp_path):
    """A 1-conv edgec model for rpi4: a positive count per inference, the same twice; its
    FP32 multiply-adds cover the conv's MACs at 1 to 4 lanes per FMLA."""
    from edgec.compiler import PipelineConfig, compile
    from edgec.compiler.deploy import board

    root = _board_root()
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("aarch64-linux-gnu-g++ missing: apt-get install -y g++-aarch64-linux-gnu")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU()).eval()
    x = torch.randn(1, 3, 16, 16)
    so = str(tmp_path / "conv.so")
    compile(model, (x,), output=so, config=PipelineConfig(target="rpi4"))
    np.save(tmp_path / "x.npy", x.numpy())
    runner = icount.build_runner(root, board.PY_SITE)
    argv = icount.runner_argv(runner, so, [str(tmp_path / "x.npy")])
    first = icount.per_inference(argv, 2, root, cpu="cortex-a72")
    second = icount.per_inference(argv, 2, root, cpu="cortex-a72")
    assert first == second
    assert first["total"] > 0 and first["threads"] == 1
    assert sum(first["classes"].values()) == first["total"]
    macs = 16 * 16 * 8 * 3 * 3 * 3
    assert macs / 4 <= first["classes"]["fp_mac"] <= macs
    assert first["classes"]["dot"] == 0  # rpi4 has no dot product
    assert os.path.getsize(so) > 0
    # per kernel (edgec_run --mark-kernels): the conv kernel holds every multiply-add of the
    # inference, and the kernels together no more than the whole inference
    kernels = icount.kernel_counts(runner, so, [str(tmp_path / "x.npy")], root, cpu="cortex-a72")
    assert kernels and "conv2d" in kernels[0]["kernel"] and kernels[0]["launches"] == 1
    assert kernels[0]["classes"]["fp_mac"] == first["classes"]["fp_mac"]
    assert sum(k["total"] for k in kernels) <= first["total"]
