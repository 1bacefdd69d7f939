"""Tuning: records, resume, tuned compile, bad logs, interruption, RPC runner (real parts).

One tiny matmul model, a handful of trials per run: the point is the bookkeeping,
not the speed (speed is benchmarks/bench_tuning.py).
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

from edgec.compiler.errors import EdgecError
from edgec.compiler.frontend import import_model
from edgec.compiler.tune.search import tune
from edgec.compiler.tune.spec import TuneSpec
from edgec.compiler.tvm_compat import tvm
from edgec.compiler.tune.database import (META, RECORDS, WORKLOADS, TuningLogError, count_records,
                                      open_database)
from edgec.targets import get_target

pytestmark = pytest.mark.slow
TARGET = "x86-avx2"


class TinyMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(32, 16)

    def forward(self, x):
        return torch.relu(self.fc(x))


class WideMLP(nn.Module):
    """A dense layer whose schedule space 400 trials cannot use up (TinyMLP's can run dry
    on some machines, ending the search before a signal arrives)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(128, 64)

    def forward(self, x):
        return torch.relu(self.fc(x))


def tiny():
    torch.manual_seed(0)
    return TinyMLP().eval(), torch.randn(1, 32)


def spec(log_dir, trials, **kw):
    return TuneSpec(target=TARGET, trials=trials, log_dir=str(log_dir), trials_per_iter=4,
                    quiet=True, **kw)


def traces(log_dir):
    with open(os.path.join(log_dir, RECORDS), encoding="utf-8") as f:
        return [json.dumps(json.loads(line)[1][0]) for line in f if line.strip()]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """One log, tuned twice: 4 trials, then resumed to a total of 8."""
    log = tmp_path_factory.mktemp("logs") / TARGET
    model = import_model(*tiny())
    first = tune(model, spec(log, 4))
    second = tune(model, spec(log, 8, resume=True))
    return log, model, first, second


def test_tune_writes_records(tuned):
    log, _, first, _ = tuned
    assert first["trials"] == 4 and first["failed"] == 0
    assert count_records(log) >= 4
    assert os.path.exists(log / WORKLOADS) and os.path.exists(log / META)
    best = [t["best_ms"] for t in first["per_task"] if t["trials"]]
    assert best and all(b > 0 for b in best)


def test_resume_continues_without_duplicates(tuned):
    log, model, first, second = tuned
    assert second["trials_before"] == first["trials_before"] + first["trials"]
    assert second["trials"] == 4
    assert sum(t["trials"] for t in second["per_task"]) == 8
    assert len(set(traces(log))) == len(traces(log))  # no candidate measured twice
    third = tune(model, spec(log, 8, resume=True))  # total reached: nothing to do
    assert third["trials"] == 0 and count_records(log) == 8
    runs = json.loads((log / META).read_text())["runs"]
    assert [r["trials"] for r in runs] == [4, 4]
    # x86-avx2 is a 2-core target: candidates are timed on min(2, this machine's CPUs)
    assert [r["measure_threads"] for r in runs] == [min(2, os.cpu_count())] * 2


def test_runner_workers_time_on_the_targets_cores():
    """TVM alone gives a runner worker half the logical CPUs on x86 (1 of 2 vCPUs here);
    the runner's initializer sizes the pool to the target's cores."""
    import functools

    from tvm.support.popen_pool import PopenPoolExecutor

    from edgec.compiler.tune.measure import measure_threads, runner_initializer

    threads = measure_threads(get_target(TARGET))
    assert threads == min(2, os.cpu_count())
    cpus = os.cpu_count()  # TVM caps its pool at the logical CPUs
    pool = PopenPoolExecutor(max_workers=1, initializer=functools.partial(runner_initializer, cpus))
    try:
        assert pool.submit(lambda: tvm.get_global_func("runtime.NumThreads")()).result() == cpus
    finally:
        pool.shutdown()


def test_compile_applies_records(tuned, tmp_path):
    from edgec.compiler import PipelineConfig, compile, load

    log, _, _, _ = tuned
    model, x = tiny()
    out = str(tmp_path / "m.so")
    manifest = compile(model, (x,), config=PipelineConfig(target=TARGET, tuning_logs=str(log)),
                       output=out)
    t = manifest["tuning"]
    assert t["applied"] and t["tuned"] >= 1 and t["tuned"] + t["default"] == t["tasks"]
    assert t["logs"] == [TARGET] and t["records"] == 8 and "tuned from log" in t["summary"]
    with torch.no_grad():
        np.testing.assert_allclose(load(out)(x.numpy())[0], model(x).numpy(), rtol=1e-5, atol=1e-5)


class SharesALayer(nn.Module):
    """Never tuned: its first layer is TinyMLP's (same op and shapes), then a new one."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(32, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(torch.relu(self.fc(x)))


def test_records_are_reused_by_another_model(tuned, tmp_path):
    from edgec.compiler import PipelineConfig, compile

    log, _, _, _ = tuned
    torch.manual_seed(1)
    manifest = compile(SharesALayer().eval(), (torch.randn(1, 32),), output=str(tmp_path / "o.so"),
                       config=PipelineConfig(target=TARGET, tuning_logs=str(log)))
    t = manifest["tuning"]
    assert t["tuned"] >= 1 and t["default"] >= 1  # the shared layer tuned, the new head not


def test_resume_budget_goes_to_untuned_tasks_first(tuned, tmp_path, monkeypatch):
    """A model whose first layer is logged and whose head is new, resumed with one round
    of budget: the round measures the head, wherever extraction lists it (the scheduler's
    first round follows the task list; here the logged task is listed first)."""
    import edgec.compiler.tune.search as tune_module

    extract = tune_module.extract_tasks
    monkeypatch.setattr(tune_module, "extract_tasks", lambda *a: sorted(
        extract(*a), key=lambda t: t.task_name != "fused_matmul_add_relu"))
    log, _, _, _ = tuned
    copy = tmp_path / TARGET
    _copy_log(log, copy)
    torch.manual_seed(1)
    model = import_model(SharesALayer().eval(), (torch.randn(1, 32),))
    summary = tune(model, spec(copy, 8 + 4, resume=True, warm_start=False))
    assert summary["trials_before"] == 8 and summary["trials"] == 4
    trials = {t["task"]: t["trials"] for t in summary["per_task"]}
    assert trials.pop("fused_matmul_add_relu") == 8 and list(trials.values()) == [4], trials


def _copy_log(src, dst):
    dst.mkdir()
    for name in (WORKLOADS, RECORDS, META):
        (dst / name).write_bytes((src / name).read_bytes())


def test_corrupt_log_is_refused_and_untouched(tuned, tmp_path):
    log, model, _, _ = tuned
    bad = tmp_path / TARGET
    _copy_log(log, bad)
    text = (bad / RECORDS).read_text()
    lines = text.splitlines(keepends=True)
    broken = lines[0] + "{not json\n" + "".join(lines[1:])
    (bad / RECORDS).write_text(broken)
    with pytest.raises(TuningLogError, match=r"line 2 is not valid JSON"):
        tune(model, spec(bad, 4))
    assert (bad / RECORDS).read_text() == broken


def test_foreign_log_is_refused(tuned, tmp_path):
    log, model, _, _ = tuned
    other = tmp_path / "other"
    _copy_log(log, other)
    meta = json.loads((other / META).read_text())
    meta["target_tvm"] = dict(meta["target_tvm"], mcpu="skylake-avx512")
    (other / META).write_text(json.dumps(meta))
    before = (other / RECORDS).read_bytes()
    with pytest.raises(TuningLogError, match="holds records for target"):
        tune(model, spec(other, 4))
    no_meta = tmp_path / "nometa"
    _copy_log(log, no_meta)
    (no_meta / META).unlink()
    with pytest.raises(TuningLogError, match="not written by edgec tune"):
        open_database(str(no_meta), get_target(TARGET))
    assert (other / RECORDS).read_bytes() == before


def test_torn_last_line_is_dropped(tuned, tmp_path):
    log, _, _, _ = tuned
    torn = tmp_path / TARGET
    _copy_log(log, torn)
    with open(torn / RECORDS, "a", encoding="utf-8") as f:
        f.write('[0,[[["GetSBlock"')  # a record cut by a kill mid-write
    with pytest.warns(UserWarning, match="torn last line"):
        db = open_database(str(torn), get_target(TARGET))
    assert len(db.get_all_tuning_records()) == 8


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["crash", "ctrl-c"])
def test_interrupted_tune_leaves_loadable_log(tmp_path, sig):
    log = tmp_path / TARGET
    cmd = [sys.executable, "-m", "edgec.compiler.cli", "tune", "test_tune:WideMLP", "--input",
           "x:1x128", "--target", TARGET, "--trials", "400", "--log-dir", str(log)]
    proc = subprocess.Popen(cmd, cwd=os.path.dirname(__file__), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 600
        while count_records(log) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(1)
        os.kill(proc.pid, sig)  # SIGKILL: a crash, no cleanup runs; SIGINT: Ctrl-C
        _, err = proc.communicate(timeout=300)
    finally:
        try:  # the whole session: builder/runner workers too
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    n = count_records(log)
    assert n >= 2
    db = open_database(str(log), get_target(TARGET))
    assert len(db.get_all_tuning_records()) >= n - 1
    if sig == signal.SIGINT:  # clean exit: says how to continue, the run is in the history
        tail = err[-3000:]  # on a failure: what the tune printed
        assert proc.returncode == 130 and "Traceback" not in err, tail
        assert "run the same command" in err and "edgec: interrupted" in err, tail
        runs = json.loads((log / META).read_text())["runs"]
        assert runs[-1]["interrupted"] and runs[-1]["trials"] == n


def test_tune_measures_on_every_board_under_the_key_and_survives_one_dropping_out(tmp_path):
    """Two servers under one key: the runner gets a worker per board, both boards measure,
    and killing one after the first batch costs at most its in-flight candidates; the
    other measures the rest of the run."""
    import threading

    from rpc_helpers import free_port

    from edgec.compiler.deploy import rpc

    tracker = rpc.start_tracker(free_port())
    addr = f"127.0.0.1:{tracker.port}"
    boards = []
    try:
        boards = [rpc.start_server(free_port(), tracker=addr, key="edgec-test") for _ in range(2)]
        log = tmp_path / TARGET
        killed = {}

        def kill_after_first_batch():
            deadline = time.time() + 600
            while count_records(log) < 4 and time.time() < deadline:
                time.sleep(0.2)
            killed["at"] = time.time()
            os.killpg(boards[0].pid, signal.SIGKILL)

        watcher = threading.Thread(target=kill_after_first_batch, daemon=True)
        watcher.start()
        s = tune(import_model(*tiny()), spec(log, 12, tracker=addr, rpc_key="edgec-test"))
        watcher.join(5)
        logs = [b.log_text() for b in boards]
    finally:
        for p in reversed([tracker, *boards]):
            p.stop()
    assert s["boards"] == 2 and "at" in killed
    assert s["trials"] == 12 and s["failed"] <= 2  # the killed board's in-flight candidates
    assert all(t["best_ms"] > 0 for t in s["per_task"] if t["trials"])
    assert 0 < s["measure_s"] < s["wall_s"]  # the time candidates were out on the boards
    assert all("load_module" in text for text in logs)  # both boards measured
    after = [line for line in logs[1].splitlines() if "load_module" in line
             and time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) >= int(killed["at"])]
    # the survivor measured the rest: all but the first batch and the one the kill fell in
    assert len(after) >= 12 - 4 - 4, logs[1]
    runs = json.loads((log / META).read_text())["runs"]
    assert runs[-1]["boards"] == 2


def test_board_runner_starts_a_worker_per_board_before_the_first_batch():
    """Lazily started workers (seconds each: they import TVM) left the first batch on one
    board; every worker process is up once the runner exists."""
    from edgec.compiler.tune.measure import make_runner

    runner = make_runner(get_target(TARGET), TuneSpec(target=TARGET, tracker="127.0.0.1:9"), 2)
    try:
        workers = runner.inner.pool._worker_map.values()  # TVM's PopenPoolExecutor
        assert len(workers) == 2 and all(w.is_alive() for w in workers)
    finally:
        runner.inner.pool.shutdown()


def test_closing_a_log_that_got_no_record_raises_nothing(tmp_path):
    """A tune that fails before its first batch closes its log with no records file; that
    close raised FileNotFoundError, which replaced the run's own error."""
    from edgec.compiler.tune.lock import SharedLog

    from tvm import te

    a = te.placeholder((8,), name="a")
    func = te.create_prim_func([a, te.compute((8,), lambda i: a[i] + 1.0, name="b")])
    log = SharedLog(str(tmp_path / TARGET), get_target(TARGET))
    log.db.commit_workload(tvm.IRModule({"main": func}))  # a task extracted, none measured
    log.close()
    assert count_records(str(tmp_path / TARGET)) == 0


def test_bad_tracker_and_board_without_tracker():
    with pytest.raises(EdgecError, match="HOST:PORT"):
        TuneSpec(target=TARGET, tracker="nohost")
    from edgec.compiler.tune.measure import make_runner

    with pytest.raises(EdgecError, match="--tracker"):
        make_runner(get_target("rpi4"), TuneSpec(target="rpi4"))


def test_board_builder_cross_compiles_candidates(tmp_path):
    """The builder a board tune uses links candidates for aarch64 (checked by ELF machine)."""
    import shutil

    from edgec.compiler.deploy.artifact import elf_machine
    from edgec.compiler.tune.search import lowered_module
    from edgec.compiler.tune.measure import make_builder, ms

    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("aarch64-linux-gnu-g++ not installed (apt-get install g++-aarch64-linux-gnu)")
    target = get_target("rpi4")
    mod = lowered_module(import_model(*tiny()), "rpi4")
    prim = next(f for _, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc))
    task = tvm.IRModule({"main": prim.with_attr("global_symbol", "main")})
    builder = make_builder(target, TuneSpec(target="rpi4"))
    (result,) = builder.build([ms.builder.BuilderInput(task, target.tvm_target())])
    assert result.error_msg is None, result.error_msg
    assert elf_machine(result.artifact_path) == "aarch64"


def test_host_uses_its_base_targets_log_and_isa_is_checked(tuned):
    from edgec.compiler.tune.database import log_dir_for
    from edgec.targets import detect_host

    host = detect_host(flags={"avx2", "fma"}, cores=4)
    assert host.tuning_key == "x86-avx2" and log_dir_for(host, "logs") == os.path.join("logs", TARGET)
    log, _, _, _ = tuned
    assert open_database(str(log), host) is not None  # same ISA, other core count: valid
    with pytest.raises(TuningLogError, match="holds records for target"):
        open_database(str(log), get_target("x86-avx512"))


def test_cli_status_json_and_one_line_errors(tuned, tmp_path, capsys):
    from edgec.compiler.cli import main

    log, _, _, _ = tuned
    factory = ["edgec.compiler.zoo:mnist_cnn", "--input", "x:1x1x28x28", "--target", TARGET]
    assert main(["tune", *factory, "--status", "--json", "--log-dir", str(tmp_path / "none")]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["trials"] == 0 and s["tasks"] and all(t["best_ms"] is None for t in s["tasks"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / META).write_text('{"format": "something-else"}')
    assert main(["tune", *factory, "--trials", "4", "--log-dir", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgec: error:") and "not an edgec tuning log" in err and "\n" not in err


class TinyConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 8 * 8, 4)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


def test_tune_with_prune_flags_tunes_what_compile_builds(tmp_path, capsys):
    """``edgec tune --prune R`` tunes the pruned graph: ``edgec compile --prune R`` with its
    log finds every task tuned; the dense build finds the conv task untuned."""
    from edgec.compiler.cli import main

    torch.manual_seed(0)
    model = tmp_path / "tinyconv.pt2"
    torch.export.save(torch.export.export(TinyConv().eval(), (torch.randn(1, 1, 8, 8),)),
                      str(model))
    log = tmp_path / TARGET
    common = [str(model), "--target", TARGET, "--prune", "0.5"]
    assert main(["tune", *common, "--trials", "8", "--log-dir", str(log), "--json",
                 "--quiet"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["model"] == f"{model} (pruned 0.5, NCHWc)" and s["trials"] >= 1
    out = tmp_path / "pruned.so"
    assert main(["compile", *common, "--tuning-logs", str(log), "-o", str(out), "--json"]) == 0
    tuning = json.loads(capsys.readouterr().out)["tuning"]
    measured = sum(1 for t in s["per_task"] if t["trials"])
    assert tuning["applied"] and tuning["tuned"] >= measured >= 1  # every tuned task found
    dense = tmp_path / "dense.so"
    assert main(["compile", str(model), "--target", TARGET, "--tuning-logs", str(log), "-o",
                 str(dense), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tuning"]["tuned"] < tuning["tuned"]
    assert main(["compile", *common, "--no-tuning", "--tuning-logs", str(log)]) == 2
    assert "not both" in capsys.readouterr().err


class TinyConv2(nn.Module):
    """Two convs and a linear whose widths fit the packed INT8 kernels (x 8 / x 4)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 8 * 8, 8)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(torch.flatten(x, 1))


def test_tune_int8_skips_hand_scheduled_kernels(tmp_path, capsys):
    """An INT8 build's packed kernels are edgec's own schedules: ``edgec tune --int8`` tunes
    the other tasks and leaves those out (MetaSchedule cannot even estimate their FLOPs)."""
    from edgec.compiler import PipelineConfig
    from edgec.compiler.cli import main
    from edgec.compiler.cli.tune import load_relax_model
    from edgec.compiler.pipeline import run
    from edgec.compiler.tune.apply import is_hand_scheduled
    from edgec.compiler.tune.measure import prepare
    from edgec.compiler.tvm_compat import meta_schedule

    torch.manual_seed(0)
    model = tmp_path / "tinyconv.pt2"
    torch.export.save(torch.export.export(TinyConv2().eval(), (torch.randn(1, 1, 8, 8),)),
                      str(model))
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32))
    flags = [str(model), "--target", TARGET, "--int8", "--calib-data", str(calib)]
    assert main(["tune", *flags, "--trials", "4", "--log-dir", str(tmp_path / TARGET),
                 "--json", "--quiet"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["model"].endswith("(INT8)") and s["tasks"] >= 1  # INT8 packs its own layout
    names = [t["task"] for t in s["per_task"]]
    assert not any("int8_avx2" in n or "pack_nchw4c" in n for n in names), names
    # the INT8 graph does hold packed kernels, which MetaSchedule alone would extract
    config = PipelineConfig(target=TARGET, int8=True, tuning_logs=None)
    lowered = run(load_relax_model(str(model), None), config, np.load(calib),
                  lower_only=True).lowered
    tvm_target = get_target(TARGET).tvm_target()
    prepare(tvm_target)
    raw = meta_schedule().relax_integration.extract_tasks(lowered, tvm_target)
    hand = [t.task_name for t in raw if is_hand_scheduled(t.dispatched[0]["main"])]
    assert any("int8_avx2" in n for n in hand) and any("pack_nchw4c" in n for n in hand), hand
    assert len(raw) == s["tasks"] + len(hand)


class MeanPool(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


def test_workload_logged_under_other_block_names_stays_replayable(tmp_path):
    """The pooling block is named after its input (``a_red`` / ``b_red``); the log matches
    the two workloads structurally, so records of the second model must name the first's
    blocks, or TVM refuses to open the whole log (it did: INT8 vs FP32 mobilenet_v2)."""
    from edgec.compiler.specs import parse_input_spec
    from edgec.compiler.tune.database import read_rows, replayable

    x = torch.randn(1, 8, 4, 4)
    log = tmp_path / TARGET
    for name in ("a", "b"):
        model = import_model(MeanPool(), (x,), [parse_input_spec(f"{name}:1x8x4x4")])
        tune(model, spec(log, 4))
    workloads = read_rows(str(log / WORKLOADS), "workload")
    records = read_rows(str(log / RECORDS), "tuning record")
    assert len(workloads) == 1 and len(records) == 8
    assert replayable(workloads, records) == records
    assert open_database(str(log), get_target(TARGET)) is not None
    # a record that names a block its workload lacks (a log written before that fix): the
    # build skips it with a warning instead of failing on the whole log
    from edgec.compiler.tune.database import open_subset

    lines = (log / RECORDS).read_text().splitlines(keepends=True)
    (log / RECORDS).write_text(lines[0].replace('"a_red"', '"zz_red"', 1) + "".join(lines[1:]))
    scratch = tmp_path / "subset"
    scratch.mkdir()
    with pytest.warns(UserWarning, match=r"skipping 1 record\(s\) whose schedule does not replay"):
        db, n = open_subset(str(log), get_target(TARGET), {workloads[0][0]}, str(scratch))
    assert db is not None and n == 7
