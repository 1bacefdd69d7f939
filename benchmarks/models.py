"""The benchmark and tuning models as ``module:factory`` names for ``edgec tune/compile``.

Run from the repository root, e.g.
``edgec tune benchmarks.models:resnet18 --input x:1x3x224x224 --target x86-avx2``.
"""
from edgec.compiler.zoo import mnist_cnn as _mnist_cnn
from edgec.compiler.zoo import torchvision_model

# name -> (factory, input shape); the input shapes the committed logs were tuned for
MODELS = {
    "mnist_cnn": ("mnist_cnn", (1, 1, 28, 28)),
    "mnist_cnn_pruned": ("mnist_cnn_pruned", (1, 1, 28, 28)),
    "resnet18": ("resnet18", (1, 3, 224, 224)),
    "mobilenet_v2": ("mobilenet_v2", (1, 3, 224, 224)),
    "efficientnet_lite0": ("efficientnet_lite0", (1, 3, 224, 224)),
}


def mnist_cnn():
    """The demo's MNIST CNN (32/64 channels, 128 hidden), seeded."""
    return _mnist_cnn(seed=0)


def mnist_cnn_pruned():
    """The MNIST CNN with half its channels, about what the demo prunes it to."""
    return _mnist_cnn(seed=0, c1=16, c2=32, hidden=64)


def resnet18():
    return torchvision_model("resnet18")


def mobilenet_v2():
    return torchvision_model("mobilenet_v2")


def efficientnet_lite0():
    """timm's EfficientNet-Lite0 (ReLU6, no squeeze-excite), random weights, seeded; needs
    ``pip install -e '.[bench]'``."""
    import torch

    from edgec.compiler.zoo import import_torchvision

    import_torchvision()  # timm imports torchvision: the CPU-torch workaround first
    try:
        import timm
    except ImportError:
        raise SystemExit("efficientnet_lite0 needs timm: pip install -e '.[bench]'") from None
    torch.manual_seed(0)
    return timm.create_model("efficientnet_lite0", pretrained=False).eval()
