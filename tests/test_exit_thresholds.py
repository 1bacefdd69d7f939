"""Threshold calibration, stage MACs, and the early-exit CLI flags."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from edgec.compiler.frontend import import_model
from edgec.passes.graph import bind
from edgec.compiler.train.exits import add_exits
from edgec.compiler.zoo import MnistCNN
from edgec.passes.exit_plan import ExitPlan, ExitPlanError
from edgec.passes.exit_thresholds import calibrate, exit_macs, scores, simulate, stage_macs
from edgec.passes.split_early_exits import split_early_exits


def test_scores_match_definitions():
    z = np.array([[10.0, 0, 0, 0], [1.0, 1, 1, 1], [2.0, 1, 0, -1]])
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    np.testing.assert_allclose(scores(z, "max_prob"), p.max(1))
    ent = scores(z, "entropy")
    assert ent[0] > 0.99 and ent[1] == pytest.approx(0.0, abs=1e-12) and 0 < ent[2] < 1
    with pytest.raises(ExitPlanError, match="valid: max_prob, entropy"):
        scores(z, "margin")


def test_simulate_takes_first_confident_exit():
    s = [np.array([0.9, 0.1, 0.1]), np.array([0.9, 0.9, 0.1])]
    taken = simulate(s, [np.zeros(3)], (0.5, 0.5))
    assert taken.tolist() == [0, 1, 2]
    assert simulate(s, [np.zeros(3)], (1.0, 1.0)).tolist() == [2, 2, 2]


def _synthetic(n=400, seed=0):
    """Exit 0 is right exactly when it is confident; the final head is always right."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    easy = rng.random(n) < 0.6
    exit0 = rng.normal(0, 0.1, (n, 10))
    exit0[np.arange(n), np.where(easy, y, (y + 1) % 10)] += np.where(easy, 8.0, 0.5)
    final = np.zeros((n, 10))
    final[np.arange(n), y] = 5.0
    return [exit0, final], y, easy


def test_calibrate_meets_budget_and_saves_compute():
    logits, y, easy = _synthetic()
    cal = calibrate(logits, y, [1.0, 10.0], accuracy_budget=0.0)
    assert cal.full_accuracy == 100.0 and cal.accuracy == 100.0
    assert cal.exit_rates[0] == pytest.approx(easy.mean())  # every easy sample, no hard one
    assert cal.expected_cost == pytest.approx(easy.mean() * 1 + (1 - easy.mean()) * 10)
    assert cal.speedup > 2 and sum(cal.exit_rates) == pytest.approx(1.0)
    loose = calibrate(logits, y, [1.0, 10.0], accuracy_budget=100.0)
    assert loose.exit_rates[0] == 1.0 and loose.expected_cost == 1.0
    json.dumps(cal.to_json())
    with pytest.raises(ExitPlanError, match="one cost per output"):
        calibrate(logits, y, [1.0])


def test_stage_macs_count_convs_and_matmuls():
    model = add_exits(MnistCNN(c1=4, c2=8, hidden=16), ["bn1", "bn2"])
    mod = split_early_exits(bind(import_model(model, (torch.zeros(1, 1, 28, 28),))),
                            ExitPlan(thresholds_as_input=True))
    conv1, head0 = 28 * 28 * 4 * 9, 4 * 16 * 10
    conv2, head1 = 14 * 14 * 8 * 4 * 9, 8 * 16 * 10
    fc = 8 * 7 * 7 * 16 + 16 * 10
    assert stage_macs(mod) == [conv1 + head0, conv2 + head1, fc]
    assert exit_macs(mod) == [conv1 + head0, conv1 + head0 + conv2 + head1,
                              conv1 + head0 + conv2 + head1 + fc]


def edgec(*args, cwd=None):
    cmd = [sys.executable, "-m", "edgec.compiler.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=600)


FACTORY = """
import torch
from edgec.compiler.train.exits import add_exits
from edgec.compiler.zoo import MnistCNN

def exits():
    torch.manual_seed(0)
    return add_exits(MnistCNN(c1=4, c2=8, hidden=16), ["bn1"]).eval()
"""


def test_cli_calibrate_compile_run(tmp_path):
    (tmp_path / "exitmodels.py").write_text(FACTORY)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.normal(size=(60, 1, 28, 28)).astype("float32"),
             y=rng.integers(0, 10, 60))
    r = edgec("compile", "exitmodels:exits", "--input", "x:1x1x28x28", "-o", "e.so", "--early-exit",
              "--calibrate-exits", "data.npz", "--accuracy-budget", "100", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)["early_exit"]
    assert info["count"] == 1 and len(info["thresholds"]) == 1 and 0 <= info["thresholds"][0] <= 1
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 28, 28), "float32"))
    r = edgec("run", "e.so", "--input", "x.npy", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["exit_taken"] in (0, 1)


def test_cli_bad_exit_flags_are_one_line(tmp_path):
    (tmp_path / "exitmodels.py").write_text(FACTORY)
    base = ("compile", "exitmodels:exits", "--input", "x:1x1x28x28", "-o", "e.so")
    cases = {("--early-exit", "--exit-thresholds", "0.9,1.5"): r"outside the valid range \[0, 1\]",
             ("--early-exit", "--exit-thresholds", "0.9,0.8"): r"2 exit threshold\(s\) given for 1",
             ("--exit-thresholds", "0.9",): "need --early-exit",
             ("--early-exit",): "needs thresholds"}
    for flags, message in cases.items():
        r = edgec(*base, *flags, cwd=tmp_path)
        errors = [line for line in r.stderr.splitlines() if line.startswith("edgec: error:")]
        assert r.returncode == 2 and len(errors) == 1, (flags, r.stderr)  # torch may warn too
        assert "Traceback" not in r.stderr
        assert re.search(message, r.stderr), (flags, r.stderr)
    assert not (tmp_path / "e.so").exists()
