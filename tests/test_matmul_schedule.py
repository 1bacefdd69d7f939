"""The heuristic schedule of an untuned 2-D matmul (passes/matmul_schedule.py)."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from edgec.compiler.api import compile as compile_model
from edgec.compiler.config import PipelineConfig
from edgec.compiler.frontend import import_model
from edgec.compiler.deploy.runtime import load
from edgec.compiler.tune.search import lowered_module
from edgec.compiler.tvm_compat import tvm
from edgec.passes.matmul_schedule import schedule_matmul

TARGET = "x86-avx2"


def classifier():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(96, 64), nn.ReLU(), nn.Linear(64, 10)).eval()


def test_columns_in_vector_blocks_epilogue_in_registers():
    """Structural: the 96 -> 64 matmul gets 8-lane column blocks (AVX2) read a weight row at
    a time, its bias and ReLU inlined into the write-back; the 10-column one (no lane
    multiple) and an already scheduled kernel are left as they are."""
    mod = lowered_module(import_model(classifier(), (torch.randn(1, 96),)), TARGET)
    funcs = {gv.name_hint: f for gv, f in mod.functions.items() if "matmul" in gv.name_hint}
    wide = next(f for name, f in funcs.items() if "relu" in name)
    narrow = next(f for name, f in funcs.items() if "relu" not in name)
    done = schedule_matmul(wide, 8)
    text = done.script()
    # the accumulators: a "global"-scope cache (a stack buffer LLVM keeps in registers; a
    # "local" one was a heap workspace per parallel iteration, test_kernel_allocations)
    assert "T.vectorized(T.int64(8))" in text and "_global = T.sblock_alloc_buffer" in text
    assert 'scope="local"' not in text
    assert "T_add" not in text  # the bias add runs in the accumulator's write-back
    assert done.attrs["tirx.is_scheduled"]
    assert schedule_matmul(narrow, 8).same_as(narrow)
    assert schedule_matmul(done, 8).same_as(done)


@pytest.mark.parametrize("batch", [1, 3])
def test_untuned_build_uses_it_and_equals_torch(tmp_path, batch):
    """Numeric: with no tuning log the build schedules the matmul (the manifest counts it)
    and the library equals torch, for a GEMV and a 3-row matmul."""
    model = classifier()
    x = torch.randn(batch, 6, 4, 4)
    out = str(tmp_path / "m.so")
    manifest = compile_model(model, (x,), output=out,
                             config=PipelineConfig(target=TARGET, tuning_logs=None))
    assert manifest["tuning"]["default_matmuls"] == 1
    with open(tmp_path / "m.json", encoding="utf-8") as f:
        assert json.load(f)["tuning"]["default_matmuls"] == 1
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(load(out)(x.numpy())[0], ref, rtol=1e-5, atol=1e-5)


def test_large_gemv_runs_parallel_and_equals_torch(tmp_path):
    """A GEMV at or above PARALLEL_MACS (1024 x 1024) gets its column blocks spread over
    threads. (The parallel loop used to be added after the reduction's init was split
    off, which TVM refuses; every such head -- efficientnet's 1280 x 1000, alexnet's
    9216 x 4096 -- silently kept TVM's column-strided default, 60x slower.)"""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1024, 1024), nn.ReLU()).eval()
    x = torch.randn(1, 1024)
    mod = lowered_module(import_model(model, (x,)), TARGET)
    (func,) = [f for gv, f in mod.functions.items() if "matmul" in gv.name_hint]
    done = schedule_matmul(func, 8)
    assert done.attrs["tirx.is_scheduled"] and "T.parallel" in done.script()
    out = str(tmp_path / "big.so")
    manifest = compile_model(model, (x,), output=out,
                             config=PipelineConfig(target=TARGET, tuning_logs=None))
    assert manifest["tuning"]["default_matmuls"] == 1
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(load(out)(x.numpy())[0], ref, rtol=1e-4, atol=1e-4)


def test_a_kernel_the_schedule_cannot_take_is_listed(monkeypatch):
    """A matmul the heuristic fails on keeps TVM's default schedule, and apply_default_matmuls
    names it with TVM's reason (the manifest's tuning.default_matmuls_skipped) instead of
    hiding it."""
    from edgec.passes import matmul_schedule

    mod = lowered_module(import_model(classifier(), (torch.randn(1, 96),)), TARGET)

    def refuses(func, lanes):
        raise ValueError("The loop cannot be parallelized\nmore detail")

    monkeypatch.setattr(matmul_schedule, "schedule_matmul", refuses)
    _, done, skipped = matmul_schedule.apply_default_matmuls(mod, 8)
    names = sorted(gv.name_hint for gv, f in mod.functions.items()
                   if isinstance(f, tvm.tirx.PrimFunc))
    assert done == 0 and sorted(s["kernel"] for s in skipped) == names
    assert skipped[0]["reason"] == "ValueError: The loop cannot be parallelized"
