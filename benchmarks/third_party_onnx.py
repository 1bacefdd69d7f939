"""Real ONNX files written by other tools, taken from wheels on the package index.

rapidocr-onnxruntime 1.4.4 ships PaddleOCR's models converted by paddle2onnx (real
weights): a MobileNetV3-style text-direction classifier (opset 11, dynamic H/W and a
Shape -> Concat -> Reshape head), the PP-OCRv4 text detector (DB-net with an FPN:
ConvTranspose, Resize, dynamic N/H/W) and recognizer (SVTR-style attention, dynamic
W). ``fetch`` downloads the wheel once with ``pip download --no-deps`` (the package
index is the one place these machines reach) and unpacks the .onnx files into a cache.
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile

WHEEL = "rapidocr-onnxruntime==1.4.4"
FILES = {  # file -> (input name, the static shape edgec is given with --input)
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": ("x", (1, 3, 48, 192)),
    "ch_PP-OCRv4_rec_infer.onnx": ("x", (1, 3, 48, 320)),
    "ch_PP-OCRv4_det_infer.onnx": ("x", (1, 3, 320, 320)),
}


def cache_dir() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                        "edgec", "onnx-files")


def fetch(folder: str | None = None) -> dict:
    """{file name: path} of the files, downloading and unpacking the wheel if needed."""
    folder = folder or cache_dir()
    paths = {name: os.path.join(folder, name) for name in FILES}
    if all(os.path.exists(p) for p in paths.values()):
        return paths
    os.makedirs(folder, exist_ok=True)
    wheels = os.path.join(folder, "wheels")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", wheels,
                    WHEEL], check=True)
    wheel = next(os.path.join(wheels, w) for w in os.listdir(wheels)
                 if w.startswith("rapidocr_onnxruntime") and w.endswith(".whl"))
    with zipfile.ZipFile(wheel) as z:
        for member in z.namelist():
            name = os.path.basename(member)
            if name in FILES:
                tmp = paths[name] + ".part"
                with z.open(member) as src, open(tmp, "wb") as dst:
                    dst.write(src.read())
                os.replace(tmp, paths[name])
    return paths


if __name__ == "__main__":
    for name, path in fetch().items():
        print(name, path)
