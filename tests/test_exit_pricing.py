"""Early exits priced by measured latency (compiler/exit_pricing.py), and the demo keeping
the stage before when an exit does not pay."""
import numpy as np
import pytest
import torch

from conftest import seeded
from edgec.compiler import PipelineConfig, compile, load
from edgec.compiler.demo.context import Stage, StageRecord
from edgec.compiler.demo.measure import best_artifact, dropped
from edgec.compiler.demo.exit_pricing import PAYS_BELOW, decide, path_latencies, verdict
from edgec.compiler.demo.report import goals
from edgec.compiler.train.exits import add_exits
from edgec.compiler.zoo import MnistCNN
from edgec.passes.exit_plan import ExitPlanError
from edgec.passes.exit_thresholds import calibrate


class _Cal:
    def __init__(self, rates):
        self.exit_rates = rates


def test_decide_prices_the_expected_path():
    measured = {"path_s": [10e-6, 30e-6], "without_exits_s": 25e-6, "rounds": 3, "calls": 10}
    keep = decide(_Cal((0.9, 0.1)), measured)  # 0.9 * 10 + 0.1 * 30 = 12 us: 0.48x
    assert keep["pays"] and keep["expected_ms"] == pytest.approx(0.012)
    assert keep["ratio"] == pytest.approx(0.48) and keep["path_ms"] == [0.01, 0.03]
    drop = decide(_Cal((0.5, 0.5)), measured)  # 20 us: 0.8x... still pays
    assert drop["pays"] == (0.8 <= PAYS_BELOW)
    slow = decide(_Cal((0.93, 0.07)), {**measured, "path_s": [24e-6, 40e-6]})  # 25.1 us
    assert not slow["pays"] and slow["ratio"] > 1
    assert "does not pay" in verdict(slow) and "the stage before it" in verdict(slow)
    assert "pays on this target" in verdict(keep) and "90%, 10%" in verdict(keep)


def test_latency_costs_change_the_thresholds():
    """With MACs the exit looks 4x cheaper; priced by a path as slow as the full one, the
    calibration keeps every sample on the final head (nothing to gain, accuracy to lose)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 200)
    final = np.eye(10)[labels] * 5.0
    early = np.where(rng.random((200, 1)) < 0.8, np.eye(10)[labels] * 5.0, rng.normal(size=(200, 10)))
    by_macs = calibrate([early, final], labels, [1.0, 4.0], 1.0)
    by_time = calibrate([early, final], labels, [1.0e-5, 1.0e-5], 1.0, cost_unit="s")
    assert by_macs.exit_rates[0] > 0.5
    assert by_time.exit_rates[0] == 0.0 and by_time.thresholds == (1.0,)


@pytest.fixture(scope="module")
def libraries(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("pricing")
    base = seeded(MnistCNN(c1=4, c2=8, hidden=16))
    x = torch.randn(1, 1, 28, 28)
    plain, exits, baked = (str(folder / n) for n in ("plain.so", "exits.so", "baked.so"))
    compile(base, (x,), output=plain)
    model = add_exits(base, after=["bn1"])
    compile(model, (x,), output=exits, config=PipelineConfig(
        early_exit=True, thresholds_as_input=True, exit_thresholds=(0.5,)))
    compile(model, (x,), output=baked, config=PipelineConfig(early_exit=True, exit_thresholds=(0.5,)))
    return load(plain), load(exits), load(baked), x.numpy()


def test_path_latencies_force_each_path(libraries):
    plain, exits, baked, x = libraries
    measured = path_latencies(exits, plain, x, rounds=2, number=5)
    assert len(measured["path_s"]) == 2 and measured["without_exits_s"] > 0
    assert all(s > 0 for s in measured["path_s"])
    assert measured["rounds"] == 2 and measured["calls"] == 5
    with pytest.raises(ExitPlanError, match="thresholds as input"):
        path_latencies(baked, plain, x)


def _record(name, pays=None, artifact="a.so"):
    info = {} if pays is None else {"exits": {"pricing": {"pays": pays, "verdict": "v"}}}
    rec = StageRecord(Stage(name, name), "ok", artifact=artifact, meta={"info": info})
    return rec


def test_a_dropped_exit_is_not_the_final_artifact():
    class Ctx:
        records = {"int8": _record("int8"), "exit": _record("exit", pays=False)}

    assert best_artifact(Ctx).stage.name == "int8"
    Ctx.records["exit"] = _record("exit", pays=True)
    assert best_artifact(Ctx).stage.name == "exit"
    assert dropped({"exits": {"pricing": {"pays": False}}}) and not dropped({}) and not dropped(None)


def test_goals_are_measured_on_the_stage_before_a_dropped_exit():
    from edgec.compiler.demo.context import STAGE_DENSE

    def stage(name, ms, info=None):
        return {"name": name, "engine": "edgec", "size": {"artifact_bytes": 100 if name ==
                                                           STAGE_DENSE else 20},
                "accuracy": {"test_top1": 95.0},
                "latency": {"median_ms": ms, "x_faster_than_dense_edgec": 0.09 / ms},
                "info": info or {}}

    no_pay = {"exits": {"pricing": {"pays": False, "verdict": "the exit does not pay: 1.1x"}}}
    g = goals([stage(STAGE_DENSE, 0.09), stage("pruned + INT8", 0.02),
               stage("pruned + INT8 + early exit", 0.022, no_pay)])
    assert g["final_stage"] == "pruned + INT8"
    assert "pruned + INT8 + early exit is not the final stage: the exit does not pay" in g["note"]


def test_board_paths_are_one_forced_library_each(monkeypatch, tmp_path):
    """On a (real) board every path gets a library with thresholds baked to force it, timed
    with the stage before by the board benchmark; an emulated board is priced by MACs."""
    from edgec.compiler.demo import board as demo_board
    from edgec.compiler.demo import exits as demo_exits
    from edgec.compiler.demo.context import Context, RunConfig

    built, timed = [], []

    def fake_build(model, config, path, calib=None):
        built.append(config.exit_thresholds)

    def fake_bench(board, stages, images, rounds, quiet=False, power_cmd=None):
        timed.append([name for name, _ in stages])
        ms = {"path 0": 0.02, "path 1": 0.03, "path 2": 0.05, "without exits": 0.04}
        return {"engines": {name: {"median_ms": ms[name]} for name, _ in stages}}

    monkeypatch.setattr(demo_exits, "build", fake_build)  # what the exits stage calls
    monkeypatch.setattr(demo_exits, "board_benchmark", fake_bench)

    class Data:
        val = type("Split", (), {"x": np.zeros((20, 1, 28, 28), "float32")})()

    ctx = Context(RunConfig(), Data())
    ctx.records["before"] = _record("before", artifact="int8.so")
    ctx.board = demo_board.Board("127.0.0.1:1", "pi", info=(("emulated", False),))
    got = demo_exits._measure_paths_on_board(ctx, None, PipelineConfig(int8=True), None,
                                             str(tmp_path), "before", 2)
    assert built == [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0)]  # exit 0, exit 1, the final head
    assert timed == [["path 0", "path 1", "path 2", "without exits"]]
    assert got["path_s"] == pytest.approx([2e-5, 3e-5, 5e-5])
    assert got["without_exits_s"] == pytest.approx(4e-5) and "on the board" in got["how"]
    assert demo_exits._unpriceable(ctx, "before") is None
    ctx.board = demo_board.Board("127.0.0.1:1", "pi", info=(("emulated", True),))
    assert "emulated" in demo_exits._unpriceable(ctx, "before")
    ctx.board = None
    ctx.records["before"] = _record("before", artifact=None)
    assert "no compiled library" in demo_exits._unpriceable(ctx, "before")
