"""Board subcommands: ``edgec rpc tracker|server|status|emulate`` and ``edgec bench``."""
from __future__ import annotations

import os
import signal
import sys

from edgec.compiler.cli import command, emit
from edgec.compiler.errors import EdgecError


def _say(args, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(text, file=sys.stderr, flush=True)


def _serve_forever(args, proc, what: str) -> int:
    """Keep a started tracker/server in the foreground until Ctrl-C or SIGTERM."""
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    emit(args, {"kind": proc.kind, "pid": proc.pid, "port": proc.port, "log": proc.log,
                **proc.extra}, f"{what} (pid {proc.pid}, log {proc.log}); Ctrl-C stops it")
    try:
        code = proc.popen.wait()
        raise EdgecError(f"{proc.kind} exited with code {code}; see {proc.log}")
    except KeyboardInterrupt:
        proc.stop()
        _say(args, f"stopped the {proc.kind}")
        return 0


def cmd_rpc(args):
    return args.rpc_func(args)


def _tracker(args):
    from edgec.compiler.deploy.rpc import bind_warning, start_tracker

    if bind_warning(args.host):
        print(f"WARNING: this RPC tracker listens on {args.host}: anyone who reaches it can "
              "take its boards, which run any code they are sent", file=sys.stderr, flush=True)
    proc = start_tracker(args.port, args.host, die_with_parent=True)
    return _serve_forever(args, proc, f"RPC tracker listening on {args.host}:{proc.port}")


def _server(args):
    from edgec.compiler.deploy.rpc import bind_warning, start_server

    warning = bind_warning(args.host)
    if warning:  # loud on purpose: the server executes whatever it is sent
        print(f"\n{'!' * 78}\n{warning}\n{'!' * 78}\n", file=sys.stderr, flush=True)
    if args.key and not args.tracker:
        raise EdgecError("--key only makes sense with --tracker HOST:PORT")
    proc = start_server(args.port, args.host, args.tracker, args.key, die_with_parent=True)
    via = f", registered as {args.key!r} at tracker {args.tracker}" if args.tracker else ""
    return _serve_forever(args, proc, f"RPC server listening on {args.host}:{proc.port}{via}")


def _status(args):
    from edgec.compiler.deploy.rpc import tracker_status

    status = tracker_status(args.tracker, args.timeout)
    lines = [f"tracker {args.tracker}: {len(status)} key(s)"]
    for key, s in sorted(status.items()):
        servers = ", ".join(f"{x['host']}:{x['port']}" for x in s["servers"]) or "-"
        lines.append(f"  {key:<16} {s['total']} server(s), {s['free']} free, "
                     f"{s['total'] - s['free']} busy, {s['pending']} queued  [{servers}]")
    emit(args, {"tracker": args.tracker, "keys": status}, "\n".join(lines))


def _emulate(args):
    from edgec.compiler.deploy import board

    if args.threads is not None and args.threads < 1:
        raise EdgecError(f"--threads must be >= 1, got {args.threads}")
    root = args.dir or board.default_dir()
    info = board.prepare(root, quiet=args.quiet)
    _say(args, f"emulated aarch64 board in {root} ({info['tvm']}); {board.EMULATION_NOTE}")
    if args.prepare_only:
        emit(args, info, f"prepared {root}")
        return 0
    proc = board.start(root, args.port, tracker=args.tracker, key=args.key, die_with_parent=True,
                       threads=args.threads)
    via = f", registered as {args.key!r} at tracker {args.tracker}" if args.tracker else ""
    return _serve_forever(args, proc, f"emulated aarch64 RPC server on 127.0.0.1:{proc.port}{via}")


def _rpc_flags(p):
    sub = p.add_subparsers(dest="rpc_command", metavar="ACTION", required=True,
                           parser_class=type(p))
    t = sub.add_parser("tracker", help="run TVM's RPC tracker (boards register with it)")
    t.add_argument("--port", type=int, default=9190)
    t.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    t.set_defaults(rpc_func=_tracker)
    s = sub.add_parser("server", help="run a TVM RPC server on this machine (it runs ANY code sent)")
    s.add_argument("--tracker", metavar="HOST:PORT", help="register with this tracker")
    s.add_argument("--key", help="device key to register under (e.g. rpi4); needs --tracker")
    s.add_argument("--port", type=int, default=9090)
    s.add_argument("--host", default="127.0.0.1",
                   help="bind address (default 127.0.0.1; anything else is reachable from the network)")
    s.set_defaults(rpc_func=_server)
    st = sub.add_parser("status", help="keys and free/busy servers at a tracker")
    st.add_argument("--tracker", metavar="HOST:PORT", required=True)
    st.add_argument("--timeout", type=float, default=10.0)
    st.set_defaults(rpc_func=_status)
    e = sub.add_parser("emulate", help="an emulated aarch64 board (qemu-user) serving RPC on 127.0.0.1")
    e.add_argument("--dir", help="rootfs folder (default ~/.cache/edgec/board-aarch64)")
    e.add_argument("--port", type=int, default=9095)
    e.add_argument("--tracker", metavar="HOST:PORT", help="register with this tracker")
    e.add_argument("--key", default="aarch64-emulated", help="key when registering with a tracker")
    e.add_argument("--prepare-only", action="store_true", help="build the rootfs, do not serve")
    e.add_argument("--threads", type=int, metavar="N",
                   help="the board runtime's threads (default: every CPU of this machine); "
                        "1 lets several emulated boards measure side by side")
    e.set_defaults(rpc_func=_emulate)
    for sp in (t, s, st, e):
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        sp.add_argument("--quiet", action="store_true", help="print less")


cmd_rpc.configure = _rpc_flags
command("rpc", "TVM RPC: tracker, server, status, emulated aarch64 board")(cmd_rpc)


def _bench_session(args, paths):
    """Manifests read (fail on a missing one before connecting), then the session."""
    from edgec.compiler.deploy.artifact import read_manifest
    from edgec.compiler.deploy.rpc_session import connect

    manifests = [read_manifest(p) for p in paths]
    key = args.key
    if args.tracker and not key:
        from edgec.targets import get_target

        key = get_target(manifests[0]["target"]["name"]).rpc_key
        _say(args, f"using key {key!r} (the rpc_key of target {manifests[0]['target']['name']})")
    return connect(args.rpc, args.tracker, key, args.timeout, progress=lambda m: _say(args, m))


def _check_save(args, paths) -> None:
    """--save must not replace an artifact, its manifest or the data (checked before connecting)."""
    from edgec.compiler.deploy.artifact import manifest_path
    from edgec.compiler.outputs import check_outputs, check_stdout

    inputs = {"--data": args.data if args.data and os.path.exists(args.data) else None}
    for flag, path in zip(("MODEL", "--compare"), paths):
        inputs.update({flag: path, f"the manifest of {flag}": manifest_path(path)})
    check_stdout(inputs)
    check_outputs({"--save": args.save}, inputs)


@command("bench", "latency statistics of a compiled .so, here or on a board over RPC; "
                  "with --data, latency, accuracy and exit rates over a data set")
def cmd_bench(args):
    from edgec.compiler.deploy import bench
    from edgec.compiler.deploy import bench_data
    from edgec.compiler.deploy.artifact import write_json_atomic

    bench_data.check_flags(args)
    paths = [args.model] + ([args.compare] if args.compare else [])
    _check_save(args, paths)
    if args.kernels:
        return _bench_kernels(args)
    if args.data:
        rounds = 1 if args.repeat is None else args.repeat
        config = bench_data.DataBenchConfig(args.data, args.split, args.samples, args.number,
                                            rounds, args.warmup, args.timeout)
        prepared = bench_data.prepare(paths, config)  # bad data fails before connecting

        def run(session, paths, config, quiet):
            return bench_data.bench_data(session, paths, config, quiet, prepared)
        fmt = bench_data.format_data_report
    else:
        repeat = 20 if args.repeat is None else args.repeat
        config = bench.BenchConfig(repeat, args.number, args.warmup, args.timeout)
        run, fmt = bench.benchmark, bench.format_report
    session = _bench_session(args, paths)
    try:
        report = run(session, paths, config, quiet=args.quiet or args.json)
    finally:
        session.close()
    if args.save:
        write_json_atomic(args.save, report)
    emit(args, report, fmt(report))


def _bench_kernels(args):
    """``edgec bench model.so --kernels``: each kernel of one call timed alone, here."""
    from edgec.compiler.deploy import kernel_profile
    from edgec.compiler.deploy.artifact import write_json_atomic
    from edgec.compiler.deploy.bench import BenchConfig
    from edgec.compiler.errors import EdgecError

    clash = [f for f, v in (("--rpc", args.rpc), ("--tracker", args.tracker), ("--data", args.data),
                            ("--compare", args.compare)) if v]
    if clash:
        raise EdgecError(f"--kernels profiles on this machine, one artifact: drop {', '.join(clash)}")
    if args.top < 1:
        raise EdgecError(f"--kernels --top must be a positive number of kernels, got {args.top}")
    config = BenchConfig(repeat=5 if args.repeat is None else args.repeat, number=args.number,
                         warmup=args.warmup, timeout=args.timeout)
    report = kernel_profile.profile(args.model, config)
    if args.save:
        write_json_atomic(args.save, report)
    emit(args, report, kernel_profile.format_profile(report, args.top))


def _bench_flags(p):
    p.add_argument("model", help="compiled model.so (model.json beside it)")
    p.add_argument("--rpc", metavar="HOST:PORT", help="an RPC server to run on directly")
    p.add_argument("--tracker", metavar="HOST:PORT", help="an RPC tracker to get a board from")
    p.add_argument("--key", help="board key at the tracker (default: the target's rpc_key)")
    p.add_argument("--data", metavar="DATA", help="bench over a data set (mnist, a .npz, or an "
                   "image folder): latency per sample, accuracy, per-exit rates and latency")
    p.add_argument("--split", default="test", help="with --data: train, val or test (default test)")
    p.add_argument("--samples", type=int, metavar="N", help="with --data: the first N samples "
                   "of the split (default: all)")
    p.add_argument("--repeat", type=int, help="samples (default 20); with --data, rounds over "
                   "the data, each sample's latency the median over them (default 1)")
    p.add_argument("--number", type=int, default=5, help="runs averaged per sample (default 5)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3; with "
                   "--data, untimed samples)")
    p.add_argument("--compare", metavar="OTHER.so", help="time a second artifact interleaved")
    p.add_argument("--kernels", action="store_true", help="here only: time each kernel of one "
                   "call alone (the heaviest first, the time by kind, the call beyond the kernels)")
    p.add_argument("--top", type=int, default=25, metavar="N",
                   help="with --kernels: list the N heaviest kernels (default 25)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for a tracker, a free server or any one RPC step")
    p.add_argument("--save", metavar="FILE.json", help="also write the report (atomically)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar, print nothing on success (--save FILE keeps the report)")


cmd_bench.configure = _bench_flags
