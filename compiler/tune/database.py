"""Tuning logs as data: one MetaSchedule JSON database per target under ``tuning_logs/``.

A log directory holds TVM's two append-only JSON-lines files plus ``edgec-log.json``
(which target the records are for, and every tuning run's trials and wall time):

    tuning_logs/x86-avx2/database_workload.json        one workload (TIR module) a line
    tuning_logs/x86-avx2/database_tuning_record.json   one measured schedule a line
    tuning_logs/x86-avx2/edgec-log.json                target, runs

Records are keyed by workload (the structural hash of a fused TIR function), not by
model, so every model that shares a layer with a tuned one reuses its records. Files are
validated before TVM opens them: a corrupt or foreign log raises ``TuningLogError`` and
is never written to. A tune appends whole lines under a lock (``tune.lock``), so an
interrupted tune leaves every finished record readable; a torn last line (a kill during
the write) is the only damage possible: readers skip it and never write, and the next
tune cuts it off under the lock.
"""
from __future__ import annotations

import json
import os
import time
import warnings

from edgec.compiler.deploy.artifact import file_digest, write_json_atomic
from edgec.compiler.errors import EdgecError
from edgec.compiler.file_lock import locked as lock_file
from edgec.compiler.tvm_compat import meta_schedule
from edgec.targets import AMD_ONLY

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
META = "edgec-log.json"
FORMAT = "edgec-tuning-log"
# What makes a schedule valid for a CPU: the ISA. num-cores only changes thread counts.
ISA_KEYS = ("kind", "mtriple", "mcpu", "mattr")


class TuningLogError(EdgecError):
    """A tuning log is corrupt, foreign (another target or tool), or unreadable."""


def default_root() -> str:
    """``$EDGEC_TUNING_LOGS`` or the repository's committed ``tuning_logs/``."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # compiler/tune/ -> repo
    return os.environ.get("EDGEC_TUNING_LOGS") or os.path.join(here, "tuning_logs")


def log_dir_for(target, root: str | None = None) -> str:
    """The log directory of ``target`` (``host`` uses its base target's logs)."""
    return os.path.join(root or default_root(), target.tuning_key)


def isa_of(tvm_dict: dict) -> dict:
    """The ISA-defining part of a TVM target dict (what records must agree on)."""
    out = {k: tvm_dict[k] for k in ISA_KEYS if k in tvm_dict}
    if "mattr" in out:
        # AMD_ONLY (-sse4a) only keeps AMD-only instructions out of the code: a schedule
        # tuned with or without it is the same schedule (logs made before it still apply)
        out["mattr"] = sorted(m for m in out["mattr"] if m not in AMD_ONLY)
        if not out["mattr"]:
            del out["mattr"]
    return out


def locked(path: str):
    """The log's exclusive lock (an flock on its workload file): held while appending to
    it or rewriting its run history; readers never take it."""
    return lock_file(os.path.join(path, WORKLOADS), f"tuning log {path}")


def read_rows(path: str, what: str) -> list:
    """Parse a log's JSON-lines file; cut a torn last line, refuse anything else malformed."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends in a newline
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            raise TuningLogError(f"{path} line {number} is not valid JSON: not a MetaSchedule "
                                 f"{what} file (corrupt?); move it away or fix it, edgec "
                                 "will not overwrite it") from None
    if tail.strip():
        try:
            rows.append(json.loads(tail))
        except ValueError:  # a record torn by a kill mid-write: skip it, leave the file alone
            warnings.warn(f"{path}: skipping a torn last line ({len(tail)} bytes) left by an "
                          "interrupted tune (the next tune on this log cuts it off)")
    return rows


def has_torn_tail(path: str) -> bool:
    """Whether the file ends in a partial line (a writer killed mid-write)."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return False
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def mean_run_secs(run_secs) -> float | None:
    """Mean measured seconds of one record; None when it has none or failed (MetaSchedule
    stores 1e10 s for a candidate that did not build or run)."""
    secs = [float(x) for x in (run_secs or [])]
    if not secs or max(secs) >= 1e9:
        return None
    return sum(secs) / len(secs)


def _check_rows(path: str, workloads: list, records: list, isa: dict, meta_path: str) -> None:
    for i, w in enumerate(workloads, 1):
        if not (isinstance(w, list) and len(w) == 2 and isinstance(w[1], str)):
            raise TuningLogError(f"{path}/{WORKLOADS} line {i} is not a MetaSchedule workload "
                                 "[hash, module]; not a tuning log edgec can use")
    for i, r in enumerate(records, 1):
        ok = (isinstance(r, list) and len(r) == 2 and isinstance(r[0], int)
              and 0 <= r[0] < len(workloads) and isinstance(r[1], list) and len(r[1]) >= 3)
        if not ok:
            raise TuningLogError(f"{path}/{RECORDS} line {i} is not a MetaSchedule tuning record "
                                 f"(or names a workload not in {WORKLOADS}); corrupt or foreign "
                                 "log, left untouched")
        rec_isa = isa_of(r[1][2]) if isinstance(r[1][2], dict) else {}
        if rec_isa and rec_isa != isa:
            raise TuningLogError(f"{path}/{RECORDS} line {i} was tuned for {rec_isa}, not for "
                                 f"this log's target {isa} ({meta_path}); foreign records, "
                                 "left untouched")


def read_meta(path: str) -> dict | None:
    """The ``edgec-log.json`` of a log directory (None if there is none)."""
    meta_path = os.path.join(path, META)
    if not os.path.exists(meta_path):
        return None
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise TuningLogError(f"{meta_path} is not valid JSON ({e}); left untouched") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise TuningLogError(f"{meta_path} is not an edgec tuning log (format "
                             f"{meta.get('format') if isinstance(meta, dict) else '?'!r}, "
                             f"expected {FORMAT!r}); left untouched")
    return settled(meta)


def settled(meta: dict) -> dict:
    """Runs still marked running whose process is gone were killed: say so."""
    for run in meta.get("runs", []):
        if run.get("status") == "running" and not _alive(run.get("pid")):
            run["status"] = "killed"
    return meta


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True


def validate(path: str, target) -> dict:
    """Check a log directory holds only well-formed records for ``target``'s ISA.

    Returns its meta (a fresh one if the directory is new). Raises TuningLogError.
    """
    isa = isa_of(target.tvm)
    meta = read_meta(path)
    meta_path = os.path.join(path, META)
    if meta is not None and isa_of(meta.get("target_tvm", {})) != isa:
        raise TuningLogError(f"{path} holds records for target {meta.get('target')!r} "
                             f"({isa_of(meta.get('target_tvm', {}))}), not for {target.name!r} "
                             f"({isa}); give another log directory (edgec compile "
                             "--tuning-logs DIR, edgec tune --log-dir DIR)")
    workloads = read_rows(os.path.join(path, WORKLOADS), "workload")
    records = read_rows(os.path.join(path, RECORDS), "tuning record")
    if meta is None and (workloads or records):
        raise TuningLogError(f"{path} has MetaSchedule files but no {META}: not written by "
                             "edgec tune, so its target is unknown; left untouched")
    _check_rows(path, workloads, records, isa, meta_path)
    return meta or {"format": FORMAT, "version": 1, "target": target.tuning_key,
                    "target_tvm": dict(target.tvm), "runs": []}


def open_database(path: str, target, create: bool = False):
    """Validate, then open the log at ``path`` as a MetaSchedule JSONDatabase to read.

    A missing log returns None (compiling without tuning records); create: make the
    directory and its meta file when missing. Tuning writes through
    ``tune.lock.SharedLog``, never through this database: it is opened on a clean copy
    when the log ends in a torn line, so reading never changes the log.
    """
    if not os.path.isdir(path) and not create:
        return None
    meta = validate(path, target)
    if create and not os.path.exists(os.path.join(path, META)):
        with locked(path):
            if read_meta(path) is None:
                write_meta(path, meta)
    files = [os.path.join(path, WORKLOADS), os.path.join(path, RECORDS)]
    if any(has_torn_tail(f) for f in files):
        import tempfile

        clean = tempfile.mkdtemp(prefix="edgec-log-read-")
        for name, what in ((WORKLOADS, "workload"), (RECORDS, "tuning record")):
            with open(os.path.join(clean, name), "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, separators=(",", ":")) + "\n"
                             for r in read_rows(os.path.join(path, name), what))
        files = [os.path.join(clean, WORKLOADS), os.path.join(clean, RECORDS)]
    return meta_schedule().database.JSONDatabase(*files, allow_missing=True)


def open_subset(path: str, target, hashes: set, scratch: str):
    """Open only the records whose workload hash is in ``hashes`` (the module's PrimFuncs).

    TVM's JSONDatabase parses every record of a log (seconds for a few hundred); a build
    needs only its own workloads. The subset is written to ``scratch`` and opened there.
    Returns (database or None when nothing matches, number of records).
    """
    validate(path, target)
    workloads = read_rows(os.path.join(path, WORKLOADS), "workload")
    keep = {i: n for n, i in enumerate(i for i, w in enumerate(workloads) if w[0] in hashes)}
    if not keep:
        return None, 0
    records = [[keep[r[0]], r[1]] for r in read_rows(os.path.join(path, RECORDS), "tuning record")
               if r[0] in keep]
    subset = [workloads[i] for i in keep]
    files = [os.path.join(scratch, WORKLOADS), os.path.join(scratch, RECORDS)]
    for _ in range(2):
        for name, rows in zip(files, (subset, records)):
            with open(name, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(row, separators=(",", ":")) + "\n" for row in rows)
        try:
            return meta_schedule().database.JSONDatabase(*files, allow_missing=False), len(records)
        except Exception:  # noqa: BLE001  (TVM raises one opaque error for the whole file)
            good = replayable(subset, records)
            warnings.warn(f"{path}: skipping {len(records) - len(good)} record(s) whose schedule "
                          "does not replay on their workload (block names differ; see "
                          "as_logged)")
            records = good
    raise TuningLogError(f"{path}: TVM cannot open the log's records for this model")


def replayable(workloads: list, records: list) -> list:
    """The records whose trace replays on their workload (TVM refuses a file with any other)."""
    db = meta_schedule().database
    parsed, good = {}, []
    for r in records:
        try:
            if r[0] not in parsed:
                parsed[r[0]] = db.Workload.from_json(workloads[r[0]])
            db.TuningRecord.from_json(r[1], parsed[r[0]])
        except Exception:  # noqa: BLE001,S112  (a ScheduleError, not rendered by TVM)
            continue
        good.append(r)
    return good


def as_logged(tasks, db) -> list:
    """Each task whose workload the log holds, on the log's own copy of that workload.

    The log matches workloads structurally, block names aside: the INT8 mobilenet_v2's
    pooling block ``lv2001_red`` matches the FP32 one's ``lv200_red``. A record tuned on the
    task's copy names its blocks, and filed under the logged workload it replays nowhere
    (TVM then refuses to open the whole log). Tuning the logged copy keeps them in step.
    """
    ms = meta_schedule()
    out = []
    for t in tasks:
        mod = t.dispatched[0]
        if db.has_workload(mod):
            mod = db.commit_workload(mod).mod
            t = ms.ExtractedTask(t.task_name, t.mod, t.target, [mod], int(t.weight))
        out.append(t)
    return out


def record_run(path: str, run: dict) -> None:
    """Append one tuning run's summary (model, trials, wall time) to the log's meta."""
    with locked(path):  # another tune may rewrite the history at the same time
        meta = read_meta(path) or {}
        meta.setdefault("runs", []).append(dict(run, finished=time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
        write_meta(path, meta)


def write_meta(path: str, meta: dict) -> None:
    write_json_atomic(os.path.join(path, META), meta)
    os.chmod(os.path.join(path, META), 0o644)  # a committed data file, not a private temp


def digest(path: str) -> str:
    """A short content digest of a log's records (goes into the build manifest)."""
    rec = os.path.join(path, RECORDS)
    return file_digest(rec) if os.path.exists(rec) else ""


def count_records(path: str) -> int:
    rec = os.path.join(path, RECORDS)
    if not os.path.exists(rec):
        return 0
    with open(rec, "rb") as f:
        return sum(1 for line in f if line.strip())
