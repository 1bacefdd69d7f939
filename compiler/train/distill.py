"""Knowledge distillation: train a student to match a teacher's softened outputs.

Loss (Hinton et al.): ``alpha * KL(softmax(t/T) || softmax(s/T)) * T^2 + (1 - alpha) * CE(s, y)``.
The T^2 keeps the soft-target gradients on the scale of the CE term as T grows.
Works for any teacher/student pair with the same number of classes; a
multi-output model (e.g. one with exit heads) is judged by its last output.

``augment="affine"`` (or ``"strong-affine"``) is "consistent" function matching (Beyer et al. 2022): each
step draws one random view of the batch and teacher and student both see that
view, so the student learns the teacher's function off the training images too.
``train_alone`` is the matching no-teacher baseline: same views, hard labels.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from edgec.compiler.errors import EdgecError
from edgec.compiler.train.fit import evaluate, fit

# name -> random_affine settings: "affine" keeps every digit readable; "strong-affine"
# makes some views ambiguous (a rotated 6 or a shifted-off stroke), where hard labels
# mislead and the teacher's soft output does not
AUGMENTS = {"none": None, "affine": dict(rotate=10.0, shift=2.0, scale=0.1),
            "strong-affine": dict(rotate=20.0, shift=4.0, scale=0.2)}


class DistillError(EdgecError):
    """Distillation settings or models that cannot work together."""


def kd_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float):
    """Temperature-scaled KL to the teacher (times T^2) blended with CE to the labels."""
    t = float(temperature)
    soft = nn.functional.kl_div(nn.functional.log_softmax(student_logits / t, dim=1),
                                nn.functional.log_softmax(teacher_logits / t, dim=1),
                                reduction="batchmean", log_target=True) * (t * t)
    hard = nn.functional.cross_entropy(student_logits, labels)
    return alpha * soft + (1.0 - alpha) * hard


def random_affine(x: torch.Tensor, rotate: float = 10.0, shift: float = 2.0,
                  scale: float = 0.1) -> torch.Tensor:
    """A random view of each image of ``x`` (N, C, H, W): rotation within +-``rotate``
    degrees, shift within +-``shift`` pixels, zoom within 1 +- ``scale`` (torch RNG).

    Pixels pulled from outside repeat the border, i.e. the background of digit-like images.
    """
    n, _, h, w = x.shape
    angle = (torch.rand(n) * 2 - 1) * math.radians(rotate)
    zoom = 1 + (torch.rand(n) * 2 - 1) * scale
    move = (torch.rand(n, 2) * 2 - 1) * shift * 2 / torch.tensor([w, h])
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, move[:, 0]], 1),
                         torch.stack([sin, cos, move[:, 1]], 1)], 1)
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return nn.functional.grid_sample(x, grid, padding_mode="border", align_corners=False)


def _views(augment: str):
    if augment not in AUGMENTS:
        raise DistillError(f"unknown augment {augment!r}; valid: {', '.join(AUGMENTS)}")
    kwargs = AUGMENTS[augment]
    return (lambda x: x) if kwargs is None else (lambda x: random_affine(x, **kwargs))


def _last(out):
    return out[-1] if isinstance(out, (tuple, list)) else out


def kd_train_loss(teacher: nn.Module | None, temperature: float = 4.0, alpha: float = 0.7,
                  augment: str = "none"):
    """``loss_fn(model, x, y)`` for ``fit``: one view of the batch per step (see
    ``augment``), shared by teacher and student; ``teacher=None`` gives plain CE on it."""
    view = _views(augment)
    if teacher is not None:
        teacher.eval()

    def loss_fn(model, x, y):
        x = view(x)
        out = _last(model(x))
        if teacher is None:
            return nn.functional.cross_entropy(out, y)
        with torch.no_grad():
            target = _last(teacher(x))
        return kd_loss(out, target, y, temperature, alpha)

    return loss_fn


def _check(teacher, student, train, temperature, alpha, augment):
    if temperature <= 0:
        raise DistillError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise DistillError(f"alpha must be in [0, 1] (weight of the teacher term), got {alpha}")
    _views(augment)
    teacher.eval()
    with torch.no_grad():
        t_classes = _last(teacher(torch.from_numpy(train.x[:1]))).shape[1]
        s_classes = _last(student.eval()(torch.from_numpy(train.x[:1]))).shape[1]
    if t_classes != s_classes:
        raise DistillError(f"teacher has {t_classes} classes, student {s_classes}; they must match")


def distill(teacher: nn.Module, student: nn.Module, data, temperature: float = 4.0,
            alpha: float = 0.7, epochs: int = 3, lr: float = 1e-3, seed: int = 0,
            quiet: bool = False, augment: str = "none") -> dict:
    """Train ``student`` in place from ``teacher`` on ``data`` (a Dataset or a train Split).

    ``augment``: ``"none"`` (the training images as they are), ``"affine"`` or
    ``"strong-affine"`` (a random view per step, the same for teacher and student). Returns the history:
    mean loss per epoch, and validation accuracy of both models when ``data`` is a Dataset.
    """
    train = getattr(data, "train", data)
    _check(teacher, student, train, temperature, alpha, augment)
    losses = fit(student, train, epochs=epochs, lr=lr, seed=seed, quiet=quiet, desc="distill",
                 loss_fn=kd_train_loss(teacher, temperature, alpha, augment))
    history = {"loss": losses, "temperature": temperature, "alpha": alpha, "augment": augment}
    if hasattr(data, "val"):
        history["student_val_acc"] = evaluate(student, data.val, output=-1)
        history["teacher_val_acc"] = evaluate(teacher, data.val, output=-1)
    return history


def train_alone(student: nn.Module, data, epochs: int = 3, lr: float = 1e-3, seed: int = 0,
                quiet: bool = False, augment: str = "none") -> dict:
    """The no-teacher baseline of ``distill``: the same loop, views and seed, CE to the labels."""
    train = getattr(data, "train", data)
    losses = fit(student, train, epochs=epochs, lr=lr, seed=seed, quiet=quiet, desc="alone",
                 loss_fn=kd_train_loss(None, augment=augment))
    history = {"loss": losses, "augment": augment}
    if hasattr(data, "val"):
        history["student_val_acc"] = evaluate(student, data.val, output=-1)
    return history


def param_count(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return int(sum(p.numel() for p in model.parameters()))
