"""Measuring candidates: builder, runner (local or RPC board) and the progress callback.

Runner choice: the host measures with ``LocalRunner``; a board measures over TVM RPC
(``RPCRunner`` through a tracker, by the board's key). Builders always run here; for a
board they cross-compile with the target's ``cross_cc``. Every worker pool gets the
cheap-``inspect`` initializer (see ``tvm_compat.fast_inspect_initializer``): without it
each builder worker spends 30-50 s importing TVM's tensor intrinsics and times out.
"""
from __future__ import annotations

import functools
import os
import threading
import time

from tqdm import tqdm

from edgec.compiler.toolchain import check_cross_compiler
from edgec.compiler.tune.spec import TuneError, parse_tracker
from edgec.compiler.tvm_compat import (cross_compiler, derived_object, fast_inspect_initializer,
                                       fix_vnni_intrinsic, has_vnni, kill_child_processes,
                                       meta_schedule)
from edgec.passes.nchwc_schedule import register_rule

ms = meta_schedule()
# Set by the first Ctrl-C of ``edgec tune``: every task's search then reports itself done.
STOP = threading.Event()
# Candidates are short kernels: 3 runs of at least 40 ms each is enough to rank them.
EVALUATOR = dict(number=3, repeat=1, min_repeat_ms=40, enable_cpu_cache_flush=False)


def export_aarch64(mod, path: str = None) -> str:
    """Builder export for aarch64 boards: link the candidate with the cross compiler."""
    import os
    import tempfile

    path = path or os.path.join(tempfile.mkdtemp(prefix="edgec-cand-"), "cand.so")
    mod.export_library(path, fcompile=cross_compiler("aarch64-linux-gnu-g++"))
    return path


def worker_initializer() -> None:
    """Builder/runner worker set-up: cheap TVMScript frame inspection, and no SIGINT.

    A terminal's Ctrl-C reaches the whole process group; the workers leave it to the
    tuning process, which finishes the batch being measured (a worker killed by it
    would log a spurious failed candidate) and then stops them.
    """
    import signal

    fast_inspect_initializer()
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def runner_initializer(threads: int) -> None:
    """Runner worker set-up: ``worker_initializer``, and TVM's thread pool sized to the
    target's cores. Unset, TVM gives its pool half the logical CPUs on x86 (it assumes
    hyper-threads): one thread on a 2-vCPU machine, so every candidate was timed on one
    core while the models run on two. A schedule timed on one core need not scale:
    mobilenet_v2's classifier, tuned so, ran 0.184 ms on one thread and 0.164 on two."""
    os.environ["TVM_NUM_THREADS"] = str(threads)
    worker_initializer()


def measure_threads(target) -> int:
    """Threads a local runner times candidates with: the target's cores, at most this
    machine's CPUs."""
    return max(1, min(target.num_cores, os.cpu_count() or 1))


def make_builder(target, spec):
    """A LocalBuilder (cross-compiling for boards) whose workers parse TVMScript cheaply."""
    check_cross_compiler(target)
    f_export = export_aarch64 if target.arch == "aarch64" else None
    return ms.builder.LocalBuilder(max_workers=max(1, target.num_cores if target.arch == "x86_64"
                                                   else 2),
                                   timeout_sec=spec.build_timeout, f_export=f_export,
                                   initializer=worker_initializer)


MAX_BOARDS = 16  # runner workers at most: each holds one board's session at a time


def boards_under(spec, target) -> int:
    """How many boards are registered at ``spec.tracker`` under the tune's key (free or
    busy); the runner measures on all of them at once."""
    from edgec.compiler.deploy.rpc import tracker_status

    key = spec.rpc_key or target.rpc_key
    return tracker_status(spec.tracker, min(spec.run_timeout, 30)).get(key, {}).get("total", 0)


def make_runner(target, spec, boards: int = 1):
    """LocalRunner on this machine, or RPCRunner via ``spec.tracker`` for boards.

    boards: the boards under the key (``boards_under``). TVM's RPCRunner measures one
    candidate per worker, each worker asking the tracker for a free board per candidate; a
    worker per board (up to ``MAX_BOARDS``) keeps every board busy, the tracker's queue
    deciding which board measures what. A board that drops out fails only the candidates
    it held: the tracker stops handing it out and the other workers go on."""
    config = ms.runner.EvaluatorConfig(**EVALUATOR)
    if spec.tracker is None:
        if target.arch != "x86_64":
            raise TuneError(f"target {target.name!r} ({target.arch}) cannot run on this machine; "
                            "give --tracker HOST:PORT of an RPC tracker its board registered with")
        return ms.runner.LocalRunner(timeout_sec=spec.run_timeout, evaluator_config=config,
                                     initializer=functools.partial(runner_initializer,
                                                                   measure_threads(target)))
    host, port = parse_tracker(spec.tracker)
    key = spec.rpc_key or target.rpc_key
    rpc = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                              session_timeout_sec=int(spec.run_timeout))
    workers = max(1, min(boards, MAX_BOARDS))
    inner = ms.runner.RPCRunner(rpc_config=rpc, evaluator_config=config, max_workers=workers,
                                initializer=worker_initializer)
    start_workers(inner.pool, workers)
    return BoundedRunner(inner, spec.run_timeout, f"the {key!r} board at tracker {spec.tracker}",
                         exit_when_stuck=spec.exit_when_stuck)


@derived_object
class BoundedRunner(ms.runner.PyRunner):
    """TVM's RPCRunner waits on a stuck board forever (its worker pool has no timeout). This
    wrapper watches progress: when no candidate finishes for ``timeout`` seconds while some
    are pending, the board is given up (``dead`` holds the line to report), every pending
    result returns at once as failed, the search stops (``STOP``) and the runner's worker,
    stuck on the board, is killed so the process can exit.

    exit_when_stuck (the CLI): MetaSchedule notices only when it next waits on a result (it
    may be building the next batch), and winding down takes seconds more; a watchdog thread
    instead prints the line and ends the process at once (``os._exit(2)`` after flushing).
    Every batch measured before is already in the log (``LogSync``); the run's history
    entry then reads ``killed``."""

    def __init__(self, inner, timeout: float, where: str, exit_when_stuck: bool = False):
        super().__init__()
        self.inner, self.timeout, self.where = inner, timeout, where
        self.dead = None
        self.pending = []
        self.last = time.monotonic()
        # [sent, last result in] of each batch: the measuring share of the run (more boards
        # shorten it; the search and the builds stay on this machine)
        self.spans = []
        if exit_when_stuck:
            threading.Thread(target=self._watch, name="edgec-board-watch", daemon=True).start()

    def _watch(self) -> None:
        import sys

        while not self.overdue():
            time.sleep(0.2)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        sys.stderr.write(f"edgec: error: {self.dead}\n")
        sys.stderr.flush()
        os._exit(2)

    def run(self, runner_inputs):
        self.progress()
        if not self.pending:  # the board is idle: its clock starts with this batch
            self.last = time.monotonic()
        span = [time.monotonic()] * 2
        self.spans.append(span)
        # the Python runner itself (a derived object's ``run`` attribute is the FFI call,
        # whose futures hide the pool's): its futures carry the pool's future, done when
        # the board answered
        futures = getattr(self.inner, "_inst", self.inner).run(runner_inputs)
        for f in futures:
            pool_future = getattr(f, "future", None)
            if hasattr(pool_future, "add_done_callback"):
                pool_future.add_done_callback(functools.partial(_answered, span))
        self.pending += futures
        return [BoundedFuture(f, self) for f in futures]

    def progress(self) -> None:
        """Reset the clock when a pending candidate finished."""
        still = [f for f in self.pending if not f.done()]
        if len(still) < len(self.pending):
            self.last = time.monotonic()
        self.pending = still

    @property
    def busy_s(self) -> float:
        """Seconds with candidates out on the boards (overlapping batches counted once)."""
        total, end = 0.0, float("-inf")
        for a, b in sorted(self.spans):
            total += max(0.0, b - max(a, end))
            end = max(end, b)
        return total

    def overdue(self) -> bool:
        self.progress()
        if self.dead is None and self.pending and time.monotonic() - self.last > self.timeout:
            self.dead = (f"{self.where} did not answer within {self.timeout:g}s while "
                         "measuring candidates (--timeout); the records measured before are "
                         "saved")
            STOP.set()
            _kill_workers(self.inner.pool)
        return self.dead is not None


def _answered(span: list, _future) -> None:
    span[1] = max(span[1], time.monotonic())


def _pause(seconds: float) -> None:
    time.sleep(seconds)


def start_workers(pool, n: int) -> None:
    """Start all ``n`` worker processes of a PopenPoolExecutor now, side by side. The pool
    starts a worker at its thread's first job, and a worker takes seconds to start (it
    imports TVM): measured with two emulated boards, the second worker came up after the
    first had measured 7 of 8 candidates alone, so a batch ran on one board. Jobs that
    wait briefly make the pool give each its own thread, hence its own worker."""
    for f in [pool.submit(_pause, 0.5) for _ in range(n)]:
        f.result()


def _kill_workers(pool) -> None:
    """Drop a PopenPoolExecutor's queued candidates and kill its worker processes (stuck on
    the board): the reading thread then sees EOF, finds no more work and ends, so the
    interpreter can exit. Not ``pool.shutdown()``: it closes the pipe the blocked thread is
    reading, and waits on that thread's lock forever."""
    threads = getattr(pool, "_threadpool", None)
    if threads is not None:
        threads.shutdown(wait=False, cancel_futures=True)
    for worker in list(getattr(pool, "_worker_map", {}).values()):
        proc = getattr(worker, "_proc", None)
        if proc is not None and proc.poll() is None:
            kill_child_processes(proc.pid)
            proc.kill()


@derived_object
class BoundedFuture(ms.runner.PyRunnerFuture):
    """A candidate's result, or a failure once its runner gave the board up."""
    def __init__(self, inner, owner: BoundedRunner):
        super().__init__()
        self.inner, self.owner = inner, owner

    def done(self) -> bool:
        return self.inner.done() or self.owner.overdue()

    def result(self):
        while not self.inner.done():
            if self.owner.overdue():
                return ms.runner.RunnerResult(None, error_msg=f"edgec: {self.owner.dead}")
            time.sleep(0.05)
        self.owner.progress()
        return self.inner.result()


@derived_object
class LogSync(ms.measure_callback.PyMeasureCallback):
    """After each batch: move the new records into the shared log (``tune.lock``)."""
    def __init__(self, log):
        super().__init__()
        self.log = log

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
        self.log.sync()


@derived_object
class Progress(ms.measure_callback.PyMeasureCallback):
    """tqdm over trials, with the best end-to-end estimate and the failure count."""
    def __init__(self, total: int, before: list, quiet: bool):
        super().__init__()
        self.best = {r["task"]: r["best_ms"] for r in before}
        self.weight = {r["task"]: r["weight"] for r in before}
        self.names = [r["task"] for r in before]
        self.count = self.valid = self.failed = 0
        self.first_error = None
        self.bar = tqdm(total=total, desc="tuning trials", unit="trial", disable=quiet)

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
        name = self.names[task_id]
        for b, r in zip(builder_results, runner_results):
            self.count += 1
            err = b.error_msg or r.error_msg
            secs = [float(s) for s in (r.run_secs or [])]
            if err or not secs:
                self.failed += 1
                self.first_error = self.first_error or str(err).strip().splitlines()[-1][:300]
                continue
            self.valid += 1
            ms_ = 1e3 * sum(secs) / len(secs)
            if self.best.get(name) is None or ms_ < self.best[name]:
                self.best[name] = ms_
        self.bar.update(len(builder_results))
        self.bar.set_postfix_str(self._postfix())

    def _postfix(self) -> str:
        known = [n for n in self.names if self.best.get(n) is not None]
        est = sum(self.weight[n] * self.best[n] for n in known)
        tag = "" if len(known) == len(self.names) else f" ({len(known)}/{len(self.names)} tasks)"
        return f"best {est:.3f} ms{tag}, failed {self.failed}"

    def close(self):
        self.bar.close()


def _plain(x):
    """TVM containers/immediates -> plain Python (for a stable key of a trace)."""
    if hasattr(x, "value") and not isinstance(x, (str, bytes)):
        return x.value
    if isinstance(x, (str, int, float)) or x is None:
        return x
    if hasattr(x, "items"):
        return {str(k): _plain(v) for k, v in x.items()}
    return [_plain(v) for v in x]


def _trace_key(trace) -> str:
    import json

    return json.dumps(_plain(trace.as_json()), sort_keys=True)


@derived_object
class NoRepeatSearch(ms.search_strategy.PySearchStrategy):
    """TVM's evolutionary search, minus candidates the log has already measured, plus a
    warm start for workloads the log has never seen.

    TVM only avoids repeats within one run; a resumed run would measure some of the
    log's schedules again. This drops every candidate whose trace is in the database.

    Warm start: a task with no record of its own (a pruned or otherwise reshaped layer)
    first measures the schedules of its nearest logged workloads of the same operators,
    replayed on its shapes (``tune.transfer.seed_schedules``). Once measured they are in
    the database, and TVM's evolutionary search draws part of every population from the
    database's best records, so it mutates the borrowed schedules instead of starting
    from random samples.

    A task whose design space is used up (edgec's register-tile rule: 3-24 candidates,
    all in the log) ends after ``EXHAUSTED`` rounds without a new candidate. TVM's search
    would go on evolving populations that hold nothing new, round after round, while the
    scheduler counts no trials for them (resnet18 NCHWc tuned at 29 trials/min).
    """

    EXHAUSTED = 2

    def __init__(self, inner, donors=None):
        super().__init__()
        self.inner, self.donors, self.seen, self.mod = inner, donors, set(), None
        self.seeds, self.per_iter, self.empty_rounds = [], 0, 0

    def _initialize_with_tune_context(self, context) -> None:
        self.mod = context.mod
        self.inner._initialize_with_tune_context(context)

    def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database=None,
                   cost_model=None) -> None:
        self.per_iter = num_trials_per_iter
        if database is not None and self.mod is not None and database.has_workload(self.mod):
            workload = database.commit_workload(self.mod)
            self.seen = {_trace_key(r.trace) for r in database.get_all_tuning_records()
                         if r.workload.same_as(workload)}
        if not self.seen and self.donors is not None and self.mod is not None:
            from edgec.compiler.tune.transfer import seed_schedules

            self.seeds = seed_schedules(self.mod["main"], self.donors)
        self.inner.pre_tuning(max_trials, num_trials_per_iter, design_spaces, database, cost_model)

    def post_tuning(self) -> None:
        self.inner.post_tuning()

    def generate_measure_candidates(self):
        if STOP.is_set():  # Ctrl-C: this task is done; MetaSchedule winds down normally
            return None
        seeded = [ms.MeasureCandidate(sch, ms.arg_info.ArgInfo.from_entry_func(sch.mod, True))
                  for sch in self.seeds]
        self.seeds = []
        candidates = self.inner.generate_measure_candidates()
        if candidates is None and not seeded:
            return None
        fresh = []
        for c in seeded + list(candidates or []):
            key = _trace_key(c.sch.trace)
            if key not in self.seen:
                self.seen.add(key)
                fresh.append(c)
        self.empty_rounds = 0 if fresh else self.empty_rounds + 1
        if self.empty_rounds >= self.EXHAUSTED:  # the space is used up: the task is done
            return None
        # the borrowed schedules take places of this round, not extra trials
        return fresh[:max(self.per_iter, len(seeded))]

    def notify_runner_results(self, measure_candidates, results) -> None:
        self.inner.notify_runner_results(measure_candidates, results)

    def clone(self):
        return NoRepeatSearch(self.inner.clone(), self.donors)


class CtrlC:
    """Ctrl-C during the search: the first press asks the search to stop after the
    candidates being measured (``tune.measure.STOP``: every task's search then reports
    itself finished, so MetaSchedule returns normally with its records committed); a
    second press aborts at once. Raising from the first press is not reliable: it lands
    inside whatever Python callback MetaSchedule's C++ loop is running, and some of
    those swallow it and tune on."""

    pressed = False

    def __enter__(self):
        import signal
        import threading


        STOP.clear()
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        import sys


        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True
        STOP.set()
        print("\nedgec tune: stopping after the candidates being measured (Ctrl-C again to "
              "stop now)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        import signal


        STOP.clear()
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return isinstance(exc[1], KeyboardInterrupt) and self.pressed


def quiet_metaschedule_logs(ms) -> None:
    """MetaSchedule prints its task table at INFO on stdout every round; our tqdm bar says
    it. Drop the handlers an earlier run left (files in a deleted work dir; unnamed ones
    make MetaSchedule's logging dictConfig fail on the next run in this process)."""
    import logging

    logger = logging.getLogger(ms.__name__)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.WARNING)


def prepare(tvm_target) -> None:
    """Process-wide set-up for MetaSchedule (cheap TVMScript parsing, VNNI, blocked-conv rule)."""
    fast_inspect_initializer()
    register_rule()
    if has_vnni(tvm_target):
        fix_vnni_intrinsic()
