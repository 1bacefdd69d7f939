"""Runtime: load an edgec artifact and call it with numpy arrays.

Every check (manifest present, architecture matches this machine, input
names, shapes and dtypes) happens before anything runs.
"""
from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time

import numpy as np

from edgec.compiler.deploy.artifact import check_interface, elf_machine, read_manifest, verify_library
from edgec.compiler.deploy.call_path import CallPath
from edgec.compiler.errors import ArtifactError, InputError
from edgec.compiler.tvm_compat import VirtualMachine, tensor, tvm

HOST_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def host_arch() -> str:
    return HOST_ARCH.get(platform.machine().lower(), platform.machine().lower())


def with_default_thresholds(manifest: dict, args, kwargs):
    """Add the manifest's default ``exit_thresholds`` input when the caller left it out."""
    info = manifest.get("early_exit") or {}
    if not info.get("thresholds_as_input") or info.get("thresholds") is None:
        return args, kwargs
    default = np.asarray(info["thresholds"], dtype="float32")
    n_inputs = len(manifest["inputs"])
    name = manifest["inputs"][-1]["name"]  # the split pass appends the thresholds input last
    if len(args) == 1 and isinstance(args[0], dict):
        kwargs, args = dict(args[0]), ()
    if kwargs and not args and name not in kwargs:
        kwargs = {**kwargs, name: default}
    elif args and not kwargs and len(args) == n_inputs - 1:
        args = (*args, default)
    return args, kwargs


def check_inputs(manifest: dict, args, kwargs) -> list:
    """Match positional or named inputs against the manifest; return arrays in order."""
    specs = manifest["inputs"]
    names = [s["name"] for s in specs]
    if args and kwargs:
        raise InputError("pass inputs either positionally or by name, not both")
    if len(args) == 1 and isinstance(args[0], dict):
        kwargs, args = args[0], ()
    if kwargs:
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise InputError(f"unknown input name(s) {unknown}; valid: {names}")
        missing = [n for n in names if n not in kwargs]
        if missing:
            raise InputError(f"missing input(s) {missing}; the model takes {names}")
        args = tuple(kwargs[n] for n in names)
    if len(args) != len(specs):
        raise InputError(f"the model takes {len(specs)} input(s) {names}, got {len(args)}")
    arrays = []
    for spec, value in zip(specs, args):
        arr = np.asarray(value)
        want = tuple(spec["shape"])
        if arr.shape != want:
            raise InputError(f"input {spec['name']!r} has shape {list(arr.shape)}, "
                             f"expected {list(want)}")
        if arr.dtype != np.dtype(spec["dtype"]):
            raise InputError(f"input {spec['name']!r} has dtype {arr.dtype}, expected {spec['dtype']}")
        arrays.append(np.ascontiguousarray(arr))
    return arrays


def flatten_outputs(result) -> list:
    """VM results (tensor, or nested tuples of tensors) -> flat list of numpy arrays."""
    if hasattr(result, "numpy"):
        return [result.numpy()]
    out = []
    for item in result:
        out += flatten_outputs(item)
    return out


class Model:
    """A loaded artifact. Call it with arrays (positional, dict, or keywords)."""

    def __init__(self, path: str, manifest: dict, vm):
        self.path, self.manifest, self._vm = path, manifest, vm
        self._call = CallPath(manifest, vm["main"])

    @property
    def input_names(self) -> list:
        return [s["name"] for s in self.manifest["inputs"]]

    exit_taken = None  # early-exit artifacts: the exit index of the last call

    def __call__(self, *args, **kwargs) -> list:
        """Outputs as numpy arrays. Not thread-safe: one Model per thread (see call_path)."""
        out = None if kwargs else self._call.run(args)  # numpy arrays as the manifest says
        if out is None:  # anything else: checked, with errors naming what is wrong
            args, kwargs = with_default_thresholds(self.manifest, args, kwargs)
            out = self._call.run_checked(check_inputs(self.manifest, args, kwargs))
        if self._call.exit_index:
            self.exit_taken = int(out[-1])
        return out

    def time(self, *args, repeat: int = 20, number: int = 1, warmup: int = 3, **kwargs) -> np.ndarray:
        """Per-run latencies in seconds (``repeat`` samples, each averaged over ``number``)."""
        args, kwargs = with_default_thresholds(self.manifest, args, kwargs)
        arrays = [tensor(a) for a in check_inputs(self.manifest, args, kwargs)]
        for _ in range(warmup):
            self._vm["main"](*arrays)
        samples = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(number):
                self._vm["main"](*arrays)
            samples.append((time.perf_counter() - t0) / number)
        return np.asarray(samples)


_LOADED: dict = {}  # real path -> the file's (size, mtime, inode) when this process loaded it


def load_library(path: str):
    """``tvm.runtime.load_module(path)``, fresh even when ``path`` was loaded before in this
    process and has been rebuilt since: the dynamic loader hands back the library already
    mapped under that name, so a model recompiled to the same path would run its old code
    (a notebook's compile -> load -> change -> compile -> load). A changed file is loaded
    from a private copy, removed once mapped."""
    real = os.path.realpath(path)
    st = os.stat(real)
    stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
    seen = _LOADED.setdefault(real, stamp)
    if seen == stamp:
        return tvm.runtime.load_module(path)
    fd, copy = tempfile.mkstemp(suffix=".so", prefix="edgec-reload-")
    os.close(fd)
    try:
        shutil.copyfile(real, copy)
        return tvm.runtime.load_module(copy)
    finally:
        os.unlink(copy)


def load(path: str) -> Model:
    """Load ``path`` (.so) with its manifest, after checking it can run here."""
    manifest = read_manifest(path)
    arch = elf_machine(path)
    here = host_arch()
    if arch != here:
        raise ArtifactError(f"{path} was built for {arch} (target {manifest['target']['name']}); "
                            f"this machine is {here}: run it on the board over RPC, e.g. "
                            "'edgec bench --tracker HOST:PORT --key KEY'")
    verify_library(path, manifest)  # a damaged .so can crash the process: check its bytes first
    try:
        lib = load_library(path)
        vm_text = tvm.relax.VMExecutable(lib).as_text()
    except Exception as e:
        raise ArtifactError(f"cannot load {path}: {str(e).strip().splitlines()[-1]}") from e
    check_interface(path, manifest, vm_text)
    return Model(path, manifest, VirtualMachine(lib, tvm.cpu()))
