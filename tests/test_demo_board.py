"""``edgec optimize/demo --tracker``: train here, compile for aarch64, measure on the board.

The board is the emulated aarch64 one (qemu-user, see test_emulated_board.py), registered
at a real tracker on 127.0.0.1; both are stopped by their pids. A tiny CNN on a small
.npz goes through every stage (pruned, INT8, early exit) so the run stays short under
emulation: the full ``edgec demo`` on the board takes the same path with MnistCNN.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from edgec.compiler.deploy import board
from edgec.compiler.deploy import rpc
from edgec.compiler.demo.context import STAGE_DENSE, STAGE_EAGER
from edgec.compiler.deploy.rpc import group_members
from rpc_helpers import free_port, require_board_host

KEY = "emulated-aarch64"

FACTORY = """
import torch
from torch import nn

def tiny():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 2 * 2, 3))
"""


@pytest.fixture(scope="module")
def tracker_with_board():
    require_board_host()
    board.prepare(board.default_dir())
    procs = [rpc.start_tracker(free_port())]
    try:
        addr = f"127.0.0.1:{procs[0].port}"
        procs.append(board.start(board.default_dir(), free_port(), tracker=addr, key=KEY))
        yield addr
    finally:
        for p in reversed(procs):
            p.stop()
    assert all(group_members(p.pid) == [] for p in procs)


def _data(folder):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 60)
    x = 0.3 * rng.standard_normal((180, 1, 8, 8)).astype(np.float32)
    x[np.arange(180), 0, 2 * y + 1, 2 * y + 1] += 4.0  # each class lights up one pixel
    np.savez(folder / "d.npz", x=x, y=y)


def edgec(*args, cwd):
    cmd = [sys.executable, "-m", "edgec.compiler.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=1500)


@pytest.mark.slow
def test_optimize_measures_every_stage_on_the_board(tracker_with_board, tmp_path):
    (tmp_path / "tinymodels.py").write_text(FACTORY)
    _data(tmp_path)
    r = edgec("optimize", "tinymodels:tiny", "--data", "d.npz", "--epochs", "8", "--prune", "0.5",
              "--int8", "--early-exit", "--accuracy-budget", "100", "--target", "aarch64",
              "--tracker", tracker_with_board, "--key", KEY, "--out", "o", "--json", "--quiet",
              "--power-cmd", f"{sys.executable} -c print(1.5)", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    bench = report["benchmark"]
    assert bench["device"]["arch"] == "aarch64" and bench["device"]["emulated"]
    assert bench["timing_valid"] is False and bench["host_engines"] == [STAGE_EAGER]
    stages = {s["name"]: s for s in report["stages"]}
    assert len(stages) == 5 and all(s["status"] == "ok" for s in stages.values())
    powered = [p for p in report["power_readings"] if p["inferences"] > 0]
    assert [p["stage"] for p in powered] == list(stages)[1:]  # each edgec stage, on the board
    assert all(r["value"] == 1.5 for p in powered for r in p["readings"])
    eager = stages[STAGE_EAGER]
    assert eager["latency"]["where"] == "host" and "x_faster_than_dense_edgec" not in eager["latency"]
    for name, s in stages.items():
        if name == STAGE_EAGER:
            continue
        assert s["target"] == "aarch64" and s["latency"]["where"] == "board"
        assert "on the board 127.0.0.1" in s["accuracy"]["measured_by"]
        assert s["accuracy"]["n"] == 36 and s["latency"]["median_ms"] > 0
        assert "x_faster_than_pytorch_eager" not in s["latency"]
        with open(tmp_path / s["artifact"], "rb") as f:
            assert f.read(20)[18] == 183  # ELF machine: aarch64
    assert stages[STAGE_DENSE]["latency"]["x_faster_than_dense_edgec"] == 1.0
    # the same FP32 model: the board's library and PyTorch here agree
    assert stages[STAGE_DENSE]["accuracy"]["test_top1"] == eager["accuracy"]["test_top1"]
    exits = stages["pruned + INT8 + early exit"]["info"]["exits"]
    assert abs(sum(exits["distribution"].values()) - 1.0) < 1e-6
    assert "run on the board" in exits["val"]["outputs_from"]
    assert "EMULATED" in report["goals"]["note"] and "timed on this host" in report["goals"]["note"]
    with open(tmp_path / "o" / "report.md", encoding="utf-8") as f:
        md = f.read()
    assert "The board is EMULATED" in md and "Latency on the board" in md
    assert "(this host)" in md and "(board)" in md
    _bench_over_data_agrees(tmp_path, tracker_with_board, stages["pruned + INT8 + early exit"])


def _bench_over_data_agrees(folder, tracker, final):
    """``edgec bench --data`` on the board: the demo's exit distribution and accuracy again."""
    r = edgec("bench", final["artifact"], "--data", "d.npz", "--tracker", tracker, "--key", KEY,
              "--number", "1", "--warmup", "0", cwd=folder)
    assert r.returncode == 0, r.stderr
    assert "[EMULATED, meaningless] latency ms" in r.stdout and "exit rates are real" in r.stdout
    r = edgec("bench", final["artifact"], "--data", "d.npz", "--tracker", tracker, "--key", KEY,
              "--number", "1", "--warmup", "0", "--json", cwd=folder)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)["models"][0]
    assert m["accuracy"] == pytest.approx(final["accuracy"]["test_top1"])
    rates = [e["rate"] for e in m["per_exit"]]
    assert rates == pytest.approx(list(final["info"]["exits"]["distribution"].values()), abs=1e-4)


@pytest.mark.slow
def test_board_of_another_arch_is_refused_before_training(tracker_with_board, tmp_path, capsys):
    from edgec.compiler.cli import main

    out = str(tmp_path / "o")
    assert main(["demo", "--target", "host", "--tracker", tracker_with_board, "--key", KEY,
                 "--out", out, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is aarch64 but target 'host' builds x86_64" in err[0], err
    assert not os.path.exists(os.path.join(out, "cache"))


def test_no_board_is_a_one_line_error_before_training(tmp_path, capsys):
    from edgec.compiler.cli import main

    out = str(tmp_path / "o")
    cases = [(["--tracker", f"127.0.0.1:{free_port()}"], "cannot reach the RPC tracker"),
             (["--key", "rpi4"], "--key needs --tracker HOST:PORT"),
             (["--tracker", "nohostport"], "bad tracker address 'nohostport'")]
    for flags, message in cases:
        capsys.readouterr()
        assert main(["demo", "--target", "aarch64", *flags, "--out", out, "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not os.path.exists(out)
