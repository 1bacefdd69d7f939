"""Knowledge distillation on the real MNIST split: does a small student gain from a teacher?

    python benchmarks/bench_distill.py --quiet           # writes benchmarks/results/distill_mnist.*

A teacher MnistCNN is trained on random affine views of the 3,500 training digits.
For every seed, one student (<= 1/3 of the teacher's parameters) is trained without
the teacher (CE to the labels) and once per (temperature, alpha) of the grid with it
(``distill``). Both arms share everything but the teacher: the same initial weights,
epochs, learning rate, batch order and the same random view of every batch (teacher
and student see that one view: "consistent" function matching, Beyer et al. 2022).
(temperature, alpha) is chosen by mean validation accuracy over the seeds; the test
split only reports. Everything runs on one thread.

    python benchmarks/bench_distill.py --labels 350 --epochs 100 --augment affine \
        --seeds 1 2 3 4 5 --quiet --out distill_mnist-labels350

``--labels N``: the students train on only N of the training digits (N/10 per class;
the teacher still learns from all of them), the classic setting of soft targets as a
regulariser (Hinton et al. 2015, sec. 5: 3% of the data).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import write_results
from edgec.compiler.compare import machine_info
from edgec.compiler.data import Dataset, Split, mnist
from edgec.compiler.train.distill import AUGMENTS, distill, param_count, train_alone
from edgec.compiler.train.fit import evaluate
from edgec.compiler.zoo import MnistCNN

GRID = ((4.0, 0.9), (1.0, 1.0))  # (temperature, alpha); T=1, alpha=1: pure function matching


def student(widths, seed):
    """A seeded student MnistCNN(c1, c2, hidden)."""
    torch.manual_seed(seed)
    return MnistCNN(*widths)


def seed_row(teacher, data, widths, seed, augment, grid, args):
    """One seed: the no-teacher arm and one distilled student per grid point."""
    common = dict(epochs=args.epochs, lr=args.lr, seed=seed, quiet=args.quiet, augment=augment)
    alone = student(widths, seed)
    hist = train_alone(alone, data, **common)
    row = {"seed": seed, "alone": {"val": hist["student_val_acc"], "test": evaluate(alone, data.test)},
           "distilled": []}
    for t, a in grid:
        taught = student(widths, seed)
        hist = distill(teacher, taught, data, temperature=t, alpha=a, **common)
        row["distilled"].append({"temperature": t, "alpha": a, "val": hist["student_val_acc"],
                                 "test": evaluate(taught, data.test)})
    return row


def setting(teacher, data, widths, augment, grid, args) -> dict:
    """Both arms for every seed with one augmentation; (T, alpha) chosen on val."""
    rows = [seed_row(teacher, data, widths, s, augment, grid, args) for s in args.seeds]
    val_means = [float(np.mean([r["distilled"][k]["val"] for r in rows])) for k in range(len(grid))]
    best = int(np.argmax(val_means))
    per_seed = [{"seed": r["seed"], "alone": r["alone"]["test"],
                 "distilled": r["distilled"][best]["test"]} for r in rows]
    gains = [r["distilled"] - r["alone"] for r in per_seed]
    return {"augment": augment, "chosen_on_val": {"temperature": grid[best][0], "alpha": grid[best][1]},
            "alone_val_mean": float(np.mean([r["alone"]["val"] for r in rows])),
            "distilled_val_mean": val_means[best],
            "grid_val_means": [{"temperature": t, "alpha": a, "val_mean": v}
                               for (t, a), v in zip(grid, val_means)],
            "runs": rows, "per_seed": per_seed,
            "alone_test_mean": float(np.mean([r["alone"] for r in per_seed])),
            "distilled_test_mean": float(np.mean([r["distilled"] for r in per_seed])),
            "gain_mean_points": float(np.mean(gains)), "gain_std_points": float(np.std(gains)),
            "seeds_with_gain": int(sum(g > 0 for g in gains)), "seeds": len(gains)}


def labelled_subset(data: Dataset, n: int | None) -> Dataset:
    """``data`` with only the first n/10 training digits of every class (None: all)."""
    if n is None:
        return data
    if not data.num_classes <= n <= len(data.train):
        raise SystemExit(f"bench_distill: --labels {n} is out of range; choose "
                         f"{data.num_classes}..{len(data.train)} (one per class at least)")
    per_class = n // data.num_classes
    keep = np.concatenate([np.flatnonzero(data.train.y == c)[:per_class]
                           for c in range(data.num_classes)])
    keep.sort()
    return Dataset(data.name, Split(data.train.x[keep], data.train.y[keep]), data.val, data.test)


def distill_part(data, args, grid=GRID) -> dict:
    """Teacher, then every augmentation setting; and each arm at its best setting on val."""
    few = labelled_subset(data, args.labels)  # first: a bad --labels stops before training
    torch.manual_seed(0)
    teacher = MnistCNN()
    train_alone(teacher, data.train, epochs=args.teacher_epochs, lr=args.teacher_lr,
                quiet=args.quiet, augment="affine")
    widths = tuple(int(w) for w in args.student.split(","))
    settings = [setting(teacher, few, widths, aug, grid, args) for aug in args.augment]
    alone = max(settings, key=lambda r: r["alone_val_mean"])
    taught = max(settings, key=lambda r: r["distilled_val_mean"])
    return {"teacher": {"params": param_count(teacher), "test_acc": evaluate(teacher, data.test),
                        "val_acc": evaluate(teacher, data.val), "epochs": args.teacher_epochs,
                        "augment": "affine"},
            "student_widths": widths, "student_params": param_count(student(widths, 0)),
            "param_ratio": param_count(student(widths, 0)) / param_count(teacher),
            "epochs": args.epochs, "lr": args.lr, "student_train_images": len(few.train),
            "teacher_train_images": len(data.train), "settings": settings,
            "best_on_val": {"alone": {"augment": alone["augment"],
                                      "test_mean": alone["alone_test_mean"]},
                            "distilled": {"augment": taught["augment"],
                                          "test_mean": taught["distilled_test_mean"],
                                          **taught["chosen_on_val"]},
                            "gain_points": taught["distilled_test_mean"] - alone["alone_test_mean"]}}


def markdown(res: dict, machine: dict) -> str:
    """The per-seed tables and the settings, as markdown."""
    lines = [f"Teacher MnistCNN: {res['teacher']['params']:,} parameters, "
             f"{res['teacher']['epochs']} epochs on `affine` views, test {res['teacher']['test_acc']:.1f}%. "
             f"Student MnistCNN{tuple(res['student_widths'])}: {res['student_params']:,} parameters "
             f"({res['param_ratio']:.1%} of the teacher). Students train on "
             f"{res['student_train_images']:,} of the {res['teacher_train_images']:,} training "
             "digits the teacher learned from. "
             f"Both arms: {res['epochs']} epochs, "
             f"Adam lr {res['lr']}, the same seed, batches and views; the teacher sees the student's view."]
    for r in res["settings"]:
        c = r["chosen_on_val"]
        lines += ["", f"### Student views: `{r['augment']}`; chosen on val: T = {c['temperature']}, "
                  f"alpha = {c['alpha']}", "",
                  "| seed | alone test % | distilled test % | gain (points) |", "| --- | --- | --- | --- |"]
        lines += [f"| {p['seed']} | {p['alone']:.1f} | {p['distilled']:.1f} | "
                  f"{p['distilled'] - p['alone']:+.1f} |" for p in r["per_seed"]]
        lines += [f"| mean | {r['alone_test_mean']:.2f} | {r['distilled_test_mean']:.2f} | "
                  f"{r['gain_mean_points']:+.2f} +- {r['gain_std_points']:.2f} |", "",
                  f"Seeds with a gain: {r['seeds_with_gain']} of {r['seeds']}. Validation means: alone "
                  f"{r['alone_val_mean']:.2f}%, " + ", ".join(
                      f"T={g['temperature']} alpha={g['alpha']}: {g['val_mean']:.2f}%"
                      for g in r["grid_val_means"]) + "."]
    b = res["best_on_val"]
    lines += ["", f"Each arm at its best views on val: alone (`{b['alone']['augment']}`) "
              f"{b['alone']['test_mean']:.2f}%, distilled (`{b['distilled']['augment']}`) "
              f"{b['distilled']['test_mean']:.2f}%: {b['gain_points']:+.2f} points.", "",
              f"Machine: {machine['cpu']}, {machine['cores']} cores, one torch thread, "
              f"load average {machine['loadavg_1m']:.2f} at the end."]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    """The benchmark's flags (``parser().parse_args([])`` gives the defaults)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=20, help="student epochs (both arms)")
    p.add_argument("--lr", type=float, default=1e-3, help="student learning rate (both arms)")
    p.add_argument("--teacher-epochs", type=int, default=30)
    p.add_argument("--teacher-lr", type=float, default=1e-3)
    p.add_argument("--student", default="8,16,32", help="student c1,c2,hidden")
    p.add_argument("--augment", nargs="+", default=["affine", "strong-affine"], choices=list(AUGMENTS),
                   help="the students' views (one setting each, both arms)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--labels", type=int, default=None,
                   help="students train on only this many training digits (default: all)")
    p.add_argument("--out", default="distill_mnist", help="results stem (benchmarks/results/)")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    torch.set_num_threads(1)
    res = distill_part(mnist(0), args)
    machine = machine_info()
    js, md = write_results(args.out, {"machine": machine, "distill": res}, markdown(res, machine))
    print(md if args.quiet else open(md, encoding="utf-8").read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
