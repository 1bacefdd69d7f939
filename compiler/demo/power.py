"""A power proxy: MACs and bytes moved per inference, counted from a Relax module.

Power cannot be measured on these machines. What we can count honestly is the
work an inference does: multiply-accumulates of every conv and matmul (from
their shapes in the graph before lowering), and the weight bytes each compiled
kernel reads and the activation bytes it reads and writes (from the graph after
operator fusion, so intermediates kept inside a fused kernel are not counted).
These are a *proxy* for energy (DRAM traffic and MACs dominate it on edge CPUs),
labelled as such wherever they appear.

Boards that expose a power reading can be sampled with ``--power-cmd CMD``:
``power_window`` runs CMD before and after a measurement and records its output.
"""
from __future__ import annotations

import math
import shlex
import subprocess
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from edgec.compiler.errors import EdgecError
from edgec.compiler.tvm_compat import Constant, relax, tvm
from edgec.passes.count_macs import call_macs
from edgec.passes.graph import RelaxModel, bind
from edgec.passes.int8_kernels import MACS_ATTR
from edgec.passes.split_early_exits import stage_names
from edgec.targets import get_target

PROXY_LABEL = ("power proxy, not a measurement: MACs (conv/matmul, from shapes) and bytes "
               "moved per inference (weights read + activations read/written by each fused kernel)")
MAC_OPS = ("relax.nn.conv1d", "relax.nn.conv2d", "relax.nn.conv3d", "relax.matmul")
# Ops that only relabel a buffer's shape or pick tuple fields move no data.
VIEW_OPS = ("relax.reshape", "relax.expand_dims", "relax.squeeze", "relax.flatten")


@dataclass
class OpCount:
    """One operator's (or fused kernel's) share of the work."""
    op: str
    macs: int
    weight_bytes: int
    activation_bytes: int


@dataclass
class PowerProxy:
    """Work per inference; ``ops`` lists each operator or kernel, ``functions`` each callee."""
    macs: int = 0
    weight_bytes: int = 0
    activation_bytes: int = 0
    ops: list = field(default_factory=list)
    functions: dict = field(default_factory=dict)
    branches: bool = False  # True: an if/else was met and both sides were counted
    mac_ops: list = field(default_factory=list)  # the conv/matmul ops behind ``macs``

    @property
    def bytes_moved(self) -> int:
        return self.weight_bytes + self.activation_bytes

    def add(self, other: "PowerProxy") -> None:
        self.macs += other.macs
        self.weight_bytes += other.weight_bytes
        self.activation_bytes += other.activation_bytes
        self.ops += other.ops
        self.branches = self.branches or other.branches

    def to_json(self) -> dict:
        d = asdict(self)
        d["bytes_moved"] = self.bytes_moved
        d["label"] = PROXY_LABEL + (" (every branch counted: an upper bound)" if self.branches else "")
        return d


def _tensor_bytes(ty) -> int:
    if isinstance(ty, relax.TupleType):
        return sum(_tensor_bytes(f) for f in ty.fields)
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return 0
    dims = [int(d) for d in ty.shape.values]
    return math.prod(dims) * tvm.DataType(str(ty.dtype)).bits // 8


def _shape(expr) -> list:
    return [int(d) for d in expr.ty.shape.values]


def _count_call(call, mod) -> OpCount | None:
    if not isinstance(call.op, tvm.ir.Op) or call.op.name in VIEW_OPS:
        return None
    name, args = call.op.name.replace("relax.", ""), list(call.args)
    macs = call_macs(call) if call.op.name in MAC_OPS else 0
    if call.op.name == "relax.call_tir":  # a compiled kernel: its arguments are a tuple
        name, args = args[0].name_hint, list(args[1].fields)
        attrs = mod[call.args[0]].attrs  # edgec's hand-written kernels say their MACs
        macs = int(attrs[MACS_ATTR]) if attrs is not None and MACS_ATTR in attrs else 0
    args = [a for a in args if isinstance(a, relax.Expr) and not isinstance(a, relax.ShapeExpr)]
    if args and all(isinstance(a, Constant) for a in args):
        return None  # folded at compile time
    weights = sum(_tensor_bytes(a.ty) for a in args if isinstance(a, Constant))
    acts = sum(_tensor_bytes(a.ty) for a in args if not isinstance(a, Constant))
    acts += _tensor_bytes(call.ty)
    return OpCount(name, macs, weights, acts)


def count_function(mod, name: str = "main", _seen=None) -> PowerProxy:
    """The work of one call of ``mod[name]``, following calls into other Relax functions."""
    _seen = _seen if _seen is not None else {}
    total = PowerProxy()

    def visit(expr):
        if isinstance(expr, relax.If):
            total.branches = True
        if not isinstance(expr, relax.Call):
            return
        if isinstance(expr.op, tvm.ir.GlobalVar) and isinstance(mod[expr.op], relax.Function):
            callee = expr.op.name_hint
            if callee not in _seen:
                _seen[callee] = count_function(mod, callee, _seen)
            total.add(_seen[callee])
            total.functions[callee] = _seen[callee].to_json()["bytes_moved"]
            return
        op = _count_call(expr, mod)
        if op:
            total.add(PowerProxy(op.macs, op.weight_bytes, op.activation_bytes, [op]))

    relax.analysis.post_order_visit(mod[name].body, visit)
    return total


def simplify_for_count(mod):
    """Fold batch norms and constants, as the pipeline does before lowering."""
    seq = [relax.transform.FoldBatchnormToConv2D(), relax.transform.DecomposeOpsForInference(),
           relax.transform.FoldConstant(), relax.transform.DeadCodeElimination()]
    return tvm.transform.Sequential(seq)(mod)


def _graph_and_fused(model, target):
    """(simplified graph, the same after legalize + fusion) of a RelaxModel or bound module."""
    mod = simplify_for_count(bind(model) if isinstance(model, RelaxModel) else model)
    with get_target(target).tvm_target():  # legalization needs a target
        return mod, relax.get_pipeline("zero")(mod)


def proxy_of(model, target="host") -> PowerProxy:
    """The proxy for a RelaxModel (weights bound first) or a bound IRModule.

    MACs come from the graph before lowering (conv/matmul shapes); bytes from the
    fused kernels the target would run (legalize + FuseOps, as the pipeline does).
    """
    mod, fused = _graph_and_fused(model, target)
    graph = count_function(mod)
    result = count_function(fused)
    result.macs = graph.macs
    result.mac_ops = [op for op in graph.ops if op.macs]
    return result


def stage_proxies(model, target="host") -> list:
    """One PowerProxy per stage function of an early-exit model (``stage0``, ...), in order."""
    mod, fused = _graph_and_fused(model, target)
    out = []
    for name in stage_names(mod):
        p = count_function(fused, name)
        p.macs = count_function(mod, name).macs
        out.append(p)
    return out


def check_power_cmd(cmd: str | None) -> None:
    """Fail before any stage runs if ``--power-cmd`` cannot be split into a command."""
    if cmd is None:
        return
    try:
        argv = shlex.split(cmd)
    except ValueError as e:
        raise EdgecError(f"--power-cmd {cmd!r} cannot be parsed ({e}); balance its quotes, "
                         "e.g. --power-cmd \"cat /sys/class/power_supply/BAT0/power_now\"") from None
    if not argv:
        raise EdgecError("--power-cmd is empty; give a command printing a power reading")


def run_power_cmd(cmd: str, when: str, timeout: float = 60.0) -> dict:
    """Run the user's power-reading command once; record its output (and a number if it is one)."""
    t = time.time()
    try:
        r = subprocess.run(shlex.split(cmd), capture_output=True, text=True, timeout=timeout)
        rc, out, err = r.returncode, r.stdout.strip(), r.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        rc, out, err = None, "", f"{type(e).__name__}: {e}"
    rec = {"when": when, "command": cmd, "unix_time": round(t, 3), "returncode": rc,
           "stdout": out[-2000:], "stderr": err[-500:]}
    try:
        rec["value"] = float(out.split()[0]) if out else None
    except ValueError:
        rec["value"] = None
    return rec


@contextmanager
def power_window(cmd: str | None, records: list):
    """Run ``cmd`` before and after the body (nothing when ``cmd`` is None); append the records."""
    if cmd:
        records.append(run_power_cmd(cmd, "before"))
    try:
        yield records
    finally:
        if cmd:
            records.append(run_power_cmd(cmd, "after"))


POWER_SECONDS = 2.0  # how long each stage runs alone between two --power-cmd readings


def power_per_stage(engines, cmd: str, seconds: float = POWER_SECONDS) -> list:
    """Run each engine alone for ``seconds`` between two readings of the user's power command."""
    out = []
    for e in engines:
        records, n, t0 = [], 0, time.perf_counter()
        with power_window(cmd, records):
            while time.perf_counter() - t0 < seconds:
                e.run()
                n += 1
        out.append({"stage": e.name, "inferences": n,
                    "seconds": round(time.perf_counter() - t0, 3), "readings": records})
    return out
