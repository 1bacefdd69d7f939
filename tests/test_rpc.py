"""TVM RPC on 127.0.0.1: a real tracker and real servers started here, stopped by pid.

Covers remote == local outputs, benchmark statistics (local and remote share one
path), scale-out over two servers under one key, and every fault with a deadline.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from torch import nn

from edgec.compiler import compile, load
from edgec.compiler.deploy import rpc
from edgec.compiler.deploy.bench import BenchConfig, RemoteModel, benchmark, statistics
from edgec.compiler.cli import main, parser
from edgec.compiler.errors import ArtifactError, EdgecError
from edgec.compiler.deploy.rpc import RpcError, bind_warning, group_members
from edgec.compiler.deploy.rpc_session import connect
from rpc_helpers import free_port, result_within

KEY = "edgec-test"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A tiny MLP built for this machine and for aarch64, plus an input."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    x = torch.randn(2, 16)
    folder = tmp_path_factory.mktemp("rpc")
    host, arm = str(folder / "mlp.so"), str(folder / "mlp_arm.so")
    compile(model, (x,), target="host", output=host)
    compile(model, (x,), target="aarch64", output=arm)
    return {"host": host, "arm": arm, "x": x.numpy(), "folder": folder}


@pytest.fixture(scope="module")
def cluster():
    """A tracker with two servers under KEY, and one standalone server."""
    procs = []
    try:
        tracker = rpc.start_tracker(free_port())
        procs.append(tracker)
        addr = f"127.0.0.1:{tracker.port}"
        with ThreadPoolExecutor(3) as pool:  # each server pays TVM's import: start them together
            starts = [pool.submit(rpc.start_server, free_port(), tracker=addr, key=KEY)
                      for _ in range(2)] + [pool.submit(rpc.start_server, free_port())]
        procs += [f.result() for f in starts if f.exception() is None]  # all stopped below
        for f in starts:
            if f.exception() is not None:
                raise f.exception()
        direct = procs[-1]
        yield {"tracker": addr, "direct": f"127.0.0.1:{direct.port}", "direct_proc": direct,
               "servers": procs[1:3]}
    finally:
        for p in procs:
            p.stop()
    assert all(group_members(p.pid) == [] for p in procs)  # nothing left, not even zombies


def test_remote_outputs_equal_local(cluster, artifacts):
    local = load(artifacts["host"])(artifacts["x"])[0]
    session = connect(tracker=cluster["tracker"], key=KEY, timeout=30)
    try:
        assert session.arch == "x86_64" and not session.emulated
        remote = RemoteModel(session, artifacts["host"])(artifacts["x"])[0]
    finally:
        session.close()
    np.testing.assert_array_equal(remote, local)


def test_bench_statistics_remote_and_local(cluster, artifacts):
    config = BenchConfig(repeat=5, number=2, warmup=1, timeout=30)
    for where in (cluster["direct"], None):  # the same code path, with and without RPC
        session = connect(rpc=where, timeout=30)
        try:
            report = benchmark(session, [artifacts["host"]], config, quiet=True)
        finally:
            session.close()
        s = report["models"][0]["stats"]
        assert report["device"]["where"] == (where or "local") and report["timing_valid"]
        assert s["samples"] == 5 and s["batch"] == 2 and s["std_ms"] >= 0
        assert 0 < s["min_ms"] <= s["median_ms"] <= s["max_ms"]
        assert s["min_ms"] <= s["p95_ms"] <= s["max_ms"] and s["min_ms"] <= s["mean_ms"] <= s["max_ms"]
        assert s["throughput_per_s"] == pytest.approx(2 * 1e3 / s["mean_ms"])


def test_statistics_values():
    s = statistics([0.001, 0.002, 0.003, 0.004], batch=4)
    assert s["median_ms"] == pytest.approx(2.5) and s["mean_ms"] == pytest.approx(2.5)
    assert s["min_ms"] == pytest.approx(1) and s["max_ms"] == pytest.approx(4)
    assert s["p95_ms"] == pytest.approx(3.85) and s["throughput_per_s"] == pytest.approx(1600)


def test_cli_bench_compare_json_and_save(cluster, artifacts, capsys):
    save = artifacts["folder"] / "report.json"
    rc = main(["bench", artifacts["host"], "--rpc", cluster["direct"], "--compare", artifacts["host"],
               "--repeat", "3", "--number", "1", "--warmup", "1", "--json", "--save", str(save)])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["models"]) == 2 and report["ratio_other_over_model"] > 0
    assert json.loads(save.read_text())["models"][0]["stats"]["samples"] == 3


def test_two_servers_under_one_key_share_runs(cluster, artifacts):
    """Two clients at once get the two different servers of one key from the tracker."""
    barrier, reports, errors = threading.Barrier(2, timeout=60), [], []

    def client():
        try:
            session = connect(tracker=cluster["tracker"], key=KEY, timeout=30)
            barrier.wait()  # both hold a server now: the tracker had to hand out both
            reports.append(benchmark(session, [artifacts["host"]], BenchConfig(3, 1, 1), quiet=True))
            session.close()
        except Exception as e:  # reported below; a thread must not swallow it
            errors.append(e)
            barrier.abort()
    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    used = {r["device"]["where"].split()[0] for r in reports}
    assert used == {f"127.0.0.1:{p.port}" for p in cluster["servers"]}


def test_busy_tracker_waits_with_progress_then_times_out(cluster):
    held = [connect(tracker=cluster["tracker"], key=KEY, timeout=30) for _ in range(2)]
    messages = []
    try:
        start = time.monotonic()
        with pytest.raises(RpcError, match="stayed busy for 6s"):
            connect(tracker=cluster["tracker"], key=KEY, timeout=6, progress=messages.append)
        assert 6 <= time.monotonic() - start < 20
        assert messages and "waiting for a free 'edgec-test' server" in messages[0]
        assert "2 registered, 0 free" in messages[0]
        # a server freed while we wait is taken: the wait is real, not a fixed sleep
        threading.Timer(6, held.pop().close).start()
        session = connect(tracker=cluster["tracker"], key=KEY, timeout=60, progress=messages.append)
        session.close()
    finally:
        for s in held:
            s.close()


def test_unknown_key_lists_known_keys(cluster):
    with pytest.raises(RpcError, match=r"under key 'rpi9'.*keys there: edgec-test \(2 server"):
        connect(tracker=cluster["tracker"], key="rpi9", timeout=10)


@pytest.mark.parametrize("kind", ["tracker", "rpc"])
def test_unreachable_and_silent_peers_fail_within_timeout(kind):
    start = time.monotonic()
    with pytest.raises(RpcError, match="cannot reach|refused|failed while connecting"):
        connect(**{kind: f"127.0.0.1:{free_port()}"}, key="k", timeout=3)
    assert time.monotonic() - start < 5
    with socket.socket() as silent:  # accepts TCP, never answers: must not hang us
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        start = time.monotonic()
        with pytest.raises(RpcError, match="did not answer within 2s"):
            connect(**{kind: f"127.0.0.1:{silent.getsockname()[1]}"}, key="k", timeout=2)
        assert time.monotonic() - start < 6


def test_foreign_arch_refused_before_upload(cluster, artifacts):
    loads = cluster["direct_proc"].log_text().count("load_module")
    session = connect(rpc=cluster["direct"], timeout=30)
    try:
        with pytest.raises(ArtifactError, match="refused before upload: .*mlp_arm.so is aarch64 "
                                                ".* is x86_64"):
            benchmark(session, [artifacts["host"], artifacts["arm"]], BenchConfig(2, 1, 0))
    finally:
        session.close()
    assert cluster["direct_proc"].log_text().count("load_module") == loads  # nothing loaded
    with pytest.raises(ArtifactError, match="but local is x86_64; run it on its board with --rpc"):
        RemoteModel(connect(), artifacts["arm"])


def test_server_killed_mid_benchmark(artifacts):
    server = rpc.start_server(free_port())
    save = artifacts["folder"] / "killed.json"
    cmd = [sys.executable, "-m", "edgec.compiler.cli", "bench", artifacts["host"], "--rpc",
           f"127.0.0.1:{server.port}", "--repeat", "1000000", "--number", "50", "--timeout", "30",
           "--save", str(save), "--quiet"]
    bench = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while "load_module" not in server.log_text() and time.monotonic() < deadline:
            assert bench.poll() is None, bench.communicate()
            time.sleep(0.2)
        time.sleep(1)  # inside the sample loop now
        os.killpg(server.pid, signal.SIGKILL)  # the board dies
        _, err = bench.communicate(timeout=40)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        server.stop()
    assert bench.returncode == 2, err
    assert f"edgec: error: RPC server 127.0.0.1:{server.port} failed while" in err
    assert "Traceback" not in err
    assert not save.exists() and not list(artifacts["folder"].glob(".edgec-*"))
    assert group_members(server.pid) == []


def test_server_binds_loopback_by_default_and_warns_otherwise():
    args = parser().parse_args(["rpc", "server"])
    assert args.host == "127.0.0.1" and bind_warning(args.host) is None
    assert "runs ANY code" in bind_warning("0.0.0.0")
    assert bind_warning("::1") is None and bind_warning("localhost") is None


def test_rpc_status_cli(cluster, capsys):
    assert main(["rpc", "status", "--tracker", cluster["tracker"], "--json"]) == 0
    keys = json.loads(capsys.readouterr().out)["keys"]
    assert keys[KEY]["total"] == 2 and len(keys[KEY]["servers"]) == 2


def test_bad_arguments_are_one_line_errors(artifacts, capsys):
    assert main(["bench", artifacts["host"], "--repeat", "0"]) == 2
    assert main(["bench", artifacts["host"], "--rpc", "nohostport"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["edgec: error: --repeat must be a positive integer, got 0",
                   "edgec: error: bad server address 'nohostport'; expected HOST:PORT, e.g. "
                   "127.0.0.1:9190"]
    with pytest.raises(EdgecError, match="either --rpc"):
        connect(rpc="127.0.0.1:1", tracker="127.0.0.1:2", key="k")
    assert main(["rpc", "emulate", "--threads", "0", "--dir", "/nonexistent-board"]) == 2
    assert capsys.readouterr().err.splitlines() == ["edgec: error: --threads must be >= 1, got 0"]


def test_cli_server_warns_loudly_for_open_address(capsys):
    # --key without --tracker is refused after the warning, so nothing binds to 0.0.0.0 here
    assert main(["rpc", "server", "--host", "0.0.0.0", "--key", "k"]) == 2
    err = capsys.readouterr().err
    assert "!!!!" in err and "listens on 0.0.0.0" in err and "runs ANY code" in err


def test_cli_server_runs_in_foreground_and_stops_its_group():
    port = free_port()
    cmd = [sys.executable, "-m", "edgec.compiler.cli", "rpc", "server", "--port", str(port), "--json"]
    cli = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [cli.stdout.readline()]  # the --json block ends with a lone "}"
        while lines[-1] not in ("}\n", ""):
            lines.append(cli.stdout.readline())
        info = json.loads("".join(lines))
        assert info["port"] == port and info["host"] == "127.0.0.1"
        session = connect(rpc=f"127.0.0.1:{port}", timeout=30)
        assert session.arch == "x86_64"
        session.close()
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(30) == 0
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert group_members(info["pid"]) == []
    with pytest.raises(RpcError, match="cannot reach"):
        connect(rpc=f"127.0.0.1:{port}", timeout=5)


def test_tuning_runner_measurements_spread_over_servers_of_one_key(cluster, tmp_path):
    """MetaSchedule's RPC runner (what tuning uses) takes whichever server of the key is
    free: with one held busy, the measurement lands on the other, and vice versa."""
    from tvm import te

    from edgec.compiler.tvm_compat import meta_schedule, tvm

    ms = meta_schedule()
    a = te.placeholder((64,), name="a")
    func = te.create_prim_func([a, te.compute((64,), lambda i: a[i] * 2.0, name="b")])
    so = str(tmp_path / "cand.so")
    tvm.compile(tvm.IRModule({"main": func}), target="llvm").export_library(so)
    host, port = cluster["tracker"].split(":")
    runner = ms.runner.RPCRunner(
        rpc_config=ms.runner.RPCConfig(tracker_host=host, tracker_port=int(port), tracker_key=KEY,
                                       session_timeout_sec=60),
        evaluator_config=ms.runner.EvaluatorConfig(number=2, repeat=1, min_repeat_ms=0,
                                                   enable_cpu_cache_flush=False), max_workers=1)
    runner_input = ms.runner.RunnerInput(so, "cpu", ms.arg_info.ArgInfo.from_prim_func(func))
    for free in cluster["servers"]:
        held = [connect(tracker=cluster["tracker"], key=KEY, timeout=30)]
        while held[-1].where.startswith(f"127.0.0.1:{free.port} "):  # until the other is ours
            held.append(connect(tracker=cluster["tracker"], key=KEY, timeout=30))
        for session in held[:-1]:
            session.close()  # `free` goes back to the tracker; the other server stays busy
        before = free.log_text().count("load_module")
        result = result_within(runner.run([runner_input])[0], 120)
        held[-1].close()
        assert result.error_msg is None and float(result.run_secs[0]) > 0, result.error_msg
        assert free.log_text().count("load_module") == before + 1  # measured on the free one
