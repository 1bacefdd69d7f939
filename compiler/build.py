"""Build: run the pipeline, export one self-contained .so and its manifest."""
from __future__ import annotations

import os
import time

from edgec import compiler as _pkg
from edgec.compiler.deploy.artifact import (atomic_path, elf_machine, embed_manifest, file_digest,
                                            manifest_path, write_json_atomic)
from edgec.compiler.errors import BuildError
from edgec.compiler.outputs import check_writable
from edgec.compiler.pipeline import run
from edgec.compiler.toolchain import check_cross_compiler
from edgec.compiler.tvm_compat import cross_compiler, tvm_version
from edgec.passes.graph import RelaxModel, constant_bytes
from edgec.targets import get_target


def build(model: RelaxModel, config, output: str, calib_data=None) -> dict:
    """Compile ``model`` with ``config`` into ``output`` (.so) plus its .json manifest.

    Both files appear only when the build succeeded. Returns the manifest.
    calib_data: INT8 calibration inputs (see ``pipeline.run``).
    """
    return build_result(model, config, output, calib_data)[0]


def build_result(model: RelaxModel, config, output: str, calib_data=None) -> tuple:
    """``build``, also returning the PipelineResult (its ``model`` is the graph after
    the compression passes, for counting what the artifact computes)."""
    if not output.endswith(".so"):
        raise BuildError(f"output must end in .so, got {output!r}")
    target = get_target(config.target)
    check_cross_compiler(target)

    check_writable(output)  # before the long work, not after it
    start = time.perf_counter()
    result = run(model, config, calib_data)
    with atomic_path(output) as tmp:
        _export(result.executable, tmp, target)
        arch = elf_machine(tmp)
        if arch != target.arch:
            raise BuildError(f"built library is {arch}, expected {target.arch} for {target.name}")
        manifest = _manifest(model, config, result, target, output, tmp, start)
        if embed_manifest(tmp, manifest, target.cross_cc):  # a lone .so describes itself
            manifest.update(library_sha256=file_digest(tmp), library_bytes=os.path.getsize(tmp))
    write_json_atomic(manifest_path(output), manifest)
    return manifest, result


def _export(executable, path, target):
    try:
        if target.cross_cc:
            executable.export_library(path, fcompile=cross_compiler(target.cross_cc))
        else:
            executable.export_library(path)
    except Exception as e:
        raise BuildError(f"linking the library failed: {str(e).strip().splitlines()[-1]}") from e


def _early_exit(passes):
    split = next((p for p in passes if p.get("name") == "split_early_exits"), None)
    if split is None:
        return None
    plan = split["plan"]
    return {"count": split["num_exits"], "thresholds": plan["thresholds"],
            "criterion": plan["criterion"], "thresholds_as_input": plan["thresholds_as_input"],
            "exit_index_output": 1, "stages": split["stages"]}


def _manifest(model, config, result, target, output, built, start) -> dict:
    final = result.model or model  # passes may change inputs/outputs (early exit)
    outputs = [s.to_json() for s in final.outputs()]
    return {
        "format": "edgec-artifact",
        "version": 1,
        "library": os.path.basename(output),
        "library_sha256": file_digest(built),
        "library_bytes": os.path.getsize(built),
        "inputs": [s.to_json() for s in final.inputs],
        "outputs": outputs,
        "target": {"name": target.name, "tvm": target.tvm, "description": target.description},
        "arch": target.arch,
        "source": model.source,
        "import_notes": list(model.import_notes),  # what the frontend did (onnx_prepare)
        "weights_bytes": constant_bytes(result.lowered),
        "weights_bytes_imported": model.weight_bytes,
        "passes": result.passes,
        "early_exit": _early_exit(result.passes),
        "tuning": result.tuning,
        "step_seconds": result.seconds,
        "config": config.to_json(),
        "versions": {"edgec": _pkg.__version__, "tvm": tvm_version()},
        "build_seconds": round(time.perf_counter() - start, 2),
    }
