"""Tuning throughput over RPC with 1, 2, 4 boards under one key (issue #27 part 5).

    python benchmarks/bench_tune_boards.py [--boards 1 2 4] [--trials 32] [--rounds 2]
        [--board-threads 1]

Emulated aarch64 boards (``edgec rpc emulate``'s qemu-user rootfs) registered at one
tracker on 127.0.0.1 under one key; ``edgec tune --tracker`` for rpi4 on a small conv net,
each run into a fresh log with the same seed. Reported: trials per minute per board count
and its ratio to one board, rounds interleaved (order rotating). What the boards measure
(kernel times under emulation) is meaningless; throughput is what is compared. The boards
share this machine's cores with the builder, so the scale-out is bounded by them: say the
CPU count with the figure.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

import numpy as np
import torch

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import write_results
from edgec.compiler.compare import machine_info
from edgec.compiler.deploy import board, rpc
from edgec.compiler.frontend import import_model
from edgec.compiler.timing import interleaved
from edgec.compiler.tune.search import tune
from edgec.compiler.tune.spec import TuneSpec

KEY = "bench-boards"


def model():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU()).eval()
    return import_model(net, (torch.randn(1, 8, 16, 16),))


def one_run(relax_model, n_boards: int, trials: int, root: str, threads) -> dict:
    """Start ``n_boards`` boards at a fresh tracker, tune ``trials`` into a fresh log."""
    tracker = rpc.start_tracker(rpc.free_port(), die_with_parent=True)
    addr = f"127.0.0.1:{tracker.port}"
    procs, log = [tracker], tempfile.mkdtemp(prefix="edgec-boards-")
    try:
        for _ in range(n_boards):
            procs.append(board.start(root, rpc.free_port(), tracker=addr, key=KEY, threads=threads,
                                     die_with_parent=True))
        s = tune(relax_model, TuneSpec(target="rpi4", trials=trials, log_dir=os.path.join(log, "rpi4"),
                                       tracker=addr, rpc_key=KEY, quiet=True, warm_start=False,
                                       run_timeout=300))
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(log, ignore_errors=True)
    return {"boards": n_boards, "boards_seen": s["boards"], "trials": s["trials"],
            "failed": s["failed"], "wall_s": s["wall_s"], "trials_per_min": s["trials_per_min"],
            "measure_s": s["measure_s"],
            "measured_per_min": round(60 * s["trials"] / s["measure_s"], 1)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--boards", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--trials", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--board-threads", type=int, default=1,
                   help="each board runtime's threads (0: every CPU, TVM's default)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    threads = args.board_threads or None
    out = args.out or f"tune_boards-threads{args.board_threads or 'all'}"
    root = board.default_dir()
    board.prepare(root)
    relax_model = model()
    def run(i, r):
        n = args.boards[i]
        print(f"round {r + 1}/{args.rounds}: {n} board(s), {args.trials} trials", file=sys.stderr,
              flush=True)
        out = dict(one_run(relax_model, n, args.trials, root, threads), round=r)
        print(f"  {out}", file=sys.stderr, flush=True)
        return out

    runs = [x for per_count in interleaved(len(args.boards), args.rounds, run) for x in per_count]
    def med(key, n):
        return float(np.median([x[key] for x in runs if x["boards"] == n]))

    first = args.boards[0]
    rows = [{"boards": n, "trials_per_min": med("trials_per_min", n),
             "ratio": med("trials_per_min", n) / med("trials_per_min", first),
             "measured_per_min": med("measured_per_min", n),
             "measured_ratio": med("measured_per_min", n) / med("measured_per_min", first),
             "measure_share": med("measure_s", n) / med("wall_s", n),
             "failed": sum(x["failed"] for x in runs if x["boards"] == n)} for n in args.boards]
    machine = machine_info()
    md = ["# Tuning throughput with boards under one key (emulated aarch64 boards)", "",
          f"rpi4 target, a 2-conv net (8->16->16, 16x16), {args.trials} trials per run, "
          f"{args.rounds} interleaved round(s), medians. Boards: qemu-user rootfs servers on "
          f"this machine, sharing its {machine['cores']} cores with the builder; each board's "
          f"runtime on {threads or 'every CPU (TVM default)'} thread(s).", "",
          "Whole run: trials per minute of wall time (search, builds and measuring). "
          "Measuring: trials per minute of the time candidates were out on the boards (the "
          "part more boards shorten; the search and the builds stay on this machine).", "",
          f"| boards | trials/min | x {first} board(s) | measuring trials/min | x {first} "
          "board(s) | measuring share of the run | failed candidates |",
          "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    md += [f"| {r['boards']} | {r['trials_per_min']:.1f} | {r['ratio']:.2f} | "
           f"{r['measured_per_min']:.1f} | {r['measured_ratio']:.2f} | {r['measure_share']:.0%} | "
           f"{r['failed']} |" for r in rows]
    md += ["", f"Machine: {machine['cpu']}, {machine['cores']} cores, load average "
               f"{machine['loadavg_1m']:.2f} at the end."]
    js, mdp = write_results(out, {"runs": runs, "rows": rows, "machine": machine,
                                  "trials": args.trials, "rounds": args.rounds,
                                  "board_threads": threads},
                            "\n".join(md))
    print("\n".join(md))
    print(f"wrote {js} and {mdp}", file=sys.stderr)


if __name__ == "__main__":
    main()
