"""Quantization-aware training: fake-quant fine-tuning with edgec's INT8 scheme.

Every ``nn.Conv2d`` / ``nn.Linear`` gets (1) a per-output-channel symmetric
fake-quant of its weight (a parametrization: the float weight is trained, the
forward sees its int8 image, gradients pass straight through) and (2) a
per-tensor fake-quant of its input whose range is tracked by a moving-average
min/max observer. Scales come from the same ``QuantScheme`` the compiler uses,
so the exported scale table (``export_scales``) reproduces in the built .so the
rounding the model was trained with. BN folding keeps per-channel weight
quantization exact (a per-channel scale commutes with ``round(w / s_c)``).

    qat = prepare_qat(model, scheme, calib_x)   # observers start from min/max
    fit(qat.model, data.train, epochs=3, lr=2e-4)  # any training loop
    plan = qat.finish("scales.json")            # float weights back, table written
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from edgec.compiler.deploy.artifact import write_json_atomic
from edgec.passes.quant_scheme import QuantPlan, QuantScheme


class WeightFakeQuant(nn.Module):
    """Per-output-channel symmetric int8 fake-quant (straight-through)."""

    def __init__(self, qmax: int):
        super().__init__()
        self.qmax = qmax

    def forward(self, w):
        absmax = w.detach().abs().flatten(1).amax(dim=1)
        scale = torch.where(absmax > 0, absmax / self.qmax, torch.ones_like(absmax))
        zp = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale, zp, 0, -self.qmax, self.qmax)


class InputObserver:
    """Moving-average min/max of a layer's input; fake-quantizes it once initialised."""

    def __init__(self, scheme: QuantScheme, momentum: float = 0.01):
        self.scheme, self.momentum = scheme, momentum
        self.lo = self.hi = None
        self.fake_quant = False

    def observe(self, x):
        lo, hi = float(x.detach().min()), float(x.detach().max())
        if self.lo is None or not self.fake_quant:
            self.lo = lo if self.lo is None else min(self.lo, lo)
            self.hi = hi if self.hi is None else max(self.hi, hi)
        else:
            m = self.momentum
            self.lo, self.hi = (1 - m) * self.lo + m * lo, (1 - m) * self.hi + m * hi

    def __call__(self, module, args):
        x = args[0]
        if module.training or not self.fake_quant:
            self.observe(x)
        if not self.fake_quant:
            return None
        scale, zp = self.scheme.activation_qparams(self.lo, self.hi)
        qmin, qmax = self.scheme.act_qrange
        return (torch.fake_quantize_per_tensor_affine(x, scale, zp, qmin, qmax), *args[1:])


@dataclass
class QATModel:
    """A model prepared for QAT: its observers by layer name, and the hooks to remove."""

    model: nn.Module
    scheme: QuantScheme
    observers: dict
    handles: list

    def ranges(self) -> dict:
        return {name: (obs.lo, obs.hi) for name, obs in self.observers.items()}

    def finish(self, path: str | None = None) -> QuantPlan:
        """Remove fake-quant (float weights stay trained); return and save the scale table."""
        for h in self.handles:
            h.remove()
        for m in self.model.modules():
            if parametrize.is_parametrized(m, "weight"):
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
        plan = QuantPlan(self.scheme, self.ranges(), source="qat")
        if path:
            write_json_atomic(path, plan.to_json())
        return plan


def quantizable_modules(model: nn.Module) -> dict:
    """``{name: module}`` of the Conv2d/Linear layers (edgec's layer names)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


@torch.no_grad()
def prepare_qat(model: nn.Module, scheme: QuantScheme, calib_x, batch_size: int = 64) -> QATModel:
    """Add fake-quant to ``model`` in place; observers start from min/max over ``calib_x``."""
    observers, handles = {}, []
    for name, m in quantizable_modules(model).items():
        obs = observers[name] = InputObserver(scheme)
        handles.append(m.register_forward_pre_hook(obs))
        parametrize.register_parametrization(m, "weight", WeightFakeQuant(scheme.weight_qmax))
    model.eval()
    x = torch.as_tensor(calib_x)
    for i in range(0, len(x), batch_size):
        model(x[i:i + batch_size])
    for obs in observers.values():
        obs.fake_quant = True
    return QATModel(model, scheme, observers, handles)
