"""The demo on a board: its artifacts run, are measured and timed there over RPC.

With ``--tracker HOST:PORT`` the demo still trains and compiles on this machine,
but every compiled stage is built for the board's target (the library cannot run
here), so whatever runs an artifact runs it on the board: test and validation
accuracy, the exit distribution, the outputs threshold calibration needs, and the
benchmark. A session is opened for each of these and closed after it, so the
board is free for others while the demo trains. PyTorch eager cannot run on the
board: it is timed on this host, labelled so, and left out of the board's ratios.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from edgec.compiler.build import build_result
from edgec.compiler.compare import Engine
from edgec.compiler.demo.power import power_per_stage
from edgec.compiler.deploy.bench import RemoteModel
from edgec.compiler.deploy.bench_data import DataRunner
from edgec.compiler.deploy.rpc_session import connect
from edgec.compiler.deploy.runtime import with_default_thresholds
from edgec.compiler.errors import EdgecError
from edgec.compiler.timing import time_batches
from edgec.targets import get_target

BOARD_IMAGES = 32  # test images each stage cycles through while timed on the board
BOARD_NUMBER = 3  # runs averaged per image, on the device


@dataclass(frozen=True)
class Board:
    """A board at a tracker, as the demo first found it (``info``: session.describe())."""
    tracker: str
    key: str
    timeout: float = 120.0
    info: tuple = ()

    @property
    def description(self) -> dict:
        return dict(self.info)

    def session(self):
        return connect(tracker=self.tracker, key=self.key, timeout=self.timeout)


def open_board(tracker: str, key: str, target_name: str, timeout: float = 120.0) -> Board:
    """Reach the board once before any training: it must answer and match the target."""
    target = get_target(target_name)
    board = Board(tracker, key, timeout)
    session = board.session()
    try:
        info = session.describe()
    finally:
        session.close()
    if info["arch"] not in ("unknown", target.arch):
        raise EdgecError(f"the board {info['where']} is {info['arch']} but target "
                         f"{target.name!r} builds {target.arch} libraries; pick the board's "
                         "target with --target")
    return Board(tracker, key, timeout, tuple(sorted(info.items())))


def board_outputs(board: Board, so_path: str, x: np.ndarray, desc: str = "on the board",
                  quiet: bool = True) -> list:
    """Every output of the artifact for each sample of ``x`` (batch 1), run on the board."""
    session = board.session()
    try:
        model = RemoteModel(session, so_path)
        outs = []
        for i in tqdm(range(len(x)), desc=desc, disable=quiet, leave=False):
            args, kwargs = with_default_thresholds(model.manifest, (x[i:i + 1],), {})
            outs.append(model(*args, **kwargs))
        del model  # remote handles keep the session (and the board) busy
    finally:
        session.close()
    return [np.stack(col) if col[0].ndim == 0 else np.concatenate(col) for col in zip(*outs)]


def build_and_run(board: Board, relax_model, config, calib_data, x, path: str) -> list:
    """Compile ``relax_model`` for the board into ``path`` and return its outputs on ``x``."""
    build_result(relax_model, config, path, calib_data)
    return board_outputs(board, path, x, desc="calibration outputs (board)")


def _engine_stats(per_round_ms: np.ndarray, number: int) -> dict:
    """Stats of one stage from its per-round means over the image mix (ms)."""
    s = np.asarray(per_round_ms)
    return {"median_ms": float(np.median(s)), "min_ms": float(s.min()), "mean_ms": float(s.mean()),
            "std_ms": float(s.std()), "p95_ms": float(np.percentile(s, 95)),
            "runs_per_sample": number, "where": "board"}


def board_benchmark(board: Board, stages: list, images: np.ndarray, rounds: int,
                    quiet: bool = False, power_cmd: str | None = None) -> dict:
    """Time ``stages`` ([(name, so_path)]) on the board, interleaved image by image.

    Each round runs every image through every stage (order rotating), each timed on
    the device over BOARD_NUMBER runs; a stage's round figure is its mean over the
    images (the image mix, as the host benchmark's samples are). Returns the
    ``compare``-shaped result (median / min / mean over rounds, in ms).
    """
    session = board.session()
    try:
        runners = [DataRunner(session, path, BOARD_NUMBER) for _, path in stages]
        for r in runners:
            r.run(images[:1], timed=False)
        label = "benchmark on the board" + (" (EMULATED: timings meaningless)"
                                            if session.emulated else "")
        batches = [images[i:i + 1] for i in range(len(images))]
        times = time_batches(runners, batches, rounds, label, quiet)[0]
        power = power_on_board(stages, runners, power_cmd) if power_cmd else None
        del runners  # remote handles keep the session (and the board) busy
    finally:
        session.close()
    engines = {name: _engine_stats(times[m].mean(axis=1) * 1e3, BOARD_NUMBER)
               for m, (name, _) in enumerate(stages)}
    out = {"rounds": rounds, "samples": len(images), "engines": engines,
           "images_cycled": len(images), "runs_per_image": BOARD_NUMBER,
           "device": board.description,
           "timing_valid": not board.description.get("emulated", False)}
    if power is not None:
        out["power_readings"] = power
    return out


def power_on_board(stages, runners, cmd: str) -> list:
    """Each stage alone on the board between two readings of ``--power-cmd``."""
    return power_per_stage([Engine(name, lambda r=r: r.model.warm(1))
                            for (name, _), r in zip(stages, runners)], cmd)
