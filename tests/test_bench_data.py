"""``edgec bench --data``: latency, accuracy and exits over a data set, here and over RPC.

An early-exit library built from a tiny seeded CNN, a small .npz, and a real TVM RPC
server on 127.0.0.1 (stopped by its pid). Every figure is checked against running the
library sample by sample with the plain runtime.
"""
import json

import numpy as np
import pytest
import torch

from conftest import seeded
from edgec.compiler import PipelineConfig, compile, load
from edgec.compiler.deploy import rpc
from edgec.compiler.deploy.bench_data import DataBenchConfig, bench_data, format_data_report
from edgec.compiler.cli import main
from edgec.compiler.errors import EdgecError
from edgec.compiler.deploy.rpc import group_members
from edgec.compiler.deploy.rpc_session import connect
from edgec.compiler.train.exits import add_exits
from edgec.compiler.zoo import MnistCNN
from edgec.passes.exit_thresholds import scores
from rpc_helpers import free_port

N_TEST = 16


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """An early-exit .so (threshold: the median exit-0 confidence on the test data, so
    both exits are taken), the plain model's .so, and an .npz with train/val/test arrays."""
    folder = tmp_path_factory.mktemp("bench_data")
    model = add_exits(seeded(MnistCNN(c1=4, c2=8, hidden=16)), after=["bn1"]).eval()
    rng = np.random.default_rng(0)
    arrays = {f"{a}_{s}": (rng.normal(size=(n, 1, 28, 28)).astype("float32") if a == "x"
                           else rng.integers(0, 10, n))
              for s, n in (("train", 4), ("val", 4), ("test", N_TEST)) for a in "xy"}
    npz = str(folder / "d.npz")
    np.savez(npz, **arrays)
    with torch.no_grad():
        exit0 = model(torch.from_numpy(arrays["x_test"]))[0].numpy()
    threshold = float(np.median(scores(exit0, "max_prob")))
    x = torch.from_numpy(arrays["x_test"][:1])
    exits, plain = str(folder / "exits.so"), str(folder / "plain.so")
    compile(model, (x,), output=exits, config=PipelineConfig(
        early_exit=True, exit_thresholds=(threshold,), tuning_logs=None))
    compile(seeded(MnistCNN(c1=4, c2=8, hidden=16)), (x,), output=plain,
            config=PipelineConfig(tuning_logs=None))
    return {"exits": exits, "plain": plain, "npz": npz, "folder": folder,
            "x": arrays["x_test"], "y": arrays["y_test"]}


def sample_by_sample(so, x):
    """(logits, exits) from the plain runtime, one sample at a time."""
    m = load(so)
    outs = [m(x[i:i + 1]) for i in range(len(x))]
    return np.concatenate([o[0] for o in outs]), [int(o[-1]) for o in outs if o[-1].ndim == 0]


def check_exits_report(report, built, n):
    ref_logits, ref_exits = sample_by_sample(built["exits"], built["x"][:n])
    m = report["models"][0]
    assert report["data"]["samples"] == n and m["samples"] == n and m["batch"] == 1
    counts = [e["count"] for e in m["per_exit"]]
    assert sum(counts) == n
    assert counts == [ref_exits.count(k) for k in range(2)] and min(counts) > 0
    assert [e["rate"] for e in m["per_exit"]] == pytest.approx([c / n for c in counts])
    acc = (ref_logits.argmax(1) == built["y"][:n]).mean() * 100
    assert m["accuracy"] == pytest.approx(acc)
    assert 0 < m["median_ms"] and m["mean_ms"] > 0 and m["p95_ms"] >= m["median_ms"]
    assert all(e["mean_ms"] > 0 for e in m["per_exit"])


def test_local_bench_over_data_matches_runtime(built):
    session = connect()
    try:
        report = bench_data(session, [built["exits"]], DataBenchConfig(
            built["npz"], number=1, warmup=1), quiet=True)
    finally:
        session.close()
    assert report["device"]["where"] == "local" and report["timing_valid"]
    check_exits_report(report, built, N_TEST)
    text = format_data_report(report)
    assert "exit 0" in text and "final" in text and "EMULATED" not in text


@pytest.fixture(scope="module")
def server():
    proc = rpc.start_server(free_port())
    try:
        yield proc
    finally:
        proc.stop()
    assert group_members(proc.pid) == []


def test_rpc_bench_over_data_with_compare(built, server, capsys):
    loads = server.log_text().count("load_module")
    rc = main(["bench", built["exits"], "--data", built["npz"], "--samples", "10", "--number", "1",
               "--warmup", "1", "--compare", built["plain"], "--rpc", f"127.0.0.1:{server.port}",
               "--json", "--save", str(built["folder"] / "r.json")])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert server.log_text().count("load_module") == loads + 2  # both ran on the server
    assert report["device"]["where"] == f"127.0.0.1:{server.port}" and report["timing_valid"]
    check_exits_report(report, built, 10)
    plain = report["models"][1]
    assert "per_exit" not in plain and plain["samples"] == 10
    ref = sample_by_sample(built["plain"], built["x"][:10])[0]
    assert plain["accuracy"] == pytest.approx((ref.argmax(1) == built["y"][:10]).mean() * 100)
    assert report["ratio_other_over_model"] == pytest.approx(
        plain["mean_ms"] / report["models"][0]["mean_ms"])
    assert json.loads((built["folder"] / "r.json").read_text())["data"]["samples"] == 10


def test_cli_table(built, capsys):
    rc = main(["bench", built["exits"], "--data", built["npz"], "--split", "val", "--number", "1",
               "--warmup", "0", "--compare", built["exits"]])
    assert rc == 0
    out = capsys.readouterr().out
    assert "data: d.npz val split, 4 samples" in out
    assert out.count("latency ms: mean") == 2 and out.count("accuracy: ") == 2
    assert "ratio exits.so / exits.so (mean latency over the data, same session)" in out


def test_bad_inputs_are_one_line_errors(built, capsys, tmp_path):
    small = str(tmp_path / "small.npz")
    np.savez(small, x=np.zeros((20, 1, 8, 8), "float32"), y=np.arange(20) % 2)
    cases = [(["--data", "cifar"], "unknown data 'cifar'; valid: mnist, a .npz file"),
             (["--data", small], "data samples have shape [1, 8, 8] but exits.so input 'x' "
                                 "takes [1, 1, 28, 28]"),
             (["--data", built["npz"], "--split", "dev"], "unknown split 'dev'; valid: train, "
                                                          "val, test"),
             (["--data", built["npz"], "--samples", "0"], "--samples must be a positive integer"),
             (["--samples", "3"], "--split and --samples need --data")]
    for flags, message in cases:
        capsys.readouterr()
        assert main(["bench", built["exits"], *flags]) == 2, flags
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("edgec: error: ") and message in err[0], err
    with pytest.raises(EdgecError, match="--repeat must be a positive integer"):
        DataBenchConfig("mnist", rounds=0)
