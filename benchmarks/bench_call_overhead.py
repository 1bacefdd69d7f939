"""The cost of one call: kernels alone, the VM call from C++, and the Python call.

    python benchmarks/bench_call_overhead.py                    # runs `edgec demo --quick` first
    python benchmarks/bench_call_overhead.py --demo edgec-demo  # an existing demo's artifacts

Models: a one-kernel model (``x + 1`` on 1x8, built for ``host``) and the demo's compiled
stages (``DIR/artifacts/*.so``: dense FP32, pruned, pruned + INT8, + early exit; the
early-exit stage twice, on a test image that leaves at the exit and on one that runs to
the final head). Without ``--demo`` the artifacts come from ``edgec demo --quick`` (the
demo's pipeline, 2 training epochs), built here. Engines, per call:

- ``kernels``: the sum of each PrimFunc's time, every kernel the VM launched for that
  input (recorded with the VM's instrument hook) timed alone by TVM's time evaluator (a
  ``compiled`` exec-mode build bypasses the hook: its kernels, the same TIR, are taken
  from the ``bytecode`` build of the same stage);
- ``cpp_runner``: ``deploy/cpp/edgec_run`` (TVM's C++ runtime, no Python) calling
  ``main`` on prepared tensors in a loop (its mean per call);
- ``vm_time_evaluator``: ``vm.time_evaluator("main")`` (the VM's C++ loop, from Python);
- ``vm_python``: ``vm["main"](*tensors)`` from Python on prepared tensors;
- ``python_api``: ``edgec.compiler.load(p)(x)`` as users call it (numpy in, numpy out);
- ``python_api_seed``: the call path before issue #25 (check, wrap every input with
  ``tvm.runtime.tensor``, ``.numpy()`` every output), for the before/after.

Engines are interleaved in rotating rounds; each figure is the median of round medians
(and the minimum over all samples), in microseconds per call.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import scratch, set_threads, write_results  # noqa: E402
from edgec.compiler.compare import machine_info  # noqa: E402
from edgec.compiler.timing import interleaved  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = {"dense-edgec": "dense FP32 edgec", "pruned": "pruned", "pruned-int8": "pruned + INT8",
          "pruned-int8-early-exit": "pruned + INT8 + early exit"}
ENGINES = ("kernels", "cpp_runner", "vm_time_evaluator", "vm_python", "python_api",
           "python_api_seed")


def add_one(folder: str, exec_mode: str = "bytecode") -> str:
    """The one-kernel model: ``x + 1`` on a 1x8 float32 input, built for ``host``."""
    import torch

    from edgec.compiler import compile

    class AddOne(torch.nn.Module):
        def forward(self, x):
            return x + 1

    path = os.path.join(folder, f"add_one-{exec_mode}.so")
    with vm_exec_mode(exec_mode):
        compile(AddOne(), (torch.zeros(1, 8),), target="host", output=path)
    return path


@contextlib.contextmanager
def vm_exec_mode(exec_mode: str):
    """Builds inside use ``relax.build(..., exec_mode=exec_mode)`` where the pipeline calls
    ``tvm.compile`` (which always builds ``bytecode``, the VM interpreting its code)."""
    from edgec.compiler.tvm_compat import tvm

    original = tvm.compile

    def build(mod, target=None, **kw):
        return tvm.relax.build(mod, target, exec_mode=exec_mode, **kw)

    tvm.compile = build
    try:
        yield
    finally:
        tvm.compile = original


def demo_artifacts(demo: str | None, folder: str) -> tuple[dict, str]:
    """{stage slug: .so} of a demo output folder (run ``edgec demo --quick`` if None)."""
    how = f"the artifacts of an edgec demo output folder ({_made_by(demo)})"
    if demo is None:
        demo = os.path.join(folder, "demo")
        cmd = [sys.executable, "-m", "edgec.compiler", "demo", "--quick", "--quiet", "--out", demo]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        how = "`edgec demo --quick` run by this benchmark (2 training epochs; the demo's pipeline)"
    found = {s: os.path.join(demo, "artifacts", s + ".so") for s in STAGES}
    missing = [p for p in found.values() if not os.path.isfile(p)]
    if missing:
        raise SystemExit(f"not a demo output folder, missing {missing}")
    return found, how


def rebuild_stage(demo: str, slug: str, folder: str, exec_mode: str) -> str:
    """Build a demo stage again from the demo's cache (its torch model, its config, its scale
    table or prune plan, the demo's calibration images), with the Relax VM in ``exec_mode``:
    ``bytecode`` (TVM's default, what ``tvm.compile`` does) or ``compiled`` (the VM's
    functions compiled to machine code, ``relax.build(..., exec_mode="compiled")``)."""
    import re

    import torch

    from edgec.compiler import PipelineConfig, compile
    from edgec.compiler.demo.compress import CALIB_SAMPLES
    from edgec.compiler.data import mnist

    def cached(s):
        cache = os.path.join(demo, "cache")
        return next(os.path.join(cache, d) for d in sorted(os.listdir(cache))
                    if re.fullmatch(re.escape(s) + r"-[0-9a-f]{16}", d))

    stage = cached(slug)
    model_pt = os.path.join(stage if slug != "dense-edgec" else cached("dense-eager"), "model.pt")
    try:
        model = torch.load(model_pt, weights_only=False).eval()
    except (AttributeError, ModuleNotFoundError) as e:  # pickled by another edgec version
        raise SystemExit(f"cannot read {model_pt} with this edgec ({e}); make the demo folder "
                         "again (edgec demo --quick --fresh --out DIR)") from e
    with open(os.path.join(demo, "artifacts", slug + ".json"), encoding="utf-8") as f:
        fields = json.load(f)["config"]
    fields["prune_plan"] = None  # the cached model of the pruned stage is already shrunk
    if fields.get("int8_scales"):
        fields["int8_scales"] = os.path.join(stage, "int8_scales.json")
    for key in ("int8_keep_fp32", "exit_thresholds"):
        fields[key] = tuple(fields[key]) if fields.get(key) is not None else fields.get(key)
    data = mnist(0)
    out = os.path.join(folder, f"{slug}-{exec_mode}.so")
    with vm_exec_mode(exec_mode):
        compile(model, (torch.from_numpy(data.test.x[:1]),), output=out,
                config=PipelineConfig(**fields), calib_data=data.train.x[:CALIB_SAMPLES])
    return out


def _made_by(demo: str) -> str:
    """The command that made a demo folder (its report.json), without this machine's paths."""
    try:
        with open(os.path.join(demo, "report.json"), encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, ValueError):
        return "its report.json unreadable"
    words = [w if not os.path.isabs(w) else "DIR" for w in str(report.get("command", "")).split()]
    return f"made by `{' '.join(words)}` on {report.get('date_utc') or report.get('created_utc') or 'an unknown date'}"


def build_runner(folder: str) -> str:
    """``make -C deploy/cpp`` (the README's command) into ``folder``."""
    out = os.path.join(folder, "edgec_run")
    subprocess.run(["make", "-s", "-C", os.path.join(REPO, "deploy", "cpp"),
                    f"PYTHON={sys.executable}", f"OUT={out}"], check=True)
    return out


class Case:
    """One model and one input, with every engine ready to time ``number`` calls."""

    def __init__(self, name: str, path: str, x: np.ndarray, runner: str, folder: str):
        from edgec.compiler.deploy.runtime import with_default_thresholds
        from edgec.compiler.deploy.kernel_profile import kernel_launches
        from edgec.compiler.deploy.runtime import check_inputs, load
        from edgec.compiler.tvm_compat import tensor, tvm

        self.name, self.path, self.x = name, path, x
        self.model = load(path)
        args, kwargs = with_default_thresholds(self.model.manifest, (x,), {})
        self.tensors = [tensor(a) for a in check_inputs(self.model.manifest, args, kwargs)]
        self.main = self.model._vm["main"]
        self.kernels = kernel_launches(self.model, self.tensors)
        self.dev = tvm.cpu()
        self.input_file = os.path.join(folder, f"{name.replace(' ', '_')}-input.npy")
        np.save(self.input_file, x)
        self.runner = runner
        out = self.model(x)
        self.exit_taken = self.model.exit_taken
        self.number = max(1, min(20000, int(0.01 / max(self._python_api(20), 1e-7))))
        seed = _seed_call(self.model, x)
        assert all(np.array_equal(a, b) for a, b in zip(out, seed, strict=True))

    def kernel_breakdown(self) -> list:
        """[(symbol, us)] per kernel launch, the best of 3 repeats."""
        return [(s, round(min(mod.time_evaluator(s, self.dev, number=self.number, repeat=3)(
            *a).results) * 1e6, 3)) for mod, s, a in self.kernels]

    def sample(self, engine: str) -> float:
        """Seconds per call, averaged over ``self.number`` calls."""
        return getattr(self, "_" + engine)(self.number)

    def _kernels(self, number):
        total = 0.0
        for mod, symbol, args in self.kernels:
            total += mod.time_evaluator(symbol, self.dev, number=number, repeat=1)(*args).mean
        return total

    def _vm_time_evaluator(self, number):
        return self.model._vm.time_evaluator("main", self.dev, number=number, repeat=1)(
            *self.tensors).mean

    def _cpp_runner(self, number):
        result = subprocess.run([self.runner, self.path, self.input_file, "--json", "--repeat",
                                 str(number), "--warmup", "20"], capture_output=True, text=True,
                                check=True)
        return json.loads(result.stdout)["latency_us"]["mean"] * 1e-6

    def _vm_python(self, number):
        main, args = self.main, self.tensors
        t0 = time.perf_counter()
        for _ in range(number):
            main(*args)
        return (time.perf_counter() - t0) / number

    def _python_api(self, number):
        model, x = self.model, self.x
        t0 = time.perf_counter()
        for _ in range(number):
            model(x)
        return (time.perf_counter() - t0) / number

    def _python_api_seed(self, number):
        model, x = self.model, self.x
        t0 = time.perf_counter()
        for _ in range(number):
            _seed_call(model, x)
        return (time.perf_counter() - t0) / number


def _seed_call(model, x):
    """``Model.__call__`` as it was before issue #25 (for the before/after)."""
    from edgec.compiler.deploy.runtime import with_default_thresholds
    from edgec.compiler.deploy.runtime import check_inputs, flatten_outputs
    from edgec.compiler.tvm_compat import tensor

    args, kwargs = with_default_thresholds(model.manifest, (x,), {})
    arrays = check_inputs(model.manifest, args, kwargs)
    out = flatten_outputs(model._vm["main"](*[tensor(a) for a in arrays]))
    if model.manifest.get("early_exit"):
        model.exit_taken = int(out[-1])
    return out


def measure(cases: list, rounds: int, samples: int, quiet: bool) -> dict:
    """Each case's engines in interleaved rounds (``timing.interleaved``); us per call."""
    out = {}
    for c in cases:
        for _ in range(2):  # warm this case's paths after the other cases ran
            c.model(c.x)
        got = interleaved(len(ENGINES), rounds,
                          lambda i, r: [c.sample(ENGINES[i]) * 1e6 for _ in range(samples)],
                          f"{c.name}: rounds", quiet)
        out[c.name] = {e: {"median_us": float(np.median([np.median(s) for s in per_round])),
                           "min_us": float(np.min(per_round))}
                       for e, per_round in zip(ENGINES, got)}
    return out


def summarize(case, t: dict) -> dict:
    """The overheads: C++ call over kernels, Python API over the C++ call."""
    k, cpp, py = (t[e]["median_us"] for e in ("kernels", "cpp_runner", "python_api"))
    seed = t["python_api_seed"]["median_us"]
    return {"model": case.name, "path": case.path, "exit_taken": case.exit_taken,
            "kernel_launches": len(case.kernels),
            "kernel_us": case.kernel_breakdown(), "calls_per_sample": case.number,
            "engines": t,
            "vm_over_kernels_us": cpp - k, "vm_share_of_cpp_call": (cpp - k) / cpp,
            "python_over_cpp_us": py - cpp, "python_share_of_python_call": (py - cpp) / py,
            "seed_python_over_cpp_us": seed - cpp, "python_api_speedup_over_seed": seed / py}


def markdown(rows: list, machine: dict, how: str, args) -> str:
    lines = ["| model | exit | kernels (launches) | C++ runner | VM time_evaluator | VM from Python "
             "| Python API | Python API before #25 | C++ - kernels | Python API - C++ |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        t = r["engines"]
        med = {e: t[e]["median_us"] for e in ENGINES}
        lines.append(
            f"| {r['model']} | {'-' if r['exit_taken'] is None else r['exit_taken']} | "
            f"{med['kernels']:.2f} ({r['kernel_launches']}) | {med['cpp_runner']:.2f} | "
            f"{med['vm_time_evaluator']:.2f} | {med['vm_python']:.2f} | {med['python_api']:.2f} | "
            f"{med['python_api_seed']:.2f} | {r['vm_over_kernels_us']:.2f} "
            f"({r['vm_share_of_cpp_call']:.0%}) | {r['python_over_cpp_us']:.2f} "
            f"({r['python_share_of_python_call']:.0%}) |")
    mins = ["", "Minimums (us): " + "; ".join(
        f"{r['model']}: " + ", ".join(f"{e} {r['engines'][e]['min_us']:.2f}" for e in ENGINES)
        for r in rows)]
    final = [r for r in rows if r["model"].startswith(STAGES["pruned-int8-early-exit"])]
    goals = ["", "Goals (issue #25, on the demo's final stage): "]
    for r in final:
        goals.append(f"- {r['model']}: Python API - C++ call = {r['python_over_cpp_us']:.2f} us "
                     f"(goal <= 3: {'met' if r['python_over_cpp_us'] <= 3 else 'not met'}); C++ call "
                     f"- kernel sum = {r['vm_over_kernels_us']:.2f} us (goal <= 2: "
                     f"{'met' if r['vm_over_kernels_us'] <= 2 else 'not met'})")
    return "\n".join([
        "# Per-call overhead: kernels, the VM call from C++, the Python API", "",
        f"Microseconds per call, medians of {args.rounds} interleaved rounds x {args.samples} "
        f"samples (each sample the mean of many calls); batch 1, {args.threads} thread(s). "
        "Shares: of the C++ call (VM) and of the Python API call (Python).", "",
        *lines, *mins, *goals, "",
        f"Artifacts: {how}. Machine: {machine['cpu']}, {machine['cores']} cores, flags "
        f"{' '.join(machine['flags'])}, load average {machine['loadavg_1m']:.2f} at the start and "
        f"{machine['loadavg_end']:.2f} at the end."])


def cases_for(artifacts: dict, add_one_paths: dict, runner: str, folder: str) -> list:
    """``artifacts``: {label suffix: {stage slug: .so}}; ``add_one_paths``: {suffix: .so}."""
    from edgec.compiler.deploy.runtime import load
    from edgec.compiler.data import mnist

    test = mnist(0).test
    x_add = np.random.default_rng(0).standard_normal((1, 8)).astype("float32")
    cases = [Case(f"x + 1 (1x8){tag}", p, x_add, runner, folder) for tag, p in add_one_paths.items()]
    first = test.x[:1]
    picked = {}
    for tag, paths in artifacts.items():
        for slug, name in STAGES.items():
            if slug != "pruned-int8-early-exit":
                cases.append(Case(name + tag, paths[slug], first, runner, folder))
        exits = load(paths["pruned-int8-early-exit"])
        final = exits.manifest["early_exit"]["count"]
        if not picked:  # the same two images for every build of the stage
            for i in range(len(test)):
                exits(test.x[i:i + 1])
                picked.setdefault(exits.exit_taken, i)
                if 0 in picked and final in picked:
                    break
        for k in sorted(picked):
            label = "exit 0" if k == 0 else "final head" if k == final else f"exit {k}"
            cases.append(Case(f"{STAGES['pruned-int8-early-exit']}{tag} ({label} path)",
                              paths["pruned-int8-early-exit"], test.x[picked[k]:picked[k] + 1],
                              runner, folder))
    for c in cases:  # compiled mode bypasses the instrument hook: its kernels are the
        twin = c.name.replace(" [compiled]", " [bytecode]")  # bytecode build's (same TIR)
        if twin != c.name and not c.kernels:
            c.kernels = next(b.kernels for b in cases if b.name == twin)
    return cases


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", help="an edgec demo output folder (default: run edgec demo --quick)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", help="result files stem (default: benchmarks/results/call_overhead)")
    p.add_argument("--exec-modes", action="store_true",
                   help="rebuild every stage with the VM's exec_mode bytecode and compiled, "
                        "and time both")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    set_threads(args.threads)
    folder = scratch()
    try:
        machine = machine_info()
        runner = build_runner(folder)
        demo_paths, how = demo_artifacts(args.demo, folder)
        demo = os.path.dirname(os.path.dirname(next(iter(demo_paths.values()))))
        if args.exec_modes:  # each stage rebuilt from the demo's cache in both VM modes
            artifacts = {f" [{m}]": {s: rebuild_stage(demo, s, folder, m) for s in STAGES}
                         for m in ("bytecode", "compiled")}
            adds = {f" [{m}]": add_one(folder, m) for m in ("bytecode", "compiled")}
            how += ("; every stage rebuilt from the demo's cache (its torch model, config, "
                    "scales, calibration images) with the Relax VM's exec_mode bytecode "
                    "(tvm.compile's) and compiled")
        else:
            artifacts, adds = {"": demo_paths}, {"": add_one(folder)}
        cases = cases_for(artifacts, adds, runner, folder)
        times = measure(cases, args.rounds, args.samples, args.quiet)
        machine["loadavg_end"] = os.getloadavg()[0]
        rows = [summarize(c, times[c.name]) for c in cases]
        for r in rows:
            r["path"] = os.path.basename(r["path"])
        md = markdown(rows, machine, how, args)
        sys.argv = [a if not os.path.isabs(a) else "DIR" for a in sys.argv]  # no machine paths
        paths = write_results(args.out or "call_overhead",
                              {"results": rows, "machine": machine, "artifacts": how,
                               "rounds": args.rounds, "samples": args.samples,
                               "threads": args.threads}, md)
        print(md)
        print("wrote", *paths)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
