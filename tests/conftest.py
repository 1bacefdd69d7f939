"""Shared fixtures: tiny seeded models and an output folder."""
import numpy as np
import pytest
import torch
from torch import nn


class TinyCNN(nn.Module):
    """A small conv/bn/relu/pool/linear classifier (8x8 digits size)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(torch.flatten(x, 1))


def seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    """Seeded weights and non-trivial batch-norm statistics, eval mode."""
    torch.manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return module.eval()


@pytest.fixture
def tiny_cnn():
    torch.manual_seed(0)
    return seeded(TinyCNN()), torch.randn(1, 1, 8, 8)


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    return model, torch.randn(2, 16)


def torch_out(model, x) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


def compile_nchwc(model, x, out, target, tuning_logs=None, **fields):
    """Compile ``model`` (with ``x``; None for a file) with the blocked conv layout
    (``fields``: more PipelineConfig) to ``out``; returns the manifest and its conv_layout
    pass record."""
    from edgec.compiler import PipelineConfig, compile

    manifest = compile(model, None if x is None else (x,), output=str(out), config=PipelineConfig(
        target=target, tuning_logs=tuning_logs, conv_layout="NCHWc", **fields))
    return manifest, next(p for p in manifest["passes"] if p["name"] == "conv_layout")
