"""Models edgec's tests, benchmarks and demo use: the MNIST CNN and torchvision architectures.

edgec itself never needs torchvision. PyPI's torchvision wheel is a CUDA build
whose ``_C.so`` cannot load beside the CPU torch, and its import then dies in
``torchvision._meta_registrations`` ("operator torchvision::nms does not
exist"). Those registrations only serve detection ops (nms, roi_align) that
classifiers never call, so we skip that one module; the model code is pure Python.
"""
from __future__ import annotations

import sys
import types

import torch
from torch import nn

TORCHVISION_MODELS = ("resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
                      "shufflenet_v2_x0_5", "squeezenet1_1")


def import_torchvision():
    """Import torchvision beside the CPU torch (see module docstring)."""
    if "torchvision" not in sys.modules:
        sys.modules.setdefault("torchvision._meta_registrations",
                               types.ModuleType("torchvision._meta_registrations"))
    import torchvision

    return torchvision


def torchvision_model(name: str, num_classes: int = 1000, seed: int = 0) -> nn.Module:
    """A torchvision classifier with seeded random weights, in eval mode."""
    tv = import_torchvision()
    if name not in TORCHVISION_MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(TORCHVISION_MODELS)}")
    torch.manual_seed(seed)
    return getattr(tv.models, name)(num_classes=num_classes).eval()


class MnistCNN(nn.Module):
    """The edge classifier of the demo: two conv blocks and two linear layers, 28x28 input."""

    def __init__(self, c1: int = 32, c2: int = 64, hidden: int = 128, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c2)
        self.fc1 = nn.Linear(c2 * 7 * 7, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = nn.functional.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def mnist_cnn(seed: int = 0, **kwargs) -> MnistCNN:
    torch.manual_seed(seed)
    return MnistCNN(**kwargs).eval()
