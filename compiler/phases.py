"""One error contract for whatever fails inside TVM (or a pass) while compiling.

A phase of the pipeline runs inside ``phase(name, hint)``. An ``EdgecError`` passes
through as it is (it is already one line for the user); anything else (TVM's
``InternalError``, a ``ValueError`` from a legalizer, an assertion in a frontend) becomes
a ``CompileError``: one line naming the phase, the op (and, where known, the ONNX node
or torch module it came from), the first line of the message and what to try, with
the full traceback written to a log file that the line names (``--verbose`` prints it).

``native_output_captured`` holds TVM's C++ log lines (``Warning: BlockBuilder destroyed
with remaining blocks!`` on a failed import) and prints written by TVM's Python
frontends away from the user's terminal; they go into the log when the phase fails.
"""
from __future__ import annotations

import contextlib
import gc
import io
import os
import re
import sys
import tempfile
import time
import traceback

from edgec.compiler.errors import USER_ERRORS, EdgecError

PHASES = ("import", "prune", "quantize", "split", "layout", "lower", "tune", "build")

HINTS = {
    "import": "a newer opset when exporting, or static shapes with --input NAME:SHAPE",
    "prune": "without --prune, or a --prune-plan that leaves this layer's group out",
    "quantize": "keeping the layer in FP32 with --int8-keep-fp32 NAME, or try --int8-kernel nchw",
    "split": "a model whose outputs are (exit logits..., final logits)",
    "layout": "--conv-layout NCHW or --no-pad-channels",
    "lower": "--conv-layout NCHW",
    "tune": "without tuning logs (--tuning-logs none)",
    "build": "--conv-layout NCHW, or another --target",
}

_OP_PATTERNS = (
    re.compile(r"Error converting operator (\w+)"),
    re.compile(r"\bOp\((relax\.[\w.]+)\)"),
    re.compile(r"\b(relax\.(?:nn\.|image\.)?[a-z_][\w]*)\b(?!\.py)"),
    re.compile(r"operator[: ]+'?([\w.:]+)"),
)


class CompileError(EdgecError):
    """A phase of the compile failed inside TVM or a pass; the message is one line."""

    def __init__(self, phase: str, op: str | None, where: str | None, first: str,
                 hint: str, log: str | None):
        self.phase, self.op, self.where, self.log = phase, op, where, log
        at = f" at {op}" if op else ""
        at += f" ({where})" if where else ""
        tail = f"; full message in {log}" if log else ""
        super().__init__(f"{phase} failed{at}: {first}; try {hint}{tail}")


def op_in_message(text: str) -> str | None:
    """The op a TVM message is about, if it names one."""
    for pattern in _OP_PATTERNS:
        m = pattern.search(text)
        if m:
            return m.group(1)
    return None


def first_line(e: BaseException) -> str:
    """The informative line of an exception: TVM puts its check on the last line."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    line = lines[-1] if "Check failed" in lines[-1] or len(lines) > 3 else lines[0]
    line = re.sub(r"^(tvm\.error\.)?\w*Error: ", "", line)
    return line if len(line) <= 300 else line[:297] + "..."


def log_dir() -> str:
    return os.environ.get("EDGEC_LOG_DIR") or os.path.join(tempfile.gettempdir(), "edgec-logs")


def write_log(phase: str, e: BaseException, captured: str = "") -> str | None:
    """The full traceback and captured TVM output, in a file of its own; its path."""
    try:
        os.makedirs(log_dir(), exist_ok=True)
        fd, path = tempfile.mkstemp(prefix=time.strftime(f"%Y%m%d-%H%M%S-{phase}-"),
                                    suffix=".log", dir=log_dir())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(getattr(e, "edgec_traceback", None)
                    or "".join(traceback.format_exception(type(e), e, e.__traceback__)))
            if captured:
                f.write("\n--- output captured during the phase ---\n" + captured)
        return path
    except OSError:
        return None


@contextlib.contextmanager
def phase(name: str, hint: str | None = None, where=None):
    """Run a phase; a non-edgec exception becomes one ``CompileError`` line.

    where: a callable ``(exception) -> (op, origin)`` giving the op and its origin when
    the phase knows better than the message (the ONNX importer knows the node)."""
    assert name in PHASES, name
    try:
        yield
    except (*USER_ERRORS, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 (every other failure gets the contract)
        captured = getattr(e, "edgec_captured", "")
        op, origin = where(e) if where else (None, None)
        op = op or op_in_message(f"{e}\n{captured}")
        raise CompileError(name, op, origin, first_line(e), hint or HINTS[name],
                           write_log(name, e, captured)) from e


@contextlib.contextmanager
def native_output_captured(python_too: bool = False):
    """Send what C++ code writes to fds 1 and 2 (TVM's log lines) into a buffer for the
    block; Python's own ``sys.stdout`` / ``sys.stderr`` (progress bars, prints) still
    reach the terminal, unless ``python_too`` (a frontend's prints of a failing node).

    On an exception the text goes onto it as ``edgec_captured`` (for the log); on
    success, lines other than TVM's warnings are written back to stderr."""
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+b") as buf:
        saved = os.dup(1), os.dup(2)
        streams = sys.stdout, sys.stderr
        python = io.StringIO()
        if python_too:  # whatever sys.stdout is (a terminal, pytest's capture)
            sys.stdout = sys.stderr = python
        else:
            sys.stdout, sys.stderr = (_to_fd(sys.stdout, 1, saved[0]),
                                      _to_fd(sys.stderr, 2, saved[1]))
        os.dup2(buf.fileno(), 1)
        os.dup2(buf.fileno(), 2)
        failed = None
        try:
            yield
        except BaseException as e:
            failed = e
            # free what the failed frames hold (a half-built BlockBuilder logs a warning
            # when destroyed) while its output still goes to the buffer
            e.edgec_traceback = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            traceback.clear_frames(e.__traceback__)
            gc.collect()
            raise
        finally:
            for stream, original in zip((sys.stdout, sys.stderr), streams):
                stream.flush()
                if stream is not original and stream is not python:
                    stream.close()
            sys.stdout, sys.stderr = streams
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            buf.seek(0)
            text = python.getvalue() + buf.read().decode("utf-8", "replace")
            if failed is not None:
                failed.edgec_captured = text
            else:
                kept = [ln for ln in text.splitlines() if not _known_noise(ln)]
                if kept:
                    print("\n".join(kept), file=sys.stderr)


def _to_fd(stream, fd: int, saved: int):
    """``stream`` if it does not write to ``fd``; else a stream on ``saved`` (the real
    terminal), so Python's output passes the redirect of ``fd``."""
    try:
        if stream.fileno() != fd:
            return stream
    except (AttributeError, OSError, ValueError):  # pytest's capture, StringIO
        return stream
    return os.fdopen(os.dup(saved), "w", buffering=1, encoding=getattr(stream, "encoding", None),
                     errors="replace")


# TVM's C++ log lines ("[23:24:29] /project/src/tirx/op/op.cc:275: Warning: ..."), and
# the one a half-built BlockBuilder leaves when a frontend fails
_NOISE = re.compile(r"^\[\d\d:\d\d:\d\d\] \S+\.(cc|h):\d+: Warning: |"
                    r"Warning: BlockBuilder destroyed with remaining blocks|^\s*$")


def _known_noise(line: str) -> bool:
    return bool(_NOISE.search(line))
