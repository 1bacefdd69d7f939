"""Schedule transfer: a task without a record borrows a similar logged workload's schedule."""
import numpy as np
import pytest
import torch
from torch import nn

from edgec.compiler.frontend import import_model
from edgec.compiler.tune.apply import apply_tuning
from edgec.compiler.tune.search import lowered_module, tune
from edgec.compiler.tune.spec import TuneSpec
from edgec.compiler.tune.transfer import fit_tile, signature, transfer_schedules
from edgec.compiler.tvm_compat import tvm
from edgec.targets import get_target

TARGET = "x86-avx2"


class Dense(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.fc = nn.Linear(n_in, n_out)

    def forward(self, x):
        return torch.relu(self.fc(x))


def _model(n_in, n_out, seed=0):
    torch.manual_seed(seed)
    return Dense(n_in, n_out).eval(), torch.randn(1, n_in)


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    """A log holding only Dense(32, 16)'s workload (4 real trials)."""
    path = tmp_path_factory.mktemp("logs") / TARGET
    tune(import_model(*_model(32, 16)), TuneSpec(target=TARGET, trials=4, log_dir=str(path),
                                                 trials_per_iter=4, quiet=True))
    return path


@pytest.mark.parametrize("extent,donor,want", [
    (256, [16, 8, 2], [16, 8, 2]),   # same extent: the donor's decision
    (512, [16, 8, 2], [32, 8, 2]),   # inner tiles kept, outer loop longer
    (96, [16, 8, 2], [6, 8, 2]),
    (100, [16, 8, 2], [25, 2, 2]),   # what does not divide shrinks to what does
    (7, [1, 4, 8], [7, 1, 1]),
])
def test_fit_tile_keeps_inner_tiles_and_covers_the_extent(extent, donor, want):
    got = fit_tile(extent, donor)
    assert got == want and int(np.prod(got)) == extent


def _funcs(mod):
    return {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


def test_wider_layer_borrows_the_logged_schedule(log):
    """Structural: the untuned wider matmul gets scheduled, by transfer, not by record."""
    target = get_target(TARGET)
    mod = lowered_module(import_model(*_model(32, 48)), TARGET)
    exact, info = apply_tuning(mod, target, str(log), transfer=False)
    assert info["tuned"] == 0 and info["transferred"] == 0 and info["default"] == info["tasks"]
    moved, info = apply_tuning(mod, target, str(log))
    assert info["tuned"] == 0 and info["transferred"] >= 1
    assert info["default"] == info["tasks"] - info["transferred"]
    assert "transferred from a similar workload" in info["summary"]
    name = info["transferred_tasks"][0]["task"]
    before, after = _funcs(exact)[name], _funcs(moved)[name]
    assert not (before.attrs and before.attrs.get("tirx.is_scheduled", False))
    assert after.attrs["tirx.is_scheduled"]
    assert signature(before)[1] == signature(after)[1]  # same buffers, rescheduled
    assert before.script() != after.script()


def test_transferred_build_matches_torch(log, tmp_path):
    """Numeric: the library built with a borrowed schedule computes what torch computes."""
    from edgec.compiler import PipelineConfig, compile, load

    for n_out in (48, 40):  # 40: the donor's 16-wide tiles do not divide it
        model, x = _model(32, n_out, seed=n_out)
        out = str(tmp_path / f"m{n_out}.so")
        manifest = compile(model, (x,), output=out,
                           config=PipelineConfig(target=TARGET, tuning_logs=str(log)))
        assert manifest["tuning"]["transferred"] >= 1
        with torch.no_grad():
            np.testing.assert_allclose(load(out)(x.numpy())[0], model(x).numpy(),
                                       rtol=1e-5, atol=1e-5)


def test_cli_no_schedule_transfer(log, tmp_path, capsys):
    import json

    from edgec.compiler.cli import main

    model = tmp_path / "dense48.pt2"
    torch.export.save(torch.export.export(*_model(32, 48)[:1], (torch.randn(1, 32),)), str(model))
    common = [str(model), "--target", TARGET, "--tuning-logs", str(log), "--json"]
    assert main(["compile", *common, "-o", str(tmp_path / "a.so")]) == 0
    assert json.loads(capsys.readouterr().out)["tuning"]["transferred"] >= 1
    assert main(["compile", *common, "--no-schedule-transfer", "-o", str(tmp_path / "b.so")]) == 0
    tuning = json.loads(capsys.readouterr().out)["tuning"]
    assert tuning["transferred"] == 0 and tuning["default"] == tuning["tasks"]


def test_no_donor_with_other_operators(log):
    """A workload with other operators (no relu) finds no donor and stays on defaults."""
    class NoRelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(32, 48)

        def forward(self, x):
            return self.fc(x)

    torch.manual_seed(0)
    mod = lowered_module(import_model(NoRelu().eval(), (torch.randn(1, 32),)), TARGET)
    _, moved = transfer_schedules(mod, str(log), get_target(TARGET).tvm_target())
    assert moved == []


def _new_task_traces(log_dir, mod):
    """Trace keys of the log's records for the task ``mod`` (the widest new workload)."""
    from edgec.compiler.tune.measure import _trace_key
    from edgec.compiler.tune.database import open_database

    db = open_database(str(log_dir), get_target(TARGET))
    if not db.has_workload(mod):
        return set()
    workload = db.commit_workload(mod)
    return {_trace_key(r.trace) for r in db.get_all_tuning_records() if r.workload.same_as(workload)}


@pytest.mark.parametrize("warm", [True, False])
def test_tuning_a_new_workload_starts_from_the_borrowed_schedule(log, tmp_path, warm):
    """Warm start: tuning Dense(32, 48), which the log has never seen, first measures the
    donor's schedule replayed on its shapes; with warm_start=False it does not."""
    import shutil

    from edgec.compiler.tune.search import extract_tasks
    from edgec.compiler.tune.measure import _trace_key
    from edgec.compiler.tune.transfer import Donors, seed_schedules

    copy = tmp_path / TARGET
    shutil.copytree(log, copy)
    model = import_model(*_model(32, 48))
    task = extract_tasks(lowered_module(model, TARGET), get_target(TARGET).tvm_target())[0]
    seeds = {_trace_key(s.trace) for s in seed_schedules(task.dispatched[0]["main"], Donors(str(log)))}
    assert seeds, "the logged Dense(32, 16) should replay on Dense(32, 48)"
    assert not _new_task_traces(copy, task.dispatched[0])
    summary = tune(model, TuneSpec(target=TARGET, trials=2, log_dir=str(copy), trials_per_iter=2,
                                   quiet=True, warm_start=warm))
    measured = _new_task_traces(copy, task.dispatched[0])
    assert summary["trials"] >= 1 and measured
    assert bool(seeds & measured) == warm


def test_a_transfer_is_replayed_once_per_process(log, monkeypatch):
    """Compiling the same model again reuses the transferred function (no replay, no
    check build), with the same result."""
    from edgec.compiler.tune import transfer as tune_transfer

    mod = lowered_module(import_model(*_model(32, 48)), TARGET)
    tvm_target = get_target(TARGET).tvm_target()
    first, moved = transfer_schedules(mod, str(log), tvm_target)
    assert moved

    def replay(*args):
        raise AssertionError("replayed again")

    monkeypatch.setattr(tune_transfer, "_transfer_one", replay)
    again, moved_again = transfer_schedules(mod, str(log), tvm_target)
    assert moved_again == moved
    tvm.ir.assert_structural_equal(first, again)


def test_replay_leaves_the_callers_functions_untouched():
    """TIR schedules rewrite uniquely held nodes in place: transfer and warm start must
    schedule a copy. (A max-pool trace starts by removing the block's schedule_rule
    annotation; done in place, the task's own function lost it and MetaSchedule's later
    replays of the task failed.)"""
    from edgec.compiler.tune.transfer import donors_of, seed_schedules
    from edgec.compiler.tune.database import log_dir_for

    logs = log_dir_for(get_target(TARGET))  # the committed log: it holds max-pool records
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2)).eval()
    mod = lowered_module(import_model(model, (torch.randn(1, 3, 18, 18),)), TARGET)
    before = tvm.ir.load_json(tvm.ir.save_json(mod))
    seeds = [seed_schedules(f, donors_of(logs)) for f in _funcs(mod).values()]
    assert any(seeds), "the committed log should hold donors for conv and max-pool"
    transfer_schedules(mod, logs, get_target(TARGET).tvm_target())
    tvm.ir.assert_structural_equal(mod, before)
