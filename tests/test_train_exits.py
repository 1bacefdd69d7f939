"""Exit heads, joint exit training, and knowledge distillation (torch side)."""
import numpy as np
import pytest
import torch
from torch import nn

from conftest import seeded
from edgec.compiler.data import Split
from edgec.compiler.train.distill import (DistillError, distill, kd_loss, kd_train_loss, param_count,
                                          random_affine, train_alone)
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
    with pytest.raises(DistillError, match="unknown augment 'flip'; valid: none, affine, strong-affine"):
        distill(teacher, teacher, data, augment="flip", quiet=True)
    with pytest.raises(DistillError, match="unknown augment 'flip'; valid: none, affine, strong-affine"):
        train_alone(teacher, data, augment="flip", quiet=True)


def test_random_affine_views():
    x = torch.from_numpy(_toy_split(8).x)
    torch.manual_seed(0)
    view = random_affine(x)
    torch.manual_seed(0)
    assert view.shape == x.shape and torch.equal(view, random_affine(x))  # seeded
    assert not torch.allclose(view, x, atol=1e-2)
    torch.testing.assert_close(random_affine(x, rotate=0, shift=0, scale=0), x, atol=1e-5, rtol=0)
    flat = torch.full((2, 1, 28, 28), -0.42)  # a blank image stays blank: border padding
    torch.testing.assert_close(random_affine(flat), flat)
    # a pure shift moves the content by the drawn number of pixels (grid maps out -> in)
    blob = torch.full((1, 1, 28, 28), -0.42)
    blob[0, 0, 11:17, 9:15] = 2.0
    torch.manual_seed(0)
    moved = random_affine(blob, rotate=0, shift=3, scale=0)
    torch.manual_seed(0)
    torch.rand(2)  # the angle and zoom draws
    dx, dy = ((torch.rand(1, 2) * 2 - 1) * 3)[0].tolist()

    def centre(img):
        w = (img[0, 0] + 0.42).clamp(min=0)
        rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
        return float((w * cols).sum() / w.sum()), float((w * rows).sum() / w.sum())

    (cx0, cy0), (cx1, cy1) = centre(blob), centre(moved)
    assert cx1 - cx0 == pytest.approx(-dx, abs=0.05) and cy1 - cy0 == pytest.approx(-dy, abs=0.05)


class _Recorder(nn.Module):
    """A linear classifier that keeps the last input it saw."""

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(28 * 28, 4)

    def forward(self, x):
        self.seen = x.detach().clone()
        return self.fc(torch.flatten(x, 1))


def test_teacher_and_student_see_the_same_view():
    data = _toy_split(16)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    teacher, student = _Recorder(0), _Recorder(1)
    torch.manual_seed(3)
    loss = kd_train_loss(teacher, temperature=2.0, alpha=0.5, augment="affine")(student, x, y)
    assert torch.equal(teacher.seen, student.seen) and not torch.allclose(student.seen, x)
    torch.testing.assert_close(loss, kd_loss(student(student.seen), teacher(student.seen), y, 2.0, 0.5))
    torch.manual_seed(3)  # the no-teacher arm draws the very same view and uses the labels
    alone = kd_train_loss(None, augment="affine")(student, x, y)
    torch.testing.assert_close(alone, nn.functional.cross_entropy(student(student.seen), y))
    plain = kd_train_loss(teacher, 2.0, 0.5)(student, x, y)  # augment="none": the batch as is
    assert torch.equal(student.seen, x) and torch.equal(teacher.seen, x)
    torch.testing.assert_close(plain, kd_loss(student(x), teacher(x), y, 2.0, 0.5))


def test_augmented_distill_and_baseline_train():
    data = _toy_split(128)
    torch.manual_seed(0)
    teacher = MnistCNN(c1=4, c2=8, hidden=16, num_classes=4)
    train_alone(teacher, data, epochs=2, lr=3e-3, quiet=True)

    def run(fn, **kw):
        torch.manual_seed(1)
        student = MnistCNN(c1=2, c2=4, hidden=8, num_classes=4)
        return fn(student, data, epochs=1, lr=3e-3, augment="affine", quiet=True, **kw), student

    (h1, s1), (h2, s2) = run(lambda s, d, **kw: distill(teacher, s, d, **kw)), \
        run(lambda s, d, **kw: distill(teacher, s, d, **kw))
    assert h1["augment"] == "affine" and h1["loss"] == h2["loss"]  # deterministic
    assert all(torch.equal(a, b) for a, b in zip(s1.state_dict().values(), s2.state_dict().values()))
    h3, _ = run(train_alone)
    assert len(h3["loss"]) == 1 and h3["loss"] != h1["loss"] and np.isfinite(h3["loss"][0])


def test_prune_finetune_distillation_loss_is_kd_loss():
    from edgec.compiler.train.prune_finetune import distillation_loss

    teacher, student = _Recorder(0), _Recorder(1)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(distillation_loss(teacher, 3.0, 0.4)(student, x, y),
                               kd_loss(student(x), teacher(x), y, 3.0, 0.4))
