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
