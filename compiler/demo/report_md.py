"""report.md: the demo's report for people, rendered from report.json's dict."""
from __future__ import annotations

import os


def _mb(n) -> str:
    if n is None:
        return "—"
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _count(n) -> str:
    if n is None:
        return "—"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


def _x(v) -> str:
    return "—" if v is None else f"{v:.2f}x"


def _ms(lat, key) -> str:
    if not lat:
        return "—"
    where = {"host": " (this host)", "board": " (board)"}.get(lat.get("where"), "")
    return f"{lat[key]:.3f}{where}"


def _row(s) -> str:
    if not s.get("accuracy"):
        why = f"needs {', '.join(s['missing'])}" if s.get("missing") else ""
        return f"| {s['name']} | {s['status']}{'; ' + why if why else ''} |" + " — |" * 9
    lat, p = s.get("latency") or {}, s.get("power_proxy") or {}
    cells = [s["name"], s["status"] + (" (cached)" if s.get("cache_hit") else ""),
             _mb(s["size"]["artifact_bytes"]), _mb(s["size"]["weight_bytes"]),
             f"{s['accuracy']['test_top1']:.2f}%",
             _ms(lat, "median_ms"), _ms(lat, "min_ms"),
             _x(lat.get("x_faster_than_dense_edgec")), _x(lat.get("x_faster_than_pytorch_eager")),
             _count(p.get("macs")), _mb(p.get("bytes_moved"))]
    return "| " + " | ".join(cells) + " |"


def summary_section(r) -> list:
    head = ("| stage | status | artifact | weights | test top-1 | median ms | min ms | "
            "x vs dense edgec | x vs PyTorch eager | MACs (proxy) | bytes moved (proxy) |")
    return ["## Summary", "", head, "|" + " --- |" * 2 + " ---: |" * 9,
            *[_row(s) for s in r["stages"]], "",
            "Ratios are speed-ups (dense time / stage time; above 1 is faster). "
            "MACs and bytes moved are a **power proxy**, not a measurement (see below)."]


def goals_section(r) -> list:
    g = r["goals"]
    lines = ["## Goals", ""]
    if not g["items"]:
        return lines + [f"Not evaluated: {g['note']}."]
    lines += [f"Measured on the final stage, **{g['final_stage']}**, against dense FP32 edgec.", "",
              "| goal | measured | met |", "| --- | --- | --- |"]
    lines += [f"| {i['goal']} | {i['measured']} | {'met' if i['met'] else '**not met**'} |"
              for i in g["items"]]
    if g.get("x_faster_than_pytorch_eager") is not None:
        lines += ["", f"Against PyTorch eager FP32 the final stage is "
                      f"{g['x_faster_than_pytorch_eager']:.2f}x as fast by median latency and "
                      f"{g['x_faster_than_pytorch_eager_by_min']:.2f}x by minimum (above 1: faster)."]
    if g.get("note"):
        lines += ["", f"Note: {g['note']}."]
    return lines


def _plots(r) -> list:
    lines = ["## Plots", ""]
    for name, p in (r.get("plots") or {}).items():
        if p.get("path"):
            lines += [f"**{p['title']}**", "", f"![{p['title']}]({os.path.relpath(p['path'], r['config']['out'])})", ""]
        else:
            lines += [f"- *{p['title']}*: not drawn — {p['skipped']}.", ""]
    return lines


def _method(r) -> list:
    b, cfg = r["benchmark"], r["config"]
    lines = ["## How the figures were measured", "",
             f"All by one command: `{r['command']}` ({r['seconds']:.0f} s, {r['created_utc']} UTC).", "",
             "- **Size**: the artifact file (`model.so` for edgec stages, the `torch.save` file for "
             "PyTorch) and the bytes of its weights (constants in the compiled graph).",
             "- **Accuracy**: top-1 on the test split, computed by running each compiled artifact "
             "in the edgec runtime (batch 1) on every test image"
             + (" on the board, over RPC" if b.get("device") else "")
             + "; the PyTorch stage by PyTorch" + (" on this host." if b.get("device") else ".")]
    if b.get("device"):
        lines += _board_method(b)
    elif b:
        lines.append(f"- **Latency**: one interleaved run of all stages ({b['rounds']} rounds x "
                     f"{b['samples']} samples, engine order rotated each round), each engine cycling "
                     f"through the same {b.get('images_cycled', '?')} test images at batch 1; "
                     "median of round medians and minimum of all samples, in ms.")
    lines.append("- **Power proxy** (not a measurement; no power meter exists here): MACs of every "
                 "conv and matmul, from their shapes, and bytes moved per inference: weights read "
                 "plus activations read and written by each fused kernel of the compiled graph "
                 "(the PyTorch stage is counted on the same graph).")
    if r.get("power_readings"):
        lines += ["", "`--power-cmd` readings (each stage run alone between two readings):", "",
                  "| stage | inferences | seconds | before | after |", "| --- | ---: | ---: | --- | --- |"]
        for p in r["power_readings"]:
            rd = {x["when"]: x["stdout"] or f"rc {x['returncode']}" for x in p["readings"]}
            lines.append(f"| {p['stage']} | {p['inferences']} | {p['seconds']} | "
                         f"{rd.get('before', '')} | {rd.get('after', '')} |")
    if cfg.get("power_cmd") is None:
        lines += ["", "For a board with a power reading, add `--power-cmd CMD`: CMD runs before "
                      "and after each stage's timed run and its output is recorded here."]
    return lines


def _board_method(b) -> list:
    """How latency was measured with a board (--tracker)."""
    d = b["device"]
    out = [f"- **Latency on the board** {d['where']} ({d['arch']}): the edgec stages ran there "
           f"over TVM RPC in one interleaved run ({b['rounds']} rounds; each round every stage "
           f"takes each of the same {b['images_cycled']} test images in turn, stage order "
           "rotating), each image timed on the device by TVM's time evaluator "
           f"({b['runs_per_image']} runs), so network time "
           "never enters; a round's figure is the stage's mean over the images; median and "
           "minimum over rounds, in ms. Test accuracy and the exit distribution were also "
           "measured on the board.",
           f"- Note: {board_note(d)}."]
    if b.get("host_engines"):
        out.append(f"- **On this host**: {', '.join(b['host_engines'])} (interleaved with "
                   "itself only; marked *(this host)* in the table).")
    return out


def _stage_notes(r) -> list:
    lines = ["## Stages", ""]
    for s in r["stages"]:
        if not s.get("accuracy"):
            lines.append(f"- **{s['name']}**: {s['status']}" +
                         (f" (needs {', '.join(s['missing'])})." if s.get("missing") else "."))
            continue
        t = (s.get("info") or {}).get("train")
        parts = [f"cache {'hit (reused)' if s['cache_hit'] else 'miss (built now)'}, key {s['cache_key']}"]
        if t and t["epochs"]:
            loss = ", ".join(f"{v:.3f}" for v in t["loss_per_epoch"])
            val = f", val top-1 {t['val_top1']:.2f}%" if t.get("val_top1") is not None else ""
            parts.append(f"trained {t['epochs']} epoch(s) on {t['samples']} images in "
                         f"{t['seconds']} s (loss per epoch {loss}{val})")
        elif t:
            parts.append("weights used as given (not trained here)")
        if s.get("tuning") is not None:
            parts.append("tuning logs applied" if s["tuning"].get("applied")
                         else "no tuning logs applied (none committed for this target)")
        if s.get("artifact"):
            parts.append(f"artifact `{os.path.relpath(s['artifact'], r['config']['out'])}`")
        pricing = ((s.get("info") or {}).get("exits") or {}).get("pricing")
        if pricing and pricing.get("verdict"):  # priced by latency (compiler/exit_pricing.py)
            parts.append(pricing["verdict"] + f" (MAC pricing alone promised "
                         f"{pricing['mac_priced_speedup']:.2f}x)")
        elif pricing:
            parts.append(f"exit thresholds priced by MACs, not latency: {pricing['why']}")
        lines.append(f"- **{s['name']}**: " + "; ".join(parts) + ".")
    return lines


def _machine(r) -> list:
    m, v = r["machine"], r["versions"]
    load = (r["benchmark"].get("machine") or m)["loadavg_1m"]
    lines = ["## Machine", "",
             f"- CPU: {m['cpu']} ({m['machine']}, {m['cores']} cores), flags: "
             f"{', '.join(m['flags']) or 'none'}",
             f"- Load average (1 min) during the benchmark: {load:.2f}",
             f"- Versions: edgec {v['edgec']}, TVM {v['tvm']}, torch {v['torch']}"]
    if load > m["cores"]:
        lines.append(f"- The machine was busy with other work (load {load:.1f} on {m['cores']} "
                     "cores): medians are inflated, PyTorch's spinning thread pool most of all; "
                     "the minimums show the unloaded speed.")
    return lines


def markdown(r: dict) -> str:
    """The whole report.md."""
    d = r["data"]
    head = [f"# edgec {r['config'].get('mode', 'demo')} report", "",
            f"`{r['command']}` — target `{r['config']['target']}`, data **{d['name']}** "
            f"({d['train']} train / {d['val']} val / {d['test']} test, input "
            f"{'x'.join(map(str, d['input_shape']))}, {d['classes']} classes).", ""]
    if r.get("stopped"):
        head += [f"**Stopped early**: {r['stopped']}.", ""]
    if (r["benchmark"].get("device") or {}).get("emulated"):
        head += ["**The board is EMULATED (qemu-user): its latencies are meaningless.** Accuracy "
                 "and exit rates measured on it are real.", ""]
    if r.get("best_artifact"):
        b = r["best_artifact"]
        head += [f"Result: `{os.path.relpath(b['path'], r['config']['out'])}` (stage "
                 f"*{b['stage']}*).", ""]
    body = summary_section(r) + [""] + goals_section(r) + [""] + _plots(r) + _method(r) + [""]
    return "\n".join(head + body + _stage_notes(r) + [""] + _machine(r)) + "\n"


def board_note(device: dict) -> str:
    """What a board run's latencies mean (and what they leave out)."""
    text = (f"latencies of the edgec stages were measured on the board {device['where']} "
            f"({device['arch']}) and the speed goal compares them there; PyTorch eager cannot "
            "run on the board, so it was timed on this host and has no ratio against them")
    if device.get("emulated"):
        text += ("; the board is EMULATED (qemu-user): its latencies and the speed goal are "
                 "meaningless, while accuracy and exit rates are real")
    return text
