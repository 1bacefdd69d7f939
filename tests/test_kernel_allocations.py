"""No kernel allocates its register tiles or temporaries on the heap.

TVM 0.27 lowers a buffer to a stack ``alloca`` (which LLVM then promotes to registers) only
when it is in the "global" scope and smaller than 1024 bytes; anything else becomes a
TVMBackendAllocWorkspace / FreeWorkspace pair where it is declared, which for a tile is
inside the kernel's parallel loop. Two ways in which that happened to every INT8 and FP32
kernel here (``tvm_compat.fix_vnni_intrinsic``, ``arm_int8_intrin``): a plain assignment
in TVMScript (a mutable local scalar: TVM's dot-product intrinsics and our pack / pad
kernels) and ``cache_write(..., "local")`` register tiles. A 96 -> 576 1x1 sdot conv at 14 x 14 made 12
such calls per output row; without them it executes 1.67 M instead of 3.23 M instructions
(counted on the emulated Cortex-A76).

Each build below is a small network with every kind of layer the kernels cover (strided
stem, depthwise with a residual, strided depthwise, 1x1 convs, mean, linear head); its
LLVM IR may allocate workspace only for buffers too large for the stack.
"""
import re

import numpy as np
import pytest
import torch

from edgec.compiler import PipelineConfig, frontend, pipeline

STACK_LIMIT = 1024  # TVM's runtime::kMaxStackAlloca: smaller "global" buffers go on the stack
ALLOC = re.compile(r"call ptr %[\w.]+\(i32 1, i32 %[\w.]+, i64 (\d+), i32 \d+, i32 \d+\)")


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        relu6 = torch.nn.ReLU6
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, 2, 1), relu6())
        self.dw = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, 1, 1, groups=16), relu6(),
                                      torch.nn.Conv2d(16, 16, 1))
        self.down = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, 2, 1, groups=16), relu6(),
                                        torch.nn.Conv2d(16, 24, 1))
        self.head = torch.nn.Linear(24, 10)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.dw(x)
        return self.head(self.down(x).mean((2, 3)))


def small_workspace_allocations(target: str, int8: bool) -> list:
    """[(function, bytes)] of each workspace allocation below the stack limit in the build."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    calib = np.random.default_rng(1).standard_normal((8, 3, 32, 32)).astype("float32")
    model = frontend.import_model(Net().eval(), (x,))
    result = pipeline.run(model, PipelineConfig(target=target, int8=int8, calib_samples=8),
                          calib_data=calib if int8 else None)
    (lib,) = result.executable.mod.imports
    found, function = [], None
    for line in lib.inspect_source("ll").splitlines():
        m = re.match(r'define .*@"?([\w.]+)"?\(', line)
        if m:
            function = m.group(1)
        m = ALLOC.search(line)
        if m:
            found.append((function, int(m.group(1))))
    return found


@pytest.mark.parametrize("target,int8", [
    ("x86-avx512-vnni", True), ("x86-avx2", True), ("rpi5", True), ("rpi4", True),
    ("x86-avx512", False), ("rpi4", False)])
def test_no_small_workspace_allocation(target, int8):
    found = small_workspace_allocations(target, int8)
    small = [(f, n) for f, n in found if n < STACK_LIMIT]
    assert not small, f"heap-allocated temporaries (function, bytes): {small}"


def test_the_check_sees_a_heap_tile():
    """The regex finds TVM's workspace calls: a 'local' register tile (the schedule before
    this fix) is reported."""
    from edgec.compiler.tvm_compat import s_tir, tvm
    from tvm import te

    a = te.placeholder((64, 64), "float32", name="a")
    k = te.reduce_axis((0, 64), "k")
    c = te.compute((64, 64), lambda i, j: te.sum(a[i, k] * a[j, k], axis=k), name="c")
    sch = s_tir().Schedule(te.create_prim_func([a, c]))
    block = sch.get_sblock("c")
    i, j, _ = sch.get_loops(block)
    sch.parallel(i)
    sch.reverse_compute_at(sch.cache_write(block, 0, "local"), i)
    lib = tvm.tirx.build(sch.mod, target="llvm")
    sizes = [int(m.group(1)) for m in ALLOC.finditer(lib.inspect_source("ll"))]
    assert sizes and min(sizes) < STACK_LIMIT
