"""Dynamic inference over data: per-sample latency and the exit each sample took.

An early-exit library's latency depends on the input, so one input says
nothing: ``bench_over_data`` runs every sample of a split through one or more
loaded artifacts, interleaved sample by sample (so load drifts hit all alike),
and reports mean / median / p95 latency, accuracy, exit rates and per-exit latency.
"""
from __future__ import annotations

import time

import numpy as np

from edgec.compiler.data import Split, load_dataset
from edgec.compiler.deploy.runtime import (check_inputs, flatten_outputs, load,
                                           with_default_thresholds)
from edgec.compiler.errors import InputError
from edgec.compiler.timing import time_batches
from edgec.compiler.tvm_compat import tensor


def _prepare(model, x):
    """Inputs of ``model`` for one batch ``x`` as VM tensors (checked once, up front)."""
    args, kwargs = with_default_thresholds(model.manifest, (x,), {})
    return [tensor(a) for a in check_inputs(model.manifest, args, kwargs)]


def _run_once(model, inputs):
    start = time.perf_counter()
    out = model._vm["main"](*inputs)
    seconds = time.perf_counter() - start
    flat = flatten_outputs(out)
    exit_k = int(flat[-1]) if model.manifest.get("early_exit") else None
    return seconds, flat[0], exit_k


class _Prepared:
    """A loaded model and its prepared batches, run by batch index (``time_batches``)."""

    def __init__(self, model, inputs: list):
        self.model, self.inputs = model, inputs

    def run(self, j: int):
        return _run_once(self.model, self.inputs[j])


def bench_over_data(models: dict, split, rounds: int = 3, warmup: int = 10,
                    quiet: bool = False) -> dict:
    """Time every sample of ``split`` on each model in ``models`` ({name: runtime.Model}).

    Each sample's latency is its median over ``rounds``; engines alternate order
    per sample. Returns {name: summary} (see ``summarize``).
    """
    names = list(models)
    batch = {n: int(models[n].manifest["inputs"][0]["shape"][0]) for n in names}
    if len(set(batch.values())) != 1:
        raise InputError(f"models take different batch sizes {batch}; compare like with like")
    b = batch[names[0]]
    starts = list(range(0, len(split) - len(split) % b, b))
    inputs = {n: [_prepare(models[n], split.x[i:i + b]) for i in starts] for n in names}
    for n in names:
        for j in range(min(warmup, len(starts))):
            _run_once(models[n], inputs[n][j])
    runners = [_Prepared(models[n], inputs[n]) for n in names]
    times, logits, exits = time_batches(runners, list(range(len(starts))), rounds, "bench", quiet)
    labels = np.concatenate([split.y[i:i + b] for i in starts])
    return {n: summarize(np.median(times[m], axis=0), np.concatenate(logits[m]), labels,
                         exits[m], models[n].manifest) for m, n in enumerate(names)}


def summarize(seconds, logits, labels, exits, manifest) -> dict:
    """Latency (ms), accuracy (%), and per-exit rates and latencies of one model."""
    ms = np.asarray(seconds) * 1e3
    out = {"samples": int(len(ms)), "mean_ms": float(ms.mean()), "median_ms": float(np.median(ms)),
           "p95_ms": float(np.percentile(ms, 95)),
           "accuracy": float((np.argmax(logits, axis=1) == labels).mean() * 100.0)}
    info = manifest.get("early_exit")
    if info:
        taken = np.asarray(exits)
        out["per_exit"] = [{"exit": k, "rate": float((taken == k).mean()),
                            "count": int((taken == k).sum()),
                            "mean_ms": float(ms[taken == k].mean()) if (taken == k).any() else None}
                           for k in range(info["count"] + 1)]
    return out


def bench_artifacts(paths: dict, data: str, split: str = "test", samples: int | None = None,
                    rounds: int = 3, quiet: bool = False) -> dict:
    """``edgec bench --data`` entry point: {name: model.so} over a data set's split.

    data: ``mnist``, a ``.npz`` or an image folder (``train.data.load_dataset``).
    """
    if split not in ("train", "val", "test"):
        raise InputError(f"unknown split {split!r}; valid: train, val, test")
    part = getattr(load_dataset(data), split)
    if samples:
        part = Split(part.x[:samples], part.y[:samples])
    return bench_over_data({n: load(p) for n, p in paths.items()}, part, rounds=rounds, quiet=quiet)
