"""Interleaved rounds: the one timing loop behind every comparison edgec reports.

These machines are shared and noisy. Whatever is compared (engines, artifacts on a
board, exit paths, board counts), each round runs every contestant once, the order
rotating by one each round, so a burst of load falls on all of them alike and no
contestant always runs first (warm caches) or last. Callers turn the per-round
results into statistics; ratios between contestants of one run are what they report.

numpy and tqdm only: deployment (the board benchmarks) uses it too.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm


def rotated(items: Sequence, r: int) -> list:
    """``items`` in round ``r``'s order: rotated left by ``r``."""
    items = list(items)
    k = r % len(items) if items else 0
    return items[k:] + items[:k]


def interleaved(contestants: int, rounds: int, call: Callable, label: str | None = None,
                quiet: bool = True) -> list:
    """``call(i, r)`` for every contestant ``i`` in every round ``r``, order rotating;
    returns ``results[i][r]`` (whatever ``call`` returned)."""
    results = [[None] * rounds for _ in range(contestants)]
    with tqdm(total=rounds, desc=label, disable=quiet or not label, leave=False) as bar:
        for r in range(rounds):
            for i in rotated(range(contestants), r):
                results[i][r] = call(i, r)
            bar.update(1)
    return results


def time_batches(runners: Sequence, batches: Sequence, rounds: int, label: str | None = None,
                 quiet: bool = True):
    """Each batch through every runner, in ``rounds`` rounds, order rotating batch by batch
    (``runner.run(batch)`` -> (seconds, logits, exit taken or None)); returns (seconds
    [runner, round, batch], logits [runner][batch], exits [runner][batch]) of the last round."""
    b = len(batches)
    got = interleaved(len(runners), rounds * b, lambda m, k: runners[m].run(batches[k % b]),
                      label, quiet)
    times = np.array([[t for t, _, _ in per_runner] for per_runner in got], dtype=float)
    logits = [[out for _, out, _ in per_runner[-b:]] for per_runner in got]
    exits = [[e for _, _, e in per_runner[-b:]] for per_runner in got]
    return times.reshape(len(runners), rounds, b), logits, exits


def time_once(fn: Callable, number: int) -> float:
    """Mean seconds of one call of ``fn`` over ``number`` calls in a row."""
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def calibrate_number(fn: Callable, target_s: float = 0.02) -> int:
    """Calls per sample so one sample lasts about ``target_s`` (timer noise stays small)."""
    t = time_once(fn, 1)
    return max(1, min(1000, int(target_s / max(t, 1e-7))))
