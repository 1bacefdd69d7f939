"""The demo's PNG plots (matplotlib, Agg), drawn from report.json's dict.

A plot whose data no stage produced is skipped, and the report says so.
Data the compression stages provide in their ``Outcome.info``:

- ``exits``: ``{"distribution": {exit name: fraction of test images}}``
- ``sensitivity``: ``{"prune": {layer: {ratio: top-1 %}}, "prune_metric": axis label,
  "int8": {layer: value}, "int8_metric": axis label}``
"""
from __future__ import annotations

import os

from edgec.compiler.deploy.artifact import atomic_path

COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def _measured(report) -> list:
    """Stages with accuracy and latency (with a board: those timed on it, not on this host)."""
    return [s for s in report["stages"] if s.get("accuracy") and s.get("latency")
            and s["latency"].get("where") != "host"]


def plot_stages(stages, path) -> str:
    """Size, accuracy and latency of every measured stage, side by side."""
    plt = _plt()
    names = [s["name"] for s in stages]
    panels = [("artifact size (MB)", [s["size"]["artifact_bytes"] / 1e6 for s in stages], "{:.2f}"),
              ("test top-1 accuracy (%)", [s["accuracy"]["test_top1"] for s in stages], "{:.2f}")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 1.6 + 0.6 * len(names)), sharey=True)
    for ax, (title, values, fmt) in zip(axes[:2], panels):
        bars = ax.barh(names, values, color=COLORS[:len(names)])
        ax.set_title(title)
        ax.bar_label(bars, [fmt.format(v) for v in values], padding=3, fontsize=8)
        ax.set_xlim(0, max(values) * 1.3 or 1)
        if title.startswith("test"):
            ax.set_xlim(min(values) - 5 if min(values) > 50 else 0, 100)
    _latency_panel(axes[2], names, stages)
    axes[0].invert_yaxis()
    fig.suptitle("Per stage: smaller size and latency, higher accuracy are better", y=1.02)
    fig.tight_layout()
    return _save(fig, path)


def _latency_panel(ax, names, stages) -> None:
    """Median latency bars with each stage's minimum marked (log scale when they spread)."""
    med = [s["latency"]["median_ms"] for s in stages]
    mins = [s["latency"]["min_ms"] for s in stages]
    bars = ax.barh(names, med, color=COLORS[:len(names)])
    ax.scatter(mins, names, marker="|", s=300, color="black", zorder=3)
    ax.bar_label(bars, [f"{m:.3f} (min {lo:.3f})" for m, lo in zip(med, mins)], padding=3,
                 fontsize=8)
    if max(med) / max(min(mins), 1e-9) > 20:
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlim(min(mins) / 2, max(med) * 30)
        ax.set_title("latency, ms (bar: median, |: minimum; log)")
    else:
        ax.set_xlim(0, max(med) * 1.6)
        ax.set_title("latency, ms (bar: median, |: minimum)")


def _pareto(points) -> list:
    """Indices of points no other point beats on both latency (lower) and accuracy (higher)."""
    keep = []
    for i, (t, a) in enumerate(points):
        if not any((t2 <= t and a2 >= a) and (t2, a2) != (t, a) for t2, a2 in points):
            keep.append(i)
    return sorted(keep, key=lambda i: points[i][0])


def plot_pareto(stages, path) -> str:
    """Latency against accuracy; the Pareto front joins the stages nothing beats on both."""
    plt = _plt()
    from matplotlib.ticker import FuncFormatter

    pts = [(s["latency"]["median_ms"], s["accuracy"]["test_top1"]) for s in stages]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (s, (t, a)) in enumerate(zip(stages, pts)):
        size = 40 + 400 * s["size"]["artifact_bytes"] / max(x["size"]["artifact_bytes"] for x in stages)
        ax.scatter([t], [a], s=size, color=COLORS[i % len(COLORS)], alpha=0.8, label=s["name"])
        ax.annotate(s["name"], (t, a), textcoords="offset points", xytext=(8, 6), fontsize=8)
    front = _pareto(pts)
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "k--", lw=1, marker="o",
            markersize=16, markerfacecolor="none", label="Pareto front (nothing beats it on both)")
    accs = [a for _, a in pts]
    ax.set_ylim(min(accs) - max(2.0, 0.2 * (max(accs) - min(accs))), min(100.5, max(accs) + 1.5))
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else ""))
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("median latency, ms (log scale; left is faster)")
    ax.set_ylabel("test top-1 accuracy, %")
    ax.set_title("Latency vs accuracy (marker area ~ artifact size)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", markerscale=0.4)
    return _save(fig, path)


def plot_exits(stage, path) -> str:
    """Where test images left the early-exit model."""
    plt = _plt()
    dist = stage["info"]["exits"]["distribution"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bars = ax.bar(list(dist), [100 * v for v in dist.values()], color=COLORS[2])
    ax.bar_label(bars, [f"{100 * v:.1f}%" for v in dist.values()])
    ax.set_ylim(0, 110)
    ax.set_ylabel("test images, %")
    ax.set_title(f"Exit distribution: {stage['name']}")
    return _save(fig, path)


def plot_sensitivity(sens, path) -> str:
    """Per-layer pruning sensitivity (accuracy vs ratio) and INT8 sensitivity (per layer)."""
    plt = _plt()
    panels = [k for k in ("prune", "int8") if sens.get(k)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, kind in zip(axes[0], panels):
        if kind == "prune":
            for layer, curve in sens["prune"].items():
                ratios = sorted(curve, key=float)
                ax.plot([float(r) for r in ratios], [curve[r] for r in ratios], marker="o", label=layer)
            ax.set_xlabel("fraction of channels pruned")
            ax.set_ylabel(sens.get("prune_metric", "validation top-1, %"))
            ax.set_title("Pruning sensitivity per layer")
            ax.legend(fontsize=8)
        else:
            layers = list(sens["int8"])
            ax.barh(layers, [sens["int8"][k] for k in layers], color=COLORS[1])
            ax.set_xlabel(sens.get("int8_metric", "sensitivity"))
            ax.set_title("INT8 sensitivity per layer")
    return _save(fig, path)


def make_plots(report: dict, folder: str) -> dict:
    """Draw every plot whose data exists; returns {name: {title, path | skipped}}."""
    os.makedirs(folder, exist_ok=True)
    stages = _measured(report)
    exits = next((s for s in stages if (s.get("info") or {}).get("exits")), None)
    sens = {}
    for s in stages:
        sens.update((s.get("info") or {}).get("sensitivity") or {})
    jobs = [
        ("stages", "Size, accuracy and latency per stage", stages, plot_stages,
         "no stage was measured"),
        ("pareto", "Pareto chart: latency vs accuracy", stages if len(stages) >= 1 else None,
         plot_pareto, "no stage was measured"),
        ("exits", "Early-exit distribution", exits, plot_exits,
         "no stage produced exit data (the early-exit stage is not available in this build)"),
        ("sensitivity", "Per-layer pruning and INT8 sensitivity",
         sens if (sens.get("prune") or sens.get("int8")) else None, plot_sensitivity,
         "no stage produced sensitivity data (the pruning and INT8 stages are not available "
         "in this build)"),
    ]
    out = {}
    for name, title, data, fn, why in jobs:
        if data:
            out[name] = {"title": title, "path": fn(data, os.path.join(folder, f"{name}.png"))}
        else:
            out[name] = {"title": title, "path": None, "skipped": why}
    return out
