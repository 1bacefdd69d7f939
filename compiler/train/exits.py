"""Early-exit heads on a PyTorch model, and their joint training.

``add_exits(model, after=["conv1", ...])`` returns an ``ExitModel`` whose forward
gives ``(exit_0_logits, ..., final_logits)``: the shape the split pass
(``edgec.passes.split_early_exits``) expects. The heads read the output of the
named submodules through forward hooks, so any backbone works unchanged and
``torch.export`` traces the heads as ordinary ops.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from edgec.compiler.errors import EdgecError
from edgec.compiler.train.distill import kd_loss
from edgec.compiler.train.fit import fit


class ExitError(EdgecError):
    """Exit heads cannot be attached as asked."""


def exit_head(channels: int, num_classes: int, pool: int = 4, hidden: int = 0) -> nn.Module:
    """The default head: ReLU, adaptive average pool to ``pool`` x ``pool``, [hidden,] linear."""
    layers = [nn.ReLU(), nn.AdaptiveAvgPool2d(pool), nn.Flatten()]
    width = channels * pool * pool
    if hidden:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, num_classes))


class FeatureTap:
    """A forward hook keeping a layer's output in ``owner._features[name]`` (looked up at
    call time: torch.export swaps the dict while tracing). A plain class, not a partial of a
    bound method (which pickles through ``getattr``), so a cached ExitModel is read back by
    the weights-only unpickler (``safe_load`` allows this class by name)."""

    def __init__(self, owner, name: str):
        self.owner, self.name = owner, name

    def __call__(self, _module, _inputs, output):
        self.owner._features[self.name] = output


class ExitModel(nn.Module):
    """A backbone plus exit heads; forward returns ``(exit logits..., final logits)``."""
    def __init__(self, backbone: nn.Module, after: list, heads: list):
        super().__init__()
        self.backbone = backbone
        self.after = list(after)
        self.heads = nn.ModuleList(heads)
        self._features: dict = {}
        self.frozen_backbone = False  # train() then leaves the backbone in eval mode
        modules = dict(backbone.named_modules())
        for name in self.after:  # a module, not a closure: the model pickles as classes only
            modules[name].register_forward_hook(FeatureTap(self, name))

    def train(self, mode: bool = True):
        """As ``nn.Module.train``; a frozen backbone stays in eval mode, so its batch-norm
        statistics (and INT8 observers) are exactly those the heads see at inference."""
        super().train(mode)
        if getattr(self, "frozen_backbone", False):  # models pickled before it existed
            self.backbone.eval()
        return self

    def forward(self, x):
        self._features.clear()
        final = self.backbone(x)
        exits = [head(self._features[name]) for name, head in zip(self.after, self.heads)]
        self._features.clear()  # no reference to activations between calls
        return (*exits, final)


def output_shapes(model: nn.Module, names, example) -> dict:
    """{module name: output shape} of the named modules for one eval run on ``example``,
    in the order they ran."""
    shapes: dict = {}
    modules = dict(model.named_modules())

    def seen(name, _module, _inputs, out):  # returns None: the output is left as it is
        shapes.setdefault(name, tuple(out.shape))

    handles = [modules[n].register_forward_hook(functools.partial(seen, n)) for n in names]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in handles:
            h.remove()
    return shapes


def _feature_channels(backbone, after, example, need_4d: bool) -> list:
    shapes = output_shapes(backbone, after, example)
    for name in after:
        if need_4d and len(shapes[name]) != 4:
            raise ExitError(f"module {name!r} outputs shape {list(shapes[name])}; exit heads "
                            "need a 4-d (N, C, H, W) feature map, or pass head=FACTORY")
    return [shapes[n][1] for n in after]


def add_exits(model: nn.Module, after: list, num_classes: int = 10, example=None,
              head=None, seed: int = 0) -> ExitModel:
    """Attach one exit head after each module named in ``after`` (in forward order).

    example: an input tensor used to find each feature map's channel count
    (default: one 1x1x28x28 image). head: ``head(channels, num_classes) -> nn.Module``
    (default: ``exit_head``, ReLU + 4x4 average pool + linear).
    """
    names = dict(model.named_modules())
    unknown = [n for n in after if n not in names or n == ""]
    if not after or unknown:
        known = [n for n in names if n][:20]
        raise ExitError(f"cannot attach exits after {unknown or after}; known modules: {known}")
    example = torch.zeros(1, 1, 28, 28) if example is None else example
    channels = _feature_channels(model, after, example, need_4d=head is None)
    torch.manual_seed(seed)
    make = head or exit_head
    heads = [make(c, num_classes) for c in channels]
    return ExitModel(model, after, heads).eval()


def exit_loss(weights=None, temperature: float = 3.0, distill: float = 0.5):
    """Loss for joint training: weighted CE of every output plus self-distillation.

    Each exit also matches the final head's softened distribution (KL * T^2, the
    final logits detached), weighted by ``distill``; the final head gets plain CE.
    """
    def loss_fn(model, x, y):
        outs = model(x)
        w = weights or [1.0] * len(outs)
        if len(w) != len(outs):
            raise ExitError(f"{len(w)} loss weights for {len(outs)} outputs")
        final = outs[-1]
        total = w[-1] * nn.functional.cross_entropy(final, y)
        for wk, logits in zip(w[:-1], outs[:-1]):
            total = total + wk * kd_loss(logits, final.detach(), y, temperature, distill)
        return total / sum(w)

    return loss_fn


def train_exits(model: ExitModel, train, epochs: int = 3, lr: float = 1e-3, weights=None,
                temperature: float = 3.0, distill: float = 0.5, freeze_backbone: bool = False,
                seed: int = 0, quiet: bool = False) -> list:
    """Train backbone and heads jointly (or the heads alone with ``freeze_backbone``).

    Returns the mean loss per epoch.
    """
    for p in model.backbone.parameters():
        p.requires_grad_(not freeze_backbone)
    model.frozen_backbone = freeze_backbone
    try:
        return fit(model, train, epochs=epochs, lr=lr, seed=seed, quiet=quiet, desc="exits",
                   loss_fn=exit_loss(weights, temperature, distill))
    finally:
        model.frozen_backbone = False
        for p in model.backbone.parameters():
            p.requires_grad_(True)
