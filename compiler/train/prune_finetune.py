"""Recovery after channel pruning, on the torch side: masks, fine-tuning, distillation.

A PrunePlan removes channel ``c`` of a group from every weight the group touches.
In the dense torch model the same function is obtained by zeroing the *consumer*
columns that read ``c`` (the next conv's input channel, or the flattened block a
linear layer reads): what the producer, its bias and batch norm still compute for
``c`` is then never seen. So masks are only on consumer weights, and the compiled,
physically pruned model equals the masked torch model exactly. Fine-tuning keeps
the masked columns at zero (gradient hooks; Adam moves nothing with zero gradients),
so its weights compile through ``prune_channels`` with the same plan.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from edgec.compiler.train.distill import kd_loss
from edgec.compiler.train.fit import fit
from edgec.passes.channel_groups import layout_indices
from edgec.passes.channel_walk import analyze
from edgec.passes.prune_plan import PlanError, resolve


def torch_masks(relax_model, plan) -> dict:
    """{torch state_dict key: 0/1 float mask tensor} zeroing the columns ``plan`` removes."""
    if not relax_model.torch_names:
        raise PlanError("the model was not imported from torch: no torch parameter names to mask")
    cg = analyze(relax_model.mod)
    keep = resolve(plan, relax_model, cg)
    masks = {}
    for s in cg.slices:
        idx = layout_indices(s.layout, keep, cg)
        if idx is None or s.role != "consumer" or s.kind != "param":
            continue
        shape = np.shape(relax_model.params[s.name])
        vec = np.zeros(shape[s.axis], dtype=np.float32)
        vec[idx] = 1.0
        view = [1] * len(shape)
        view[s.axis] = shape[s.axis]
        masks[relax_model.torch_names[s.name]] = torch.from_numpy(vec.reshape(view))
    return masks


def apply_masks(model: nn.Module, masks: dict, keep_zero: bool = True) -> list:
    """Zero the masked weights of ``model`` in place; with ``keep_zero`` also mask their
    gradients so training leaves them at zero. Returns the hook handles."""
    state = dict(model.named_parameters())
    missing = sorted(set(masks) - set(state))
    if missing:
        raise PlanError(f"the torch model has no parameter(s) {', '.join(missing)}; "
                        "was the plan made for another model?")
    handles = []
    with torch.no_grad():
        for name, mask in masks.items():
            state[name].mul_(mask)
            if keep_zero:
                handles.append(state[name].register_hook(lambda g, m=mask: g * m))
    return handles


def masked_copy(model: nn.Module, relax_model, plan) -> nn.Module:
    """A copy of ``model`` computing what the pruned compiled model computes."""
    out = copy.deepcopy(model).eval()
    apply_masks(out, torch_masks(relax_model, plan), keep_zero=False)
    return out


def distillation_loss(teacher: nn.Module, temperature: float = 4.0, alpha: float = 0.5):
    """``loss_fn(model, x, y)``: ``distill.kd_loss`` of the model against ``teacher``."""
    teacher.eval()

    def loss_fn(model, x, y):
        logits = model(x)
        with torch.no_grad():
            t = teacher(x)
        return kd_loss(logits, t, y, temperature, alpha)

    return loss_fn


def prune_finetune(model: nn.Module, relax_model, plan, train, epochs: int = 3,
                   lr: float = 1e-3, distill: bool = True, temperature: float = 4.0,
                   alpha: float = 0.5, seed: int = 0, quiet: bool = False) -> nn.Module:
    """Fine-tune a masked copy of ``model`` (optionally distilled from the dense model).

    ``relax_model`` is ``model`` imported by edgec (it names the groups of ``plan``).
    Returns the fine-tuned copy; re-import it and apply ``prune_channels`` with the
    same plan to compile it physically pruned.
    """
    student = copy.deepcopy(model)
    handles = apply_masks(student, torch_masks(relax_model, plan))
    teacher = copy.deepcopy(model).eval() if distill else None
    loss_fn = distillation_loss(teacher, temperature, alpha) if distill else None
    kwargs = {"loss_fn": loss_fn} if loss_fn else {}
    try:
        fit(student, train, epochs=epochs, lr=lr, seed=seed, quiet=quiet, desc="prune-finetune",
            **kwargs)
    finally:
        for h in handles:
            h.remove()
    return student.eval()


def shrink_torch(model: nn.Module, relax_model, plan) -> nn.Module:
    """A copy of ``model`` with the plan's channels physically removed (Conv2d, Linear
    and BatchNorm2d modules; anything else touched raises PlanError). It computes what
    the masked model computes, with smaller layers."""
    cg = analyze(relax_model.mod)
    keep = resolve(plan, relax_model, cg)
    out = copy.deepcopy(model).eval()
    modules = dict(out.named_modules())
    for s in cg.slices:
        idx = layout_indices(s.layout, keep, cg)
        if idx is None or s.kind != "param":
            continue
        path, attr = relax_model.torch_names[s.name].rpartition(".")[::2]
        module = modules[path]
        if not isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            raise PlanError(f"cannot shrink {path} ({type(module).__name__}); use torch_masks")
        index = torch.from_numpy(idx)
        setattr(module, attr, nn.Parameter(getattr(module, attr).data.index_select(s.axis, index)))
        if isinstance(module, nn.BatchNorm2d) and attr == "weight":
            module.running_mean = module.running_mean.index_select(0, index)
            module.running_var = module.running_var.index_select(0, index)
    for module in modules.values():
        _fix_widths(module)
    return out


def _fix_widths(module) -> None:
    if isinstance(module, nn.Conv2d):
        o, i = module.weight.shape[:2]
        if module.groups > 1 and i == 1:  # depthwise: groups follow the width
            module.groups = module.in_channels = o
        else:
            module.in_channels = i * module.groups
        module.out_channels = o
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.BatchNorm2d):
        module.num_features = module.weight.shape[0]
