"""The error contract: a bad input gives one line naming what was wrong, exit 2, no traceback.

A table of bad inputs (damaged files, outputs over inputs, hand-edited manifests, unsafe
model files) run through the CLI in-process; the files are made once, from one tiny model.
"""
import io
import json
import os
import shutil
import subprocess
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from edgec.compiler import api
from edgec.compiler.cli import main


class Payload:
    """Unpickling this runs a command: what a planted model file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _flip_text(so: str, dst: str) -> None:
    """Copy ``so`` with 64 bytes of its .text section inverted (a damaged library)."""
    out = subprocess.run(["readelf", "-SW", so], capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if " .text " in ln)
    offset = int(line.split(".text")[1].split()[2], 16)
    data = bytearray(open(so, "rb").read())
    for i in range(offset + 64, offset + 128):
        data[i] ^= 0xFF
    open(dst, "wb").write(bytes(data))


def _with_manifest(files, name: str, edit) -> str:
    """A copy of the artifact as ``name``.so whose manifest ``edit(text) -> bytes`` changed."""
    so = os.path.join(files["dir"], f"{name}.so")
    shutil.copy(files["so"], so)
    with open(files["json"], encoding="utf-8") as f:
        text = f.read()
    with open(so[:-3] + ".json", "wb") as f:
        f.write(edit(text))
    return so


def _edit_input(key, value):
    def edit(text):
        m = json.loads(text)
        m["inputs"][0][key] = value
        return json.dumps(m).encode()
    return edit


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A compiled tiny MLP (.so + .json), its .pt2, a .pt2 carrying a payload, inputs,
    and damaged / edited copies of the artifact."""
    d = tmp_path_factory.mktemp("errors")
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(8, 4), nn.ReLU()).eval(), torch.randn(1, 8)
    so = str(d / "m.so")
    api.compile(model, (x,), target="host", output=so)
    pt2 = str(d / "m.pt2")
    torch.export.save(torch.export.export(model, (x,)), pt2)
    out = {"dir": str(d), "so": so, "json": str(d / "m.json"), "pt2": pt2,
           "marker": str(d / "PAYLOAD-RAN"), "x": str(d / "x.npy")}
    np.save(out["x"], x.numpy())
    np.save(str(d / "x16.npy"), x.numpy().astype(np.float16))
    buf = io.BytesIO()
    torch.save(Payload(out["marker"]), buf)
    out["evil"] = str(d / "evil.pt2")  # a valid program whose sample inputs need full pickle
    with zipfile.ZipFile(pt2) as zin, zipfile.ZipFile(out["evil"], "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            zout.writestr(info, buf.getvalue() if "sample_inputs/" in info.filename else data)
    with open(str(d / "corrupt.pt2"), "wb") as f:
        f.write(open(pt2, "rb").read()[:3000])
    out["corrupt"] = str(d / "corrupt.pt2")
    out["damaged"] = str(d / "damaged.so")
    _flip_text(so, out["damaged"])
    shutil.copy(out["json"], str(d / "damaged.json"))
    out["shape"] = _with_manifest(out, "shape", _edit_input("shape", [1, 9]))
    out["dtype"] = _with_manifest(out, "dtype", _edit_input("dtype", "float16"))
    out["badspec"] = _with_manifest(out, "badspec", _edit_input("shape", "1x8"))
    out["latin1"] = _with_manifest(out, "latin1", lambda t: b"\xff\xfe" + t.encode())
    with open(str(d / "plan.json"), "w", encoding="utf-8") as f:
        f.write("{}\n")
    with open(str(d / "afile"), "w", encoding="utf-8") as f:
        f.write("a file, not a folder\n")
    foreign = d / "foreign-log"
    foreign.mkdir()
    (foreign / "edgec-log.json").write_text(json.dumps({
        "format": "edgec-tuning-log", "version": 1, "target": "x86-avx512",
        "target_tvm": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"},
        "runs": []}))
    return out


def _p(key):
    return lambda f: f[key]


def _j(*parts):
    return lambda f: os.path.join(f["dir"], *parts)


# (id, argv as functions of the files, the message's telling part)
CASES = [
    ("pt2-needs-pickle", ["compile", _p("evil"), "-o", _j("e.so"), "--no-tuning"],
     "refused to load .*evil.pt2: it would run code when loaded \\(its sample inputs need full "
     "pickle\\); only if you trust whoever made the file, pass --trust-model"),
    ("pt2-corrupt", ["compile", _p("corrupt"), "-o", _j("c.so"), "--no-tuning"],
     "cannot read .*corrupt.pt2 as a torch.export program: not a .pt2 archive"),
    ("output-dir-is-a-file", ["compile", _p("pt2"), "-o", _j("afile", "out.so")],
     "cannot write --output .*afile/out.so: .*afile is a file, not a folder"),
    ("output-dir-unwritable", ["compile", _p("pt2"), "-o", "/proc/edgec-out/m.so"],
     "cannot write --output /proc/edgec-out/m.so: folder /proc is not writable"),
    ("manifest-over-plan", ["compile", _p("pt2"), "--prune-plan", _j("plan.json"),
                            "-o", _j("plan.so")],
     "its manifest .*plan.json would overwrite --prune-plan .*plan.json, an input"),
    ("output-over-model", ["compile", _p("pt2"), "-o", _p("pt2")],
     "--output must end in .so"),
    ("manifest-over-scales", ["compile", _p("pt2"), "--scales", _j("plan.json"),
                              "-o", _j("plan.so")],
     "its manifest .*plan.json would overwrite --scales"),
    ("run-output-over-library", ["run", _p("so"), "-i", _p("x"), "-o", _p("so")],
     "--output .*m.so would overwrite MODEL .*m.so, an input of this command"),
    ("run-output-over-manifest", ["run", _p("so"), "-i", _p("x"), "-o", _p("json")],
     "--output .*m.json would overwrite its manifest"),
    ("run-output-over-input", ["run", _p("so"), "-i", _p("x"), "-o", _p("x")],
     "--output .*x.npy would overwrite --input"),
    ("bench-save-over-manifest", ["bench", _p("so"), "--save", _p("json")],
     "--save .*m.json would overwrite the manifest of MODEL"),
    ("prune-plan-output-over-model", ["prune-plan", _p("pt2"), "-o", _p("pt2")],
     "--output .*m.pt2 would overwrite MODEL"),
    ("damaged-library", ["run", _p("damaged"), "-i", _p("x")],
     "damaged.so does not match its manifest .*damaged.json \\(sha256 [0-9a-f]+, the manifest "
     "recorded [0-9a-f]+\\): the library was changed or damaged"),
    ("manifest-shape-edited", ["run", _p("shape"), "-i", _p("x")],
     "manifest .*shape.json says input .*'shape': \\[1, 9\\].*, but the library's own copy "
     "says .*'shape': \\[1, 8\\].*; the manifest was edited"),
    ("manifest-dtype-edited", ["run", _p("dtype"), "-i", _j("x16.npy")],
     "manifest .*dtype.json says input .*'dtype': 'float16'.*, but the library's own copy "
     "says .*'dtype': 'float32'"),
    ("manifest-spec-malformed", ["run", _p("badspec"), "-i", _p("x")],
     "manifest .*badspec.json: input 0 .* is not a name, a shape of non-negative integers"),
    ("manifest-not-utf8", ["info", _p("latin1")],
     "manifest .*latin1.json is not UTF-8 text"),
    ("power-cmd-unbalanced-quote", ["demo", "--power-cmd", 'cat "/sys/power', "--out",
                                    _j("demo-out")],
     "--power-cmd 'cat \"/sys/power' cannot be parsed \\(No closing quotation\\)"),
    ("prune-beside-prune-plan", ["compile", _p("pt2"), "--prune", "0.5", "--prune-plan",
                                 _j("plan.json"), "-o", _j("pp.so")],
     "give prune 0.5 \\(--prune\\) or the plan .*plan.json \\(--prune-plan\\), not both"),
]


@pytest.mark.parametrize("argv,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(files, argv, message, capfd, monkeypatch):
    def no_compile(*a, **k):
        raise AssertionError("the check must come before any compiling")
    monkeypatch.setattr(api, "build", no_compile)  # the long work
    before = {p: open(p, "rb").read() for p in (files["so"], files["json"], files["x"],
                                                files["pt2"], os.path.join(files["dir"],
                                                                           "plan.json"))}
    args = [a(files) if callable(a) else a for a in argv]
    assert main(args) == 2
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err  # no traceback, no library noise
    assert lines[0].startswith("edgec: error: ")
    import re

    assert re.search(message, lines[0]), lines[0]
    for path, data in before.items():  # no input was touched
        assert open(path, "rb").read() == data, path
    assert not os.path.exists(files["marker"])  # nothing from a model file ran
    assert not os.path.exists(os.path.join(files["dir"], "demo-out"))


def test_trusted_pt2_is_loaded_and_untrusted_never_runs_code(files, capfd):
    from edgec.compiler.frontend import import_model
    from edgec.compiler.pt2_check import UntrustedModelError, trusting

    with pytest.raises(UntrustedModelError):
        import_model(files["evil"])
    assert not os.path.exists(files["marker"])
    model = import_model(files["pt2"])  # a plain .pt2 needs no trust
    assert [s.shape for s in model.inputs] == [(1, 8)]
    with trusting():  # the user's explicit choice: torch unpickles (and the payload runs)
        with pytest.raises(Exception):
            import_model(files["evil"])
    assert os.path.exists(files["marker"])
    os.unlink(files["marker"])


def test_pt2_compile_prints_no_library_warnings(files, capfd):
    out = os.path.join(files["dir"], "quiet.so")
    assert main(["compile", files["pt2"], "-o", out, "--no-tuning", "--quiet"]) == 0
    assert capfd.readouterr().err.strip() == ""  # torch's FutureWarnings were 4 lines here


def test_outputs_get_normal_permissions(files):
    umask = os.umask(0o022)
    os.umask(umask)
    lib, manifest = os.stat(files["so"]).st_mode & 0o777, os.stat(files["json"]).st_mode & 0o777
    assert lib == 0o777 & ~umask and manifest == 0o666 & ~umask  # not mkstemp's 0600


def test_good_run_still_works(files, capfd):
    out = os.path.join(files["dir"], "y.npy")
    assert main(["run", files["so"], "-i", files["x"], "-o", out, "--quiet"]) == 0
    assert np.load(out).shape == (1, 4)


def test_image_folder_with_a_non_image_and_too_small_data(tmp_path):
    from PIL import Image

    from edgec.compiler.data import DataError, load_dataset, split_arrays

    for cls in "ab":
        (tmp_path / cls).mkdir()
        for i in range(6):
            Image.fromarray(np.full((4, 4), 40 * i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    assert len(load_dataset(str(tmp_path)).val) == 2
    (tmp_path / "a" / "notes.png").write_text("not an image")
    with pytest.raises(DataError, match="notes.png is not an image PIL can read"):
        load_dataset(str(tmp_path))
    with pytest.raises(DataError, match="leave the val split\\(s\\) empty.*at least 6 samples "
                                        "per class"):
        split_arrays("tiny", np.zeros((10, 1, 2, 2), np.float32), np.repeat([0, 1], 5))


def test_tuning_log_reader_skips_a_torn_line_without_writing(tmp_path):
    from edgec.compiler.tune.database import RECORDS, WORKLOADS, open_database, write_meta
    from edgec.targets import get_target

    target = get_target("x86-avx2")
    write_meta(str(tmp_path), {"format": "edgec-tuning-log", "version": 1, "target": "x86-avx2",
                               "target_tvm": dict(target.tvm), "runs": []})
    (tmp_path / WORKLOADS).write_text("")
    (tmp_path / RECORDS).write_text('[0,[[["GetSBlock"')  # torn by a kill mid-write
    before = (tmp_path / RECORDS).read_bytes()
    with pytest.warns(UserWarning, match="skipping a torn last line"):
        db = open_database(str(tmp_path), target)
    assert len(db.get_all_tuning_records()) == 0
    assert (tmp_path / RECORDS).read_bytes() == before  # a reader never modifies the log


def test_foreign_tuning_log_names_the_compile_flag(files, capfd):
    out = os.path.join(files["dir"], "f.so")
    code = main(["compile", files["pt2"], "-o", out, "--target", "x86-avx2",
                 "--tuning-logs", os.path.join(files["dir"], "foreign-log")])
    err = capfd.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "holds records for target 'x86-avx512'" in err and "--tuning-logs DIR" in err


def test_printing_over_an_input_is_reported(files, tmp_path):
    """``edgec bench m.so --json > m.json``: the shell empties the manifest before edgec runs;
    edgec says so instead of benchmarking (a subprocess: the redirect is the point)."""
    import sys

    so, manifest = str(tmp_path / "m.so"), str(tmp_path / "m.json")
    shutil.copy(files["so"], so)
    shutil.copy(files["json"], manifest)
    with open(manifest, "r+b") as out:
        done = subprocess.run([sys.executable, "-m", "edgec.compiler.cli", "bench", so, "--json"],
                              stdout=out, stderr=subprocess.PIPE, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().endswith("standard output is " + manifest + ", the manifest of "
                                        "MODEL of this command: the shell emptied it before "
                                        "edgec ran; restore or rebuild it, and redirect the "
                                        "output to another file")


def test_lone_library_describes_itself_and_library_checks_survive(files, tmp_path, capsys):
    """The manifest is embedded in the .so: without model.json, info and run still work;
    with a library that has no embedded copy, the bytecode and the VM still check shapes."""
    from edgec.compiler.deploy.artifact import EMBEDDED_SECTION, read_embedded

    lone = str(tmp_path / "lone.so")
    shutil.copy(files["so"], lone)
    assert read_embedded(lone)["inputs"] == [{"name": "input", "shape": [1, 8],
                                              "dtype": "float32"}]
    assert main(["info", lone, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["manifest_from"] == "library"
    assert main(["run", lone, "-i", files["x"], "--quiet"]) == 0
    bare = str(tmp_path / "bare.so")  # as built by an edgec without embedding
    subprocess.run(["objcopy", "--remove-section", EMBEDDED_SECTION, files["so"], bare],
                   check=True)
    with open(files["json"], encoding="utf-8") as f:
        m = json.load(f)
    m.pop("library_sha256")
    m["inputs"][0]["shape"] = [1, 9]
    with open(str(tmp_path / "bare.json"), "w", encoding="utf-8") as f:
        json.dump(m, f)
    assert main(["run", bare, "-i", files["x"]]) == 2
    assert "the library takes [1, 8]" in capsys.readouterr().err


def _rewrite(src, dst, change):
    """Copy the zip ``src`` to ``dst``, ``change(name, data) -> data or None (drop)``, plus
    the extra members ``change(None, None)`` returns as {name: data}."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = zin.namelist()[0].split("/")[0]
        for info in zin.infolist():
            data = change(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info, data)
        for name, data in (change(None, None) or {}).items():
            zout.writestr(f"{root}/{name}", data)
    return str(dst)


def test_every_pickle_route_of_a_pt2_is_refused(files, tmp_path):
    from edgec.compiler.pt2_check import UntrustedModelError, check_pt2

    def pickled_weight(name, data):
        if name is None or not name.endswith("_weights_config.json"):
            return data
        config = json.loads(data)
        next(iter(config["config"].values()))["use_pickle"] = True
        return json.dumps(config).encode()

    routes = {
        "weight .* is pickled": pickled_weight,
        "constant 'obj' is pickled": lambda n, d: d if n is None or not n.endswith(
            "_constants_config.json") else json.dumps({"config": {"obj": {
                "path_name": "custom_obj_0", "use_pickle": False}}}).encode(),
        "legacy pickled format": lambda n, d: {"data/weights/model.pt": b"x"} if n is None else d,
        "is compiled code": lambda n, d: {"data/aotinductor/m/m.so": b"\x7fELF"} if n is None
        else d,
        "not in the current torch.export format": lambda n, d: None if n and "/models/" in n
        else (d if n else None),
    }
    for i, (why, change) in enumerate(routes.items()):
        path = _rewrite(files["pt2"], tmp_path / f"r{i}.pt2", change)
        with pytest.raises(UntrustedModelError, match=why):
            check_pt2(path)
    check_pt2(files["pt2"])  # the plain one passes
