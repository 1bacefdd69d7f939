"""Exit heads, joint exit training, and knowledge distillation (torch side)."""
import numpy as np
import pytest
import torch
from torch import nn

from conftest import seeded
from edgec.compiler.train.data import Split
from edgec.compiler.train.distill import DistillError, distill, kd_loss, param_count
from edgec.compiler.train.exits import ExitError, add_exits, exit_head, exit_loss, train_exits
from edgec.compiler.zoo import MnistCNN


def _toy_split(n=256, seed=0):
    """A learnable 4-class task on 28x28 images: the class sets one bright quadrant."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.normal(0, 0.3, (n, 1, 28, 28)).astype(np.float32)
    for i, c in enumerate(y):
        r, q = divmod(int(c), 2)
        x[i, 0, r * 14:(r + 1) * 14, q * 14:(q + 1) * 14] += 1.5
    return Split(x, y.astype(np.int64))


def test_add_exits_outputs_match_heads_on_features():
    torch.manual_seed(0)
    backbone = seeded(MnistCNN(c1=4, c2=8, hidden=16))
    model = add_exits(backbone, after=["bn1", "bn2"])
    x = torch.randn(2, 1, 28, 28)
    feats = {}
    hooks = [getattr(backbone, n).register_forward_hook(
        lambda _m, _i, o, n=n: feats.__setitem__(n, o)) for n in ("bn1", "bn2")]
    with torch.no_grad():
        outs = model(x)
        ref_final = MnistCNN.forward(backbone, x)
        for h in hooks:
            h.remove()
        torch.testing.assert_close(outs[0], model.heads[0](feats["bn1"]))
        torch.testing.assert_close(outs[1], model.heads[1](feats["bn2"]))
    torch.testing.assert_close(outs[2], ref_final)
    assert [tuple(o.shape) for o in outs] == [(2, 10)] * 3
    assert model.heads[0][-1].in_features == 4 * 4 * 4  # 4 channels pooled to 4x4


def test_head_is_configurable():
    model = add_exits(MnistCNN(c1=4, c2=8, hidden=16), ["bn1"],
                      head=lambda c, n: exit_head(c, n, pool=2, hidden=8))
    linears = [m for m in model.heads[0] if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 8), (8, 10)]


def test_add_exits_errors():
    with pytest.raises(ExitError, match="cannot attach exits after \\['nope'\\]; known modules: "
                                        "\\['conv1', 'bn1'"):
        add_exits(MnistCNN(c1=4, c2=8, hidden=16), ["nope"])
    with pytest.raises(ExitError, match="outputs shape \\[1, 16\\]; exit heads need a 4-d"):
        add_exits(MnistCNN(c1=4, c2=8, hidden=16), ["fc1"])


def test_train_exits_learns_every_head():
    data = _toy_split()
    torch.manual_seed(0)
    model = add_exits(MnistCNN(c1=4, c2=8, hidden=16, num_classes=4), ["bn1"], num_classes=4)
    history = train_exits(model, data, epochs=5, lr=1e-2, quiet=True)
    assert len(history) == 5 and all(np.isfinite(history))  # KL targets move: not monotonic
    with torch.no_grad():
        outs = model(torch.from_numpy(data.x))
    for out in outs:  # both the exit and the final head beat chance (25%) by far
        assert (out.argmax(1).numpy() == data.y).mean() > 0.9
    assert all(p.requires_grad for p in model.parameters())


def test_exit_loss_weights_and_self_distillation():
    torch.manual_seed(0)
    model = add_exits(MnistCNN(c1=4, c2=8, hidden=16), ["bn1"])
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    outs = model(x)
    ce = [nn.functional.cross_entropy(o, y) for o in outs]
    plain = exit_loss(distill=0.0)(model, x, y)  # no teacher term: mean of the CEs
    torch.testing.assert_close(plain, (ce[0] + ce[1]) / 2)
    weighted = exit_loss(weights=[1.0, 3.0], distill=0.0)(model, x, y)
    torch.testing.assert_close(weighted, (ce[0] + 3 * ce[1]) / 4)
    with pytest.raises(ExitError, match="3 loss weights for 2 outputs"):
        exit_loss(weights=[1, 1, 1])(model, x, y)


def test_kd_loss_math():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    assert float(kd_loss(t, t, y, 4.0, 1.0)) == pytest.approx(0.0, abs=1e-6)
    ref = nn.functional.kl_div(nn.functional.log_softmax(s / 2, 1), nn.functional.softmax(t / 2, 1),
                               reduction="batchmean") * 4
    torch.testing.assert_close(kd_loss(s, t, y, 2.0, 1.0), ref)
    torch.testing.assert_close(kd_loss(s, t, y, 2.0, 0.0), nn.functional.cross_entropy(s, y))


def test_distill_moves_student_towards_teacher():
    data = _toy_split()
    torch.manual_seed(0)
    teacher = MnistCNN(c1=8, c2=16, hidden=32, num_classes=4)
    from edgec.compiler.train.fit import fit

    fit(teacher, data, epochs=2, lr=3e-3, quiet=True)
    torch.manual_seed(1)
    student = MnistCNN(c1=2, c2=4, hidden=8, num_classes=4)
    assert param_count(student) * 3 <= param_count(teacher)
    x = torch.from_numpy(data.x)
    with torch.no_grad():
        before = nn.functional.kl_div(nn.functional.log_softmax(student(x), 1),
                                      nn.functional.softmax(teacher(x), 1), reduction="batchmean")
    history = distill(teacher, student, data, temperature=3.0, alpha=0.9, epochs=2, lr=3e-3,
                      quiet=True)
    with torch.no_grad():
        after = nn.functional.kl_div(nn.functional.log_softmax(student(x), 1),
                                     nn.functional.softmax(teacher(x), 1), reduction="batchmean")
    assert len(history["loss"]) == 2 and float(after) < float(before)


def test_distill_errors():
    data = _toy_split(32)
    teacher, student = MnistCNN(c1=2, c2=4, hidden=8, num_classes=4), MnistCNN(c1=2, c2=4, hidden=8)
    with pytest.raises(DistillError, match="teacher has 4 classes, student 10"):
        distill(teacher, student, data, quiet=True)
    with pytest.raises(DistillError, match="temperature must be > 0"):
        distill(teacher, teacher, data, temperature=0, quiet=True)
    with pytest.raises(DistillError, match=r"alpha must be in \[0, 1\]"):
        distill(teacher, teacher, data, alpha=1.5, quiet=True)
