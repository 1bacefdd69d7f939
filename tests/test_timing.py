"""The one interleaved timing loop (compiler/timing.py) that every comparison uses."""
import numpy as np

from edgec.compiler.timing import calibrate_number, interleaved, rotated, time_batches


def test_rotated_moves_the_first_one_back_each_round():
    assert rotated("abc", 0) == ["a", "b", "c"]
    assert rotated("abc", 1) == ["b", "c", "a"]
    assert rotated("abc", 4) == ["b", "c", "a"]
    assert rotated([], 3) == []


def test_interleaved_runs_everyone_each_round_and_nobody_always_first():
    calls = []
    got = interleaved(3, 4, lambda i, r: calls.append((r, i)) or (i, r))
    assert got == [[(i, r) for r in range(4)] for i in range(3)]
    per_round = [[i for r2, i in calls if r2 == r] for r in range(4)]
    assert [o[0] for o in per_round] == [0, 1, 2, 0]  # who went first, round by round
    assert all(sorted(o) == [0, 1, 2] for o in per_round)


class Runner:
    def __init__(self, k):
        self.k, self.seen = k, []

    def run(self, x):
        self.seen.append(x)
        return 0.001 * self.k * len(self.seen), x * self.k, self.k


def test_time_batches_shapes_every_round_and_keeps_the_last_outputs():
    runners = [Runner(1), Runner(2)]
    times, logits, exits = time_batches(runners, [10, 20, 30], rounds=2)
    assert times.shape == (2, 2, 3)
    assert all(r.seen == [10, 20, 30, 10, 20, 30] for r in runners)
    np.testing.assert_allclose(times[1, 1], [0.008, 0.010, 0.012])
    assert logits == [[10, 20, 30], [20, 40, 60]] and exits == [[1, 1, 1], [2, 2, 2]]


def test_calibrate_number_makes_a_sample_last_about_the_target():
    assert calibrate_number(lambda: None, 0.02) == 1000  # capped
    assert calibrate_number(lambda: sum(range(200_000)), 1e-9) == 1
