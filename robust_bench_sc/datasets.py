"""Datasets are plug-ins: a name → a reader of one file layout.

A suite names its data as ``data: {dataset: cifar10, root: DIR, split: test, n_images: N}``
(the CLI: ``--dataset`` / ``--data-dir``). The bundled readers are registered here, in code,
so they work from a source checkout without installing the package; other packages add
theirs under the entry-point group ``robust_bench_sc.datasets`` (an instance of a
:class:`Dataset` subclass, or a class / factory that takes no arguments and returns one).

- ``cifar10``: the official python version (``cifar-10-batches-py/``: ``test_batch``,
  ``data_batch_1`` … ``data_batch_5``), what ``torchvision.datasets.CIFAR10`` and RobustBench's
  ``load_cifar10`` download; all 10,000 test images;
- ``cifar100``: ``cifar-100-python/`` (``test``, ``train``), fine labels, 100 classes;
- ``cifar10_npz``: this project's shared files (``test_first1000.npz``, ``train_0..4.npz``);
  the default, so suites that name no dataset read what they always read;
- ``npz``: one ``.npz`` (or a pair of ``.npy`` files, or a ``torch.save`` ``.pt`` file of the same) with images ``x`` (N, H, W, C) or (N, C, H, W),
  uint8 or floats in [0, 1], and labels ``y`` (N,), (N, 1) or one-hot (other usual key names
  accepted; optional ``idx``, ``n_classes``), of any size and number of classes;
- ``imagefolder``: image files in torchvision's ImageFolder tree (``ROOT/<split>/<class>/*.png``),
  read with Pillow in torchvision's order;
- ``mnist`` / ``fashion_mnist``: LeCun's IDX files (plain or ``.gz``) in ``ROOT/MNIST/raw/`` /
  ``ROOT/FashionMNIST/raw/`` (torchvision's folders) or ``ROOT``; 28×28×1, 10 classes;
- ``svhn``: the cropped digits ``ROOT/<split>_32x32.mat`` (test, train, extra), label 10 read as 0;
- ``cifar10c``: CIFAR-10-C, ``ROOT/CIFAR-10-C/<corruption>.npy`` + ``labels.npy``; the split names
  a corruption and a severity (``gaussian_noise-5``, :meth:`Dataset.accepts_split`).

Nothing is downloaded: a missing file is one line saying where the files go and which layout
is expected. A reader returns the whole split as numpy arrays (:class:`Arrays`);
:mod:`robust_bench_sc.data` turns them into tensors. This module imports numpy only (no torch),
so validating a suite stays light.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robust_bench_sc.registry import Registry, RegistryError, is_reference, load_reference


class DataError(RuntimeError):
    """A data file is missing or does not hold what it should."""


@dataclass(frozen=True)
class Arrays:
    """A whole split as read from disk.

    x: uint8 (N, H, W, C), channels last (or float32 in [0, 1], same layout: in-memory tensors);
    y: int64 (N,) labels in 0..n_classes-1; idx: int64 (N,) each image's position in the
    official split; n_classes: how many logits a model must return; title: the data set's
    name in words (``CIFAR-10``), tables say "first N {title} {split} images"; source: what
    was read (a file or folder, for messages).
    """

    x: np.ndarray
    y: np.ndarray
    idx: np.ndarray
    n_classes: int
    title: str
    source: str


class Dataset:
    """A dataset plug-in: reads one file layout from a folder (or file) ``root``.

    Subclass it and set ``name``, ``title``, ``splits``, ``layout`` (one sentence: which
    files, where, which format; it ends every "not found" message) and implement
    :meth:`read`. ``n_classes`` / ``image_shape`` (H, W, C) are declared when fixed (None:
    read from the data). Raise :class:`DataError` with one line for anything wrong.
    """

    name: str = ""
    title: str = ""
    splits: tuple[str, ...] = ("test",)
    layout: str = ""
    n_classes: int | None = None
    image_shape: tuple[int, int, int] | None = None

    def read(self, root: Path, split: str) -> Arrays:  # pragma: no cover - interface
        raise NotImplementedError

    def accepts_split(self, split: str) -> bool:
        """Whether ``split`` names a split of this dataset: one of ``splits``. A dataset whose splits
        are open-ended (``cifar10c``: ``<corruption>-<severity>``) overrides this; its ``splits``
        then say the form, for messages and ``scbench datasets``."""
        return split in self.splits

    def images_label(self, root: str | Path | None, split: str) -> str:
        """How tables name the images: ``CIFAR-10 test images`` (after "first N")."""
        return f"{self.title or self.name} {split} images"

    def missing(self, path: Path) -> DataError:
        """The one-line error for a missing file: where it was looked for, the layout expected."""
        return DataError(f"{self.name} dataset: {path} not found; {self.layout} (set data.root in the suite, "
                         "--data-dir or $SCBENCH_DATA; nothing is downloaded)")


def _dataset_or_factory(obj: Any) -> bool:
    return isinstance(obj, Dataset) or callable(obj)


# entries: a Dataset, or a class / factory taking no arguments that returns one (built once, on first use)
DATASETS: Registry[Any] = Registry("dataset", entry_point_group="robust_bench_sc.datasets", accepts=_dataset_or_factory,
                                   expected="a robust_bench_sc.datasets.Dataset, or a class or factory returning one")


_REFERENCED: dict[str, Any] = {}


def get_dataset(name: str) -> Dataset:
    """The plug-in registered as ``name``, or referenced as ``module:attr`` / ``path/to/file.py:attr``
    (an instance; a class or factory is called once)."""
    if is_reference(name):
        if name not in _REFERENCED:
            _REFERENCED[name] = _as_dataset(name, load_reference(name))
        return _REFERENCED[name]
    ds = _as_dataset(name, DATASETS.get(name))
    DATASETS.replace(name, ds)
    return ds


def _as_dataset(name: str, obj: Any) -> Dataset:
    if isinstance(obj, type) or (callable(obj) and not isinstance(obj, Dataset)):
        try:
            obj = obj()
        except TypeError as exc:
            raise RegistryError(f"dataset {name!r}: {exc}") from None
    if not isinstance(obj, Dataset):
        raise RegistryError(f"dataset {name!r} is a {type(obj).__name__}, expected a robust_bench_sc.datasets.Dataset")
    return obj


def check_split(ds: Dataset, split: str) -> None:
    if not ds.accepts_split(split):
        raise DataError(f"{ds.name} dataset has no split {split!r}; splits: {', '.join(ds.splits)}")


def check_labels(path: str, y: np.ndarray, n_classes: int) -> np.ndarray:
    if y.size and (not np.issubdtype(y.dtype, np.integer) or int(y.min()) < 0 or int(y.max()) >= n_classes):
        lo, hi = (y.min(), y.max()) if y.size else (0, 0)
        raise DataError(f"{path} has labels {lo}..{hi} ({y.dtype}); expected integers in 0..{n_classes - 1} "
                        f"({n_classes} classes)")
    return y.astype(np.int64)


# -- the official CIFAR python pickles ----------------------------------------------------

def read_cifar_pickle(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One batch file of the official python version: a pickled dict with ``b'data'``
    uint8 (N, 3072), each row 1024 red, 1024 green, 1024 blue values in row-major order, and
    ``label_key`` (``b'labels'`` / ``b'fine_labels'``) a list of N ints. Returns x (N, 32, 32, 3)."""
    try:
        with open(path, "rb") as f:
            blob = pickle.load(f, encoding="bytes")
    except Exception as exc:
        raise DataError(f"cannot read CIFAR batch {path}: {type(exc).__name__}: {exc} (expected the pickled "
                        "dict of the official python version)") from None
    if not isinstance(blob, dict) or b"data" not in blob or label_key not in blob:
        keys = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in blob) if isinstance(blob, dict) else []
        raise DataError(f"{path} is not a CIFAR batch: expected a dict with b'data' and {label_key!r}"
                        + (f", it has {', '.join(keys)}" if isinstance(blob, dict) else f", it is a {type(blob).__name__}"))
    data = np.asarray(blob[b"data"])
    labels = np.asarray(blob[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise DataError(f"{path}: b'data' is {data.dtype}{tuple(data.shape)} and {label_key!r} has shape "
                        f"{tuple(labels.shape)}; expected uint8 (N, 3072) and N labels")
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), labels


class CifarPickle(Dataset):
    """CIFAR-10 / CIFAR-100 in the official python version (pickled batches)."""

    folder = ""
    files: dict[str, tuple[str, ...]] = {}
    label_key = b"labels"
    image_shape = (32, 32, 3)

    def locate(self, root: Path) -> Path:
        """``root/<folder>`` (what torchvision downloads into ``root``) or ``root`` itself."""
        for cand in (root / self.folder, root):
            if all((cand / f).is_file() for f in self.files["test"][:1]):
                return cand
        return root / self.folder

    def read(self, root: Path, split: str) -> Arrays:
        check_split(self, split)
        folder = self.locate(root)
        parts = []
        for name in self.files[split]:
            path = folder / name
            if not path.is_file():
                raise self.missing(path)
            parts.append(read_cifar_pickle(path, self.label_key))
        x = np.concatenate([p[0] for p in parts])
        assert self.n_classes is not None
        y = check_labels(str(folder), np.concatenate([p[1] for p in parts]), self.n_classes)
        return Arrays(x, y, np.arange(len(y), dtype=np.int64), self.n_classes, self.title, str(folder))


class Cifar10(CifarPickle):
    name = "cifar10"
    title = "CIFAR-10"
    splits = ("test", "train")
    folder = "cifar-10-batches-py"
    files = {"test": ("test_batch",), "train": tuple(f"data_batch_{i}" for i in range(1, 6))}
    n_classes = 10
    layout = ("expected the official CIFAR-10 python version: ROOT/cifar-10-batches-py/test_batch and "
              "data_batch_1..5 (cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, "
              "extracted into ROOT, as torchvision.datasets.CIFAR10(ROOT) and RobustBench's load_cifar10 leave it)")


class Cifar100(CifarPickle):
    name = "cifar100"
    title = "CIFAR-100"
    splits = ("test", "train")
    folder = "cifar-100-python"
    files = {"test": ("test",), "train": ("train",)}
    label_key = b"fine_labels"
    n_classes = 100
    layout = ("expected the official CIFAR-100 python version: ROOT/cifar-100-python/test and train "
              "(cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, extracted into ROOT, "
              "as torchvision.datasets.CIFAR100(ROOT) leaves it); labels are the 100 fine labels")


# -- npz files ----------------------------------------------------------------------------

def read_npz(path: Path, *, need_idx: bool) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as f:
            out = {k: f[k] for k in f.files}
    except Exception as exc:
        raise DataError(f"cannot read {path}: {type(exc).__name__}: {exc} (expected an .npz written by "
                        "numpy.savez)") from None
    n = out["x"].shape[0] if "x" in out and out["x"].ndim else -1
    missing = [k for k in ("x", "y", *(("idx",) if need_idx else ())) if k not in out]
    x, y = out.get("x"), out.get("y")
    if missing or x is None or y is None or x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] not in (1, 3) \
            or y.shape != (n,) or ("idx" in out and out["idx"].shape != (n,)):
        have = ", ".join(f"{k} {v.dtype}{tuple(v.shape)}" for k, v in out.items()) or "nothing"
        raise DataError(f"{path} holds {have}; expected x uint8 (N, H, W, C) with C 1 or 3 and y"
                        + (", idx" if need_idx else "") + " of shape (N,)")
    return out


class Cifar10Npz(Dataset):
    name = "cifar10_npz"
    title = "CIFAR-10"
    splits = ("test", "train")
    files = {"test": ("test_first1000.npz",), "train": tuple(f"train_{i}.npz" for i in range(5))}
    n_classes = 10
    image_shape = (32, 32, 3)
    layout = ("expected this project's CIFAR-10 files: ROOT/test_first1000.npz (test) and ROOT/train_0..4.npz "
              "(train), each with x uint8 (N, 32, 32, 3), y, idx (shared/data/cifar10/SOURCE.md)")

    def read(self, root: Path, split: str) -> Arrays:
        check_split(self, split)
        parts = []
        for name in self.files[split]:
            path = root / name
            if not path.is_file():
                raise self.missing(path)
            f = read_npz(path, need_idx=True)
            if f["x"].shape[1:] != (32, 32, 3):
                raise DataError(f"{path} holds x {f['x'].dtype}{tuple(f['x'].shape)}; expected x uint8 (N, 32, 32, 3)")
            parts.append((f["x"], check_labels(str(path), f["y"], 10), f["idx"].astype(np.int64)))
        x, y, idx = (np.concatenate([p[i] for p in parts]) for i in range(3))
        return Arrays(x, y, idx, 10, self.title, str(root / self.files[split][0]))


# the names a generic array file may give its images and labels (x / y win when present); x_<split> /
# y_<split> (x_test, y_train, ...) are accepted as well
IMAGE_KEYS = ("x", "images", "data", "X")
LABEL_KEYS = ("y", "labels", "targets", "Y")
NPZ_SHAPES = ("expected x uint8 (N, H, W, C) with C 1 or 3 and y of shape (N,) (also accepted: (N, C, H, W); "
              "floats in [0, 1]; integers in 0..255; y (N, 1) or one-hot (N, K); grayscale (N, H, W) with N labels)")


def _choose_key(have: list[str], names: tuple[str, ...], what: str, where: str) -> str:
    """The one array of ``names`` that ``have`` holds (the first name wins when present)."""
    if names[0] in have:
        return names[0]
    found = [k for k in names if k in have]
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"{where} has no {what} array: it holds {', '.join(have) or 'nothing'}; accepted names: "
                        f"{', '.join(names)}")
    raise DataError(f"{where} holds several {what} arrays ({', '.join(found)}); keep one of {', '.join(names)}")


def as_images(x: np.ndarray, where: str, key: str, n_labels: int | None = None) -> np.ndarray:
    """``x`` as uint8 (N, H, W, C) (or float32 in [0, 1], same layout), C 1 or 3.

    Layout: a 3-D (N, H, W) is grayscale (C = 1) when there are ``n_labels`` = N labels (Keras'
    mnist.npz, torchvision's MNIST tensors); channels last when axis 3 is 1 or 3 (this wins when
    axis 1 is too, e.g. (N, 3, 8, 3)), else channels first when axis 1 is 1 or 3. Values: uint8 as they are; other integers in
    0..255 exactly (as uint8); floats in [0, 1] (as float32). Anything else is an error: floats
    above 1 are never rescaled (values in 0..255 say "divide by 255")."""
    have = f"{where}: {key} is {x.dtype}{tuple(x.shape)}"
    if x.ndim == 3 and n_labels is not None and x.shape[0] == n_labels:  # one label per image: (N, H, W)
        x = x[..., None]
    if x.ndim != 4 or x.shape[0] == 0 or min(x.shape[1:]) == 0:
        raise DataError(f"{have}; {NPZ_SHAPES}")
    if x.shape[3] not in (1, 3):
        if x.shape[1] not in (1, 3):
            raise DataError(f"{have}: neither axis 3 (channels last) nor axis 1 (channels first) has 1 or 3 channels; "
                            f"{NPZ_SHAPES}")
        x = x.transpose(0, 2, 3, 1)
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"{have}: expected uint8 pixels 0..255 or floats in [0, 1]")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise DataError(f"{have}: it holds NaN or infinite values; expected floats in [0, 1]")
    lo, hi = x.min(), x.max()
    if np.issubdtype(x.dtype, np.integer):
        if lo < 0 or hi > 255:
            raise DataError(f"{have} with values {lo}..{hi}; expected integer pixels in 0..255 (or floats in [0, 1])")
        return np.ascontiguousarray(x.astype(np.uint8))
    if lo < 0 or hi > 1:
        hint = ("; they look like pixels 0..255 stored as floats: divide by 255 (or store uint8); nothing is "
                "rescaled silently") if lo >= 0 and hi <= 255 else " (nothing is rescaled silently)"
        raise DataError(f"{have} with values {lo:g}..{hi:g}, outside [0, 1]; expected floats in [0, 1]{hint}")
    return np.ascontiguousarray(x, dtype=np.float32)


def as_labels(y: np.ndarray, n: int, where: str, key: str) -> tuple[np.ndarray, int | None]:
    """Integer labels (N,) from (N,), (N, 1) or one-hot (N, K) (then also K); integral floats
    are taken as integers."""
    have = f"{where}: {key} is {y.dtype}{tuple(y.shape)}"
    if y.dtype == np.bool_ or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise DataError(f"{have}; expected integer labels (N,), (N, 1) or one-hot (N, K)")
    k = None
    if y.ndim == 2 and y.shape[0] == n and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2 and y.shape[0] == n and y.shape[1] >= 2:
        if not (((y == 0) | (y == 1)).all() and (y.sum(axis=1) == 1).all()):
            raise DataError(f"{have} is not one-hot (each row one 1, the rest 0); soft or multi-label targets "
                            "are not accepted: store integer labels (N,)")
        y, k = y.argmax(axis=1), int(y.shape[1])
    if y.shape != (n,):
        raise DataError(f"{have}; expected y of shape (N,) = ({n},) for the {n} images, (N, 1) or one-hot (N, K)")
    if np.issubdtype(y.dtype, np.floating):
        if not (np.isfinite(y).all() and (y == np.round(y)).all()):
            raise DataError(f"{have} with values that are not whole numbers; expected integer class labels")
        y = y.astype(np.int64)
    return y, k


def _npy_folder(folder: Path) -> list[str]:
    """The names of the .npy files in ``folder`` (stems)."""
    return sorted(p.stem for p in folder.glob("*.npy") if p.is_file())


TORCH_SUFFIXES = (".pt", ".pth")


def _read_torch_file(path: Path) -> dict[str, np.ndarray]:
    """A file written by ``torch.save``: a dict of tensors / arrays (the npz keys), or a pair
    ``(x, y)`` (a tuple, list, or a TensorDataset's ``tensors``), as numpy arrays. Read with
    ``weights_only=True``: tensors, numbers and containers only, no code runs."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        msg = " ".join(str(exc).split())[:160]
        raise DataError(f"cannot read {path}: {type(exc).__name__}: {msg} (expected a file written by torch.save of "
                        "a dict {'x': images, 'y': labels} or a pair (x, y) of tensors)") from None
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        obj = {"x": obj[0], "y": obj[1]}
    if not isinstance(obj, dict):
        raise DataError(f"{path}: torch.save of a {type(obj).__name__}; expected a dict {{'x': images, 'y': labels}} "
                        "or a pair (x, y) of tensors")
    out = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            out[str(k)] = v.detach().cpu().numpy()
        elif isinstance(v, (np.ndarray, int)):
            out[str(k)] = np.asarray(v)
    return out


class Npz(Dataset):
    """Any images: ``root`` is the .npz file itself (or a ``torch.save`` file, ``.pt`` / ``.pth``:
    a dict with the same keys, or a pair ``(x, y)``), or a folder holding ``<split>.npz`` (or,
    without it, a pair of .npy files ``x.npy`` / ``y.npy``, any accepted names)."""

    name = "npz"
    title = ""
    splits = ("test", "train", "val")
    layout = ("expected one .npz (numpy.savez) with images x (N, H, W, C) or (N, C, H, W), C 1 or 3, uint8 or "
              "floats in [0, 1] (also named images, data, X, x_<split>) and labels y (N,), (N, 1) or one-hot "
              "(also labels, targets, Y, y_<split>); optional idx (N,) (image positions, default 0..N-1) and "
              "n_classes (default max(y)+1); data.root is the file (or a torch.save .pt/.pth file of such a dict or a "
              "pair (x, y)), or a folder holding <split>.npz or x.npy and y.npy")

    def path(self, root: Path, split: str) -> Path:
        return root if root.suffix in (".npz", *TORCH_SUFFIXES) else root / f"{split}.npz"

    def images_label(self, root: str | Path | None, split: str) -> str:
        if root and not self.path(Path(root), split).is_file() and Path(root).is_dir() and _npy_folder(Path(root)):
            return f"{split} images of {Path(root).name}/"
        name = self.path(Path(root), split).name if root else f"{split}.npz"
        return f"{split} images of {name}"

    def read(self, root: Path, split: str) -> Arrays:
        path = self.path(root, split)
        image_keys, label_keys = (*IMAGE_KEYS, f"x_{split}"), (*LABEL_KEYS, f"y_{split}")
        if path.is_file() and path.suffix in TORCH_SUFFIXES:
            where = str(path)
            out = _read_torch_file(path)
            have = list(out)
            keys = [_choose_key(have, image_keys, "image", where), _choose_key(have, label_keys, "label", where)]
        elif path.is_file():
            where = str(path)
            try:
                with np.load(path) as f:
                    have = list(f.files)
                    keys = [_choose_key(have, image_keys, "image", where), _choose_key(have, label_keys, "label", where)]
                    out = {k: f[k] for k in (*keys, *(o for o in ("idx", "n_classes") if o in have))}
            except DataError:
                raise
            except Exception as exc:
                raise DataError(f"cannot read {path}: {type(exc).__name__}: {exc} (expected an .npz written by "
                                "numpy.savez)") from None
        elif root.is_file():
            raise DataError(f"npz dataset: {root} is a file but not an .npz (nor a torch.save .pt/.pth); give the "
                            ".npz file, or the folder "
                            f"holding {split}.npz or the .npy files (x.npy and y.npy, or x_{split}.npy and y_{split}.npy, ...)")
        elif root.is_dir() and _npy_folder(root):
            where, have = str(root), _npy_folder(root)
            keys = [_choose_key(have, image_keys, "image (.npy)", where), _choose_key(have, label_keys, "label (.npy)", where)]
            out = {}
            for key in (*keys, *(o for o in ("idx", "n_classes") if o in have)):
                try:
                    out[key] = np.load(root / f"{key}.npy")
                except Exception as exc:
                    raise DataError(f"cannot read {root / f'{key}.npy'}: {type(exc).__name__}: {exc} (expected an .npy "
                                    "written by numpy.save)") from None
        else:
            raise self.missing(path)
        xk, yk = keys
        x = as_images(out[xk], where, xk, n_labels=len(out[yk]) if np.ndim(out[yk]) >= 1 else None)
        y, one_hot_k = as_labels(out[yk], len(x), where, yk)
        if "n_classes" in out:
            n_classes = int(out["n_classes"])
        else:
            n_classes = one_hot_k if one_hot_k is not None else int(y.max()) + 1 if y.size else 0
        if n_classes < 2:
            raise DataError(f"{where}: {n_classes} classes (labels {y.min() if y.size else '-'}..{y.max() if y.size else '-'}); "
                            "a classifier needs at least 2 (store n_classes in the file)")
        idx = out.get("idx")
        if idx is not None and idx.shape != (len(x),):
            raise DataError(f"{where}: idx is {idx.dtype}{tuple(idx.shape)}; expected ({len(x)},), one position per image")
        idx = idx.astype(np.int64) if idx is not None else np.arange(len(y), dtype=np.int64)
        title = path.name if path.is_file() else f"{root.name}/"
        return Arrays(x, check_labels(where, y, n_classes), idx, n_classes, title, where)


# -- image files in class folders (torchvision's ImageFolder) ---------------------------------

# torchvision.datasets.folder.IMG_EXTENSIONS, compared in lower case
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IGNORED_FILES = ("thumbs.db", "desktop.ini")  # besides hidden files (.DS_Store, ...)
ONE_CHANNEL = ("L", "1", "LA")  # Pillow modes read as 1 channel (mode 1: 0 or 255; LA: alpha dropped)
THREE_CHANNELS = ("RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV")  # converted to RGB


def _hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() in IGNORED_FILES


def image_files(folder: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """The class names (sorted) and (file, class index) of every image under ``folder``/<class>/, in torchvision's
    ImageFolder order: classes by sorted folder name, then within a class the sorted walk of
    its folder (sorted subfolder paths, file names sorted in each). Hidden files and folders
    are skipped; any other file that is not an image is an error (never dropped silently)."""
    import os

    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not _hidden(e.name))
    loose = sorted(e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
    if loose:
        raise DataError(f"{folder / loose[0]}: an image outside any class folder ({len(loose)} such in {folder}); "
                        f"expected {folder}/<class_name>/<image>")
    if not classes:
        raise DataError(f"{folder} has no class folders; expected {folder}/<class_name>/<image> "
                        f"({', '.join(IMAGE_EXTENSIONS)}) (set data.root, --data-dir or $SCBENCH_DATA)")
    out = []
    for label, cls in enumerate(classes):
        for dirpath, dirnames, filenames in sorted(os.walk(folder / cls, followlinks=True)):
            if any(_hidden(part) for part in Path(dirpath).relative_to(folder).parts):
                continue
            for name in sorted(filenames):
                if _hidden(name):
                    continue
                if not name.lower().endswith(IMAGE_EXTENSIONS):
                    raise DataError(f"{Path(dirpath) / name}: not an image file of the accepted kinds "
                                    f"({', '.join(IMAGE_EXTENSIONS)}); remove or convert it")
                out.append((Path(dirpath) / name, label))
    return classes, out


def read_image(path: Path) -> np.ndarray:
    """One image file as uint8 (H, W, C): mode L (and 1, LA) → 1 channel, RGB → 3; RGBA, P (palette),
    CMYK, ... converted to RGB (alpha dropped, not blended); 16-bit and float modes refused."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode not in ONE_CHANNEL + THREE_CHANNELS:
                raise DataError(f"{path}: Pillow mode {mode} (16-bit or float pixels); expected 8-bit images: "
                                f"grayscale (L) or colour ({', '.join(THREE_CHANNELS)})")
            raw = [t.args[0] if isinstance(t.args, tuple) and t.args else t.args for t in getattr(im, "tile", [])]
            if any(isinstance(r, str) and ";16" in r for r in raw):  # Pillow reads 16-bit RGB(A) PNG as 8-bit
                raise DataError(f"{path}: 16 bits per channel ({', '.join(map(str, raw))}), which Pillow would cut "
                                "to 8 bits; expected 8-bit images (convert them yourself)")
            if mode in ONE_CHANNEL:
                arr = np.asarray(im.convert("L"))[:, :, None]
            else:
                arr = np.asarray(im if mode == "RGB" else im.convert("RGB"))
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from None
    return arr


class ImageFolder(Dataset):
    """Image files in one folder per class, as torchvision's ``ImageFolder`` reads them:
    ``ROOT/<split>/<class_name>/*.png`` or, when ROOT has no ``<split>/`` folder,
    ``ROOT/<class_name>/*.png``."""

    name = "imagefolder"
    title = "ImageFolder"
    splits = ("test", "train", "val")
    layout = ("expected torchvision's ImageFolder layout: ROOT/<split>/<class_name>/<image> or, without a split "
              f"folder, ROOT/<class_name>/<image> ({', '.join(IMAGE_EXTENSIONS)}, read with Pillow); class index = "
              "sorted class folder names; images in torchvision's order (class, then sorted file path); one "
              "size for all; L → 1 channel, RGB (and RGBA, P, ...: converted) → 3")

    def folder(self, root: Path, split: str) -> tuple[Path, bool]:
        """The folder of class folders: ``root/split`` when it is a folder (True), else ``root`` (False)."""
        return (root / split, True) if (root / split).is_dir() else (root, False)

    def images_label(self, root: str | Path | None, split: str) -> str:
        if not root:
            return f"{split} images of an ImageFolder"
        folder, is_split = self.folder(Path(root), split)
        return f"images of {folder.parent.name}/{split}/" if is_split else f"images of {folder.name}/ (no split folder)"

    def read(self, root: Path, split: str) -> Arrays:
        check_split(self, split)
        if root.is_file():
            raise DataError(f"imagefolder dataset: {root} is a file; expected the folder ROOT of "
                            "ROOT/<split>/<class_name>/<image> or ROOT/<class_name>/<image>")
        if not root.is_dir():
            raise self.missing(root)
        folder, is_split = self.folder(root, split)
        if not is_split:
            splits = sorted(s for s in self.splits if (root / s).is_dir())
            if splits:
                raise DataError(f"imagefolder dataset: {root} has no {split}/ folder (it has {', '.join(s + '/' for s in splits)}); "
                                f"ask for split {splits[0]} (data.split), or give the split folder itself as the root")
        classes, files = image_files(folder)
        if not files:
            raise DataError(f"{folder}: no image files in its class folders; expected {folder}/<class_name>/<image> "
                            f"({', '.join(IMAGE_EXTENSIONS)})")
        first = read_image(files[0][0])
        x = np.empty((len(files), *first.shape), np.uint8)
        for i, (path, _) in enumerate(files):
            img = first if i == 0 else read_image(path)
            if img.shape != first.shape:
                raise DataError(f"{path} is {_size(img)}, but {files[0][0]} is {_size(first)}; all images of an "
                                "ImageFolder must share one size and channel count (resize or convert them first)")
            x[i] = img
        n_classes = len(classes)
        if n_classes < 2:
            raise DataError(f"{folder} has {n_classes} class folder; a classifier needs at least 2")
        y = np.array([label for _, label in files], dtype=np.int64)
        return Arrays(x, y, np.arange(len(y), dtype=np.int64), n_classes, self.title, str(folder))


def _size(img: np.ndarray) -> str:
    h, w, c = img.shape
    return f"{w}×{h} pixels (width × height) with {c} channel{'s' if c > 1 else ''}"


# -- MNIST / Fashion-MNIST: LeCun's IDX files ------------------------------------------------

IDX_IMAGES, IDX_LABELS = 0x00000803, 0x00000801  # IDX magic numbers: unsigned bytes in 3 dimensions / in 1


def read_idx(path: Path, magic: int) -> np.ndarray:
    """One IDX file, gzipped when its name ends in ``.gz``, as torchvision's MNIST reads it: a
    big-endian int32 magic number (0x00000803: unsigned bytes in 3 dimensions, the images; 0x00000801:
    in 1, the labels), one big-endian int32 per dimension, then the values in row-major order.
    Returns uint8 of the header's shape; a wrong magic number or a size other than the header's is one line."""
    import gzip

    try:
        with (gzip.open(path) if path.name.endswith(".gz") else open(path, "rb")) as f:
            data = f.read()
    except Exception as exc:  # a broken or truncated .gz: BadGzipFile, EOFError, zlib.error
        raise DataError(f"cannot read {path}: {type(exc).__name__}: {exc} (expected an IDX file, gzipped when "
                        "named .gz)") from None
    ndim = magic & 0xFF
    what = f"IDX {'images' if ndim == 3 else 'labels'}: unsigned bytes in {ndim} dimension{'s' if ndim > 1 else ''}"
    head = 4 * (1 + ndim)
    if len(data) < head:
        raise DataError(f"{path} is {len(data)} bytes, shorter than the {head}-byte header of {what}")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(f"{path}: magic number 0x{found:08X}; expected 0x{magic:08X} ({what})")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    n_values = math.prod(dims)
    if len(data) - head != n_values:
        state = "truncated" if len(data) - head < n_values else "longer than its header says"
        raise DataError(f"{path} is {state}: its header says {' × '.join(map(str, dims))} = {n_values} bytes of "
                        f"values, it holds {len(data) - head} after the {head}-byte header")
    return np.frombuffer(data, np.uint8, offset=head).reshape(dims).copy()


class Mnist(Dataset):
    """MNIST in LeCun's original IDX files, as ``torchvision.datasets.MNIST(ROOT)`` keeps them in
    ``ROOT/MNIST/raw/`` (also read from ``ROOT/raw/`` or ``ROOT`` itself), each file plain or gzipped.

    Fashion-MNIST ships the same four file names in the same format, so the files cannot say which
    of the two they hold: it is registered separately as ``fashion_mnist`` (this reader, the folder
    ``ROOT/FashionMNIST/raw/`` and the title Fashion-MNIST) rather than guessed from a folder name,
    so the name in the suite decides what tables call the images ("first N Fashion-MNIST test
    images"), also for a flat folder of IDX files. Each name finds the other's torchvision folder
    and says which name reads it.
    """

    name = "mnist"
    title = "MNIST"
    folder = "MNIST"  # torchvision's ROOT/<class name>/raw
    other = ("FashionMNIST", "fashion_mnist")  # the twin: its folder, its name
    splits = ("test", "train")
    files = {"test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
             "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")}
    n_classes = 10
    image_shape = (28, 28, 1)
    layout = ("expected MNIST's IDX files: ROOT/MNIST/raw/t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (test), "
              "train-images-idx3-ubyte and train-labels-idx1-ubyte (train), each also as .gz (from "
              "http://yann.lecun.com/exdb/mnist/, as torchvision.datasets.MNIST(ROOT) leaves them; ROOT/raw/ or ROOT "
              "itself also work); 28×28 grayscale, 10 classes")

    def find(self, folder: Path, name: str) -> Path | None:
        """``folder/name``, else ``folder/name.gz``, else None."""
        return next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)

    def candidates(self, root: Path) -> tuple[Path, ...]:
        return root / self.folder / "raw", root / "raw", root

    def read(self, root: Path, split: str) -> Arrays:
        check_split(self, split)
        images_name, labels_name = self.files[split]
        folder = next((c for c in self.candidates(root) if self.find(c, images_name)), None)
        if folder is None:
            twin = root / self.other[0] / "raw"
            hint = (f"; {twin} holds {self.other[0]}'s files: read them as dataset {self.other[1]}"
                    if self.find(twin, images_name) else "")
            raise DataError(f"{self.name} dataset: {images_name} (or .gz) not found in "
                            f"{', '.join(map(str, self.candidates(root)))}{hint}; {self.layout} (set data.root in the "
                            "suite, --data-dir or $SCBENCH_DATA; nothing is downloaded)")
        images = self.find(folder, images_name)
        labels = self.find(folder, labels_name)
        assert images is not None
        if labels is None:
            raise self.missing(folder / labels_name)
        x = read_idx(images, IDX_IMAGES)
        y = read_idx(labels, IDX_LABELS)
        if x.shape[1:] != (28, 28):
            raise DataError(f"{images} holds {x.shape[0]} images of {x.shape[1]}×{x.shape[2]} pixels; expected 28×28")
        if len(x) != len(y):
            raise DataError(f"{images} holds {len(x)} images but {labels} holds {len(y)} labels; expected one label "
                            "per image")
        return Arrays(x[:, :, :, None], check_labels(str(labels), y, 10), np.arange(len(y), dtype=np.int64), 10,
                      self.title, str(folder))


class FashionMnist(Mnist):
    name = "fashion_mnist"
    title = "Fashion-MNIST"
    folder = "FashionMNIST"
    other = ("MNIST", "mnist")
    layout = ("expected Fashion-MNIST's IDX files: ROOT/FashionMNIST/raw/t10k-images-idx3-ubyte and "
              "t10k-labels-idx1-ubyte (test), train-images-idx3-ubyte and train-labels-idx1-ubyte (train), each also "
              "as .gz (from https://github.com/zalandoresearch/fashion-mnist, as torchvision.datasets.FashionMNIST(ROOT) "
              "leaves them; ROOT/raw/ or ROOT itself also work); 28×28 grayscale, 10 classes")


# -- SVHN: the cropped digits (format 2) ----------------------------------------------------

class Svhn(Dataset):
    """SVHN's cropped digits as ``torchvision.datasets.SVHN(ROOT, split)`` reads them: MATLAB files
    read with ``scipy.io.loadmat``, ``X`` uint8 (32, 32, 3, N) and ``y`` (N, 1) in 1..10. Label 10
    means the digit 0 and is read as 0 (as torchvision does), so class k is the digit k."""

    name = "svhn"
    title = "SVHN"
    splits = ("test", "train", "extra")
    n_classes = 10
    image_shape = (32, 32, 3)
    layout = ("expected SVHN's cropped digits (format 2): ROOT/test_32x32.mat, train_32x32.mat, extra_32x32.mat (from "
              "http://ufldl.stanford.edu/housenumbers/, as torchvision.datasets.SVHN(ROOT) leaves them), MATLAB files "
              "with X uint8 (32, 32, 3, N) and y (N, 1) in 1..10; label 10 (the digit 0) is read as 0, as torchvision does")

    def read(self, root: Path, split: str) -> Arrays:
        check_split(self, split)
        path = root / f"{split}_32x32.mat"
        if not path.is_file():
            raise self.missing(path)
        from scipy.io import loadmat

        try:
            mat = loadmat(path)
        except Exception as exc:  # not a .mat, a truncated one, or MATLAB v7.3 (HDF5)
            text = str(exc).splitlines()[0] if str(exc) else ""
            raise DataError(f"cannot read {path}: {type(exc).__name__}: {text} (expected a MATLAB file that "
                            "scipy.io.loadmat reads, as SVHN's are)") from None
        x, y = mat.get("X"), mat.get("y")
        if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
            have = ", ".join(f"{k} {v.dtype}{tuple(v.shape)}" if isinstance(v, np.ndarray) else k
                             for k, v in mat.items() if not k.startswith("__")) or "nothing"
            raise DataError(f"{path} holds {have}; expected X uint8 (32, 32, 3, N) and y (N, 1)")
        n = x.shape[3] if x.ndim == 4 else -1
        if x.dtype != np.uint8 or x.shape[:3] != (32, 32, 3) or n < 0 or y.shape not in ((n, 1), (n,)) \
                or not np.issubdtype(y.dtype, np.integer) and not np.issubdtype(y.dtype, np.floating):
            raise DataError(f"{path} holds X {x.dtype}{tuple(x.shape)} and y {y.dtype}{tuple(y.shape)}; expected X "
                            "uint8 (32, 32, 3, N) and y (N, 1)")
        y = y.reshape(-1)
        if y.size and not (np.isfinite(y).all() and (y == np.round(y)).all() and 0 <= y.min() and y.max() <= 10):
            raise DataError(f"{path}: y holds {y.min()}..{y.max()}; expected the digits' labels 1..10 (10: the digit 0)")
        y = y.astype(np.int64)
        y[y == 10] = 0
        x = np.ascontiguousarray(x.transpose(3, 0, 1, 2))  # (H, W, C, N) → (N, H, W, C)
        return Arrays(x, y, np.arange(len(y), dtype=np.int64), 10, self.title, str(path))


# -- CIFAR-10-C: corrupted CIFAR-10 test images ------------------------------------------------

class Cifar10C(Dataset):
    """CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019) as RobustBench's ``load_cifar10c`` reads it:
    ``ROOT/CIFAR-10-C/<corruption>.npy`` holds the 10,000 CIFAR-10 test images under one corruption at
    severity 1, then 2, ... 5 (uint8 (50000, 32, 32, 3)), ``labels.npy`` their labels (50000,).

    A split is a corruption and a severity, ``gaussian_noise-5``: the 10,000 images of that severity's
    block, and ``idx`` the position within the block, so image i is CIFAR-10 test image i corrupted
    (the official test order). Any ``<name>.npy`` in the folder is a corruption (the 15 of the paper,
    the 4 extra ones, or your own of the same shape)."""

    name = "cifar10c"
    title = "CIFAR-10-C"
    folder = "CIFAR-10-C"
    splits = ("<corruption>-<severity 1..5>",)
    severities = 5
    per_severity = 10_000
    n_classes = 10
    image_shape = (32, 32, 3)
    layout = ("expected CIFAR-10-C (CIFAR-10-C.tar from https://zenodo.org/record/2535967, extracted into ROOT, as "
              "RobustBench's load_cifar10c reads it): ROOT/CIFAR-10-C/<corruption>.npy uint8 (50000, 32, 32, 3), "
              "severities 1..5 in blocks of 10000 (severity 1 first), and labels.npy (50000,); split "
              "<corruption>-<severity>, e.g. gaussian_noise-5")

    def parse_split(self, split: str) -> tuple[str, int]:
        """``gaussian_noise-5`` → ("gaussian_noise", 5); anything else is one line."""
        import re

        m = re.fullmatch(r"([\w-]+)-([0-9]+)", split)
        if m is None:
            raise DataError(f"{self.name} dataset: split {split!r} is not <corruption>-<severity> (e.g. "
                            "gaussian_noise-5)")
        severity = int(m.group(2))
        if not 1 <= severity <= self.severities:
            raise DataError(f"{self.name} dataset: split {split!r}: severity {severity} is outside 1..{self.severities}")
        return m.group(1), severity

    def accepts_split(self, split: str) -> bool:
        try:
            self.parse_split(split)
        except DataError:
            return False
        return True

    def locate(self, root: Path) -> Path:
        """``root/CIFAR-10-C`` (where the archive extracts) or ``root`` itself, whichever holds labels.npy."""
        for cand in (root / self.folder, root):
            if (cand / "labels.npy").is_file():
                return cand
        raise self.missing(root / self.folder / "labels.npy")

    def load(self, path: Path, what: str, shape: tuple[int, ...]) -> np.ndarray:
        """An .npy file, memory-mapped (a corruption file is 150 MB; one severity is read)."""
        try:
            arr = np.load(path, mmap_mode="r")
        except Exception as exc:
            raise DataError(f"cannot read {path}: {type(exc).__name__}: {exc} (expected an .npy written by "
                            "numpy.save)") from None
        if arr.shape != shape or (what == "images" and arr.dtype != np.uint8) \
                or (what == "labels" and not np.issubdtype(arr.dtype, np.integer)):
            want = "uint8" if what == "images" else "integer"
            raise DataError(f"{path} holds {arr.dtype}{tuple(arr.shape)}; expected {what}: {want} {shape} "
                            f"({self.severities} severities × {self.per_severity})")
        return arr

    def read(self, root: Path, split: str) -> Arrays:
        corruption, severity = self.parse_split(split)
        folder = self.locate(root)
        path = folder / f"{corruption}.npy"
        if corruption == "labels" or not path.is_file():
            found = [n for n in _npy_folder(folder) if n != "labels"]
            raise DataError(f"{self.name} dataset: no corruption {corruption!r} ({path.name}) in {folder}; it holds "
                            f"{', '.join(f'{n}.npy' for n in found) if found else 'no .npy file besides labels.npy'} "
                            "(split <corruption>-<severity>, e.g. gaussian_noise-5)")
        n = self.severities * self.per_severity
        x_all = self.load(path, "images", (n, 32, 32, 3))
        y_all = self.load(folder / "labels.npy", "labels", (n,))
        block = slice((severity - 1) * self.per_severity, severity * self.per_severity)
        x = np.array(x_all[block])  # a copy: only this severity is read from disk
        y = check_labels(str(folder / "labels.npy"), np.array(y_all[block]), 10)
        return Arrays(x, y, np.arange(self.per_severity, dtype=np.int64), 10, self.title, str(folder))


class InMemory(Dataset):
    """Tensors handed to :func:`robust_bench_sc.api.benchmark` (``x``, ``y``), kept in this
    process under their content hash (``root``)."""

    name = "tensors"
    title = "given"
    splits = ("test",)
    layout = "tensors passed to benchmark(x=..., y=...) exist only in the process that passed them"
    held: dict[str, Arrays] = {}

    def images_label(self, root: str | Path | None, split: str) -> str:
        return f"images given to benchmark() ({Path(root).name if root else 'x, y'})"

    def read(self, root: Path, split: str) -> Arrays:
        key = root.name
        if key not in self.held:
            raise DataError(f"tensors {key} were passed to benchmark() in another process; {self.layout}")
        return self.held[key]


# the bundled plug-ins, registered in code (a source checkout needs no installed entry points);
# pyproject.toml declares the same objects under robust_bench_sc.datasets
CIFAR10, CIFAR100, CIFAR10_NPZ, NPZ, IMAGEFOLDER, TENSORS = \
    Cifar10(), Cifar100(), Cifar10Npz(), Npz(), ImageFolder(), InMemory()
MNIST, FASHION_MNIST, SVHN, CIFAR10C = Mnist(), FashionMnist(), Svhn(), Cifar10C()
for _ds in (CIFAR10, CIFAR100, CIFAR10_NPZ, NPZ, IMAGEFOLDER, MNIST, FASHION_MNIST, SVHN, CIFAR10C, TENSORS):
    DATASETS.register(_ds.name, _ds)

DEFAULT_DATASET = "cifar10_npz"
DEFAULT_SPLIT = "test"


def images_label(dataset: str = DEFAULT_DATASET, split: str = DEFAULT_SPLIT, root: str | Path | None = None) -> str:
    """``CIFAR-10 test images`` for (cifar10 or cifar10_npz, test); what follows "first N"."""
    return get_dataset(dataset).images_label(root, split)


def images_of_settings(settings: Mapping[str, Any]) -> str:
    """How a report names the images its recorded settings read (``dataset``, ``split``,
    ``data_dir``; missing or None: the default), e.g. ``CIFAR-10-C gaussian_noise-5 images``;
    reports written before these settings existed name ``CIFAR-10 test images``."""
    return images_label(settings.get("dataset") or DEFAULT_DATASET, settings.get("split") or DEFAULT_SPLIT,
                        settings.get("data_dir"))


def images_of(cfg: Any) -> str:
    """How tables name the images of a suite's ``data`` section (``CIFAR-100 test images``),
    without reading them."""
    from robust_bench_sc.paths import data_dir

    return get_dataset(cfg.dataset).images_label(data_dir(cfg.folder), cfg.split)


def describe_datasets() -> list[tuple[str, str]]:
    """(name, one line) of every registered dataset, for ``scbench datasets``."""
    out = []
    for n in DATASETS.names():
        try:
            ds = get_dataset(n)
            out.append((n, f"{ds.title or n}: splits {', '.join(ds.splits)}; {ds.layout}"))
        except Exception as exc:  # a broken third-party plug-in is listed, not fatal
            out.append((n, f"cannot load: {exc}"))
    return out
