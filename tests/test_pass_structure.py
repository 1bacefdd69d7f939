"""Before/Expected modules for the Relax passes the pipeline's steps run, compared with
``tvm.ir.assert_structural_equal`` as TVM's own pass tests are written (the numeric checks
of each pass live in its own test file). Expected modules that call edgec's TE kernels are
built with the BlockBuilder from the same compute: the comparison is of the graph surgery.
"""
import functools

import numpy as np
import torch
from tvm.script import ir as I
from tvm.script import relax as R

from conftest import seeded
from edgec.compiler.frontend import import_model
from edgec.compiler.tvm_compat import relax, tvm
from edgec.passes.clip_min_max import ClipAsMinMax
from edgec.passes.conv_layout import convert_conv_layout, legalize_blocked_conv
from edgec.passes.dw_pw_fuse import FuseDwPw
from edgec.passes.graph import RelaxModel, TensorSpec, bind
from edgec.passes.pad_channels import pad_channels
from edgec.passes.kernels.conv2d_nchwc import dw_pw_nchwc
from edgec.passes.simplify import Simplify
from edgec.passes.split_early_exits import SplitEarlyExits
from edgec.passes.stem_layout import SinkStemTransforms


@I.ir_module
class StemBefore:
    """After ConvertLayout: the RGB stem (3 channels: not blockable) computes NCHW, and the
    activation is transformed to NCHW8c before the next conv."""

    @R.function
    def main(x: R.Tensor((1, 3, 8, 8), "float32"), w: R.Tensor((16, 3, 3, 3), "float32"),
             w2: R.Tensor((2, 16, 3, 3, 8), "float32")):
        with R.dataflow():
            c = R.nn.conv2d(x, w, padding=[1, 1, 1, 1])
            r = R.nn.relu(c)
            p = R.nn.max_pool2d(r, pool_size=[2, 2], strides=[2, 2])
            t = R.layout_transform(p, index_map=lambda n, c, h, w: (n, c // 8, h, w, c % 8))
            o = R.nn.conv2d(t, w2, padding=[1, 1, 1, 1], data_layout="NCHW8c",
                            kernel_layout="OIHW8o", out_layout="NCHW8c")
            R.output(o)
        return o


@I.ir_module
class StemExpected:
    """The transform moved into the stem conv's out_layout; ReLU and the pool follow."""

    @R.function
    def main(x: R.Tensor((1, 3, 8, 8), "float32"), w: R.Tensor((16, 3, 3, 3), "float32"),
             w2: R.Tensor((2, 16, 3, 3, 8), "float32")):
        with R.dataflow():
            c = R.nn.conv2d(x, w, padding=[1, 1, 1, 1], out_layout="NCHW8c", out_dtype="float32")
            r = R.nn.relu(c)
            p = R.nn.max_pool2d(r, pool_size=[2, 2], strides=[2, 2], layout="NCHW8c",
                                out_layout="NCHW8c")
            t = p
            o = R.nn.conv2d(t, w2, padding=[1, 1, 1, 1], data_layout="NCHW8c",
                            kernel_layout="OIHW8o", out_layout="NCHW8c")
            R.output(o)
        return o


def test_sink_stem_transforms():
    tvm.ir.assert_structural_equal(SinkStemTransforms()(StemBefore), StemExpected)


@I.ir_module
class StemNotAStem:
    """A 16-channel input divides by the block: that conv is blocked by ConvertLayout
    itself, so the sink leaves the module as it is."""

    @R.function
    def main(x: R.Tensor((1, 16, 8, 8), "float32"), w: R.Tensor((16, 16, 3, 3), "float32"),
             w2: R.Tensor((2, 16, 3, 3, 8), "float32")):
        with R.dataflow():
            c = R.nn.conv2d(x, w, padding=[1, 1, 1, 1])
            t = R.layout_transform(c, index_map=lambda n, c, h, w: (n, c // 8, h, w, c % 8))
            o = R.nn.conv2d(t, w2, padding=[1, 1, 1, 1], data_layout="NCHW8c",
                            kernel_layout="OIHW8o", out_layout="NCHW8c")
            R.output(o)
        return o


def test_sink_stem_transforms_declines_a_blockable_conv():
    tvm.ir.assert_structural_equal(SinkStemTransforms()(StemNotAStem), StemNotAStem)


@I.ir_module
class DwPwBefore:
    """A blocked depthwise conv, ReLU, and the 1x1 conv after it (16 rows: fusable)."""

    @R.function
    def main(x: R.Tensor((1, 2, 16, 16, 8), "float32"), wd: R.Tensor((2, 1, 3, 3, 8), "float32"),
             wp: R.Tensor((4, 16, 1, 1, 8), "float32")):
        with R.dataflow():
            d = R.nn.conv2d(x, wd, padding=[1, 1, 1, 1], groups=16, data_layout="NCHW8c",
                            kernel_layout="OIHW8o", out_layout="NCHW8c", out_dtype="float32")
            r = R.nn.relu(d)
            o = R.nn.conv2d(r, wp, data_layout="NCHW8c", kernel_layout="OIHW8o",
                            out_layout="NCHW8c", out_dtype="float32")
            R.output(o)
        return o


def _dw_pw_expected():
    """One call_tir of the fused kernel (depthwise, relu, 1x1), marked out-elementwise
    fusable so FuseOps fuses what follows into it."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 2, 16, 16, 8), "float32"))
    wd = relax.Var("wd", relax.TensorType((2, 1, 3, 3, 8), "float32"))
    wp = relax.Var("wp", relax.TensorType((4, 16, 1, 1, 8), "float32"))
    with bb.function("main", [x, wd, wp]):
        with bb.dataflow():
            out = bb.emit_output(bb.call_te(dw_pw_nchwc, x, wd, wp, ops=["relu"],
                                            dw_params=dict(strides=[1, 1], padding=[1, 1, 1, 1],
                                                           dilation=[1, 1], groups=16,
                                                           out_dtype="float32"),
                                            primfunc_name_hint="conv2d_nchwc_dw_pw"))
        bb.emit_func_output(out)
    mod = bb.get()
    gv = mod.get_global_var("conv2d_nchwc_dw_pw")
    mod[gv] = mod[gv].with_attr("op_pattern", 4)
    return mod


def test_fuse_dw_pw():
    tvm.ir.assert_structural_equal(FuseDwPw()(DwPwBefore), _dw_pw_expected())


def test_fuse_dw_pw_declines_a_short_map():
    """Below ``min_rows`` output rows the fused kernel has too little parallel work."""
    tvm.ir.assert_structural_equal(FuseDwPw(min_rows=17)(DwPwBefore), DwPwBefore)


@I.ir_module
class SimplifyBefore:
    @R.function
    def main(x: R.Tensor((1, 2, 4, 4), "float32"), w: R.Tensor((2, 2, 1, 1), "float32"),
             gamma: R.Tensor((2,), "float32"), beta: R.Tensor((2,), "float32"),
             mean: R.Tensor((2,), "float32"), var: R.Tensor((2,), "float32")):
        with R.dataflow():
            c = R.nn.conv2d(x, w)
            bn = R.nn.batch_norm(c, gamma, beta, mean, var, axis=1)
            y = bn[0]
            R.output(y)
        return y


def test_simplify_decomposes_inference_batch_norm():
    """Unbound weights cannot fold into the conv: the batch norm becomes its inference
    arithmetic (per-channel subtract, divide by sqrt(var + eps), scale, shift)."""
    after = Simplify(fold_batchnorm=True)(SimplifyBefore)
    ops = []
    relax.analysis.post_order_visit(after["main"].body, lambda e: ops.append(e.op.name) if
                                    isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op)
                                    else None)
    assert "relax.nn.batch_norm" not in ops and ops[0] == "relax.nn.conv2d"
    assert {"relax.subtract", "relax.sqrt", "relax.divide", "relax.multiply", "relax.add"} <= set(ops)


class _TwoExits(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 3)
        self.b = torch.nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.head(h), self.b(h)


def test_split_early_exits_stages_and_branch():
    """The split: one Relax function per stage, and a ``main`` that runs stage 0, scores
    its exit and branches with ``If``; its outputs are (logits, exit index)."""
    from edgec.passes.exit_plan import ExitPlan

    mod = bind(import_model(seeded(_TwoExits()), (torch.randn(1, 4),)))
    after = SplitEarlyExits(ExitPlan(thresholds=(0.5,)))(mod)
    stages = sorted(gv.name_hint for gv, f in after.functions.items()
                    if isinstance(f, relax.Function) and gv.name_hint != "main")
    assert len(stages) == 2
    ifs = []
    relax.analysis.post_order_visit(after["main"].body,
                                    lambda e: ifs.append(e) if isinstance(e, relax.If) else None)
    assert len(ifs) == 1
    ret = after["main"].ret_ty
    assert isinstance(ret, relax.TupleType) and len(ret.fields) == 2
    assert str(ret.fields[1].dtype) == "int32"
    # bind again and split again: the same module (the pass is deterministic)
    tvm.ir.assert_structural_equal(SplitEarlyExits(ExitPlan(thresholds=(0.5,)))(mod), after)
    np.testing.assert_equal(len(after["main"].params), 1)


@I.ir_module
class LayoutBefore:
    @R.function
    def main(x: R.Tensor((1, 16, 8, 8), "float32"), w: R.Tensor((16, 16, 3, 3), "float32")):
        with R.dataflow():
            c = R.nn.conv2d(x, w, padding=[1, 1, 1, 1])
            r = R.nn.relu(c)
            R.output(r)
        return r


@I.ir_module
class LayoutExpected:
    """Before legalization: the conv in NCHW8c x OIHW8o, the ReLU following it, the
    graph's edges transformed (the input, the weight, the output)."""

    @R.function
    def main(x: R.Tensor((1, 16, 8, 8), "float32"), w: R.Tensor((16, 16, 3, 3), "float32")):
        with R.dataflow():
            xb = R.layout_transform(x, index_map=lambda n, c, h, w: (n, c // 8, h, w, c % 8))
            wb = R.layout_transform(w, index_map=lambda o, i, h, w: (o // 8, i, h, w, o % 8))
            c = R.nn.conv2d(xb, wb, padding=[1, 1, 1, 1], data_layout="NCHW8c",
                            kernel_layout="OIHW8o", out_layout="NCHW8c")
            rb = R.nn.relu(c)
            r = R.layout_transform(rb, index_map=lambda n, c, h, w, b: (n, c * 8 + b, h, w))
            R.output(r)
        return r


def test_convert_conv_layout():
    """The layout pass: ConvertLayout to the target's block, then every op legalized, the
    blocked conv to edgec's NCHW[b]c compute (``legalize_blocked_conv``)."""
    hook = functools.partial(legalize_blocked_conv, block=8, winograd=False)
    expected = relax.transform.LegalizeOps({"relax.nn.conv2d": hook})(LayoutExpected)
    tvm.ir.assert_structural_equal(convert_conv_layout(LayoutBefore, 8, winograd=False), expected)


def test_convert_conv_layout_leaves_a_plain_conv_of_an_excluded_key():
    """A conv ``layout_fallback`` excluded stays NCHW: no transform, TVM's own legalization."""
    from edgec.passes.conv_layout import conv_key

    conv = LayoutBefore["main"].body.blocks[0].bindings[0].value
    after = convert_conv_layout(LayoutBefore, 8, winograd=False, exclude={conv_key(conv)})
    tvm.ir.assert_structural_equal(after, relax.transform.LegalizeOps()(LayoutBefore))


@I.ir_module
class PadBefore:
    @R.function
    def main(x: R.Tensor((1, 2, 4, 4), "float32"), w1: R.Tensor((6, 2, 3, 3), "float32"),
             w2: R.Tensor((3, 6, 1, 1), "float32")):
        R.func_attr({"num_input": 1})
        with R.dataflow():
            y = R.nn.conv2d(x, w1, padding=[1, 1, 1, 1])
            r = R.nn.relu(y)
            out = R.nn.conv2d(r, w2)
            R.output(out)
        return out


@I.ir_module
class PadExpected:
    """The 6-channel group padded to the 8 lanes: w1 gains 2 zero filters, w2 2 zero input
    columns; the model's input and output keep their channels."""

    @R.function
    def main(x: R.Tensor((1, 2, 4, 4), "float32"), w1: R.Tensor((8, 2, 3, 3), "float32"),
             w2: R.Tensor((3, 8, 1, 1), "float32")):
        R.func_attr({"num_input": 1})
        with R.dataflow():
            y = R.nn.conv2d(x, w1, padding=[1, 1, 1, 1])
            r = R.nn.relu(y)
            out = R.nn.conv2d(r, w2)
            R.output(out)
        return out


def test_pad_channels():
    """The pad step's pass: structure, the padded weights' values, and the record."""
    rng = np.random.default_rng(0)
    params = {"w1": rng.standard_normal((6, 2, 3, 3)).astype("float32"),
              "w2": rng.standard_normal((3, 6, 1, 1)).astype("float32")}
    model = RelaxModel(PadBefore, params, (TensorSpec("x", (1, 2, 4, 4), "float32"),))
    after, record = pad_channels(model, 8)
    tvm.ir.assert_structural_equal(after.mod, PadExpected)
    np.testing.assert_array_equal(after.params["w1"][:6], params["w1"])
    np.testing.assert_array_equal(after.params["w2"][:, :6], params["w2"])
    assert not after.params["w1"][6:].any() and not after.params["w2"][:, 6:].any()
    assert record["channels"] == [[6, 8]]


@I.ir_module
class Convs:
    @R.function
    def main(x: R.Tensor((1, 2, 8, 8, 8), "float32"), w: R.Tensor((2, 16, 3, 3, 8), "float32"),
             v: R.Tensor((1, 16, 8, 8), "float32"), u: R.Tensor((16, 16, 3, 3), "float32"),
             d: R.Tensor((16, 1, 3, 3), "float32"), a: R.Tensor((1, 32), "float32"),
             b: R.Tensor((32, 10), "float32")):
        with R.dataflow():
            blocked = R.nn.conv2d(x, w, padding=[1, 1, 1, 1], data_layout="NCHW8c",
                                  kernel_layout="OIHW8o", out_layout="NCHW8c")
            plain = R.nn.conv2d(v, u, padding=[1, 1, 1, 1])
            depthwise = R.nn.conv2d(v, d, padding=[1, 1, 1, 1], groups=16)
            fc = R.matmul(a, b)
            R.output(blocked, plain, depthwise, fc)
        return (blocked, plain, depthwise, fc)


def test_one_mac_counter_reads_the_kernel_layout():
    """The same conv counts the same MACs plain (OIHW) and blocked (OIHW8o); a depthwise
    conv reads one input channel per output; a matmul its inner dimension."""
    from edgec.passes.count_macs import call_macs, count_macs

    calls = [b.value for b in Convs["main"].body.blocks[0].bindings]
    conv = 16 * 8 * 8 * 16 * 9
    assert [call_macs(c) for c in calls] == [conv, conv, 16 * 8 * 8 * 9, 32 * 10]
    assert count_macs(Convs) == 2 * conv + 16 * 8 * 8 * 9 + 320


@I.ir_module
class ClipBefore:
    @R.function
    def main(x: R.Tensor((1, 8), "float32")):
        with R.dataflow():
            y = R.clip(x, 0.0, 6.0)
            R.output(y)
        return y


@I.ir_module
class ClipExpected:
    @R.function
    def main(x: R.Tensor((1, 8), "float32")):
        with R.dataflow():
            lo = R.maximum(x, R.const(0.0, "float32"))
            y = R.minimum(lo, R.const(6.0, "float32"))
            R.output(y)
        return y


def test_clip_as_min_max():
    """ReLU6 as two elementwise ops ConvertLayout can move (the dpl rewrite)."""
    tvm.ir.assert_structural_equal(ClipAsMinMax()(ClipBefore), ClipExpected)
