"""MNIST / Fashion-MNIST (LeCun's IDX files), SVHN (cropped digits, .mat) and CIFAR-10-C (one .npy per
corruption, five severities) (issue: datasets3). Each is written here byte for byte in its official
format from the bundled CIFAR-10 images, read back exactly, and every broken file is refused in one line
that names it."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from robust_bench_sc.data import DataError, content_hash, load_dataset
from robust_bench_sc.paths import data_dir

MNIST_FILES = {"test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
               "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")}


@pytest.fixture(scope="module")
def first1000() -> tuple[np.ndarray, np.ndarray]:
    """The bundled test_first1000.npz: x uint8 (1000, 32, 32, 3), y."""
    with np.load(data_dir() / "test_first1000.npz") as f:
        return f["x"].copy(), f["y"].astype(np.int64)


@pytest.fixture(scope="module")
def digits(first1000) -> tuple[np.ndarray, np.ndarray]:
    """60 real 28×28 grayscale images (the green channel of the first 60 CIFAR-10 test images, cropped
    2 pixels each side) and their labels: x uint8 (60, 28, 28), y (60,)."""
    x, y = first1000
    return np.ascontiguousarray(x[:60, 2:30, 2:30, 1]), y[:60]


def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def _pixels(s) -> np.ndarray:
    return s.x.permute(0, 2, 3, 1).mul(255).round().byte().numpy()


# -- MNIST: IDX files ------------------------------------------------------------------------

def idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    """An IDX file: big-endian int32 magic, one big-endian int32 per dimension, then the uint8 values."""
    return struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()


def write_idx(path: Path, arr: np.ndarray, magic: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(arr, magic)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def write_mnist(folder: Path, x: np.ndarray, y: np.ndarray, split: str = "test", gz: bool = False) -> None:
    images, labels = MNIST_FILES[split]
    ext = ".gz" if gz else ""
    write_idx(folder / f"{images}{ext}", x, 0x00000803)
    write_idx(folder / f"{labels}{ext}", y, 0x00000801)


def test_idx_bytes_are_the_format_of_the_official_files(digits):
    x, y = digits
    data = idx_bytes(x, 0x803)
    # the official t10k-images-idx3-ubyte begins 00 00 08 03 | 00 00 27 10 (10000) | 00 00 00 1c (28) | 00 00 00 1c
    assert data[:16] == bytes.fromhex("00000803" "0000003c" "0000001c" "0000001c") and len(data) == 16 + 60 * 784
    assert idx_bytes(y, 0x801)[:8] == bytes.fromhex("00000801" "0000003c")


def test_mnist_in_torchvisions_folder_reads_back_bit_for_bit(tmp_path, digits):
    x, y = digits
    raw = tmp_path / "MNIST" / "raw"
    write_mnist(raw, x, y, "test")  # plain, as torchvision leaves them after extracting
    write_mnist(raw, x[::-1], y[::-1], "train", gz=True)  # only the .gz
    s = load_dataset("mnist", tmp_path, "test")
    assert tuple(s.x.shape) == (60, 1, 28, 28) and s.image_shape == (1, 28, 28)
    assert np.array_equal(_pixels(s)[:, :, :, 0], x)  # bit for bit
    assert float(s.x[7, 0, 3, 5]) == pytest.approx(x[7, 3, 5] / 255)  # (row 3, column 5): row-major order
    assert s.y.tolist() == y.tolist() and s.idx.tolist() == list(range(60)) and s.n_classes == 10
    assert (s.dataset, s.split, s.images, s.n_available) == ("mnist", "test", "MNIST test images", 60)
    t = load_dataset("mnist", tmp_path, "train", 5)  # gzipped
    assert np.array_equal(_pixels(t)[:, :, :, 0], x[::-1][:5]) and t.y.tolist() == y[::-1][:5].tolist()
    # ROOT/MNIST, ROOT/MNIST/raw itself, and a flat folder of .gz files read the same images
    assert content_hash(load_dataset("mnist", tmp_path / "MNIST")) == content_hash(s)
    assert content_hash(load_dataset("mnist", raw)) == content_hash(s)
    write_mnist(tmp_path / "flat", x, y, gz=True)
    assert content_hash(load_dataset("mnist", tmp_path / "flat")) == content_hash(s)
    # beside the plain files, the .gz (torchvision keeps both) is not read: the plain file wins
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    assert content_hash(load_dataset("mnist", tmp_path)) == content_hash(s)


def test_fashion_mnist_is_its_own_name_with_its_own_title(tmp_path, digits):
    x, y = digits
    write_mnist(tmp_path / "FashionMNIST" / "raw", x, y, gz=True)
    f = load_dataset("fashion_mnist", tmp_path, "test", 10)
    assert f.images == "Fashion-MNIST test images" and f.dataset == "fashion_mnist"
    assert np.array_equal(_pixels(f)[:, :, :, 0], x[:10]) and f.y.tolist() == y[:10].tolist()
    # the same files in a flat folder: the name read decides the title, nothing is guessed
    write_mnist(tmp_path / "flat", x, y)
    assert load_dataset("fashion_mnist", tmp_path / "flat").images == "Fashion-MNIST test images"
    assert load_dataset("mnist", tmp_path / "flat").images == "MNIST test images"
    # mnist on a torchvision root that holds only FashionMNIST/raw says which name reads it
    with pytest.raises(DataError) as exc:
        load_dataset("mnist", tmp_path)
    assert _one_line(exc).startswith(
        f"mnist dataset: t10k-images-idx3-ubyte (or .gz) not found in {tmp_path}/MNIST/raw, {tmp_path}/raw, "
        f"{tmp_path}; {tmp_path}/FashionMNIST/raw holds FashionMNIST's files: read them as dataset fashion_mnist; "
        "expected MNIST's IDX files: ROOT/MNIST/raw/t10k-images-idx3-ubyte")
    assert str(exc.value).endswith("nothing is downloaded)")


def test_broken_idx_files_are_one_line_errors(tmp_path, digits):
    x, y = digits
    images, labels = tmp_path / MNIST_FILES["test"][0], tmp_path / MNIST_FILES["test"][1]

    def refused(expect: str) -> None:
        with pytest.raises(DataError) as exc:
            load_dataset("mnist", tmp_path)
        assert _one_line(exc) == expect

    write_idx(images, x, 0x803)
    refused(f"mnist dataset: {labels} not found; expected MNIST's IDX files: ROOT/MNIST/raw/t10k-images-idx3-ubyte and "
            "t10k-labels-idx1-ubyte (test), train-images-idx3-ubyte and train-labels-idx1-ubyte (train), each also as "
            ".gz (from http://yann.lecun.com/exdb/mnist/, as torchvision.datasets.MNIST(ROOT) leaves them; ROOT/raw/ or "
            "ROOT itself also work); 28×28 grayscale, 10 classes (set data.root in the suite, --data-dir or "
            "$SCBENCH_DATA; nothing is downloaded)")
    write_idx(labels, y, 0x803)  # labels written with the images' magic number
    refused(f"{labels}: magic number 0x00000803; expected 0x00000801 (IDX labels: unsigned bytes in 1 dimension)")
    write_idx(labels, y[:59], 0x801)
    refused(f"{images} holds 60 images but {labels} holds 59 labels; expected one label per image")
    write_idx(labels, y, 0x801)
    assert len(load_dataset("mnist", tmp_path)) == 60  # now whole
    images.write_bytes(idx_bytes(x, 0x803)[:-5])
    refused(f"{images} is truncated: its header says 60 × 28 × 28 = 47040 bytes of values, it holds 47035 after the "
            "16-byte header")
    images.write_bytes(idx_bytes(x, 0x803) + b"\0")
    refused(f"{images} is longer than its header says: its header says 60 × 28 × 28 = 47040 bytes of values, it holds "
            "47041 after the 16-byte header")
    images.write_bytes(idx_bytes(x, 0x803)[:10])
    refused(f"{images} is 10 bytes, shorter than the 16-byte header of IDX images: unsigned bytes in 3 dimensions")
    images.write_bytes(idx_bytes(x.astype(np.float32), 0x0D03)[:16])  # 0x0D: float32 values
    refused(f"{images}: magic number 0x00000D03; expected 0x00000803 (IDX images: unsigned bytes in 3 dimensions)")
    write_idx(images, np.zeros((60, 32, 32), np.uint8), 0x803)
    refused(f"{images} holds 60 images of 32×32 pixels; expected 28×28")
    write_idx(images, x, 0x803)
    write_idx(labels, np.where(y == 9, 10, y), 0x801)
    refused(f"{labels} has labels 0..10 (uint8); expected integers in 0..9 (10 classes)")
    images.unlink()
    labels.unlink()
    gz = tmp_path / "t10k-images-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(idx_bytes(x, 0x803))[:-20])  # a cut download
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", y, 0x801)
    with pytest.raises(DataError) as exc:
        load_dataset("mnist", tmp_path)
    assert _one_line(exc).startswith(f"cannot read {gz}: EOFError: ") and "expected an IDX file, gzipped when named .gz" \
        in str(exc.value)


class PixelReadout(nn.Module):
    """A fixed 1-channel classifier of 28×28 images: one linear layer on the pixels."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.lin = nn.Linear(28 * 28, 10)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(10, 28 * 28, generator=g))
            self.lin.bias.zero_()

    def forward(self, x):
        return self.lin(x.flatten(1))


def test_mnist_runs_end_to_end(tmp_path, digits):
    from robust_bench_sc.api import benchmark

    x, y = digits
    write_mnist(tmp_path / "data" / "MNIST" / "raw", x, y, gz=True)
    model = PixelReadout(seed=4)
    table = benchmark(model, ["clean"], dataset="mnist", data_dir=tmp_path / "data", n_images=40, chunk_size=40,
                      out=tmp_path / "run", name="pixels", quiet=True)
    with torch.no_grad():
        pred = model(torch.from_numpy(x[:40]).float().div(255)[:, None]).argmax(1).numpy()
    expected = 100.0 * float((pred == y[:40]).mean())
    assert 0 < expected < 100  # a number that says the labels were read, not a constant
    row = table.iloc[0]
    assert row["subset"] == "first 40 MNIST test images" and row["clean_accuracy"] == pytest.approx(expected)
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["dataset"] == {"name": "mnist", "split": "test", "n_classes": 10, "image_shape": [1, 28, 28],
                               "n_available": 60}
    assert meta["data_hash"] == content_hash(load_dataset("mnist", tmp_path / "data", n_images=40))


# -- SVHN: the cropped digits' .mat files --------------------------------------------------------

def write_svhn(path: Path, x_nhwc: np.ndarray, digit: np.ndarray) -> None:
    """``path`` as SVHN's format 2 stores it: X uint8 (32, 32, 3, N), y uint8 (N, 1) in 1..10 (10: digit 0)."""
    from scipy.io import savemat

    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"X": np.ascontiguousarray(x_nhwc.transpose(1, 2, 3, 0)),
                   "y": np.where(digit == 0, 10, digit).astype(np.uint8)[:, None]})


def test_svhn_reads_back_bit_for_bit_with_10_as_digit_0(tmp_path, first1000):
    from scipy.io import loadmat

    x, y = first1000[0][:50], first1000[1][:50]
    write_svhn(tmp_path / "test_32x32.mat", x, y)
    stored = loadmat(tmp_path / "test_32x32.mat")["y"][:, 0]
    assert (stored == 10).sum() == (y == 0).sum() == 5 and stored.min() == 1  # the file holds 1..10
    s = load_dataset("svhn", tmp_path, "test")
    assert tuple(s.x.shape) == (50, 3, 32, 32) and np.array_equal(_pixels(s), x)  # (32, 32, 3, N) → NHWC
    assert s.y.tolist() == y.tolist() and s.y.min() == 0 and s.n_classes == 10  # label 10 read as 0
    assert s.idx.tolist() == list(range(50)) and s.images == "SVHN test images"
    write_svhn(tmp_path / "extra_32x32.mat", x[:7, ::-1], y[:7])
    e = load_dataset("svhn", tmp_path, "extra")
    assert np.array_equal(_pixels(e), x[:7, ::-1]) and e.images == "SVHN extra images"
    # the digits as torchvision's SVHN gives them: data (N, 3, 32, 32) = X.transpose(3, 2, 0, 1), labels 10 → 0
    mat = loadmat(tmp_path / "test_32x32.mat")
    tv = mat["X"].transpose(3, 2, 0, 1)
    assert np.array_equal(s.x.mul(255).round().byte().numpy(), tv)


def test_svhn_bad_files_are_one_line_errors(tmp_path, first1000):
    from scipy.io import savemat

    x, y = first1000[0][:6], first1000[1][:6]
    p = tmp_path / "test_32x32.mat"

    def refused() -> str:
        with pytest.raises(DataError) as exc:
            load_dataset("svhn", tmp_path)
        return _one_line(exc)

    assert refused().startswith(f"svhn dataset: {p} not found; expected SVHN's cropped digits (format 2): "
                                "ROOT/test_32x32.mat, train_32x32.mat, extra_32x32.mat")
    p.write_bytes(b"MATLAB 5.0 but not really")
    assert refused().startswith(f"cannot read {p}: ")
    assert "(expected a MATLAB file that scipy.io.loadmat reads, as SVHN's are)" in refused()
    savemat(p, {"images": x, "y": y[:, None]})
    assert refused() == (f"{p} holds images uint8(6, 32, 32, 3), y int64(6, 1); expected X uint8 (32, 32, 3, N) "
                         "and y (N, 1)")
    savemat(p, {"X": x, "y": y[:, None]})  # NHWC, not SVHN's (H, W, C, N)
    assert refused() == (f"{p} holds X uint8(6, 32, 32, 3) and y int64(6, 1); expected X uint8 (32, 32, 3, N) "
                         "and y (N, 1)")
    savemat(p, {"X": x.transpose(1, 2, 3, 0), "y": y[:5, None]})
    assert refused() == (f"{p} holds X uint8(32, 32, 3, 6) and y int64(5, 1); expected X uint8 (32, 32, 3, N) "
                         "and y (N, 1)")
    savemat(p, {"X": x.transpose(1, 2, 3, 0), "y": (y + 3)[:, None]})  # 11 for class 8
    assert refused() == f"{p}: y holds 3..11; expected the digits' labels 1..10 (10: the digit 0)"
    with pytest.raises(DataError) as exc:
        load_dataset("svhn", tmp_path, "val")
    assert _one_line(exc) == "svhn dataset has no split 'val'; splits: test, train, extra"


# -- CIFAR-10-C: one .npy per corruption ---------------------------------------------------------

def corrupt(x: np.ndarray, corruption: str, severity: int) -> np.ndarray:
    """A stand-in corruption of the bundled images, different for every (corruption, severity)."""
    shift = {"gaussian_noise": 10, "fog": 3}[corruption] * severity
    return ((x.astype(np.int64) + shift) % 256).astype(np.uint8)


def write_cifar10c(folder: Path, x: np.ndarray, y: np.ndarray, corruptions=("gaussian_noise", "fog")) -> np.ndarray:
    """``folder/<corruption>.npy`` of the official shape, uint8 (50000, 32, 32, 3): in each severity block of
    10000 the first len(x) images are ``corrupt(x)`` (the rest left 0, a sparse file); ``labels.npy`` (50000,)
    int64: each block y, then (i % 10). Returns the labels of one block."""
    folder.mkdir(parents=True, exist_ok=True)
    block = np.concatenate([y, np.arange(len(y), 10000) % 10])
    np.save(folder / "labels.npy", np.tile(block, 5))
    for c in corruptions:
        arr = np.lib.format.open_memmap(folder / f"{c}.npy", mode="w+", dtype=np.uint8, shape=(50000, 32, 32, 3))
        for s in range(1, 6):
            arr[(s - 1) * 10000:(s - 1) * 10000 + len(x)] = corrupt(x, c, s)
        arr.flush()
        del arr
    return block


@pytest.fixture(scope="module")
def cifar10c_root(tmp_path_factory, first1000) -> tuple[Path, np.ndarray]:
    x, y = first1000
    root = tmp_path_factory.mktemp("c")
    return root, write_cifar10c(root / "CIFAR-10-C", x[:200], y[:200])


def test_cifar10c_split_is_corruption_and_severity(cifar10c_root, first1000):
    root, labels = cifar10c_root
    x = first1000[0][:200]
    s = load_dataset("cifar10c", root, "gaussian_noise-5")
    assert len(s) == 10000 and s.n_available == 10000 and s.n_classes == 10 and s.image_shape == (3, 32, 32)
    # the severity-5 block: image i is CIFAR-10 test image i under the corruption; idx = position in the block
    assert np.array_equal(_pixels(s)[:200], corrupt(x, "gaussian_noise", 5))
    assert int(_pixels(s)[3, 0, 0, 0]) == (int(x[3, 0, 0, 0]) + 50) % 256
    assert not _pixels(s)[200:].any()  # the rest of the block as written (zeros)
    assert s.idx.tolist() == list(range(10000)) and s.y.tolist() == labels.tolist()
    assert s.y[:200].tolist() == first1000[1][:200].tolist()
    assert (s.dataset, s.split, s.images) == ("cifar10c", "gaussian_noise-5", "CIFAR-10-C gaussian_noise-5 images")
    one = load_dataset("cifar10c", root, "gaussian_noise-1", 20)
    assert np.array_equal(_pixels(one), corrupt(x[:20], "gaussian_noise", 1)) and one.idx.tolist() == list(range(20))
    fog = load_dataset("cifar10c", root / "CIFAR-10-C", "fog-3", 20)  # the folder itself also works
    assert np.array_equal(_pixels(fog), corrupt(x[:20], "fog", 3)) and fog.images == "CIFAR-10-C fog-3 images"
    assert content_hash(one) != content_hash(fog)


def test_cifar10c_split_in_a_suite_and_a_run(tmp_path, cifar10c_root):
    from robust_bench_sc.api import benchmark
    from robust_bench_sc.config import DataConfig

    assert DataConfig(dataset="cifar10c", split="fog-2").split == "fog-2"
    for split in ("test", "fog-6", "fog", "../fog-1"):
        with pytest.raises(Exception) as exc:
            DataConfig(dataset="cifar10c", split=split)
        assert f"dataset cifar10c has no split {split!r}; allowed values: <corruption>-<severity 1..5>" in str(exc.value)
    root, labels = cifar10c_root
    table = benchmark("natural", ["clean"], dataset="cifar10c", split="fog-2", data_dir=root, n_images=8,
                      chunk_size=8, out=tmp_path / "run", quiet=True)
    assert table.iloc[0]["subset"] == "first 8 CIFAR-10-C fog-2 images"
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["dataset"]["split"] == "fog-2" and meta["dataset"]["n_available"] == 10000
    assert meta["data_hash"] == content_hash(load_dataset("cifar10c", root, "fog-2", 8))


def test_cifar10c_bad_splits_and_files_are_one_line_errors(tmp_path, cifar10c_root):
    root, _ = cifar10c_root
    folder = root / "CIFAR-10-C"

    def refused(where: Path, split: str) -> str:
        with pytest.raises(DataError) as exc:
            load_dataset("cifar10c", where, split)
        return _one_line(exc)

    assert refused(root, "snow-1") == (f"cifar10c dataset: no corruption 'snow' (snow.npy) in {folder}; it holds "
                                       "fog.npy, gaussian_noise.npy (split <corruption>-<severity>, e.g. gaussian_noise-5)")
    assert refused(root, "labels-1").startswith(f"cifar10c dataset: no corruption 'labels' (labels.npy) in {folder}; "
                                                "it holds fog.npy, gaussian_noise.npy")
    assert refused(root, "fog-6") == "cifar10c dataset: split 'fog-6': severity 6 is outside 1..5"
    assert refused(root, "fog-0") == "cifar10c dataset: split 'fog-0': severity 0 is outside 1..5"
    assert refused(root, "test") == "cifar10c dataset: split 'test' is not <corruption>-<severity> (e.g. gaussian_noise-5)"
    assert refused(tmp_path, "fog-1").startswith(f"cifar10c dataset: {tmp_path}/CIFAR-10-C/labels.npy not found; "
                                                 "expected CIFAR-10-C (CIFAR-10-C.tar from https://zenodo.org/record/2535967")
    bad = tmp_path / "CIFAR-10-C"
    bad.mkdir()
    np.save(bad / "labels.npy", np.zeros(50000, np.int64))
    np.save(bad / "contrast.npy", np.zeros((10000, 32, 32, 3), np.uint8))  # one severity only
    assert refused(tmp_path, "contrast-1") == (f"{bad}/contrast.npy holds uint8(10000, 32, 32, 3); expected images: "
                                               "uint8 (50000, 32, 32, 3) (5 severities × 10000)")
    np.save(bad / "contrast.npy", np.zeros((50000, 32, 32, 3), np.float32))
    assert refused(tmp_path, "contrast-1") == (f"{bad}/contrast.npy holds float32(50000, 32, 32, 3); expected images: "
                                               "uint8 (50000, 32, 32, 3) (5 severities × 10000)")
    (bad / "contrast.npy").write_bytes(b"\x93NUMPY garbage")
    assert refused(tmp_path, "contrast-1").startswith(f"cannot read {bad}/contrast.npy: ")
    np.lib.format.open_memmap(bad / "contrast.npy", mode="w+", dtype=np.uint8, shape=(50000, 32, 32, 3)).flush()
    np.save(bad / "labels.npy", np.zeros(10000, np.int64))
    assert refused(tmp_path, "contrast-1") == (f"{bad}/labels.npy holds int64(10000,); expected labels: integer "
                                               "(50000,) (5 severities × 10000)")
    np.save(bad / "labels.npy", np.full(50000, 10, np.int64))
    assert refused(tmp_path, "contrast-1") == (f"{bad}/labels.npy has labels 10..10 (int64); expected integers in "
                                               "0..9 (10 classes)")
    assert len(load_dataset("cifar10c", root, "fog-4")) == 10000  # the good folder still reads


def test_scbench_datasets_lists_the_new_layouts():
    from typer.testing import CliRunner

    from robust_bench_sc.cli import app

    r = CliRunner().invoke(app, ["datasets"])
    assert r.exit_code == 0
    out = " ".join(r.output.split())
    for name in ("mnist", "fashion_mnist", "svhn", "cifar10c", "Fashion-MNIST", "SVHN", "CIFAR-10-C"):
        assert name in out, name


# -- audit, diagnose and the binarization test on a split (issue: split4) ----------------------------

CORRUPTED = "gaussian_noise-5"  # the stand-in shifts pixels by 50 (mod 256): madry misclassifies image 4


def _madry_pred(x: torch.Tensor) -> list[int]:
    from robust_bench_sc.plugins import build_defense

    with torch.no_grad():
        return build_defense("defenses.archetypes:madry")(x).argmax(1).tolist()


def test_audit_reads_the_split_it_is_given(tmp_path, cifar10c_root):
    from dataclasses import replace

    from robust_bench_sc.audit import BUDGETS, audit
    from robust_bench_sc.storage import RunDir

    root, labels = cifar10c_root
    n = 5
    # tests/test_audit.py's TINY budget, with a few images of indicators and binarization test (on a split
    # other than test: cifar10c has none, so both would be errors on the card if they read test)
    tiny = replace(BUDGETS["quick"], apgd_iterations=10, eot=3, recheck=2, square_queries=50, square_eot=2,
                   transfer_steps=10, indicator_images=3, indicator_queries=10, binarization_samples=2,
                   binarization_inner=5)
    card = audit("defenses.archetypes:madry", n_images=n, out=tmp_path / "run", budget=tiny, dataset="cifar10c",
                 data_dir=root, split=CORRUPTED)
    assert card["subset"] == f"first {n} CIFAR-10-C {CORRUPTED} images"
    assert card["dataset"] == {"name": "cifar10c", "n_classes": 10, "data_dir": str(root), "split": CORRUPTED}
    assert (tmp_path / "run" / "audit.md").read_text().count(f"First {n} CIFAR-10-C {CORRUPTED} images;") == 1
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["config"]["data"]["split"] == CORRUPTED and meta["dataset"]["split"] == CORRUPTED
    corrupted, clean = load_dataset("cifar10c", root, CORRUPTED, n), load_dataset("cifar10_npz", None, "test", n)
    assert meta["data_hash"] == content_hash(corrupted) != content_hash(clean)
    # the cascade's records are of the corrupted images: their labels, the defense's predictions on them
    blob = RunDir(tmp_path / "run").read_chunk(card["defense"], "audit", 0)
    recs = sorted(blob["records"], key=lambda r: r["index"])
    pred = _madry_pred(corrupted.x)
    assert [r["index"] for r in recs] == list(range(n)) and [r["label"] for r in recs] == labels[:n].tolist()
    assert [r["clean_pred"] for r in recs] == pred != _madry_pred(clean.x)
    assert card["clean_accuracy"] == pytest.approx(100 * np.mean(np.array(pred) == labels[:n]))
    assert "error" not in card["indicators"] and card["indicators"]["n_images"] == 3, card["indicators"]
    assert card["binarization"]["status"] in ("pass", "fail") and card["binarization"]["n_testable"] >= 1, \
        card["binarization"]


def test_split_option_bad_value_is_one_line_listing_the_splits(cifar10c_root):
    from typer.testing import CliRunner

    from robust_bench_sc.audit import AuditError, audit
    from robust_bench_sc.cli import app

    root, _ = cifar10c_root
    c10c = ["--dataset", "cifar10c", "--data-dir", str(root)]
    for args, expect in (
            (["audit", "defenses.archetypes:madry", *c10c, "--split", "test"],
             "error: --split test: cifar10c dataset has no split 'test'; splits: <corruption>-<severity 1..5>"),
            (["audit", "defenses.archetypes:madry", "--split", "val"],
             "error: --split val: cifar10_npz dataset has no split 'val'; splits: test, train"),
            (["diagnose", "defenses.archetypes:madry", *c10c, "--split", "fog-9"],
             "error: --split fog-9: cifar10c dataset has no split 'fog-9'; splits: <corruption>-<severity 1..5>"),
            (["diagnose", "defenses.archetypes:madry", "--active", "--split", "val"],
             "error: --split val: cifar10_npz dataset has no split 'val'; splits: test, train"),
            (["diagnose", "defenses.archetypes:madry", *c10c, "--split", "fog-1", "--n-images", "10001"],
             "error: --n-images 10001: must be in 1..10000 (diagnose reads the fog-1 split of cifar10c, which holds "
             "10000 images here)")):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2 and res.output.strip() == expect, res.output
    with pytest.raises(AuditError) as exc:
        audit("defenses.archetypes:madry", n_images=2, dataset="cifar10c", data_dir=root, split="fog")
    assert _one_line(exc) == "--split fog: cifar10c dataset has no split 'fog'; splits: <corruption>-<severity 1..5>"


def test_diagnose_reads_the_split_it_is_given(tmp_path, cifar10c_root, first1000):
    from typer.testing import CliRunner

    from robust_bench_sc.cli import app
    from robust_bench_sc.diagnostics import DiagnosticsConfig
    from robust_bench_sc.diagnostics.run import DiagnosticRun
    from robust_bench_sc.plugins import build_defense

    root, labels = cifar10c_root
    cfg = DiagnosticsConfig(n_images=4, dataset="cifar10c", split="fog-2", data_dir=str(root))
    run = DiagnosticRun(build_defense("defenses.archetypes:madry"), cfg)
    assert np.array_equal(_pixels(run.split), corrupt(first1000[0][:4], "fog", 2))
    assert run.y.tolist() == labels[:4].tolist() and cfg.to_dict()["split"] == "fog-2"
    assert "split" not in DiagnosticsConfig().to_dict()  # the default: reports read as before splits existed
    tiny = str(Path(__file__).parent / "test_diagnostics.py") + ":tiny_defense"
    res = CliRunner().invoke(app, ["diagnose", tiny, "--dataset", "cifar10c", "--data-dir", str(root), "--split",
                                   "fog-2", "--n-images", "4", "--steps", "3", "--strong-steps", "4", "--sweep-steps",
                                   "2", "--unconstrained-steps", "3", "--queries", "5", "--gradient-free",
                                   "random_search", "--noise-draws", "2", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "diagnostics: tiny (first 4 CIFAR-10-C fog-2 images; clean" in " ".join(res.output.split())
    blob = json.loads((tmp_path / "diagnostics.json").read_text())
    assert (blob["config"]["dataset"], blob["config"]["split"], blob["n_images"]) == ("cifar10c", "fog-2", 4)
    assert (tmp_path / "diagnostics.md").read_text().count("First 4 CIFAR-10-C fog-2 images;") == 1


def test_binarization_test_reads_the_split_it_is_given(tmp_path, cifar10c_root, first1000):
    """The binarization test on a CIFAR-10-C split equals the test on the same corrupted images
    handed over as an npz file, and differs from the test on the clean images."""
    from typer.testing import CliRunner

    from robust_bench_sc.binarization import BinarizationConfig, binarization_test, report_markdown
    from robust_bench_sc.cli import app
    from robust_bench_sc.config import validate_threat_model
    from robust_bench_sc.plugins import build_defense

    root, labels = cifar10c_root
    x, _ = first1000
    npz = tmp_path / "corrupted.npz"
    np.savez(npz, x=corrupt(x[:200], "gaussian_noise", 5), y=labels[:200])
    madry = build_defense("defenses.archetypes:madry")
    tm = validate_threat_model({"attack": "pgd", "name": "p", "norm": "linf", "epsilon": 8 / 255, "steps": 5,
                                "restarts": 1, "step_size": "epsilon/4"}, "test")
    cfg = dict(n_samples=5, n_inner=5, fit_iters=20)
    on_split = binarization_test(madry, tm, BinarizationConfig(**cfg, dataset="cifar10c", split=CORRUPTED,
                                                               data_dir=str(root)))
    on_npz = binarization_test(madry, tm, BinarizationConfig(**cfg, dataset="npz", data_dir=str(npz)))
    on_test = binarization_test(madry, tm, BinarizationConfig(**cfg))
    assert on_split.tested_indices == on_npz.tested_indices != on_test.tested_indices  # image 4 is misclassified
    assert [s["target_margin"] for s in on_split.samples] == [s["target_margin"] for s in on_npz.samples]
    assert on_split.config["split"] == CORRUPTED and "split" not in on_test.config
    assert f"among the first {on_split.n_images_scanned} CIFAR-10-C {CORRUPTED} images;" in report_markdown(on_split)
    # scbench diagnose --active --split reads it too
    res = CliRunner().invoke(app, ["diagnose", "defenses.archetypes:madry", "--active", "--dataset", "cifar10c",
                                   "--data-dir", str(root), "--split", CORRUPTED, "--n-images", "5", "--inner", "5",
                                   "--steps", "5", "--out", str(tmp_path / "active")])
    assert res.exit_code in (0, 4), res.output
    blob = json.loads((tmp_path / "active" / "binarization.json").read_text())
    assert blob["config"]["split"] == CORRUPTED and blob["tested_indices"] == on_split.tested_indices
