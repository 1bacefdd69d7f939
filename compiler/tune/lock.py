"""Tuning into a shared log: a private working copy, moved into the log under a lock.

TVM's JSONDatabase numbers workloads in memory when it opens its files and appends each
record with that number. Two tunes on one log (a model and its pruned variant) then
both number their first new workload N and file each other's records under it. So a
tune never lets TVM write the shared log: TVM's database works on a private copy, and
after every measured batch ``SharedLog.sync`` moves the copy's new lines into the log
while holding an exclusive ``flock``, numbering each new workload by the log's content
at that moment (a workload another tune added meanwhile is reused, not duplicated).

Readers take no lock and never write: the log only grows by whole lines appended under
the lock. A torn last line (a writer killed mid-write) is skipped by readers and cut
off by the next writer, under the lock. The log's run history (``edgec-log.json``) is
rewritten under the same lock; a run is entered when it starts, so a killed tune still
shows there (``status: killed``, with the trials it had saved).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

from edgec.compiler.file_lock import whole_lines
from edgec.compiler.tune.database import (RECORDS, WORKLOADS, locked, read_meta, settled, validate,
                                          write_meta)
from edgec.compiler.tvm_compat import meta_schedule

_NOW = lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())  # noqa: E731


class SharedLog:
    """The log at ``path`` opened for tuning: ``db`` is TVM's database on a private copy."""
    def __init__(self, path: str, target):
        meta = validate(path, target)  # never writes to a bad log
        self.path, self.work = path, tempfile.mkdtemp(prefix="edgec-log-")
        with locked(path):
            if read_meta(path) is None:
                write_meta(path, meta)
            w_lines, self.shared_w = whole_lines(self._shared(WORKLOADS), repair=True)
            r_lines, self.shared_r = whole_lines(self._shared(RECORDS), repair=True)
        for name, lines in ((WORKLOADS, w_lines), (RECORDS, r_lines)):
            with open(self._own(name), "wb") as f:
                f.writelines(ln + b"\n" for ln in lines)
        self.own_off = {WORKLOADS: os.path.getsize(self._own(WORKLOADS)),
                        RECORDS: os.path.getsize(self._own(RECORDS))}
        self.n_copied = self.own_count = self.shared_count = len(w_lines)
        self.index = {}  # own workload number -> the shared log's (beyond the copied ones)
        self.added = {}  # (hash, module) -> shared number, for workloads appended after the copy
        self.run_id, self.saved = None, 0
        self.db = meta_schedule().database.JSONDatabase(
            self._own(WORKLOADS), self._own(RECORDS), allow_missing=True)

    def _shared(self, name):
        return os.path.join(self.path, name)

    def _own(self, name):
        return os.path.join(self.work, name)

    def sync(self) -> int:
        """Move the copy's new lines into the shared log; returns records moved."""
        new_w, self.own_off[WORKLOADS] = whole_lines(self._own(WORKLOADS), self.own_off[WORKLOADS])
        new_r, self.own_off[RECORDS] = whole_lines(self._own(RECORDS), self.own_off[RECORDS])
        if not new_w and not new_r:
            return 0
        with locked(self.path):
            self._read_others()
            out_w = []
            for line in new_w:
                key = tuple(json.loads(line))
                if key not in self.added:
                    self.added[key] = self.shared_count
                    self.shared_count += 1
                    out_w.append(line)
                self.index[self.own_count] = self.added[key]
                self.own_count += 1
            out_r = []
            for line in new_r:
                number, record = json.loads(line)
                shared = number if number < self.n_copied else self.index[number]
                out_r.append(json.dumps([shared, record], separators=(",", ":")).encode())
            self.shared_w = _append(self._shared(WORKLOADS), out_w)
            self.shared_r = _append(self._shared(RECORDS), out_r)
            self.saved += len(out_r)
            if self.run_id is not None:  # a killed run's history entry keeps what it saved
                self._edit_runs(lambda r: dict(r, trials_saved=self.saved) if
                                r.get("run_id") == self.run_id else r)
        return len(out_r)

    def _edit_runs(self, fn) -> None:
        """Rewrite the history (caller holds the lock)."""
        meta = read_meta(self.path) or {}
        meta["runs"] = [x for x in (fn(r) for r in meta.get("runs", [])) if x is not None]
        write_meta(self.path, meta)

    def _read_others(self) -> None:
        """Workloads other tunes appended since we last looked (and cut a torn tail)."""
        lines, self.shared_w = whole_lines(self._shared(WORKLOADS), self.shared_w, repair=True)
        for line in lines:
            self.added.setdefault(tuple(json.loads(line)), self.shared_count)
            self.shared_count += 1
        _, end = whole_lines(self._shared(RECORDS), self.shared_r, repair=True)
        self.shared_r = end

    def begin_run(self, run: dict) -> None:
        """Enter this run in the history now, so a killed run still shows there."""
        self.run_id = f"{os.getpid()}-{time.time():.3f}"
        with locked(self.path):
            meta = settled(read_meta(self.path) or {})
            meta.setdefault("runs", []).append(dict(run, status="running", pid=os.getpid(),
                                                    run_id=self.run_id, started=_NOW()))
            write_meta(self.path, meta)

    def end_run(self, run: dict | None) -> None:
        """Replace the entry with the run's summary (None: drop it, nothing was measured)."""
        if self.run_id is None:
            return
        if run is not None:
            run = dict(run, status="interrupted" if run.get("interrupted") else "finished",
                       finished=_NOW())
        with locked(self.path):
            mine = self.run_id
            self._edit_runs(lambda r: r if r.get("run_id") != mine else None)
            if run is not None:
                self._edit_runs(lambda r: r)  # (settles killed runs below)
                meta = settled(read_meta(self.path) or {})
                meta.setdefault("runs", []).append(run)
                write_meta(self.path, meta)
        self.run_id = None

    def close(self) -> None:
        """Final sync; a run that ended in an error (no end_run) is marked failed."""
        try:
            self.sync()
            if self.run_id is not None:
                mine = self.run_id
                with locked(self.path):
                    self._edit_runs(lambda r: dict(r, status="failed", finished=_NOW())
                                    if r.get("run_id") == mine else r)
                self.run_id = None
        finally:
            shutil.rmtree(self.work, ignore_errors=True)


def _append(path: str, lines: list) -> int:
    if lines:
        with open(path, "ab") as f:
            f.write(b"".join(ln + b"\n" for ln in lines))
            f.flush()
            os.fsync(f.fileno())
    # nothing written yet (a run that failed before its first batch): closing must not
    # raise here, or this error replaces the run's own
    return os.path.getsize(path) if os.path.exists(path) else 0
