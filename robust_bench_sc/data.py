"""CIFAR-10 as shipped in shared/data/cifar10 (numpy shards, uint8 NHWC).

Only the first 1000 official test images exist here; every figure computed on them must
say "first N CIFAR-10 test images" (:func:`robust_bench_sc.subsets.describe_subset`, importable
from here too).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robust_bench_sc.paths import N_TEST_AVAILABLE, data_dir
from robust_bench_sc.subsets import describe_subset  # noqa: F401 (re-export: defenses/sparse_coding/figures.py imports it from here)

TEST_FILE = "test_first1000.npz"
TRAIN_FILES = tuple(f"train_{i}.npz" for i in range(5))
N_CLASSES = 10  # CIFAR-10: a defense returns one logit per class


class DataError(RuntimeError):
    """A data file is missing or does not hold what it should."""


@dataclass(frozen=True)
class Split:
    """Images in [0, 1] as float32 NCHW, integer labels and their official indices."""

    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, positions) -> "Split":
        pos = torch.as_tensor(positions, dtype=torch.long)
        return Split(self.x[pos], self.y[pos], self.idx[pos])


def _read_npz(path: Path, expected_n: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(
            f"CIFAR-10 file not found: {path} (expected an .npz with x uint8 (N,32,32,3), y, idx; "
            "set SCBENCH_DATA or --data-dir to the folder holding it)"
        )
    try:
        with np.load(path) as f:
            x, y, idx = f["x"], f["y"], f["idx"]
    except Exception as exc:
        raise DataError(f"cannot read CIFAR-10 file {path}: {exc}") from exc
    n = x.shape[0]
    if x.dtype != np.uint8 or x.shape[1:] != (32, 32, 3) or y.shape != (n,) or idx.shape != (n,):
        raise DataError(
            f"{path} holds x {x.dtype}{x.shape}, y {y.shape}, idx {idx.shape}; "
            "expected x uint8 (N, 32, 32, 3) and y, idx of shape (N,)"
        )
    if expected_n is not None and n != expected_n:
        raise DataError(f"{path} holds {n} images, expected {expected_n}")
    if y.min() < 0 or y.max() > 9:
        raise DataError(f"{path} has labels outside 0..9")
    return x, y, idx


def _to_split(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> Split:
    xt = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float().div_(255.0)
    return Split(xt.contiguous(), torch.from_numpy(y.astype(np.int64)), torch.from_numpy(idx.astype(np.int64)))


def load_test(n_images: int | None = None, root: str | Path | None = None) -> Split:
    """The first ``n_images`` official CIFAR-10 test images (at most 1000 exist here)."""
    if n_images is not None and not 1 <= n_images <= N_TEST_AVAILABLE:
        raise DataError(f"n_images must be in 1..{N_TEST_AVAILABLE} (only the first 1000 test images exist), got {n_images}")
    x, y, idx = _read_npz(data_dir(root) / TEST_FILE, N_TEST_AVAILABLE)
    n = n_images or N_TEST_AVAILABLE
    return _to_split(x[:n], y[:n], idx[:n])


def load_train(root: str | Path | None = None, shards: tuple[int, ...] = (0, 1, 2, 3, 4)) -> Split:
    """Training shards concatenated in order (all five = the 50,000 training images)."""
    parts = [_read_npz(data_dir(root) / TRAIN_FILES[s], 10000) for s in shards]
    return _to_split(*(np.concatenate([p[i] for p in parts]) for i in range(3)))
