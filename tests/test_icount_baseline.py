"""The ARM regression check (issue #27): instructions per inference of edgec's aarch64
builds must not grow more than 10% over the committed baseline.

The baseline is ``benchmarks/results/emulated_icount.json`` (made by
``benchmarks/bench_emulated.py``). Instruction counts under qemu-user are exact and repeat
for the same binary and input, and the cross-compiled binary does not depend on the host,
so the check is deterministic on any x86 machine. The MNIST CNN is checked at both
precisions on the core each was counted on (FP32 on rpi4's Cortex-A72, INT8 with SDOT on
rpi5's Cortex-A76), built by the benchmark's own ``build_edgec``. A change that makes a
build larger on purpose re-runs the benchmark and commits its new results (the baseline).
"""
import json
import os
import shutil
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import bench_emulated  # noqa: E402
from benchmarks.common import RESULTS, model_and_input  # noqa: E402
from edgec.compiler.deploy import board, icount  # noqa: E402
from edgec.targets import get_target  # noqa: E402

MARGIN = 1.10  # more than 10% over the baseline fails
BASELINE = os.path.join(RESULTS, "emulated_icount.json")
CHECKED = [("mnist_cnn", "rpi4", "fp32"), ("mnist_cnn", "rpi5", "int8")]


def baseline_row(model: str, target: str, engine: str) -> dict:
    with open(BASELINE, encoding="utf-8") as f:
        rows = json.load(f)["rows"]
    return next(r for r in rows if (r["model"], r["target"], r["engine"]) == (model, target,
                                                                             engine))


def within_margin(count: float, base: float, margin: float = MARGIN) -> bool:
    return count <= base * margin


def test_the_margin_fails_a_rise_over_ten_percent():
    assert within_margin(1.10e6, 1e6) and within_margin(0.5e6, 1e6)
    assert not within_margin(1.11e6, 1e6)


@pytest.mark.slow
@pytest.mark.parametrize("model,target,precision", CHECKED,
                         ids=[f"{m}-{t}-{p}" for m, t, p in CHECKED])
def test_arm_build_does_not_grow_over_the_committed_baseline(tmp_path, model, target, precision):
    from test_icount import _board_root

    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("aarch64-linux-gnu-g++ missing: apt-get install -y g++-aarch64-linux-gnu")
    root = _board_root()
    base = baseline_row(model, target, f"edgec_{precision}")
    torch_model, x = model_and_input(model)
    assert list(x.shape) == base["input_shape"]
    np.save(tmp_path / "x.npy", x)
    so, manifest = bench_emulated.build_edgec(torch_model, x, target, precision, str(tmp_path))
    assert manifest["tuning"]["summary"] == base["tuning"]  # built as the baseline was
    cpu = get_target(target).tvm["mcpu"]
    assert cpu == base["qemu_cpu"]
    runner = icount.build_runner(root, board.PY_SITE)
    argv = icount.runner_argv(runner, so, [str(tmp_path / "x.npy")])
    got = icount.per_inference(argv, base["n"], icount.counting_root(root, cpu), cpu=cpu)
    ratio = got["total"] / base["total"]
    assert within_margin(got["total"], base["total"]), (
        f"{model} {precision} for {target}: {got['total']:.0f} instructions per inference, "
        f"{ratio:.3f}x the committed baseline's {base['total']:.0f} (allowed {MARGIN}x); "
        f"classes now {got['classes']}, then {base['classes']}")
