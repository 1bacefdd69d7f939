"""Knowledge distillation: train a student to match a teacher's softened outputs.

Loss (Hinton et al.): ``alpha * KL(softmax(t/T) || softmax(s/T)) * T^2 + (1 - alpha) * CE(s, y)``.
The T^2 keeps the soft-target gradients on the scale of the CE term as T grows.
Works for any teacher/student pair with the same number of classes; a
multi-output model (e.g. one with exit heads) is judged by its last output.
"""
from __future__ import annotations

import torch
from torch import nn

from edgec.compiler.errors import EdgecError
from edgec.compiler.train.fit import evaluate, fit


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


def _last(out):
    return out[-1] if isinstance(out, (tuple, list)) else out


def distill(teacher: nn.Module, student: nn.Module, data, temperature: float = 4.0,
            alpha: float = 0.7, epochs: int = 3, lr: float = 1e-3, seed: int = 0,
            quiet: bool = False) -> dict:
    """Train ``student`` in place from ``teacher`` on ``data`` (a Dataset or a train Split).

    Returns the history: mean loss per epoch, and validation accuracy of both
    models when ``data`` is a Dataset.
    """
    if temperature <= 0:
        raise DistillError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise DistillError(f"alpha must be in [0, 1] (weight of the teacher term), got {alpha}")
    train = getattr(data, "train", data)
    teacher.eval()
    with torch.no_grad():
        t_classes = _last(teacher(torch.from_numpy(train.x[:1]))).shape[1]
        s_classes = _last(student.eval()(torch.from_numpy(train.x[:1]))).shape[1]
    if t_classes != s_classes:
        raise DistillError(f"teacher has {t_classes} classes, student {s_classes}; they must match")

    def loss_fn(model, x, y):
        with torch.no_grad():
            target = _last(teacher(x))
        return kd_loss(_last(model(x)), target, y, temperature, alpha)

    losses = fit(student, train, epochs=epochs, lr=lr, loss_fn=loss_fn, seed=seed,
                 quiet=quiet, desc="distill")
    history = {"loss": losses, "temperature": temperature, "alpha": alpha}
    if hasattr(data, "val"):
        history["student_val_acc"] = evaluate(student, data.val, output=-1)
        history["teacher_val_acc"] = evaluate(teacher, data.val, output=-1)
    return history


def param_count(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return int(sum(p.numel() for p in model.parameters()))
