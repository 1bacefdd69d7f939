"""``edgec bench model.so --kernels``: every kernel of one call, timed alone, here.

The profile's launches are checked against the VM's own instrument hook and the library's
symbols; its figures against each other (shares, kinds, overhead). No timing is asserted
beyond being positive: speed is the benchmarks' job.
"""
import json

import numpy as np
import pytest

from edgec.compiler import PipelineConfig, compile, load
from edgec.compiler.cli import main
from edgec.compiler.deploy.bench import BenchConfig
from edgec.compiler.deploy.kernel_profile import format_profile, kernel_launches, kind_of, profile
from edgec.compiler.tvm_compat import tensor


@pytest.fixture(scope="module")
def so(tmp_path_factory):
    from conftest import TinyCNN, seeded
    import torch

    torch.manual_seed(0)
    out = str(tmp_path_factory.mktemp("profile") / "tiny.so")
    compile(seeded(TinyCNN()), (torch.randn(1, 1, 8, 8),), output=out,
            config=PipelineConfig(tuning_logs=None))
    return out


def test_profile_lists_every_launch_the_vm_makes(so):
    config = BenchConfig(repeat=2, number=3, warmup=1)
    report = profile(so, config)
    model = load(so)
    x = np.random.default_rng(config.seed).standard_normal((1, 1, 8, 8)).astype("float32")
    launches = kernel_launches(model, [tensor(x)])
    assert launches, "the tiny CNN launches kernels"
    symbols = [s for _, s, _ in launches]
    assert sorted(r["symbol"] for r in report["kernels"]) == sorted(set(symbols))
    assert sum(r["launches"] for r in report["kernels"]) == len(symbols)
    # heaviest first, shares of the kernel sum, kinds adding up to the same sum
    us = [r["us"] for r in report["kernels"]]
    assert all(u > 0 for u in us) and us == sorted(us, reverse=True)
    assert sum(r["share"] for r in report["kernels"]) == pytest.approx(1.0)
    assert report["kernel_sum_us"] == pytest.approx(sum(us))
    assert sum(k["us"] for k in report["kinds"]) == pytest.approx(report["kernel_sum_us"])
    assert report["overhead_us"] == pytest.approx(report["call_us"] - report["kernel_sum_us"])
    assert report["call_us"] > 0 and report["note"] is None
    assert report["machine"]["cpu"]
    text = format_profile(report, top=1)
    assert report["kernels"][0]["symbol"] in text and "more)" in text


def test_kind_drops_shapes_and_numbering():
    assert kind_of("conv2d_int8_vnni_1x32x56x56_64x3_requant") == "conv2d_int8_vnni_requant"
    assert kind_of("fused_conv2d_nchwc2_add4_maximum2") == "fused_conv2d_nchwc_add_maximum"
    assert kind_of("fused_conv2d_add_relu_2") == "fused_conv2d_add_relu"
    assert kind_of("pack_nchw4c_1x32x58x58") == "pack_nchw4c"
    assert kind_of("pad_split_1x96x112x112_s2") == "pad_split_s2"


def test_cli_kernels_json(so, capsys, tmp_path):
    save = str(tmp_path / "p.json")
    assert main(["bench", so, "--kernels", "--repeat", "2", "--number", "2", "--json",
                 "--save", save]) == 0
    out = json.loads(capsys.readouterr().out)
    with open(save, encoding="utf-8") as f:
        assert json.load(f)["kernels"] == out["kernels"]
    assert out["kernels"] and out["path"] == so


@pytest.mark.parametrize("flags", [["--rpc", "127.0.0.1:1"], ["--compare", "x.so"], ["--top", "0"]])
def test_cli_kernels_refuses_remote_and_compare(so, flags, capsys):
    assert main(["bench", so, "--kernels", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--kernels" in err[0] and flags[0] in err[0]
