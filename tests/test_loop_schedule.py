"""The default loops for the kernels no other rule schedules (passes/loop_schedule.py):
pools, means, concats, layout transforms and elementwise ops get parallel outer loops and
a vector inner loop; a kernel already scheduled, or a reduction over two tensors, is left
as it is. Structural (Before/Expected, as TVM's own tests are written) and numeric."""
import numpy as np
import pytest
import torch
from torch import nn
from tvm.script import tirx as T

from edgec.compiler.api import compile as compile_model
from edgec.compiler.config import PipelineConfig
from edgec.compiler.deploy.runtime import load
from edgec.compiler.tvm_compat import tvm
from edgec.passes.loop_schedule import PARALLEL_WORK, apply_default_loops, schedule_loops

NEG = -340282346638528859811704183484516925440.0  # the pool's -inf: float32's lowest


@T.prim_func(private=True, s_tir=True)
def pool_before(x: T.Buffer((T.int64(1), T.int64(4), T.int64(16), T.int64(16), T.int64(16)), "float32"),
                pool_max: T.Buffer((T.int64(1), T.int64(4), T.int64(8), T.int64(8), T.int64(16)), "float32")):
    T.func_attr({"tirx.noalias": True})
    pad_temp = T.sblock_alloc_buffer((T.int64(1), T.int64(4), T.int64(17), T.int64(17), T.int64(16)))
    for ax0, ax1, ax2, ax3, ax4 in T.grid(T.int64(1), T.int64(4), T.int64(17), T.int64(17), T.int64(16)):
        with T.sblock("pad_temp"):
            v_ax0, v_ax1, v_ax2, v_ax3, v_ax4 = T.axis.remap("SSSSS", [ax0, ax1, ax2, ax3, ax4])
            T.reads(x[v_ax0, v_ax1, v_ax2, v_ax3, v_ax4])
            T.writes(pad_temp[v_ax0, v_ax1, v_ax2, v_ax3, v_ax4])
            pad_temp[v_ax0, v_ax1, v_ax2, v_ax3, v_ax4] = T.if_then_else(
                v_ax2 < T.int64(16) and v_ax3 < T.int64(16), x[v_ax0, v_ax1, v_ax2, v_ax3, v_ax4],
                T.float32(NEG))
    for ax0, ax1, ax2, ax3, ax4, rv0, rv1 in T.grid(T.int64(1), T.int64(4), T.int64(8), T.int64(8),
                                                   T.int64(16), T.int64(3), T.int64(3)):
        with T.sblock("pool_max"):
            v_ax0, v_ax1, v_ax2, v_ax3, v_ax4, v_rv0, v_rv1 = T.axis.remap(
                "SSSSSRR", [ax0, ax1, ax2, ax3, ax4, rv0, rv1])
            T.reads(pad_temp[v_ax0, v_ax1, v_ax2 * T.int64(2) + v_rv0, v_ax3 * T.int64(2) + v_rv1, v_ax4])
            T.writes(pool_max[v_ax0, v_ax1, v_ax2, v_ax3, v_ax4])
            with T.init():
                pool_max[v_ax0, v_ax1, v_ax2, v_ax3, v_ax4] = T.float32(NEG)
            pool_max[v_ax0, v_ax1, v_ax2, v_ax3, v_ax4] = T.max(
                pool_max[v_ax0, v_ax1, v_ax2, v_ax3, v_ax4],
                pad_temp[v_ax0, v_ax1, v_ax2 * T.int64(2) + v_rv0, v_ax3 * T.int64(2) + v_rv1, v_ax4])


@T.prim_func(private=True, s_tir=True)
def pool_expected(x: T.Buffer((T.int64(1), T.int64(4), T.int64(16), T.int64(16), T.int64(16)), "float32"),
                  pool_max: T.Buffer((T.int64(1), T.int64(4), T.int64(8), T.int64(8), T.int64(16)), "float32")):
    # the pad inlined; the outer loops fused and parallel; the window outside the channel
    # block, which runs as one vector (the init split off, a vector too)
    T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
    for fused in T.parallel(T.int64(256)):
        for ax4_init in T.vectorized(T.int64(16)):
            with T.sblock("pool_max_init"):
                v_ax0 = T.axis.spatial(T.int64(1), T.int64(0))
                v_ax1 = T.axis.spatial(T.int64(4), fused // T.int64(64))
                v_ax2 = T.axis.spatial(T.int64(8), fused % T.int64(64) // T.int64(8))
                v_ax3 = T.axis.spatial(T.int64(8), fused % T.int64(8))
                v_ax4 = T.axis.spatial(T.int64(16), ax4_init)
                T.reads()
                T.writes(pool_max[v_ax0, v_ax1, v_ax2, v_ax3, v_ax4])
                pool_max[v_ax0, v_ax1, v_ax2, v_ax3, v_ax4] = T.float32(NEG)
        for rv0, rv1 in T.grid(T.int64(3), T.int64(3)):
            for ax4 in T.vectorized(T.int64(16)):
                with T.sblock("pool_max_update"):
                    v_ax0 = T.axis.spatial(T.int64(1), T.int64(0))
                    v_ax1 = T.axis.spatial(T.int64(4), fused // T.int64(64))
                    v_ax2 = T.axis.spatial(T.int64(8), fused % T.int64(64) // T.int64(8))
                    v_ax3 = T.axis.spatial(T.int64(8), fused % T.int64(8))
                    v_ax4, v_rv0, v_rv1 = T.axis.remap("SRR", [ax4, rv0, rv1])
                    T.reads(pool_max[v_ax0, v_ax1, v_ax2, v_ax3, v_ax4],
                            x[v_ax0, v_ax1, v_ax2 * T.int64(2) + v_rv0, v_ax3 * T.int64(2) + v_rv1, v_ax4])
                    T.writes(pool_max[v_ax0, v_ax1, v_ax2, v_ax3, v_ax4])
                    pool_max[v_ax0, v_ax1, v_ax2, v_ax3, v_ax4] = T.max(
                        pool_max[v_ax0, v_ax1, v_ax2, v_ax3, v_ax4],
                        T.if_then_else(v_ax2 * T.int64(2) + v_rv0 < T.int64(16)
                                       and v_ax3 * T.int64(2) + v_rv1 < T.int64(16),
                                       x[v_ax0, v_ax1, v_ax2 * T.int64(2) + v_rv0,
                                         v_ax3 * T.int64(2) + v_rv1, v_ax4], T.float32(NEG)))


@T.prim_func(private=True, s_tir=True)
def row_pool_before(x: T.Buffer((T.int64(1), T.int64(32), T.int64(14), T.int64(14)), "float32"),
                    pool_max: T.Buffer((T.int64(1), T.int64(32), T.int64(14), T.int64(14)), "float32")):
    T.func_attr({"tirx.noalias": True})
    pad_temp = T.sblock_alloc_buffer((T.int64(1), T.int64(32), T.int64(16), T.int64(16)))
    for ax0, ax1, ax2, ax3 in T.grid(T.int64(1), T.int64(32), T.int64(16), T.int64(16)):
        with T.sblock("pad_temp"):
            v_ax0, v_ax1, v_ax2, v_ax3 = T.axis.remap("SSSS", [ax0, ax1, ax2, ax3])
            T.reads(x[v_ax0, v_ax1, v_ax2 - T.int64(1), v_ax3 - T.int64(1)])
            T.writes(pad_temp[v_ax0, v_ax1, v_ax2, v_ax3])
            pad_temp[v_ax0, v_ax1, v_ax2, v_ax3] = T.if_then_else(
                T.int64(1) <= v_ax2 and v_ax2 < T.int64(15) and T.int64(1) <= v_ax3
                and v_ax3 < T.int64(15), x[v_ax0, v_ax1, v_ax2 - T.int64(1), v_ax3 - T.int64(1)],
                T.float32(NEG))
    for ax0, ax1, ax2, ax3, rv0, rv1 in T.grid(T.int64(1), T.int64(32), T.int64(14), T.int64(14),
                                              T.int64(3), T.int64(3)):
        with T.sblock("pool_max"):
            v_ax0, v_ax1, v_ax2, v_ax3, v_rv0, v_rv1 = T.axis.remap(
                "SSSSRR", [ax0, ax1, ax2, ax3, rv0, rv1])
            T.reads(pad_temp[v_ax0, v_ax1, v_ax2 + v_rv0, v_ax3 + v_rv1])
            T.writes(pool_max[v_ax0, v_ax1, v_ax2, v_ax3])
            with T.init():
                pool_max[v_ax0, v_ax1, v_ax2, v_ax3] = T.float32(NEG)
            pool_max[v_ax0, v_ax1, v_ax2, v_ax3] = T.max(pool_max[v_ax0, v_ax1, v_ax2, v_ax3],
                                                         pad_temp[v_ax0, v_ax1, v_ax2 + v_rv0,
                                                                  v_ax3 + v_rv1])


@T.prim_func(private=True, s_tir=True)
def row_pool_expected(x: T.Buffer((T.int64(1), T.int64(32), T.int64(14), T.int64(14)), "float32"),
                      pool_max: T.Buffer((T.int64(1), T.int64(32), T.int64(14), T.int64(14)), "float32")):
    # NCHW: the row is read through the window (w + rv1 - 1, under the padding test), so no
    # vector (it became masked gathers); every output in parallel, its window innermost
    T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
    for fused in T.parallel(T.int64(6272)):
        with T.sblock("pool_max_init"):
            v_ax0 = T.axis.spatial(T.int64(1), T.int64(0))
            v_ax1 = T.axis.spatial(T.int64(32), fused // T.int64(196))
            v_ax2 = T.axis.spatial(T.int64(14), fused % T.int64(196) // T.int64(14))
            v_ax3 = T.axis.spatial(T.int64(14), fused % T.int64(14))
            T.reads()
            T.writes(pool_max[v_ax0, v_ax1, v_ax2, v_ax3])
            pool_max[v_ax0, v_ax1, v_ax2, v_ax3] = T.float32(NEG)
        for rv0, rv1 in T.grid(T.int64(3), T.int64(3)):
            with T.sblock("pool_max_update"):
                v_ax0 = T.axis.spatial(T.int64(1), T.int64(0))
                v_ax1 = T.axis.spatial(T.int64(32), fused // T.int64(196))
                v_ax2 = T.axis.spatial(T.int64(14), fused % T.int64(196) // T.int64(14))
                v_ax3 = T.axis.spatial(T.int64(14), fused % T.int64(14))
                v_rv0, v_rv1 = T.axis.remap("RR", [rv0, rv1])
                T.reads(pool_max[v_ax0, v_ax1, v_ax2, v_ax3],
                        x[v_ax0, v_ax1, v_ax2 + v_rv0 - T.int64(1), v_ax3 + v_rv1 - T.int64(1)])
                T.writes(pool_max[v_ax0, v_ax1, v_ax2, v_ax3])
                pool_max[v_ax0, v_ax1, v_ax2, v_ax3] = T.max(
                    pool_max[v_ax0, v_ax1, v_ax2, v_ax3],
                    T.if_then_else(T.int64(1) <= v_ax2 + v_rv0 and v_ax2 + v_rv0 < T.int64(15)
                                   and T.int64(1) <= v_ax3 + v_rv1 and v_ax3 + v_rv1 < T.int64(15),
                                   x[v_ax0, v_ax1, v_ax2 + v_rv0 - T.int64(1),
                                     v_ax3 + v_rv1 - T.int64(1)], T.float32(NEG)))


@T.prim_func(private=True, s_tir=True)
def add_before(a: T.Buffer((T.int64(1), T.int64(8), T.int64(8)), "float32"),
               out: T.Buffer((T.int64(1), T.int64(8), T.int64(8)), "float32")):
    T.func_attr({"tirx.noalias": True})
    for i0, i1, i2 in T.grid(T.int64(1), T.int64(8), T.int64(8)):
        with T.sblock("add"):
            v0, v1, v2 = T.axis.remap("SSS", [i0, i1, i2])
            T.reads(a[v0, v1, v2])
            T.writes(out[v0, v1, v2])
            out[v0, v1, v2] = a[v0, v1, v2] + T.float32(1.0)


@T.prim_func(private=True, s_tir=True)
def add_expected(a: T.Buffer((T.int64(1), T.int64(8), T.int64(8)), "float32"),
                 out: T.Buffer((T.int64(1), T.int64(8), T.int64(8)), "float32")):
    # 64 elements: below PARALLEL_WORK, so one thread; the row is one vector
    T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
    for i0, i1 in T.grid(T.int64(1), T.int64(8)):
        for i2 in T.vectorized(T.int64(8)):
            with T.sblock("add"):
                v0, v1, v2 = T.axis.remap("SSS", [i0, i1, i2])
                T.reads(a[v0, v1, v2])
                T.writes(out[v0, v1, v2])
                out[v0, v1, v2] = a[v0, v1, v2] + T.float32(1.0)


@T.prim_func(private=True, s_tir=True)
def matmul_before(a: T.Buffer((T.int64(64), T.int64(64)), "float32"),
                  b: T.Buffer((T.int64(64), T.int64(64)), "float32"),
                  c: T.Buffer((T.int64(64), T.int64(64)), "float32")):
    T.func_attr({"tirx.noalias": True})
    for i, j, k in T.grid(T.int64(64), T.int64(64), T.int64(64)):
        with T.sblock("matmul"):
            vi, vj, vk = T.axis.remap("SSR", [i, j, k])
            T.reads(a[vi, vk], b[vk, vj])
            T.writes(c[vi, vj])
            with T.init():
                c[vi, vj] = T.float32(0.0)
            c[vi, vj] = c[vi, vj] + a[vi, vk] * b[vk, vj]


def test_a_pool_runs_parallel_with_its_channel_block_as_a_vector():
    assert 4 * 8 * 8 * 16 * 9 >= PARALLEL_WORK
    tvm.ir.assert_structural_equal(schedule_loops(pool_before, 16), pool_expected)


def test_an_nchw_pool_runs_parallel_without_a_vector_through_its_window():
    tvm.ir.assert_structural_equal(schedule_loops(row_pool_before, 16), row_pool_expected)


def test_a_small_elementwise_kernel_stays_on_one_thread_with_a_vector_row():
    tvm.ir.assert_structural_equal(schedule_loops(add_before, 16), add_expected)


def test_what_is_scheduled_or_not_a_plain_loop_nest_is_left_as_it_is():
    done = schedule_loops(pool_before, 16)
    assert schedule_loops(done, 16).same_as(done)  # marked scheduled
    unmarked = done.without_attr("tirx.is_scheduled")  # a parallel loop says it all the same
    assert schedule_loops(unmarked, 16).same_as(unmarked)
    # a reduction over two tensors (a conv or matmul no other rule took): not this rule's
    assert schedule_loops(matmul_before, 16).same_as(matmul_before)
    mod, count = apply_default_loops(tvm.IRModule({"pool": pool_before, "mm": matmul_before}), 16)
    assert count == 1 and mod["mm"].same_as(matmul_before)


class _Others(nn.Module):
    """Pools (padded max, average), a channel concat, a global mean and a flatten around
    two convs: kernels the conv tiles do not schedule."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, stride=2)
        self.b = nn.Conv2d(16, 16, 1)
        self.c = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.a(x)), 3, 2, ceil_mode=True)
        y = torch.cat([self.b(x), self.c(x)], 1)
        y = nn.functional.avg_pool2d(y, 3, 1, padding=1, count_include_pad=False)
        return y.mean((2, 3)) * 2.0 + 1.0


@pytest.mark.parametrize("int8", [False, True])
def test_the_pipeline_schedules_the_other_kernels_and_the_results_equal_torch(tmp_path, int8):
    torch.manual_seed(0)
    model, x = _Others().eval(), torch.randn(1, 3, 40, 40)
    out = str(tmp_path / "m.so")
    calib = np.random.default_rng(0).standard_normal((8, 3, 40, 40)).astype("float32")
    manifest = compile_model(model, (x,), output=out, calib_data=calib if int8 else None,
                             config=PipelineConfig(target="host", tuning_logs=None, int8=int8))
    assert manifest["tuning"]["default_loops"] >= 3  # pools, concat, mean at least
    with torch.no_grad():
        ref = model(x).numpy()
    got = load(out)(x.numpy())[0]
    if int8:  # INT8: within a few quantization steps of the output's range
        assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()
    else:
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
