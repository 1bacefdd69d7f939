"""The Python call of a loaded model, at a few microseconds over the C++ call.

Measured on the demo's models (``benchmarks/bench_call_overhead.py``), the plain way of
calling the VM cost 40-60 us a call, against ~1 us for the VM itself: wrapping every
input with ``tvm.runtime.tensor`` (a fresh allocation and copy, ~10 us even for 32
bytes), ``.numpy()`` on every output (~10 us), re-reading the manifest's specs, the
dict lookup of ``main`` and indexing the returned Array element by element.

``CallPath`` does the per-input checks against specs resolved once, copies each input
into a preallocated, 64-byte aligned tensor (TVM's kernels assume that alignment: an
unaligned zero-copy input crashed the process), hands large aligned inputs over without
a copy (DLPack), and returns outputs through DLPack: small ones copied (a constant such as
the exit index must never be shared), large ones as views of the VM's own result tensor.
Anything unusual (keywords, a dict, lists, other dtypes or shapes) takes the checked path
of ``runtime.check_inputs``, which names what is wrong. Not thread-safe: the staging
tensors are per model, as the VM's registers are; use one ``Model`` per thread.
"""
from __future__ import annotations

import numpy as np

from edgec.compiler.tvm_compat import tvm

COPY_OUTPUT_BYTES = 4096  # outputs up to this size are copied (cheaper than a view's bookkeeping)
ZERO_COPY_INPUT_BYTES = 4096  # inputs above this size are passed without a copy when aligned
ALIGNMENT = 64  # bytes; TVM's kernels may use aligned vector loads
Tensor = tvm.runtime.Tensor
# one FFI call per element: Array.__iter__ asks the size, then each item through two wrappers
_array_item = tvm.get_global_func("ffi.ArrayGetItem")
_from_dlpack = np.from_dlpack


class CallPath:
    """Inputs staged in reused tensors, outputs through DLPack; see the module doc."""

    def __init__(self, manifest: dict, main):
        specs = manifest["inputs"]
        self.main = main
        self.shapes = [tuple(s["shape"]) for s in specs]
        self.dtypes = [np.dtype(s["dtype"]) for s in specs]
        self.tensors = [tvm.runtime.empty(sh, str(dt), tvm.cpu())
                        for sh, dt in zip(self.shapes, self.dtypes)]
        self.views = [np.from_dlpack(t) for t in self.tensors]
        self.staged = {v.ctypes.data for v in self.views}
        self.default_tail = None  # the default exit thresholds, when the caller leaves them out
        info = manifest.get("early_exit") or {}
        if info.get("thresholds_as_input") and info.get("thresholds") is not None:
            # the last input, as runtime.with_default_thresholds has it
            tail = tvm.runtime.empty(self.shapes[-1], str(self.dtypes[-1]), tvm.cpu())
            np.from_dlpack(tail)[...] = np.asarray(info["thresholds"], self.dtypes[-1])
            self.default_tail = tail
        self.with_default_tail = [*self.tensors[:-1], self.default_tail]
        self.exit_index = bool(manifest.get("early_exit"))
        self.arity = None  # outputs of a flat result tuple, learnt on the first call (0: not flat)

    def run(self, args: tuple):
        """Outputs for positional numpy ``args``, or None when they need the checked path."""
        n = len(args)
        if n == len(self.tensors):
            call_args = self.tensors
        elif n == len(self.tensors) - 1 and self.default_tail is not None:
            call_args = self.with_default_tail
        else:
            return None
        shapes, dtypes, views, shared = self.shapes, self.dtypes, self.views, ()
        for i in range(n):
            a = args[i]
            if type(a) is not np.ndarray or a.shape != shapes[i] or a.dtype != dtypes[i]:
                return None
            if a.nbytes <= ZERO_COPY_INPUT_BYTES or not a.flags.c_contiguous \
                    or a.ctypes.data % ALIGNMENT:
                views[i][...] = a
            else:  # the caller's memory, no copy
                call_args = [*call_args[:i], tvm.runtime.from_dlpack(a), *call_args[i + 1:]]
                shared += (a.ctypes.data,)
        result = self.main(*call_args)
        if self.arity and not shared:  # the common case, inlined: a flat tuple, inputs staged
            out = []
            for i in range(self.arity):
                view = _from_dlpack(_array_item(result, i))
                out.append(view.copy() if view.nbytes <= COPY_OUTPUT_BYTES
                           or view.ctypes.data in self.staged else view)
            return out
        return self.outputs(result, shared)

    def run_checked(self, arrays: list):
        """Outputs for arrays already checked by ``runtime.check_inputs`` (in order)."""
        for view, a in zip(self.views, arrays):
            view[...] = a
        return self.outputs(self.main(*self.tensors))

    def outputs(self, result, shared=()) -> list:
        """VM results (a tensor or nested tuples of them) -> flat list of numpy arrays."""
        arity = self.arity
        if arity:  # a flat tuple of tensors, as every call before returned
            return [self._array(_array_item(result, i), shared) for i in range(arity)]
        if isinstance(result, Tensor):
            return [self._array(result, shared)]
        items = tuple(result)
        if arity is None:
            flat = all(isinstance(item, Tensor) for item in items)
            self.arity = len(items) if flat and items else 0
        out = []
        for item in items:
            if isinstance(item, Tensor):
                out.append(self._array(item, shared))
            else:  # a nested tuple
                out += self.outputs(item, shared)
        return out

    def _array(self, t, shared) -> np.ndarray:
        view = np.from_dlpack(t)
        if view.nbytes <= COPY_OUTPUT_BYTES:
            return view.copy()
        if view.ctypes.data in self.staged or view.ctypes.data in shared:
            return view.copy()  # an input returned as it came: never hand out its buffer
        return view  # holds the VM's result tensor: nothing reuses it while the array lives
