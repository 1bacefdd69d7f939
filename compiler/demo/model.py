"""The demo's dense model: its MnistCNN, a ``module:factory``, or a .pt2 program (wrapped
so the demo can evaluate, cache and compile it like any module)."""
from __future__ import annotations

import io
import os

import torch

from edgec.compiler.demo.context import DemoError
from edgec.compiler.pt2_check import check_pt2
from edgec.compiler.specs import load_factory
from edgec.compiler.zoo import mnist_cnn


class ExportedModule(torch.nn.Module):
    """A .pt2 program as an nn.Module that edgec can evaluate, cache and compile.

    torch refuses ``train()``/``eval()`` on exported programs and cannot pickle
    their modules; this wrapper keeps mode switches away from it and pickles
    the program itself (``torch.export.save`` bytes).
    """

    def __init__(self, program):
        super().__init__()
        self.program = program  # the ExportedProgram (not a Module attribute)
        self.inner = program.module()

    def train(self, mode: bool = True):
        self.training = mode
        return self

    def forward(self, *args):
        return self.inner(*args)

    def __reduce__(self):
        buf = io.BytesIO()
        torch.export.save(self.program, buf)
        return (_exported_from_bytes, (buf.getvalue(),))


def _exported_from_bytes(data: bytes) -> ExportedModule:
    check_pt2(io.BytesIO(data))  # a cached program is data too: never unpickle from it
    return ExportedModule(torch.export.load(io.BytesIO(data)))


def make_model(spec: str | None, seed: int):
    """The dense model: the demo's MnistCNN, a ``module:factory``, or a .pt2 program."""
    if spec is None:
        return mnist_cnn(seed)
    if spec.endswith(".pt2"):
        if not os.path.isfile(spec):
            raise DemoError(f"model file not found: {spec}")
            check_pt2(spec)  # refuses a file that would unpickle unless trusted
        try:
            return ExportedModule(torch.export.load(spec))
        except Exception as e:
            raise DemoError(f"cannot read {spec} as a torch.export program: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    torch.manual_seed(seed)
    model = load_factory(spec)
    if not isinstance(model, torch.nn.Module):
        raise DemoError(f"{spec} returned a {type(model).__name__}; it must return a torch.nn.Module")
    return model
