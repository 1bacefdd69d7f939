"""Early-exit split: stage parity with torch, control flow in the deployed .so, errors."""
import numpy as np
import pytest
import torch
from torch import nn

from conftest import seeded
from edgec.compiler import PipelineConfig, compile, load
from edgec.compiler.errors import EdgecError
from edgec.compiler.frontend import import_model
from edgec.passes.graph import bind
from edgec.compiler.train.exits import add_exits
from edgec.compiler.tvm_compat import relax, tensor, tvm
from edgec.compiler.zoo import MnistCNN
from edgec.passes.exit_plan import ExitPlan, ExitPlanError
from edgec.compiler.deploy.exit_bench import bench_artifacts, bench_over_data
from edgec.compiler.data import Split
from edgec.passes.exit_thresholds import measure_exit_seconds, scores
from edgec.passes.split_early_exits import SplitEarlyExits, split_early_exits, stage_names


@pytest.fixture(scope="module")
def exit_cnn():
    torch.manual_seed(0)
    model = add_exits(seeded(MnistCNN(c1=4, c2=8, hidden=16)), after=["bn1", "bn2"])
    x = torch.randn(1, 1, 28, 28)
    feats = {}
    hooks = [getattr(model.backbone, name).register_forward_hook(
        lambda _m, _i, out, n=name: feats.__setitem__(n, out.detach().numpy()))
        for name in ("bn1", "bn2")]
    with torch.no_grad():
        outs = [o.numpy() for o in model(x)]
    for h in hooks:
        h.remove()
    return model, x, outs, feats


@pytest.fixture(scope="module")
def split_vm(exit_cnn):
    model, x, _, _ = exit_cnn
    mod = split_early_exits(bind(import_model(model, (x,))), ExitPlan(thresholds_as_input=True))
    with tvm.target.Target("llvm"):
        lowered = relax.get_pipeline("zero")(mod)
    return mod, relax.VirtualMachine(tvm.compile(lowered, target="llvm"), tvm.cpu())


def _functions_with_if(mod):
    found = []
    for gv, f in mod.functions.items():
        relax.analysis.post_order_visit(
            f, lambda e, n=gv.name_hint: found.append(n) if isinstance(e, relax.If) else None)
    return set(found)


def test_split_structure(split_vm):
    mod, _ = split_vm
    relax.analysis.well_formed(mod)  # raises on an ill-formed module (0.27)
    assert stage_names(mod) == ["stage0", "stage1", "stage2"]
    for name in stage_names(mod):  # one dataflow block each: fusion and tuning work inside
        blocks = mod[name].body.blocks
        assert len(blocks) == 1 and isinstance(blocks[0], relax.DataflowBlock)
        assert str(mod[name].attrs["global_symbol"]) == name
    assert _functions_with_if(mod) == {"main"}
    main = mod["main"]
    assert [p.name for p in main.params] == ["x", "exit_thresholds"]
    assert [str(f.dtype) for f in main.ret_ty.fields] == ["float32", "int32"]
    convs = [mod[n].script().count("R.nn.conv2d") for n in stage_names(mod)]
    assert convs == [1, 1, 0]  # conv1 only in stage 0, conv2 only in stage 1


def test_stage_outputs_match_torch(exit_cnn, split_vm):
    _, x, outs, feats = exit_cnn
    _, vm = split_vm
    s0 = vm["stage0"](tensor(x.numpy()))
    np.testing.assert_allclose(s0[0].numpy(), outs[0], rtol=1e-4, atol=1e-5)  # exit head 0
    np.testing.assert_allclose(s0[2].numpy(), feats["bn1"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(s0[1].numpy()), scores(outs[0], "max_prob")[0], rtol=1e-5)
    s1 = vm["stage1"](s0[2])
    np.testing.assert_allclose(s1[0].numpy(), outs[1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s1[2].numpy(), feats["bn2"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(vm["stage2"](s1[2]).numpy(), outs[2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("thr, expect", [((1.0, 1.0), 2), ((0.0, 0.0), 0), ((1.0, 0.0), 1)])
def test_main_exits_by_threshold(exit_cnn, split_vm, thr, expect):
    _, x, outs, _ = exit_cnn
    _, vm = split_vm
    logits, index = vm["main"](tensor(x.numpy()), tensor(np.array(thr, "float32")))
    assert int(index.numpy()) == expect
    np.testing.assert_allclose(logits.numpy(), outs[expect], rtol=1e-4, atol=1e-5)
    # never exiting reproduces the final stage exactly (same compiled code)
    if expect == 2:
        s0 = vm["stage0"](tensor(x.numpy()))
        full = vm["stage2"](vm["stage1"](s0[2])[2]).numpy()
        np.testing.assert_array_equal(logits.numpy(), full)


def test_deployed_so_decides_by_itself(exit_cnn, tmp_path):
    model, x, outs, _ = exit_cnn
    path = str(tmp_path / "exits.so")
    cfg = PipelineConfig(early_exit=True, thresholds_as_input=True, exit_thresholds=(0.5, 0.5))
    manifest = compile(model, (x,), config=cfg, output=path)
    assert manifest["early_exit"]["count"] == 2 and manifest["early_exit"]["criterion"] == "max_prob"
    assert [s["name"] for s in manifest["inputs"]] == ["x", "exit_thresholds"]
    assert manifest["outputs"][1] == {"name": "output1", "shape": [], "dtype": "int32"}
    # the last compression pass; the lowering's conv_layout record (NCHWc) comes after it
    assert [p["name"] for p in manifest["passes"]] == ["split_early_exits", "conv_layout"]
    m = load(path)  # the .so and its manifest alone: no torch, no Python-side decision
    taken = []
    for thr in ([1.0, 1.0], [1.0, 0.0], [0.0, 0.0]):
        logits, index = m(x.numpy(), np.array(thr, "float32"))
        assert m.exit_taken == int(index)
        taken.append(m.exit_taken)
        np.testing.assert_allclose(logits, outs[m.exit_taken], rtol=1e-4, atol=1e-5)
    assert taken == [2, 1, 0]
    m(x.numpy())  # thresholds default to the manifest's
    assert m.exit_taken in (0, 1, 2)
    seconds = measure_exit_seconds(m, x.numpy(), repeat=2)
    assert len(seconds) == 3 and all(s > 0 for s in seconds)
    _bench_over_data_counts_exits(m, model)
    rng = np.random.default_rng(1)
    npz = str(tmp_path / "d.npz")
    # 6 per class: the smallest set whose val split is not empty (compiler/train/data.py)
    np.savez(npz, x=rng.normal(size=(60, 1, 28, 28)).astype("float32"), y=np.arange(60) % 10)
    res = bench_artifacts({"e": path}, npz, split="test", samples=5, rounds=1, quiet=True)
    assert res["e"]["samples"] == 5 and sum(e["count"] for e in res["e"]["per_exit"]) == 5
    with pytest.raises(EdgecError, match="unknown split 'dev'; valid: train, val, test"):
        bench_artifacts({"e": path}, npz, split="dev")


def _bench_over_data_counts_exits(m, model):
    rng = np.random.default_rng(0)
    data = Split(rng.normal(size=(12, 1, 28, 28)).astype("float32"), rng.integers(0, 10, 12))
    res = bench_over_data({"exits": m}, data, rounds=1, warmup=1, quiet=True)["exits"]
    with torch.no_grad():
        outs = [o.numpy() for o in model(torch.from_numpy(data.x))]
    default = scores(outs[0], "max_prob") > 0.5
    taken = np.where(default, 0, np.where(scores(outs[1], "max_prob") > 0.5, 1, 2))
    assert [e["count"] for e in res["per_exit"]] == [int((taken == k).sum()) for k in range(3)]
    chosen = np.choose(taken, [o.argmax(1) for o in outs])
    assert res["samples"] == 12 and res["accuracy"] == pytest.approx((chosen == data.y).mean() * 100)


def test_baked_thresholds_entropy(exit_cnn, tmp_path):
    model, x, outs, _ = exit_cnn
    for thr, expect in (((0.0, 0.0), 0), ((1.0, 1.0), 2)):
        path = str(tmp_path / f"baked{expect}.so")
        cfg = PipelineConfig(early_exit=True, exit_thresholds=thr, exit_criterion="entropy")
        compile(model, (x,), config=cfg, output=path)
        m = load(path)
        assert m.input_names == ["x"]
        logits, index = m(x.numpy())
        assert int(index) == expect == m.exit_taken
        np.testing.assert_allclose(logits, outs[expect], rtol=1e-4, atol=1e-5)


def test_split_works_on_other_ops():
    """An MLP with an exit after its first linear layer: no conv, a custom head."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    model = add_exits(mlp, after=["1"], num_classes=4, example=torch.randn(1, 16),
                      head=lambda c, n: nn.Linear(32, n))
    x = torch.randn(1, 16)
    mod = SplitEarlyExits(ExitPlan(thresholds=(1.0,)))(bind(import_model(model, (x,))))
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    logits, index = vm["main"](tensor(x.numpy()))
    with torch.no_grad():
        ref = model(x)
    assert int(index.numpy()) == 1
    np.testing.assert_allclose(logits.numpy(), ref[1].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vm["stage0"](tensor(x.numpy()))[0].numpy(), ref[0].numpy(),
                               rtol=1e-5, atol=1e-6)


def test_bad_thresholds_and_models(exit_cnn, mlp, tmp_path):
    model, x, _, _ = exit_cnn
    with pytest.raises(ExitPlanError, match=r"outside the valid range \[0, 1\]"):
        PipelineConfig(early_exit=True, exit_thresholds=(0.9, 1.5))
    with pytest.raises(ExitPlanError, match="unknown exit criterion 'margin'; valid: max_prob, entropy"):
        PipelineConfig(early_exit=True, exit_thresholds=(0.9, 0.9), exit_criterion="margin")
    with pytest.raises(ExitPlanError, match="needs thresholds"):
        PipelineConfig(early_exit=True)
    with pytest.raises(EdgecError, match="early_exit is off"):
        PipelineConfig(exit_thresholds=(0.5,))
    cfg = PipelineConfig(early_exit=True, exit_thresholds=(0.9,))
    with pytest.raises(ExitPlanError, match=r"1 exit threshold\(s\) given for 2 exit\(s\); give 2"):
        compile(model, (x,), config=cfg, output=str(tmp_path / "a.so"))
    plain, xp = mlp
    with pytest.raises(ExitPlanError, match="the model has 1 output; early exit needs outputs"):
        compile(plain, (xp,), config=cfg, output=str(tmp_path / "b.so"))
    assert not list(tmp_path.iterdir())


def test_plan_json_roundtrip():
    plan = ExitPlan((0, 2), ("max_prob", "entropy"), (0.9, 0.5)).resolve(4)
    assert ExitPlan.from_json(plan.to_json()) == plan
    with pytest.raises(ExitPlanError, match=r"increasing output indices in 0\.\.2"):
        ExitPlan((3,), thresholds=(0.5,)).resolve(4)
