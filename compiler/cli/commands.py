"""Foundation subcommands: compile, run, info, targets."""
from __future__ import annotations

import os

import numpy as np

from edgec.compiler.cli import command, emit
from edgec.compiler.errors import USER_ERRORS, EdgecError
from edgec.compiler.pt2_check import trusting


def _common(p, quiet=True):
    p.add_argument("--json", action="store_true", help="machine-readable output")
    if quiet:
        p.add_argument("--quiet", action="store_true", help="print nothing on success")


@command("compile", "compile a model (.onnx, .pt2, or module:factory) into a .so + manifest")
def cmd_compile(args):
    from edgec.compiler.specs import parse_input_spec

    specs = [parse_input_spec(s) for s in args.input or []]
    if args.no_tuning and args.tuning_logs:
        raise EdgecError("give --no-tuning or --tuning-logs DIR, not both")
    check_compile_outputs(args)
    with trusting(args.trust_model):
        _compile(args, specs)


def check_compile_outputs(args) -> None:
    """Before any work: the library and its manifest are writable and are none of the inputs."""
    from edgec.compiler.deploy.artifact import manifest_path
    from edgec.compiler.errors import BuildError
    from edgec.compiler.outputs import check_outputs

    if not args.output.endswith(".so"):
        raise BuildError(f"--output must end in .so (its manifest is the .json beside it), "
                         f"got {args.output!r}")
    model = args.model if os.path.exists(args.model) else None
    check_outputs({"--output": args.output, "its manifest": manifest_path(args.output)},
                  {"MODEL": model, "--prune-plan": args.prune_plan, "--scales": args.scales,
                   "--calib-data": args.calib_data, "--calibrate-exits": args.calibrate_exits,
                   "--tuning-logs": args.tuning_logs})


def _compile(args, specs):
    from edgec.compiler.api import compile as compile_model
    from edgec.compiler.specs import factory_model, is_factory

    config = compression_config(args, dump_ir=args.dump_ir, tuning_logs=None if args.no_tuning
                                else args.tuning_logs or "auto",
                                transfer_schedules=not args.no_schedule_transfer,
                                prepack_weights=args.prepack_weights,
                                conv_layout=args.conv_layout, winograd=args.winograd,
                                pad_channels=args.pad_channels, fast_math=args.fast_math)
    calib = calib_data(args, config)
    model, example = args.model, None
    if is_factory(model):
        model, example = factory_model(model, specs)
    from edgec.compiler.cli.exits import exit_config

    config = exit_config(args, config, model, example, specs or None, quiet=args.quiet or args.json)
    manifest = compile_model(model, example, config=config, output=args.output,
                             input_specs=specs or None, calib_data=calib)
    emit(args, manifest, f"wrote {args.output} ({manifest['library_bytes'] / 1e6:.2f} MB, "
         f"{manifest['arch']}, target {manifest['target']['name']}) and its manifest "
         f"{os.path.splitext(args.output)[0]}.json\n"
         f"tuning: {manifest.get('tuning', {}).get('summary', 'not applied')}")


def _compile_flags(p):
    p.add_argument("model", help="model.onnx, model.pt2, or package.module:factory")
    p.add_argument("--target", "-t", default="host", help="target name (see 'edgec targets')")
    p.add_argument("--output", "-o", default="model.so", help="output library (.so)")
    p.add_argument("--input", "-i", action="append", metavar="NAME:SHAPE[:DTYPE]",
                   help="input name, shape and dtype, e.g. x:1x3x224x224:float32 (repeatable)")
    p.add_argument("--dump-ir", metavar="DIR", help="write the IR after each phase into DIR")
    p.add_argument("--no-tuning", action="store_true", help="do not apply tuning logs")
    p.add_argument("--tuning-logs", metavar="DIR", help="apply this tuning log (default: the "
                   "committed tuning_logs/<target>, e.g. an 'edgec tune --log-dir' of your own)")
    p.add_argument("--no-schedule-transfer", action="store_true",
                   help="apply exact records only: a task without one keeps TVM's default "
                   "schedule instead of borrowing a similar workload's")
    trust_flag(p)
    layout_flags(p)
    prune_flags(p)
    int8_flags(p)
    from edgec.compiler.cli.exits import add_exit_flags

    add_exit_flags(p)
    _common(p)


def trust_flag(p):
    """--trust-model: load a .pt2 even when that unpickles (runs code from the file)."""
    p.add_argument("--trust-model", action="store_true",
                   help="load a .pt2 that needs pickle (it can run any code: only for files "
                        "from people you trust; see README 'Security')")


def layout_flags(p):
    """--prepack-weights and --conv-layout, shared by compile and tune (their kernels must
    be the same)."""
    from edgec.passes.layout_names import CONV_LAYOUTS

    p.add_argument("--conv-layout", default="NCHWc", choices=CONV_LAYOUTS,
                   help="NCHWc (default): FP32 convs in NCHW[b]c, b = the target's FP32 vector "
                        "lanes; NCHW: as imported (tune and compile with the same layout)")
    p.add_argument("--no-winograd", dest="winograd", action="store_false",
                   help="with NCHWc: every conv direct (default: 3x3 stride-1 convs that gain "
                        "run as Winograd F(2x2, 3x3))")
    p.add_argument("--no-pad-channels", dest="pad_channels", action="store_false",
                   help="with NCHWc: keep every channel count (default: zero-pad channel groups "
                        "that do not fill the vector width, e.g. 24 -> 32 on AVX-512)")
    p.add_argument("--no-fast-math", dest="fast_math", action="store_false",
                   help="exp, sigmoid, tanh, erf (SiLU, GELU, softmax) through libm calls "
                        "(default: vectorizable polynomial approximations, within ~1e-6)")
    p.add_argument("--prepack-weights", action="store_true",
                   help="let tuned kernels store their weights in the layout they read best "
                        "(rewritten at compile time; tune and compile with the same flag)")


def prune_flags(p):
    """The pruning flags of ``compile`` (and ``tune``, which must tune what compile builds)."""
    p.add_argument("--prune", type=float, default=0.0, metavar="R",
                   help="remove fraction R of every prunable channel group (0 = off)")
    p.add_argument("--prune-criterion", default="l1", metavar="C",
                   help="channel importance: l1, l2 or bn_scale")
    p.add_argument("--prune-plan", metavar="PLAN.json", help="apply this plan (see 'edgec prune-plan')")
    p.add_argument("--prune-multiple", type=int, metavar="N",
                   help="round kept channel counts to a multiple of N (default: from the target)")


def int8_flags(p):
    """The INT8 flags (``compile`` and ``tune``)."""
    g = p.add_argument_group("INT8 quantization")
    g.add_argument("--int8", action="store_true", help="quantize conv/linear layers to INT8")
    g.add_argument("--calib-data", metavar="DATA", help="calibration inputs: .npy, .npz (x) or mnist")
    g.add_argument("--calib-method", default="minmax", help="minmax | percentile | entropy")
    g.add_argument("--calib-samples", type=int, default=256, help="calibration samples used")
    g.add_argument("--scales", metavar="SCALES.json", help="scale table (QAT/calibration) to use")
    g.add_argument("--int8-keep-fp32", metavar="N|NAMES", default="0",
                   help="keep the N most sensitive layers in FP32, or comma-separated layer names")
    g.add_argument("--int8-activation", default="auto", help="auto | uint8 | int8")
    g.add_argument("--reduce-range", default="auto", help="7-bit weights: auto | on | off")
    g.add_argument("--int8-kernel", default="auto", choices=("auto", "nchw"),
                   help="auto: packed dot-product convs where the target has them (VNNI, "
                        "AVX2, ARM dotprod/NEON); nchw: Relax's plain int8 convs")
    g.add_argument("--int8-depthwise", default="kernel", choices=("kernel", "plain"),
                   help="with packed kernels: depthwise convs in edgec's int8 depthwise kernel "
                        "(default) or Relax's plain grouped int8 conv")
    g.add_argument("--no-int8-pad-out", dest="int8_pad_out", action="store_false",
                   help="with packed kernels: do not pad output channels to the kernel's "
                        "block (such convs then take plain int8 ops)")
    g.add_argument("--no-int8-blocked", dest="int8_blocked", action="store_false",
                   help="with packed kernels: NCHW between all int8 layers (default: the "
                        "kernel's blocked layout between packed layers)")


def compression_config(args, **fields):
    """The PipelineConfig of the prune and INT8 flags (plus ``fields``)."""
    from edgec.compiler.config import PipelineConfig

    return PipelineConfig(target=args.target, prune=args.prune,
                          prune_criterion=args.prune_criterion, prune_plan=args.prune_plan,
                          prune_multiple=args.prune_multiple, **_int8_config(args), **fields)


def _int8_config(args) -> dict:
    keep = args.int8_keep_fp32
    keep = int(keep) if keep.isdigit() else tuple(k for k in keep.split(",") if k)
    return dict(int8=args.int8 or bool(args.scales), calib_method=args.calib_method, calib_samples=args.calib_samples,
                int8_scales=args.scales, int8_keep_fp32=keep,
                int8_activation=args.int8_activation, int8_reduce_range=args.reduce_range,
                int8_kernel=args.int8_kernel, int8_depthwise=args.int8_depthwise,
                int8_pad_out=args.int8_pad_out, int8_blocked=args.int8_blocked)


def calib_data(args, config):
    """The calibration inputs the flags name (None without INT8 or --calib-data)."""
    if not config.int8 or not args.calib_data:
        return None
    from edgec.compiler.data import load_calib_data

    return load_calib_data(args.calib_data, config.calib_samples)


cmd_compile.configure = _compile_flags


def _read_inputs(items, names) -> dict:
    """``--input x.npy`` (in order) or ``--input NAME=x.npy`` -> {name: array}."""
    out = {}
    for i, item in enumerate(items):
        name, _, path = item.rpartition("=")
        if not name:
            if i >= len(names):
                raise EdgecError(f"more --input files than model inputs {names}")
            name = names[i]
        if not os.path.isfile(path):
            raise EdgecError(f"input file not found: {path}")
        try:
            out[name] = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise EdgecError(f"cannot read {path} as a .npy array: {e}") from e
    return out


def _call(model, inputs) -> list:
    """Run once; the library's own checks (a manifest edited by hand) become one line."""
    from edgec.compiler.deploy.artifact import manifest_path
    from edgec.compiler.errors import InputError

    try:
        return model(inputs)
    except USER_ERRORS:
        raise
    except Exception as e:  # noqa: BLE001  (TVM's VM raises ValueError/TVMError subclasses)
        last = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()][-1:] or [""]
        raise InputError(f"the library refused the inputs ({last[0].split(')  ')[-1]}); the "
                         f"manifest {manifest_path(model.path)} does not describe it (edited?): "
                         "restore it or rebuild with 'edgec compile'") from e


@command("run", "run a compiled .so on .npy inputs")
def cmd_run(args):
    from edgec.compiler.deploy.artifact import manifest_path
    from edgec.compiler.outputs import check_outputs, check_stdout
    from edgec.compiler.deploy.runtime import load

    inputs = {"MODEL": args.model, "its manifest": manifest_path(args.model)}
    inputs.update({f"--input {item}": item.rpartition("=")[2] for item in args.input})
    check_stdout(inputs)
    check_outputs({"--output": args.output}, inputs)
    model = load(args.model)
    outputs = _call(model, _read_inputs(args.input, model.input_names))
    if args.output:
        from edgec.compiler.deploy.artifact import atomic_path

        with atomic_path(args.output) as tmp:
            with open(tmp, "wb") as f:
                if len(outputs) == 1:
                    np.save(f, outputs[0])
                else:
                    np.savez(f, *outputs)
    data = {"outputs": [{"shape": list(o.shape), "dtype": str(o.dtype),
                         "argmax": int(np.argmax(o)), "values": o.ravel()[:10].tolist()}
                        for o in outputs]}
    lines = [f"output{i}: shape {d['shape']} {d['dtype']}, argmax {d['argmax']}"
             for i, d in enumerate(data["outputs"])]
    if model.exit_taken is not None:
        count = model.manifest["early_exit"]["count"]
        data["exit_taken"] = model.exit_taken
        lines.append(f"exit taken: {model.exit_taken} of 0..{count} ({count} = final head)")
    emit(args, data, "\n".join(lines))


def _run_flags(p):
    p.add_argument("model", help="compiled model.so (with model.json beside it)")
    p.add_argument("--input", "-i", action="append", required=True, metavar="[NAME=]FILE.npy")
    p.add_argument("--output", "-o", help="save outputs (.npy; several outputs: .npz)")
    _common(p)


cmd_run.configure = _run_flags


@command("info", "show an artifact's manifest")
def cmd_info(args):
    from edgec.compiler.deploy.artifact import read_manifest

    m = read_manifest(args.model)
    fmt = lambda s: f"{s['name']} {'x'.join(map(str, s['shape']))} {s['dtype']}"  # noqa: E731
    lines = [f"{args.model}: {m['arch']}, target {m['target']['name']}",
             f"  inputs:  {', '.join(fmt(s) for s in m['inputs'])}",
             f"  outputs: {', '.join(fmt(s) for s in m['outputs'])}",
             f"  library: {m.get('library_bytes', 0) / 1e6:.2f} MB, weights "
             f"{m.get('weights_bytes', 0) / 1e6:.2f} MB",
             f"  passes:  {', '.join(p['name'] for p in m.get('passes', [])) or 'none'}",
             f"  tuning:  {m.get('tuning', {}).get('summary', 'none')}",
             f"  versions: {m.get('versions')}"]
    emit(args, m, "\n".join(lines))


cmd_info.configure = lambda p: (p.add_argument("model", help="model.so"), _common(p, False))


@command("targets", "list the compilation targets")
def cmd_targets(args):
    from edgec.targets import list_targets

    rows = list_targets()
    data = [{"name": t.name, "arch": t.arch, "tvm": t.tvm, "cross_cc": t.cross_cc,
             "rpc_key": t.rpc_key, "int8": t.int8, "description": t.description} for t in rows]
    width = max(len(t.name) for t in rows)
    text = "\n".join(f"{t.name:<{width}}  {t.arch:<8} {t.description}" for t in rows)
    emit(args, data, text)


cmd_targets.configure = lambda p: _common(p, False)
