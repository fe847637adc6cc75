"""Images as tensors: a dataset plug-in's arrays (:mod:`robust_bench_sc.datasets`) → a :class:`Split`.

A split carries what the images are (dataset, split, class count, how tables name them), so
"first N CIFAR-100 test images" comes from the data, never from a constant. Models take
images in [0, 1], float32 NCHW.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from robust_bench_sc.datasets import DEFAULT_DATASET, DEFAULT_SPLIT, Arrays, DataError, get_dataset
from robust_bench_sc.paths import data_dir
from robust_bench_sc.subsets import IMAGES, describe_subset  # noqa: F401 (re-export: defenses/sparse_coding/figures.py imports it from here)

TEST_FILE = "test_first1000.npz"
TRAIN_FILES = tuple(f"train_{i}.npz" for i in range(5))
N_CLASSES = 10  # CIFAR-10 (the default dataset); a run checks logits against its dataset's n_classes

__all__ = ["DataError", "Split", "load_dataset", "load_test", "load_train", "to_split", "N_CLASSES"]


@dataclass(frozen=True)
class Split:
    """Images in [0, 1] as float32 NCHW, integer labels and their official indices, and what
    they are: ``dataset`` / ``split`` names, ``n_classes`` (logits per image) and ``images``
    (how tables name them after "first N", e.g. ``CIFAR-10 test images``)."""

    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor
    n_classes: int = N_CLASSES
    dataset: str = DEFAULT_DATASET
    split: str = DEFAULT_SPLIT
    images: str = IMAGES
    n_available: int = 0  # images in the whole split (before taking the first N)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.x.shape[1:]
        return int(c), int(h), int(w)

    def take(self, positions) -> "Split":
        pos = torch.as_tensor(positions, dtype=torch.long)
        return replace(self, x=self.x[pos], y=self.y[pos], idx=self.idx[pos])


def to_split(a: Arrays, n_images: int | None, dataset: str, split: str, images: str) -> Split:
    """The first ``n_images`` of ``a`` (all when None) as tensors."""
    n_all = len(a.y)
    n = n_all if n_images is None else n_images
    x = a.x[:n]
    if x.dtype == np.uint8:
        xt = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float().div_(255.0)
    else:
        xt = torch.from_numpy(np.array(x, dtype=np.float32)).permute(0, 3, 1, 2)  # a copy: the plug-in keeps its own
    return Split(xt.contiguous(), torch.from_numpy(a.y[:n].astype(np.int64)),
                 torch.from_numpy(a.idx[:n].astype(np.int64)), a.n_classes, dataset, split, images, n_all)


def resolve_root(root: str | Path | None) -> Path:
    """The data folder: ``root``, else $SCBENCH_DATA, else ``shared/data/cifar10``."""
    return data_dir(root)


def load_dataset(dataset: str = DEFAULT_DATASET, root: str | Path | None = None, split: str = DEFAULT_SPLIT,
                 n_images: int | None = None) -> Split:
    """The first ``n_images`` (all when None) of ``split`` of the dataset plug-in ``dataset``
    read from ``root``. Asking for more images than the split holds is an error."""
    ds = get_dataset(dataset)
    where = resolve_root(root)
    arrays = _read_cached(ds, dataset, where, split)
    n_all = len(arrays.y)
    if n_images is not None and not 1 <= n_images <= n_all:
        raise DataError(f"n_images {n_images}: the {dataset} {split} split at {arrays.source} holds {n_all} images "
                        f"(the first {n_all} {ds.images_label(where, split)}); ask for 1..{n_all}")
    return to_split(arrays, n_images, dataset, split, ds.images_label(where, split))


_CACHE: dict[tuple, tuple[tuple, Arrays]] = {}
_CACHE_SIZE = 2  # splits kept read (a run reads its split for the data hash, the labels, the preflight, the worker)


def _stamp(source: str) -> tuple:
    """What the files read look like now: (name, size, mtime) of the file, or the folder's subfolder
    names and (path, size, mtime) of every file under it (an ImageFolder's class folders, empty ones
    included, since they hold a class index)."""
    p = Path(source)
    folders: list[str] = []
    files: list[Path] = []
    try:
        if p.is_file():
            return ((p.name, p.stat().st_size, p.stat().st_mtime_ns),)
        for d, dirs, names in os.walk(p, followlinks=True):
            folders += [str((Path(d) / f).relative_to(p)) for f in dirs]
            files += [Path(d) / f for f in names]
        return tuple(sorted(folders)) + tuple((str(q.relative_to(p)), q.stat().st_size, q.stat().st_mtime_ns)
                                              for q in sorted(files))
    except OSError:
        return ()


def _read_cached(ds, dataset: str, where: Path, split: str) -> Arrays:
    """``ds.read(where, split)``, reused while the files it read are unchanged (in-memory tensors
    are never cached here: the plug-in holds them)."""
    key = (dataset, str(where), split)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] and hit[0] == _stamp(hit[1].source):
        return hit[1]
    arrays = ds.read(where, split)
    stamp = _stamp(arrays.source)
    if stamp:
        _CACHE.pop(key, None)
        _CACHE[key] = (stamp, arrays)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
    return arrays


def load_test(n_images: int | None = None, root: str | Path | None = None) -> Split:
    """The first ``n_images`` CIFAR-10 test images of this project's shared files (``cifar10_npz``)."""
    return load_dataset(DEFAULT_DATASET, root, "test", n_images)


def load_train(root: str | Path | None = None, shards: tuple[int, ...] = (0, 1, 2, 3, 4)) -> Split:
    """Training shards of ``cifar10_npz`` concatenated in order (all five = the 50,000 training images)."""
    ds = get_dataset(DEFAULT_DATASET)
    where = resolve_root(root)
    parts = []
    for s in shards:
        path = where / TRAIN_FILES[s]
        if not path.is_file():
            raise ds.missing(path)
        from robust_bench_sc.datasets import check_labels, read_npz

        f = read_npz(path, need_idx=True)
        if f["x"].shape[1:] != (32, 32, 3) or f["x"].shape[0] != 10000:
            raise DataError(f"{path} holds x {f['x'].dtype}{tuple(f['x'].shape)}; expected x uint8 (10000, 32, 32, 3)")
        parts.append((f["x"], check_labels(str(path), f["y"], 10), f["idx"]))
    x, y, idx = (np.concatenate([p[i] for p in parts]) for i in range(3))
    return to_split(Arrays(x, y, idx, 10, "CIFAR-10", str(where)), None, DEFAULT_DATASET, "train",
                    "CIFAR-10 train images")


def load_data(cfg, n_images: int | None = None, root: str | Path | None = None) -> Split:
    """The images a suite's ``data`` section (:class:`robust_bench_sc.config.DataConfig`) names:
    its first ``n_images`` (default the section's), read from ``root`` (default the section's
    folder, else $SCBENCH_DATA, else shared/data/cifar10)."""
    return load_dataset(cfg.dataset, root or cfg.folder, cfg.split, n_images or cfg.n_images)


def content_hash(split: Split) -> str:
    """The data hash of ``split``: its images as bytes 0-255 plus its labels (run.json's ``data_hash``)."""
    import hashlib

    h = hashlib.sha256(split.x.mul(255).round().byte().numpy().tobytes())
    h.update(split.y.numpy().tobytes())
    return h.hexdigest()[:16]
