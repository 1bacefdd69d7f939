"""Helpers shared by the RPC and emulated-board tests."""
import socket
import time


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def result_within(future, seconds: float):
    """A MetaSchedule RunnerFuture's result, or a failure instead of a hang."""
    deadline = time.monotonic() + seconds
    while not future.done():
        assert time.monotonic() < deadline, f"runner gave no result within {seconds}s"
        time.sleep(0.2)
    return future.result()
