"""Fault injection: stuck boards, a killed server parent, two tunes on one log.

Real TVM trackers and servers on 127.0.0.1, stopped (SIGSTOP), silent or killed by pid.
Every network failure must end in one line and exit 2 within --timeout + 5 s, and the
process must really exit.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from edgec.compiler import compile
from edgec.compiler.deploy import rpc
from edgec.compiler.deploy.rpc import group_members
from rpc_helpers import free_port

TIMEOUT = 3
CLI = [sys.executable, "-m", "edgec.compiler.cli"]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    out = str(tmp_path_factory.mktemp("faults") / "mlp.so")
    compile(model, (torch.randn(2, 16),), target="host", output=out)
    return out


@pytest.fixture(scope="module")
def startup(artifact):
    """Seconds the CLI needs to start and fail at once (nothing listens): the baseline."""
    t0 = time.monotonic()
    done = subprocess.run([*CLI, "bench", artifact, "--rpc", f"127.0.0.1:{free_port()}",
                           "--timeout", str(TIMEOUT)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "cannot reach" in done.stderr
    return time.monotonic() - t0


def _bench(artifact, *flags):
    cmd = [*CLI, "bench", artifact, "--repeat", "1000000", "--number", "50", "--timeout",
           str(TIMEOUT), "--quiet", *flags]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, limit):
    """(exit code, stderr, seconds) of ``proc``, which must exit within ``limit`` s."""
    t0 = time.monotonic()
    try:
        _, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"the bench did not exit within {limit:.1f}s")
    return proc.returncode, err, time.monotonic() - t0


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgec: error: "), err
    return lines[0]


def test_stopped_server_mid_bench_ends_within_timeout(artifact):
    server = rpc.start_server(free_port())
    bench = _bench(artifact, "--rpc", f"127.0.0.1:{server.port}")
    try:
        deadline = time.monotonic() + 120
        while "load_module" not in server.log_text():
            assert bench.poll() is None and time.monotonic() < deadline, bench.communicate()
            time.sleep(0.1)
        time.sleep(1)  # inside the sample loop
        os.killpg(server.pid, signal.SIGSTOP)  # the board hangs (not dead: no reset)
        code, err, took = _finish(bench, TIMEOUT + 5)
    finally:
        os.killpg(server.pid, signal.SIGCONT)
        server.stop()
    assert code == 2 and took < TIMEOUT + 5
    assert f"did not answer within {TIMEOUT}s while timing (--timeout)" in _one_error_line(err)


def test_silent_server_ends_within_timeout_and_process_exits(artifact, startup):
    with socket.socket() as silent:  # accepts TCP, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        bench = _bench(artifact, "--rpc", f"127.0.0.1:{silent.getsockname()[1]}")
        code, err, took = _finish(bench, startup + TIMEOUT + 5)
    assert code == 2 and took < startup + TIMEOUT + 5
    assert "did not answer within 3s while connecting" in _one_error_line(err)


def test_stopped_tracker_ends_within_timeout(artifact, startup):
    tracker = rpc.start_tracker(free_port())
    os.killpg(tracker.pid, signal.SIGSTOP)
    try:
        bench = _bench(artifact, "--tracker", f"127.0.0.1:{tracker.port}", "--key", "k")
        code, err, took = _finish(bench, startup + TIMEOUT + 5)
    finally:
        os.killpg(tracker.pid, signal.SIGCONT)
        tracker.stop()
    assert code == 2 and took < startup + TIMEOUT + 5
    assert f"tracker 127.0.0.1:{tracker.port} did not answer within 3s" in _one_error_line(err)


def test_rpc_server_dies_with_its_parent():
    """kill -9 of 'edgec rpc server' takes the TVM server and its session child with it."""
    port = free_port()
    cli = subprocess.Popen([*CLI, "rpc", "server", "--port", str(port), "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [cli.stdout.readline()]
        while lines[-1] not in ("}\n", ""):
            lines.append(cli.stdout.readline())
        group = json.loads("".join(lines))["pid"]
        from edgec.compiler.deploy.rpc_session import connect

        session = connect(rpc=f"127.0.0.1:{port}", timeout=30)  # the server forks a session child
        try:
            assert len([p for p in group_members(group) if p > 0]) >= 3
            cli.kill()  # SIGKILL: the CLI cannot clean up
            cli.wait()
            deadline = time.monotonic() + 5
            while [p for p in group_members(group) if p > 0] and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            session.close()
        assert [p for p in group_members(group) if p > 0] == []
        deadline = time.monotonic() + 5  # the kernel drops the listening socket just after
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
            except OSError:
                break  # nothing listens there any more
            time.sleep(0.1)
        else:
            pytest.fail(f"port {port} still accepts connections 5 s after the parent died")
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()


MODELS = '''
import torch
from torch import nn


class Dense(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(32, width)

    def forward(self, x):
        return torch.relu(self.fc(x))


def dense():
    torch.manual_seed(0)
    return Dense(16).eval()


def pruned():
    torch.manual_seed(0)
    return Dense(8).eval()
'''


@pytest.mark.slow
def test_two_tunes_on_one_log_file_every_record_under_its_workload(tmp_path):
    """A model and its pruned variant tuned at once into one log (the issue's case: all
    records landed under workload 0)."""
    from edgec.compiler.tune.database import META, RECORDS, WORKLOADS, read_rows, replayable

    (tmp_path / "tiny_models.py").write_text(MODELS)
    log = tmp_path / "log"
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    procs = [subprocess.Popen([*CLI, "tune", f"tiny_models:{m}", "--input", "x:1x32", "--target",
                               "x86-avx2", "--trials", "8", "--log-dir", str(log), "--quiet"],
                              cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
             for m in ("dense", "pruned")]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    workloads = read_rows(str(log / WORKLOADS), "workload")
    records = read_rows(str(log / RECORDS), "tuning record")
    assert len(workloads) == 2 and len(records) == 16
    assert sorted(r[0] for r in records) == [0] * 8 + [1] * 8  # 8 records per workload
    assert len(replayable(workloads, records)) == 16
    runs = json.loads((log / META).read_text())["runs"]
    assert sorted(r["model"].split()[0] for r in runs) == ["tiny_models:dense",
                                                           "tiny_models:pruned"]
    assert all(r["status"] == "finished" and r["trials"] == 8 for r in runs)
    for m in ("dense", "pruned"):  # each model's status shows its own 8 trials, no more
        done = subprocess.run([*CLI, "tune", f"tiny_models:{m}", "--input", "x:1x32", "--target",
                               "x86-avx2", "--log-dir", str(log), "--status", "--json"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert json.loads(done.stdout)["trials"] == 8, done.stderr


@pytest.mark.slow
def test_tune_on_a_board_that_stops_ends_within_timeout(tmp_path):
    """MetaSchedule's RPC runner waits on a stuck board forever; edgec's gives it up."""
    from edgec.compiler.tune.database import count_records, read_meta

    (tmp_path / "tiny_models.py").write_text(MODELS)
    tracker = rpc.start_tracker(free_port())
    addr = f"127.0.0.1:{tracker.port}"
    server = rpc.start_server(free_port(), tracker=addr, key="board")
    log = tmp_path / "log"
    cmd = [*CLI, "tune", "tiny_models:dense", "--input", "x:1x32", "--target", "x86-avx2",
           "--tracker", addr, "--key", "board", "--trials", "400", "--timeout", str(TIMEOUT),
           "--log-dir", str(log), "--quiet"]
    tune = subprocess.Popen(cmd, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(tmp_path)),
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while count_records(log) < 1:  # a first batch was measured on the board
            assert tune.poll() is None and time.monotonic() < deadline, tune.communicate()
            time.sleep(0.1)
        loads = server.log_text().count("load_module")
        while server.log_text().count("load_module") == loads:  # the next one is measuring
            assert tune.poll() is None and time.monotonic() < deadline, tune.communicate()
            time.sleep(0.05)
        os.killpg(server.pid, signal.SIGSTOP)
        code, err, took = _finish(tune, TIMEOUT + 5)
    finally:
        try:
            os.killpg(tune.pid, signal.SIGKILL)  # its runner/builder workers, if any remain
        except ProcessLookupError:
            pass
        os.killpg(server.pid, signal.SIGCONT)
        server.stop()
        tracker.stop()
    assert code == 2 and took < TIMEOUT + 5
    assert (f"the 'board' board at tracker {addr} did not answer within {TIMEOUT}s while "
            "measuring candidates") in _one_error_line(
                "\n".join(ln for ln in err.splitlines() if "Warning" not in ln
                          and "cls.__new__" not in ln))
    assert count_records(log) >= 1  # what was measured before is kept
    runs = read_meta(str(log))["runs"]  # a reader sees the dead process's run as killed
    assert runs[-1]["status"] == "killed" and runs[-1]["trials_saved"] >= 1  # (by os._exit)
