"""CPU weight prepacking: tuned kernels read weights stored in their own layout."""
import numpy as np
import torch
from torch import nn

from edgec.compiler import PipelineConfig, compile, load
from edgec.compiler.config import KernelOptions
from edgec.compiler.frontend import import_model
from edgec.compiler.tune.search import tune
from edgec.compiler.tune.spec import TuneSpec

TARGET = "x86-avx2"


def _record(manifest):
    return next(p for p in manifest["passes"] if p["name"] == "prepack_weights")


def test_prepacked_build_rewrites_weights_at_compile_time(tmp_path):
    """Structural: tuned with the flag, the conv's weights are rewritten once at compile
    time (no rewrite left to run per call). Numeric: the library equals torch."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()).eval()
    x = torch.randn(1, 8, 16, 16)
    log = str(tmp_path / TARGET)
    summary = tune(import_model(model, (x,)), TuneSpec(target=TARGET, trials=8, log_dir=log,
                                                       trials_per_iter=8, quiet=True,
                                                       kernels=KernelOptions(
                                                           conv_layout="NCHW",
                                                           prepack_weights=True)))
    assert summary["trials"] >= 1 and summary["failed"] == 0
    with torch.no_grad():
        ref = model(x).numpy()
    for logs, packed in ((log, True), (None, False)):  # no record: nothing to prepack
        out = str(tmp_path / f"m-{packed}.so")
        manifest = compile(model, (x,), output=out, config=PipelineConfig(
            target=TARGET, tuning_logs=logs, prepack_weights=True, conv_layout="NCHW"))
        record = _record(manifest)
        assert (record["kernels_prepacked"] >= 1) == packed
        assert record["weight_rewrites_folded"] == record["kernels_prepacked"]
        assert record["weight_rewrites_at_run_time"] == 0
        np.testing.assert_allclose(load(out)(x.numpy())[0], ref, rtol=1e-5, atol=1e-5)
    # the plain build does not find the prepack kernels' records: other workloads
    plain = compile(model, (x,), output=str(tmp_path / "plain.so"), config=PipelineConfig(
        target=TARGET, tuning_logs=log, transfer_schedules=False))
    assert plain["tuning"]["tuned"] == 0


def test_a_prepacking_schedule_is_not_transferred_to_a_plain_kernel(tmp_path):
    """Plain kernels borrow only plain traces (a prepacking trace would rewrite the
    weights on every call there); prepacking kernels may borrow either."""
    from edgec.compiler.tune.search import lowered_module
    from edgec.compiler.tune.transfer import Donors

    torch.manual_seed(0)
    small = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()).eval()
    log = str(tmp_path / TARGET)
    tune(import_model(small, (torch.randn(1, 8, 16, 16),)),
         TuneSpec(target=TARGET, trials=4, log_dir=log, trials_per_iter=4, quiet=True,
                  kernels=KernelOptions(conv_layout="NCHW", prepack_weights=True)))
    wide = nn.Sequential(nn.Conv2d(8, 24, 3, padding=1), nn.ReLU()).eval()
    model = import_model(wide, (torch.randn(1, 8, 16, 16),))

    def conv(prepack):
        mod = lowered_module(model, TARGET, KernelOptions(conv_layout="NCHW", prepack_weights=prepack))
        return next(f for gv, f in mod.functions.items() if "conv2d" in gv.name_hint)

    donors = Donors(log)
    assert donors.candidates(conv(True)) and not donors.candidates(conv(False))
