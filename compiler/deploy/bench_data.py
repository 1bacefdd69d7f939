"""``edgec bench --data``: latency, accuracy and exits over a data set, here or on a board.

An early-exit library's latency depends on its input, so one random input says
nothing. Every sample of a split goes through the artifact(s) on the session's
device (local ``LocalSession`` or a board over RPC, the same path as ``bench``):
its inputs are sent, TVM's time evaluator runs it ``number`` times on the device
(network time never enters a sample), and its outputs come back so accuracy and
the exit taken (an early-exit library's last output) are read from the library
itself. With two artifacts they alternate sample by sample in one session.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np

from edgec.compiler.data import load_dataset
from edgec.compiler.deploy.artifact import read_manifest
from edgec.compiler.deploy.bench import RemoteModel, check_arch
from edgec.compiler.deploy.exit_bench import summarize
from edgec.compiler.deploy.runtime import with_default_thresholds
from edgec.compiler.errors import EdgecError, InputError
from edgec.compiler.timing import time_batches

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DataBenchConfig:
    """data: mnist, .npz or image folder; split: which part; samples: first N (None: all);
    number: runs averaged per sample on the device; rounds: passes over the data (each
    sample's latency is its median over rounds); warmup: untimed samples first."""

    data: str
    split: str = "test"
    samples: int | None = None
    number: int = 5
    rounds: int = 1
    warmup: int = 3
    timeout: float = 60.0

    def __post_init__(self):
        if self.split not in SPLITS:
            raise InputError(f"unknown split {self.split!r}; valid: {', '.join(SPLITS)}")
        if self.samples is not None and (not isinstance(self.samples, int) or self.samples < 1):
            raise InputError(f"--samples must be a positive integer, got {self.samples!r}")
        for name in ("number", "rounds"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InputError(f"--{'repeat' if name == 'rounds' else name} must be a "
                                 f"positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise InputError(f"--warmup must be 0 or more, got {self.warmup!r}")


def load_split(config: DataBenchConfig):
    """(data set name, the split's first ``samples`` samples)."""
    data = load_dataset(config.data)
    part = getattr(data, config.split)
    return data.name, part.head(config.samples) if config.samples else part


def check_data(manifest: dict, path: str, split) -> int:
    """The batch size of the artifact, after checking the data's samples fit its input."""
    spec = manifest["inputs"][0]
    batch, sample = int(spec["shape"][0]), list(spec["shape"][1:])
    if list(split.x.shape[1:]) != sample:
        raise InputError(f"data samples have shape {list(split.x.shape[1:])} but "
                         f"{os.path.basename(path)} input {spec['name']!r} takes "
                         f"{spec['shape']} (batch {batch} of {sample})")
    if np.dtype(spec["dtype"]).kind != "f":
        raise InputError(f"{os.path.basename(path)} input {spec['name']!r} is {spec['dtype']}; "
                         "--data feeds float samples")
    if len(split) < batch:
        raise InputError(f"the split has {len(split)} sample(s), fewer than the batch of "
                         f"{os.path.basename(path)} ({batch})")
    return batch


class DataRunner:
    """One artifact on the session's device: feed a batch, time it there, read its outputs."""
    def __init__(self, session, path: str, number: int):
        self.model = RemoteModel(session, path)
        self.manifest = self.model.manifest
        self.dtype = self.manifest["inputs"][0]["dtype"]
        self.timer = self.model.timer(number)

    def run(self, x, timed: bool = True):
        """(seconds or None, logits, exit taken or None) of one batch ``x``."""
        args, kwargs = with_default_thresholds(self.manifest, (x.astype(self.dtype),), {})
        self.model.set_inputs(*args, **kwargs)
        seconds = self.timer() if timed else None
        if not timed:
            self.model.warm(1)
        out = self.model.outputs()
        exit_k = int(out[-1]) if self.manifest.get("early_exit") else None
        return seconds, out[0], exit_k


def prepare(paths: list, config: DataBenchConfig) -> tuple:
    """(data set name, split, batch): the data loaded and checked against every manifest,
    before any connection or upload."""
    name, split = load_split(config)
    batches = {check_data(read_manifest(p), p, split) for p in paths}
    if len(batches) != 1:
        raise InputError(f"the artifacts take different batch sizes {sorted(batches)}; "
                         "compare like with like")
    return name, split, batches.pop()


def bench_data(session, paths: list, config: DataBenchConfig, quiet: bool = False,
               prepared: tuple | None = None) -> dict:
    """Bench each artifact of ``paths`` over ``config``'s data in one session; the report.

    prepared: ``prepare(paths, config)`` when the caller already ran it."""
    name, split, b = prepared or prepare(paths, config)
    for path in paths:  # every check before the first upload
        check_arch(path, session)
    starts = list(range(0, len(split) - len(split) % b, b))
    runners = [DataRunner(session, p, config.number) for p in paths]
    for r in runners:
        for i in starts[:config.warmup]:
            r.run(split.x[i:i + b], timed=False)
    label = "bench over data" + (" (EMULATED: timings meaningless)" if session.emulated else "")
    times, logits, exits = time_batches(runners, [split.x[i:i + b] for i in starts], config.rounds,
                                     label, quiet)
    labels = np.concatenate([split.y[i:i + b] for i in starts])
    models = [{"path": p, "target": run.manifest["target"]["name"], "arch": run.manifest["arch"],
               "batch": b, **summarize(np.median(times[m], axis=0), np.concatenate(logits[m]),
                                       labels, exits[m], run.manifest)}
              for m, (p, run) in enumerate(zip(paths, runners))]
    report = {"device": session.describe(), "timing_valid": not session.emulated,
              "data": {"name": name, "split": config.split, "samples": int(len(labels))},
              "config": asdict(config), "models": models}
    if len(models) == 2:
        report["ratio_other_over_model"] = models[1]["mean_ms"] / models[0]["mean_ms"]
    return report


def format_data_report(report: dict) -> str:
    """A table per artifact; every latency figure says EMULATED when it is."""
    emulated = report["device"]["emulated"]
    tag = "[EMULATED, meaningless] " if emulated else ""
    d, cfg = report["data"], report["config"]
    lines = [f"device: {report['device']['where']} ({report['device']['arch']})"]
    if emulated:
        lines.append(f"NOTE: {report['device']['note']}; accuracy and exit rates are real")
    lines.append(f"data: {d['name']} {d['split']} split, {d['samples']} samples; each timed on "
                 f"the device over {cfg['number']} run(s), {cfg['rounds']} round(s), "
                 f"{cfg['warmup']} warm-up sample(s)")
    for m in report["models"]:
        lines += ["", f"{os.path.basename(m['path'])} (target {m['target']}, batch {m['batch']})",
                  f"  {tag}latency ms: mean {m['mean_ms']:.4f}, median {m['median_ms']:.4f}, "
                  f"p95 {m['p95_ms']:.4f}",
                  f"  accuracy: {m['accuracy']:.2f}% top-1 on {m['samples'] * m['batch']} samples"]
        if m.get("per_exit"):
            lines.append(f"  {'exit':<8}{'count':>7}{'rate':>9}{'mean ms':>12}")
            last = len(m["per_exit"]) - 1
            for e in m["per_exit"]:
                ms = "-" if e["mean_ms"] is None else f"{e['mean_ms']:.4f}"
                name = "final" if e["exit"] == last else f"exit {e['exit']}"
                lines.append(f"  {name:<8}{e['count']:>7}{e['rate']:>9.1%}{ms:>12}"
                             + (" (emulated)" if emulated and e["mean_ms"] is not None else ""))
    if "ratio_other_over_model" in report:
        a, b = (os.path.basename(m["path"]) for m in report["models"])
        lines += ["", f"{tag}ratio {b} / {a} (mean latency over the data, same session): "
                      f"{report['ratio_other_over_model']:.3f}x"]
    return "\n".join(lines)


def check_flags(args) -> None:
    """Flags that only make sense with or without --data."""
    if not args.data and (args.split != "test" or args.samples is not None):
        raise EdgecError("--split and --samples need --data DATA (mnist, a .npz, or an image "
                         "folder)")
