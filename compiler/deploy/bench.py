"""Benchmark one artifact (and optionally a second, interleaved) locally or on a board.

Local and remote runs share one path: upload -> load -> Relax VM -> TVM's time
evaluator, which times on the device itself, so network latency never enters a
sample. Each sample is the mean of ``number`` runs; ``repeat`` samples make the
statistics. With ``--compare`` both models alternate sample by sample in one
session, so they see the same machine state and the ratio is fair.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np

from edgec.compiler.deploy.artifact import elf_machine, file_digest, read_manifest, verify_library
from edgec.compiler.deploy.runtime import check_inputs, flatten_outputs
from edgec.compiler.errors import ArtifactError, EdgecError
from edgec.compiler.timing import interleaved
from edgec.compiler.tvm_compat import VirtualMachine, tensor


@dataclass(frozen=True)
class BenchConfig:
    """repeat: samples; number: runs averaged per sample; warmup: untimed runs first;
    timeout: seconds any single RPC step may take (connect, upload, one sample)."""

    repeat: int = 20
    number: int = 5
    warmup: int = 3
    timeout: float = 60.0
    seed: int = 0

    def __post_init__(self):
        for name in ("repeat", "number"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise EdgecError(f"--{name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise EdgecError(f"--warmup must be 0 or more, got {self.warmup!r}")
        if not self.timeout > 0:
            raise EdgecError(f"--timeout must be positive seconds, got {self.timeout!r}")


def check_arch(path: str, session) -> str:
    """Refuse, before any upload, an artifact built for another architecture."""
    arch = elf_machine(path)
    if session.arch not in ("unknown", arch):
        manifest = read_manifest(path)
        hint = ("run it on its board with --rpc HOST:PORT or --tracker HOST:PORT --key KEY"
                if session.host is None else "compile with --target for that board")
        raise ArtifactError(f"refused before upload: {path} is {arch} (target "
                            f"{manifest['target']['name']}) but {session.where} is "
                            f"{session.arch}; {hint}")
    return arch


class RemoteModel:
    """An artifact loaded into a Relax VM on the session's CPU (remote or local)."""
    def __init__(self, session, path: str):
        self.path, self.session = path, session
        self.manifest = read_manifest(path)
        verify_library(path, self.manifest)  # never upload a damaged library to the board
        check_arch(path, session)
        sess, call = session.sess, session.call
        digest = file_digest(path)
        lib = session.modules.get(digest)
        if lib is None:  # overwriting a loaded .so would crash the server: load each once
            name = f"edgec-{digest}.so"  # in the session's own temp dir on the server
            call(f"uploading {os.path.basename(path)}", sess.upload, path, name)
            lib = session.modules[digest] = call("loading the library", sess.load_module, name)
        self.dev = sess.cpu()

        self.vm = call("creating the Relax VM", VirtualMachine, lib, self.dev)

    def set_inputs(self, *args, **kwargs) -> None:
        """Copy checked inputs to the device (kept there for timing)."""
        arrays = check_inputs(self.manifest, args, kwargs)
        self.session.call("sending inputs",
                          lambda: self.vm.set_input("main", *[tensor(a, self.dev) for a in arrays]))

    def __call__(self, *args, **kwargs) -> list:
        """Run once; outputs come back as numpy arrays."""
        self.set_inputs(*args, **kwargs)
        self.session.call("running the model", self.vm.invoke_stateful, "main")
        return self.outputs()

    def outputs(self) -> list:
        """The outputs of the last run (e.g. the timer's), as numpy arrays."""
        return self.session.call("reading outputs",
                                 lambda: flatten_outputs(self.vm.get_outputs("main")))

    def timer(self, number: int):
        """A no-arg callable returning one sample: mean seconds over ``number`` runs."""
        evaluator = self.session.call("preparing the timer", self.vm.time_evaluator,
                                      "invoke_stateful", self.dev, number, 1)
        return lambda: float(self.session.call("timing", lambda: evaluator("main").mean))

    def warm(self, runs: int) -> None:
        for _ in range(runs):
            self.session.call("warming up", self.vm.invoke_stateful, "main")


def random_inputs(manifest: dict, seed: int = 0) -> list:
    """Seeded inputs matching the manifest (floats ~N(0,1), integers in a small range)."""
    rng = np.random.default_rng(seed)
    out = []
    for spec in manifest["inputs"]:
        dtype = np.dtype(spec["dtype"])
        if dtype.kind == "f":
            out.append(rng.standard_normal(spec["shape"]).astype(dtype))
        elif dtype.kind == "b":
            out.append(rng.integers(0, 2, spec["shape"]).astype(dtype))
        else:
            out.append(rng.integers(0, 10, spec["shape"]).astype(dtype))
    return out


def statistics(samples, batch: int = 1) -> dict:
    """Latency statistics in milliseconds and throughput in inferences per second."""
    s = np.asarray(samples, dtype=np.float64) * 1e3
    return {"mean_ms": float(s.mean()), "median_ms": float(np.median(s)), "std_ms": float(s.std()),
            "min_ms": float(s.min()), "max_ms": float(s.max()),
            "p95_ms": float(np.percentile(s, 95)), "samples": len(s), "batch": batch,
            "throughput_per_s": float(batch * 1e3 / s.mean())}


def _batch(manifest: dict) -> int:
    shape = manifest["inputs"][0]["shape"] if manifest["inputs"] else []
    return int(shape[0]) if shape else 1


def benchmark(session, paths: list, config: BenchConfig = BenchConfig(), quiet: bool = False) -> dict:
    """Time each artifact in ``paths`` in one session, interleaved; return the report."""
    for path in paths:  # every check before the first upload
        check_arch(path, session)
    models = [RemoteModel(session, p) for p in paths]
    timers = []
    for m in models:
        m.set_inputs(*random_inputs(m.manifest, config.seed))
        m.warm(config.warmup)
        timers.append(m.timer(config.number))
    label = "benchmark (EMULATED: timings meaningless)" if session.emulated else "benchmark"
    samples = interleaved(len(models), config.repeat, lambda i, r: timers[i](), label, quiet)
    report = {"device": session.describe(), "config": asdict(config), "timing_valid": not session.emulated,
              "models": [{"path": m.path, "target": m.manifest["target"]["name"], "arch": m.manifest["arch"],
                          "stats": statistics(s, _batch(m.manifest))} for m, s in zip(models, samples)]}
    if len(models) == 2:
        a, b = (x["stats"]["median_ms"] for x in report["models"])
        report["ratio_other_over_model"] = b / a
    return report


def format_report(report: dict) -> str:
    """Readable lines; every latency line says EMULATED when it is."""
    tag = "[EMULATED, meaningless] " if report["device"]["emulated"] else ""
    lines = [f"device: {report['device']['where']} ({report['device']['arch']})"]
    if report["device"]["emulated"]:
        lines.append(f"NOTE: {report['device']['note']}")
    cfg = report["config"]
    lines.append(f"{cfg['repeat']} samples x {cfg['number']} runs, {cfg['warmup']} warm-up runs")
    for m in report["models"]:
        s = m["stats"]
        lines.append(f"{tag}{os.path.basename(m['path'])}: median {s['median_ms']:.4f} ms, mean "
                     f"{s['mean_ms']:.4f} +- {s['std_ms']:.4f}, min {s['min_ms']:.4f}, max "
                     f"{s['max_ms']:.4f}, p95 {s['p95_ms']:.4f} ms; {s['throughput_per_s']:.1f} "
                     f"inferences/s (batch {s['batch']})")
    if "ratio_other_over_model" in report:
        a, b = (os.path.basename(m["path"]) for m in report["models"])
        ratio = report["ratio_other_over_model"]
        lines.append(f"{tag}ratio {b} / {a} (median latency, same session): {ratio:.3f}x")
    return "\n".join(lines)
