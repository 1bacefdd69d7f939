"""PipelineConfig: the one frozen, validated description of a compile.

The CLI and the Python API both build it; nothing else takes a long list of
keyword arguments. Its fields stay flat (``PipelineConfig(prune=0.3, int8=True)``), and
each phase reads only its own group: ``prune_options``, ``int8_options``, ``kernels``,
``exit_plan()``. A group validates its own fields.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from edgec.compiler.errors import EdgecError
from edgec.passes.layout_names import CONV_LAYOUTS




class ConfigError(EdgecError):
    """A PipelineConfig field has an invalid value."""


def _choice(name: str, value, valid) -> None:
    if value not in valid:
        raise ConfigError(f"{name} {value!r} is not valid; valid: {', '.join(valid)}")


def _flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")


@dataclass(frozen=True)
class PruneOptions:
    """Structured pruning (PipelineConfig's ``prune*`` fields): the compress step's own."""

    ratio: float = 0.0
    criterion: str = "l1"
    plan: str | None = None
    multiple: int | None = None

    def __post_init__(self):
        from edgec.passes.prune_plan import CRITERIA

        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) \
                or not 0.0 <= self.ratio < 1.0:
            raise ConfigError(f"prune must be a fraction in [0, 1), got {self.ratio!r}")
        if self.ratio and self.plan:
            raise ConfigError(f"give prune {self.ratio} (--prune) or the plan {self.plan} "
                              "(--prune-plan), not both: a plan fixes the kept channels")
        if self.criterion not in CRITERIA:
            raise ConfigError(f"unknown prune_criterion {self.criterion!r}; "
                              f"valid: {', '.join(CRITERIA)}")
        if self.multiple is not None and (not isinstance(self.multiple, int)
                                          or self.multiple < 1):
            raise ConfigError(f"prune_multiple must be a positive integer or None, "
                              f"got {self.multiple!r}")

    @property
    def on(self) -> bool:
        return bool(self.ratio or self.plan)


@dataclass(frozen=True)
class Int8Options:
    """INT8 quantization (PipelineConfig's ``calib_*`` and ``int8_*`` fields, without the
    on/off switch ``int8``): how to calibrate and which kernels to use."""

    calib_method: str = "minmax"
    calib_samples: int = 256
    calib_percentile: float = 99.99
    scales: str | None = None
    keep_fp32: int | tuple = ()
    activation: str = "auto"
    reduce_range: str = "auto"
    kernel: str = "auto"
    depthwise: str = "kernel"
    pad_out: bool = True
    blocked: bool = True

    def __post_init__(self):
        _choice("calib_method", self.calib_method, ("minmax", "percentile", "entropy"))
        _choice("int8_activation", self.activation, ("auto", "uint8", "int8"))
        _choice("int8_reduce_range", self.reduce_range, ("auto", "on", "off"))
        _choice("int8_kernel", self.kernel, ("auto", "nchw"))
        _choice("int8_depthwise", self.depthwise, ("kernel", "plain"))
        _flag("int8_pad_out", self.pad_out)
        _flag("int8_blocked", self.blocked)
        if isinstance(self.calib_samples, bool) or not isinstance(self.calib_samples, int) \
                or self.calib_samples < 1:
            raise ConfigError(f"calib_samples must be a positive integer, got {self.calib_samples!r}")
        if not 50.0 < float(self.calib_percentile) <= 100.0:
            raise ConfigError(f"calib_percentile must be in (50, 100], got {self.calib_percentile}")
        keep = self.keep_fp32
        if isinstance(keep, list):
            object.__setattr__(self, "keep_fp32", tuple(keep))
        elif not (isinstance(keep, tuple) or (isinstance(keep, int) and not isinstance(keep, bool)
                                              and keep >= 0)):
            raise ConfigError(f"int8_keep_fp32 must be layer names or a count >= 0, got {keep!r}")


@dataclass(frozen=True)
class KernelOptions:
    """What shapes the kernels a model compiles to (see PipelineConfig's fields of the same
    names): the tuner tunes with the same options the build uses, so its records match."""

    conv_layout: str = "NCHWc"
    winograd: bool = True
    pad_channels: bool = True
    prepack_weights: bool = False
    fast_math: bool = True

    def __post_init__(self):
        for flag in ("winograd", "pad_channels", "prepack_weights", "fast_math"):
            _flag(flag, getattr(self, flag))
        if self.conv_layout not in CONV_LAYOUTS:
            raise ConfigError(f"unknown conv_layout {self.conv_layout!r}; "
                              f"valid: {', '.join(CONV_LAYOUTS)}")
        if self.prepack_weights and self.conv_layout != "NCHW":
            raise ConfigError("prepack_weights rewrites the weights of the plain layout: use it "
                              "with conv_layout 'NCHW' (NCHWc blocks the weights already)")


@dataclass(frozen=True)
class PipelineConfig:
    """What the pipeline does, phase by phase.

    target: a name from ``edgec targets`` (``host`` is detected).
    fold_batchnorm: fold inference batch norms into the preceding conv weights.
    fuse: run TVM's legalize + operator fusion (off only for debugging).
    tuning_logs: MetaSchedule database directory to apply ("auto": the committed
      ``tuning_logs/`` for the target; None: do not apply tuning).
    dump_ir: a directory to write the IR after each phase into (None: don't).
    prune: fraction of each prunable channel group to remove, in [0, 1) (0: off).
    prune_criterion: channel importance, one of l1, l2, bn_scale.
    prune_plan: a JSON PrunePlan to apply instead of planning (None: plan from ``prune``).
    prune_multiple: round kept channel counts up to this multiple (None: from the
      target's vector width, fp32 lanes).
    int8: quantize conv2d/matmul layers to INT8 (needs calibration data or int8_scales).
    calib_method: minmax | percentile | entropy; calib_samples: samples used;
    calib_percentile: the percentile kept by ``percentile``.
    int8_scales: a scale table JSON (from QAT or an earlier calibration) instead of calibrating.
    int8_keep_fp32: layer names to keep in FP32, or N: keep the N most sensitive ones.
    int8_activation: auto | uint8 | int8; int8_reduce_range: auto | on | off (7-bit weights).
    int8_kernel: auto (packed dot-product convs where the target has one: vpmaddubsw on AVX2,
      vpdpbusd on VNNI, sdot on ARM dotprod, smull + saddlp on ARM NEON) | nchw (plain convs).
    int8_depthwise: with packed kernels, depthwise convs run edgec's int8 depthwise kernel
      ("kernel") or Relax's plain grouped int8 conv ("plain", the path before that kernel).
    int8_pad_out: with packed kernels, convs/matmuls whose output channels do not fill the
      kernel's block are padded to it (False: they take plain int8 ops, as before).
    int8_blocked: with packed kernels, a layer whose consumers are all packed layers writes
      their blocked layout and they read it as it is (False: NCHW between all layers).
    early_exit: split a multi-exit model (outputs: exit logits..., final logits)
      into stages with a ``main`` that returns at the first confident exit.
    exit_thresholds: one value in [0, 1] per exit (baked, or the defaults of the input).
    exit_criterion: "max_prob" or "entropy" (see ``edgec.passes.exit_plan``).
    thresholds_as_input: the library takes an ``exit_thresholds`` input at run time.
    transfer_schedules: a task with no record of its own borrows the best schedule of a
      similar logged workload (same operators, other shapes; see ``tune.transfer``).
    prepack_weights: CPU weight prepacking: the weights of every fused kernel are marked
      layout-free, so a tuned schedule may store them in the layout it reads best
      (MetaSchedule's RewriteLayout); the rewrite runs once, at compile time, on the bound
      weights. Its kernels are other workloads than the plain ones: tune with the flag.
    conv_layout: NCHWc (default): FP32 convs run in NCHW[b]c, b = the target's FP32 vector
      lanes (see ``edgec.passes.conv_layout``); a conv with no tuned record gets a heuristic
      register tile (untuned resnet18 on the AVX-512 Xeon: 10.6 ms, against 1625 ms for
      TVM's default schedules in NCHW). NCHW: the convs as imported (TVM's schedules, or
      tuned records of NCHW workloads). INT8 kernels pack their own layout either way.
    winograd: with NCHWc, 3x3 stride-1 convs large enough to gain run as Winograd F(2x2, 3x3)
      (2.25x fewer multiplies; see ``edgec.passes.winograd``); False: all convs direct.
    pad_channels: with NCHWc, channel groups that do not fill the vector width get zero
      channels (24 -> 32 on AVX-512; see ``edgec.passes.pad_channels``); same results.
    fast_math: exp, sigmoid, tanh, erf (SiLU, GELU, softmax) as vectorizable polynomial
      approximations (``edgec.passes.fast_math``: within ~1e-6) instead of scalar libm calls.
    """

    target: str = "host"
    fold_batchnorm: bool = True
    fuse: bool = True
    tuning_logs: str | None = "auto"
    dump_ir: str | None = None
    prune: float = 0.0
    prune_criterion: str = "l1"
    prune_plan: str | None = None
    prune_multiple: int | None = None
    int8: bool = False
    calib_method: str = "minmax"
    calib_samples: int = 256
    calib_percentile: float = 99.99
    int8_scales: str | None = None
    int8_keep_fp32: int | tuple = ()
    int8_activation: str = "auto"
    int8_reduce_range: str = "auto"
    int8_kernel: str = "auto"
    int8_depthwise: str = "kernel"
    int8_pad_out: bool = True
    int8_blocked: bool = True
    early_exit: bool = False
    exit_thresholds: tuple | None = None
    exit_criterion: str = "max_prob"
    thresholds_as_input: bool = False
    transfer_schedules: bool = True
    prepack_weights: bool = False
    conv_layout: str = "NCHWc"
    winograd: bool = True
    pad_channels: bool = True
    fast_math: bool = True

    def __post_init__(self):
        from edgec.targets import get_target

        get_target(self.target)  # raises UnknownTargetError listing known targets
        for flag in ("fold_batchnorm", "fuse", "transfer_schedules", "int8", "early_exit",
                     "thresholds_as_input"):
            _flag(flag, getattr(self, flag))
        if isinstance(self.int8_keep_fp32, list):
            object.__setattr__(self, "int8_keep_fp32", tuple(self.int8_keep_fp32))
        # each group validates its own fields (and names them as the user wrote them)
        self.prune_options, self.int8_options, self.kernels  # noqa: B018
        self._check_exits()

    def _check_exits(self):
        if self.exit_thresholds is not None:
            object.__setattr__(self, "exit_thresholds", tuple(self.exit_thresholds))
        if self.early_exit:
            self.exit_plan()  # raises ExitPlanError naming the valid range / criteria
        elif self.exit_thresholds is not None or self.thresholds_as_input:
            raise ConfigError("exit thresholds are set but early_exit is off; enable early_exit")

    @property
    def prune_options(self) -> PruneOptions:
        """The pruning fields as one group (what the prune step reads)."""
        return PruneOptions(self.prune, self.prune_criterion, self.prune_plan,
                            self.prune_multiple)

    @property
    def int8_options(self) -> Int8Options:
        """The INT8 fields as one group (what the quantize step reads)."""
        return Int8Options(self.calib_method, self.calib_samples, self.calib_percentile,
                           self.int8_scales, self.int8_keep_fp32, self.int8_activation,
                           self.int8_reduce_range, self.int8_kernel, self.int8_depthwise,
                           self.int8_pad_out, self.int8_blocked)

    @property
    def kernels(self) -> KernelOptions:
        """The kernel-shaping fields as one group (what ``edgec tune`` must match)."""
        return KernelOptions(self.conv_layout, self.winograd, self.pad_channels,
                             self.prepack_weights, self.fast_math)

    def exit_plan(self):
        """The ExitPlan these fields describe (exit points are found in the model)."""
        from edgec.passes.exit_plan import ExitPlan

        return ExitPlan(None, self.exit_criterion, self.exit_thresholds, self.thresholds_as_input)

    def to_json(self) -> dict:
        return asdict(self)
