"""The demo cache reads models with torch's weights-only unpickler: a planted file runs nothing."""
import os

import pytest
import torch

from edgec.compiler.safe_load import CacheEntryError, load_module
from edgec.compiler.train.exits import add_exits
from edgec.compiler.zoo import mnist_cnn

X = torch.randn(2, 1, 28, 28)


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _saved(obj, path):
    torch.save(obj, path)
    return str(path)


def _same(a, b):
    outs = [(x, y) for x, y in zip(a(X) if isinstance(a(X), tuple) else (a(X),),
                                   b(X) if isinstance(b(X), tuple) else (b(X),))]
    return all(torch.equal(x, y) for x, y in outs)


def test_edgec_models_come_back_equal(tmp_path):
    dense = mnist_cnn(0).eval()
    exits = add_exits(mnist_cnn(0), ["bn1"], example=X[:1]).eval()
    for name, model in (("dense", dense), ("exits", exits)):
        again = load_module(_saved(model, tmp_path / f"{name}.pt")).eval()
        assert type(again) is type(model) and _same(model, again)


def test_exported_program_comes_back_after_its_check(tmp_path):
    from edgec.compiler.demo.model import ExportedModule

    model = mnist_cnn(0).eval()
    wrapped = ExportedModule(torch.export.export(model, (X[:1],)))
    again = load_module(_saved(wrapped, tmp_path / "ep.pt"))
    assert torch.allclose(again(X[:1]), model(X[:1]))


def test_planted_payload_never_runs(tmp_path):
    marker = tmp_path / "PAYLOAD-RAN"
    with pytest.raises(CacheEntryError, match="names posix.system, which a cached model may not"):
        load_module(_saved(Payload(str(marker)), tmp_path / "model.pt"))
    with pytest.raises(CacheEntryError, match="names torch.fx"):
        load_module(_saved(torch.fx.symbolic_trace(mnist_cnn(0)), tmp_path / "fx.pt"))
    assert not marker.exists()


def test_not_a_model_is_one_clear_error(tmp_path):
    with pytest.raises(CacheEntryError, match="holds a Tensor, not a model"):
        load_module(_saved(torch.zeros(3), tmp_path / "t.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CacheEntryError, match="junk.pt is not a saved model"):
        load_module(str(tmp_path / "junk.pt"))


def test_users_own_classes_only_from_their_module(tmp_path):
    import sys
    import types

    mod = types.ModuleType("usermodels")
    exec("import torch\nclass Net(torch.nn.Module):\n    def __init__(self):\n"
         "        super().__init__()\n        self.fc = torch.nn.Linear(4, 2)\n"
         "    def forward(self, x):\n        return self.fc(x)\n", mod.__dict__)
    mod.Net.__module__ = "usermodels"
    sys.modules["usermodels"] = mod
    try:
        path = _saved(mod.Net(), tmp_path / "user.pt")
        with pytest.raises(CacheEntryError, match="names usermodels.Net"):
            load_module(path)  # the run's model is not from this module
        assert isinstance(load_module(path, ("usermodels",)), mod.Net)
    finally:
        del sys.modules["usermodels"]
