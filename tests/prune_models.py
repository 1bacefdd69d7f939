"""Small seeded models with the structures channel pruning must follow (test helpers)."""
import torch
from torch import nn

from conftest import seeded


class ConcatNet(nn.Module):
    """Two branches concatenated on channels, a conv over the concat, a linear head."""

    def __init__(self):
        super().__init__()
        self.conv_a = nn.Conv2d(3, 6, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(6)
        self.conv_b = nn.Conv2d(3, 4, 1)
        self.conv_c = nn.Conv2d(10, 8, 3, padding=1)
        self.bn_c = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        a = torch.relu(self.bn_a(self.conv_a(x)))
        b = torch.relu(self.conv_b(x))
        y = torch.relu(self.bn_c(self.conv_c(torch.cat([a, b], 1))))
        return self.fc(y.mean((2, 3)))


class GroupedNet(nn.Module):
    """A grouped conv (not depthwise: unprunable) between two plain convs."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.gconv = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.conv2 = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x):
        y = torch.relu(self.gconv(torch.relu(self.conv1(x))))
        return self.fc(torch.flatten(torch.relu(self.conv2(y)), 1))


class SoftmaxNet(nn.Module):
    """A softmax over channels: an op the analysis does not follow."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y = torch.softmax(self.conv1(x), dim=1)
        return self.fc(torch.relu(self.conv2(y)).mean((2, 3)))


def concat_net():
    torch.manual_seed(0)
    return seeded(ConcatNet()), torch.randn(1, 3, 8, 8)


def grouped_net():
    torch.manual_seed(0)
    return seeded(GroupedNet()), torch.randn(1, 3, 4, 4)


def softmax_net():
    torch.manual_seed(0)
    return seeded(SoftmaxNet()), torch.randn(1, 3, 6, 6)
