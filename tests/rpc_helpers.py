"""Helpers shared by the RPC and emulated-board tests."""
import os
import time

import pytest

from edgec.compiler.deploy.rpc import free_port  # noqa: F401  (the tests import it from here)




def result_within(future, seconds: float):
    """A MetaSchedule RunnerFuture's result, or a failure instead of a hang."""
    deadline = time.monotonic() + seconds
    while not future.done():
        assert time.monotonic() < deadline, f"runner gave no result within {seconds}s"
        time.sleep(0.2)
    return future.result()


def require_board_host() -> None:
    """Fail (as root, CI's case: the tools are installed) or skip unless this machine can
    run the emulated aarch64 board (qemu-user via binfmt_misc, mmdebstrap)."""
    from edgec.compiler.deploy import board

    try:
        board.check_host()
    except board.BoardError as e:
        if os.geteuid() != 0:
            pytest.skip(str(e))  # CI runs as root with the tools installed: it never skips
        raise
