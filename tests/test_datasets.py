"""Dataset plug-ins (issue 35): each bundled layout written here in its official format, read
back bit for bit, run end to end with small real models, and every bad layout refused in one line."""

from __future__ import annotations

import json
import pickle
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from robust_bench_sc.api import benchmark
from robust_bench_sc.data import DataError, content_hash, load_dataset, load_test
from robust_bench_sc.datasets import DATASETS, Arrays, Dataset, get_dataset, images_label
from robust_bench_sc.paths import REPO_ROOT
from robust_bench_sc.yamlio import ConfigError

# -- writing the official layouts ----------------------------------------------------------


def _pickle_batch(path: Path, x_nhwc: np.ndarray, labels: np.ndarray, label_key: bytes, extra: dict | None = None) -> None:
    """A batch of the official python version: b'data' (N, 3072) uint8, each row the red, green
    then blue plane in row-major order; labels a list of ints."""
    data = x_nhwc.transpose(0, 3, 1, 2).reshape(len(x_nhwc), 3072)
    blob = {b"batch_label": b"testing batch 1 of 1", b"data": data, label_key: [int(v) for v in labels], **(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(blob, f, protocol=2)


def _real_first(n: int) -> tuple[np.ndarray, np.ndarray]:
    split = load_test(n)
    return (split.x.permute(0, 2, 3, 1).mul(255).round().byte().numpy(), split.y.numpy())


def write_cifar10(root: Path, n_test: int = 1000, n_train_each: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """``root/cifar-10-batches-py``: test_batch of the real first 1000 test images (beyond 1000,
    the same images mirrored left-right, labels kept) and five small train batches."""
    x, y = _real_first(1000)
    reps = -(-n_test // 1000)
    xs = np.concatenate([x if k % 2 == 0 else x[:, :, ::-1] for k in range(reps)])[:n_test]
    ys = np.concatenate([y] * reps)[:n_test]
    folder = root / "cifar-10-batches-py"
    _pickle_batch(folder / "test_batch", xs, ys, b"labels")
    for i in range(1, 6):
        s = slice((i - 1) * n_train_each, i * n_train_each)
        _pickle_batch(folder / f"data_batch_{i}", x[s], y[s], b"labels")
    return xs, ys


def write_cifar100(root: Path, n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    fine = np.arange(n) % 100
    _pickle_batch(root / "cifar-100-python" / "test", x, fine, b"fine_labels", {b"coarse_labels": list(fine // 5)})
    return x, fine


class ColourReadout(nn.Module):
    """A fixed, trivial classifier of any image size: mean of each channel → ``k`` logits."""

    def __init__(self, k: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.lin = nn.Linear(3, k)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(k, 3, generator=g) * 10)
            self.lin.bias.copy_(torch.randn(k, generator=g))

    def forward(self, x):
        return self.lin(x.mean(dim=(2, 3)))


class Only32(nn.Module):
    """A classifier that takes 32×32 images only (a flattening linear layer)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x):
        return self.lin(x.flatten(1))


def _accuracy(model: nn.Module, x_nhwc: np.ndarray, y: np.ndarray) -> float:
    x = torch.from_numpy(np.ascontiguousarray(x_nhwc)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    return 100.0 * float((pred == y).mean())


# -- reading -------------------------------------------------------------------------------

def test_cifar10_folder_equals_the_npz_bit_for_bit(tmp_path):
    write_cifar10(tmp_path)
    npz = load_test(1000)
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):  # torchvision's root, or the folder itself
        pk = load_dataset("cifar10", root, "test", 1000)
        assert torch.equal(pk.x, npz.x) and torch.equal(pk.y, npz.y) and torch.equal(pk.idx, npz.idx)
        assert content_hash(pk) == content_hash(npz)
    assert (pk.dataset, pk.split, pk.n_classes, pk.images, pk.n_available) == \
        ("cifar10", "test", 10, "CIFAR-10 test images", 1000)
    assert pk.y[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]  # the official first test labels
    train = load_dataset("cifar10", tmp_path, "train")
    assert len(train) == 20 and train.y.tolist() == npz.y[:20].tolist()  # data_batch_1..5 in order
    assert torch.equal(train.x, npz.x[:20])


def test_cifar10_reads_all_images_of_the_batch(tmp_path):
    xs, ys = write_cifar10(tmp_path, n_test=2500)
    full = load_dataset("cifar10", tmp_path)
    assert len(full) == 2500 and full.n_available == 2500 and full.idx.tolist() == list(range(2500))
    assert torch.equal(full.x[1000], torch.from_numpy(xs[1000].copy()).permute(2, 0, 1).float() / 255)
    assert full.y.tolist() == ys.tolist()
    assert len(load_dataset("cifar10", tmp_path, n_images=2000)) == 2000


def test_cifar100_fine_labels_and_100_classes(tmp_path):
    x, fine = write_cifar100(tmp_path, n=250)
    s = load_dataset("cifar100", tmp_path, "test", 250)
    assert s.n_classes == 100 and s.images == "CIFAR-100 test images"
    assert s.y.tolist() == fine.tolist() and int(s.y.max()) == 99
    assert torch.equal(s.x.permute(0, 2, 3, 1).mul(255).round().byte(), torch.from_numpy(x))


def test_generic_npz_any_size_and_classes(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(2000, 24, 20, 1), dtype=np.uint8)
    y = rng.integers(0, 7, size=2000)
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    s = load_dataset("npz", tmp_path / "mine.npz", "test", 2000)
    assert len(s) == 2000 and s.image_shape == (1, 24, 20) and s.n_classes == int(y.max()) + 1
    assert s.y.tolist() == y.tolist() and s.idx.tolist() == list(range(2000))
    assert s.images == "test images of mine.npz"
    # a folder holding <split>.npz; n_classes stored in the file wins over max(y) + 1
    np.savez(tmp_path / "val.npz", x=x[:10], y=y[:10] % 3, n_classes=100, idx=np.arange(500, 510))
    v = load_dataset("npz", tmp_path, "val")
    assert v.n_classes == 100 and v.idx.tolist() == list(range(500, 510)) and v.images == "val images of val.npz"


def test_a_third_party_plugin_registers_and_loads(tmp_path):
    class Stripes(Dataset):
        name, title, splits, layout = "stripes_test", "Stripes", ("test",), "nothing on disk"

        def read(self, root, split):
            x = np.zeros((30, 8, 8, 3), np.uint8)
            x[:, ::2] = 255
            return Arrays(x, np.arange(30) % 3, np.arange(30), 3, self.title, "generated")

    DATASETS.register("stripes_test", Stripes)  # a class: built once on first use
    try:
        s = load_dataset("stripes_test", tmp_path, "test", 12)
        assert len(s) == 12 and s.n_classes == 3 and s.images == "Stripes test images"
        assert float(s.x.mean()) == pytest.approx(0.5)
        assert isinstance(get_dataset("stripes_test"), Stripes)
    finally:
        DATASETS._entries.pop("stripes_test")


def test_pyproject_declares_the_bundled_datasets():
    eps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    declared = eps["robust_bench_sc.datasets"]
    assert set(declared) == {"cifar10", "cifar100", "cifar10_npz", "npz", "imagefolder", "mnist", "fashion_mnist", "svhn",
                             "cifar10c"}
    in_code = {n for n in DATASETS.names() if n != "tensors" and not n.endswith("_test")}  # tensors: in-process only
    assert set(declared) == in_code
    for name, target in declared.items():
        from robust_bench_sc.registry import load_reference

        assert isinstance(load_reference(target), Dataset) and load_reference(target).name == name


# -- one-line errors -------------------------------------------------------------------------

def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text and "Traceback" not in text
    return text


@pytest.mark.parametrize("dataset, expect", [
    ("cifar10", "cifar-10-batches-py/test_batch not found; expected the official CIFAR-10 python version"),
    ("cifar100", "cifar-100-python/test not found; expected the official CIFAR-100 python version"),
    ("cifar10_npz", "test_first1000.npz not found; expected this project's CIFAR-10 files"),
    ("npz", "test.npz not found; expected one .npz"),
])
def test_missing_folder_says_where_and_which_layout(tmp_path, dataset, expect):
    with pytest.raises(DataError) as exc:
        load_dataset(dataset, tmp_path / "nowhere")
    text = _one_line(exc)
    assert expect in text and str(tmp_path / "nowhere") in text and "nothing is downloaded" in text


def test_bad_layouts_are_one_line_errors(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", tmp_path)
    assert "cannot read CIFAR batch" in _one_line(exc)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 3072), np.uint8), b"fine_labels": [0] * 4}, f)
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", tmp_path)
    assert "is not a CIFAR batch: expected a dict with b'data' and b'labels', it has data, fine_labels" in _one_line(exc)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 1024), np.uint8), b"labels": [0] * 4}, f)
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", tmp_path)
    assert "b'data' is uint8(4, 1024)" in _one_line(exc)
    _pickle_batch(folder / "test_batch", np.zeros((4, 32, 32, 3), np.uint8), np.array([0, 1, 2, 10]), b"labels")
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", tmp_path)
    assert "has labels 0..10 (int64); expected integers in 0..9 (10 classes)" in _one_line(exc)
    _pickle_batch(folder / "test_batch", np.zeros((4, 32, 32, 3), np.uint8), np.arange(4), b"labels")
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", tmp_path, n_images=5)
    assert "n_images 5: the cifar10 test split" in _one_line(exc) and "holds 4 images" in str(exc.value)
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", tmp_path, "val")
    assert _one_line(exc) == "cifar10 dataset has no split 'val'; splits: test, train"
    np.savez(tmp_path / "x.npz", x=np.zeros((3, 8, 8), np.uint8), y=np.zeros(2, int))  # (N, H, W) needs N labels
    with pytest.raises(DataError) as exc:
        load_dataset("npz", tmp_path / "x.npz")
    assert "expected x uint8 (N, H, W, C) with C 1 or 3 and y of shape (N,)" in _one_line(exc)
    np.savez(tmp_path / "x.npz", x=np.zeros((3, 8, 8, 3), np.uint8), y=np.zeros(3, int))
    with pytest.raises(DataError) as exc:
        load_dataset("npz", tmp_path / "x.npz")
    assert "1 classes" in _one_line(exc)


def test_suite_names_its_dataset_with_line_errors(tmp_path):
    from robust_bench_sc.config import load_suite

    base = "name: t\ndata: {n_images: 20, chunk_size: 10%s}\ndefenses: [natural]\nthreat_models: [clean]\n"
    plain = tmp_path / "plain.yaml"
    plain.write_text(base % "")
    named = tmp_path / "named.yaml"
    named.write_text(base % ", dataset: cifar10_npz, split: test")
    other = tmp_path / "other.yaml"
    other.write_text(base % f", dataset: cifar100, root: {tmp_path}")
    # the default dataset, named or not, is the same suite (committed results keep their hashes)
    assert load_suite(named).content_hash() == load_suite(plain).content_hash()
    assert "dataset" not in load_suite(plain).resolved()["data"]
    s = load_suite(other)
    assert s.content_hash() != load_suite(plain).content_hash()
    assert (s.data.dataset, s.data.folder, s.resolved()["data"]["dataset"]) == ("cifar100", str(tmp_path), "cifar100")
    assert load_suite(plain, dataset="cifar10").data.dataset == "cifar10"
    assert load_suite(plain, overrides=["data.split=train"]).data.split == "train"
    bad = tmp_path / "bad.yaml"
    bad.write_text(base % ", dataset: cifar-10")
    with pytest.raises(ConfigError) as exc:
        load_suite(bad)
    assert _one_line(exc).startswith(f"{bad}, line 2: data.dataset: unknown dataset 'cifar-10' (did you mean 'cifar10'")
    bad.write_text(base % ", dataset: cifar100, split: valid")
    with pytest.raises(ConfigError) as exc:
        load_suite(bad)
    assert "dataset cifar100 has no split 'valid'; allowed values: test, train" in _one_line(exc)
    with pytest.raises(ConfigError) as exc:
        load_suite(plain, overrides=["data.shuffle=1"])
    assert "unknown data key 'shuffle'" in _one_line(exc)


def test_images_label_names_the_dataset():
    from robust_bench_sc.subsets import describe_subset, short_subset

    assert describe_subset(2000, images=images_label("cifar10")) == "first 2000 CIFAR-10 test images"
    assert describe_subset(500, images=images_label("cifar100")) == "first 500 CIFAR-100 test images"
    assert describe_subset(index=range(2000), images=images_label("cifar10_npz")) == "first 2000 CIFAR-10 test images"
    assert short_subset("first 500 CIFAR-100 test images") == "first 500"
    assert images_label("npz", "test", "/data/mine.npz") == "test images of mine.npz"


# -- end to end -----------------------------------------------------------------------------

def test_2000_cifar10_images_run_end_to_end(tmp_path):
    xs, ys = write_cifar10(tmp_path / "data", n_test=2000)
    model = ColourReadout(10)
    table = benchmark(model, ["clean"], dataset="cifar10", data_dir=tmp_path / "data", n_images=2000,
                      chunk_size=1000, out=tmp_path / "run", name="colour", quiet=True)
    row = table.iloc[0]
    assert row["n_images"] == 2000 and row["subset"] == "first 2000 CIFAR-10 test images"
    assert row["clean_accuracy"] == pytest.approx(_accuracy(model, xs, ys))
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["dataset"] == {"name": "cifar10", "split": "test", "n_classes": 10, "image_shape": [3, 32, 32],
                               "n_available": 2000}
    assert meta["images"] == "CIFAR-10 test images" and meta["subset"] == "first 2000 CIFAR-10 test images"
    assert meta["data_hash"] == content_hash(load_dataset("cifar10", tmp_path / "data", n_images=2000))
    chunk = json.loads(next((tmp_path / "run").rglob("records/**/*.json")).read_text())
    assert chunk["data"] == {"dataset": "cifar10", "split": "test", "hash": meta["data_hash"]}
    summary_md = (tmp_path / "run" / "summary.md").read_text()
    assert "first 2000 CIFAR-10 test images" in summary_md


def test_a_100_class_model_runs_on_cifar100(tmp_path):
    x, fine = write_cifar100(tmp_path / "data", n=200)
    model = ColourReadout(100, seed=3)
    pgd = {"use": "linf_pgd_ce", "name": "pgd", "epsilon": "8/255", "steps": 3, "restarts": 1}
    pgd4 = {**pgd, "name": "pgd4", "epsilon": "4/255"}
    table = benchmark(model, ["clean", pgd, pgd4], dataset="cifar100", data_dir=tmp_path / "data", n_images=40,
                      chunk_size=40, out=tmp_path / "run", name="colour100", quiet=True)
    rows = table.set_index("threat_model")
    expected = _accuracy(model, x[:40], fine[:40])
    assert rows.loc["clean", "clean_accuracy"] == pytest.approx(expected) and expected > 0
    assert rows.loc["pgd", "n_images"] == 40 and rows.loc["pgd", "robust_accuracy"] <= expected
    assert rows.loc["clean", "subset"] == "first 40 CIFAR-100 test images"
    from robust_bench_sc.report_model import load_report
    from robust_bench_sc.run_status import run_status

    report = load_report([tmp_path / "run"])
    assert report.images == "CIFAR-100 test images" and report.subset == "first 40 CIFAR-100 test images"
    assert run_status(tmp_path / "run").subset == "first 40 CIFAR-100 test images"
    from robust_bench_sc.plots import make_plots

    (sweep,) = make_plots(report, tmp_path / "plots")
    assert sweep.caption.endswith("first 40 CIFAR-100 test images, 95% Wilson bands.") and sweep.png.is_file()
    # the 10-logit reference ResNet is refused on the 100-class dataset, in one line
    from robust_bench_sc.errors import RunError

    with pytest.raises(RunError) as exc:
        benchmark("natural", ["clean"], dataset="cifar100", data_dir=tmp_path / "data", n_images=4,
                  out=tmp_path / "run10", quiet=True)
    assert "shape (2, 10)" in _one_line(exc) and "(2, 100)" in str(exc.value) and "100 classes" in str(exc.value)


def test_a_32x32_only_model_is_refused_on_other_sizes(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "big.npz", x=rng.integers(0, 256, (8, 40, 40, 3), dtype=np.uint8), y=np.arange(8) % 10,
             n_classes=10)
    from robust_bench_sc.errors import RunError

    with pytest.raises(RunError) as exc:
        benchmark(Only32(), ["clean"], dataset="npz", data_dir=tmp_path / "big.npz", n_images=8,
                  out=tmp_path / "run", name="only32", quiet=True)
    text = _one_line(exc)
    assert text.startswith("defense 'only32' cannot take the test images of big.npz (3×40×40, 10 classes, dataset npz) "
                           "(it runs on 3×32×32 images): RuntimeError: mat1 and mat2 shapes cannot be multiplied")


def test_benchmark_takes_tensors(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(30, 3, 16, 16, generator=g)
    y = torch.arange(30) % 5
    model = ColourReadout(5, seed=1)
    table = benchmark(model, ["clean"], x=x, y=y, out=tmp_path / "run", name="colour5", quiet=True)
    with torch.no_grad():
        expected = 100.0 * float((model(x).argmax(1) == y).float().mean())
    assert table.iloc[0]["n_images"] == 30 and table.iloc[0]["clean_accuracy"] == pytest.approx(expected)
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["dataset"]["name"] == "tensors" and meta["dataset"]["n_classes"] == 5
    assert table.iloc[0]["subset"] == f"first 30 images given to benchmark() ({meta['config']['data']['root']})"
    # hashed like a dataset: images as bytes 0-255 plus labels
    import hashlib

    h = hashlib.sha256(x.mul(255).round().byte().numpy().tobytes())
    h.update(y.numpy().tobytes())
    assert meta["data_hash"] == h.hexdigest()[:16]
    with pytest.raises(ConfigError) as exc:
        benchmark(model, ["clean"], x=x * 2, y=y)
    assert "values outside [0, 1]" in _one_line(exc)
    with pytest.raises(ConfigError) as exc:
        benchmark(model, ["clean"], x=x, y=y, n_images=31)
    assert "n_images=31: must be a whole number in 1..30 (x holds 30 images)" in _one_line(exc)


def test_validate_fails_on_a_folder_without_usable_files(tmp_path, monkeypatch):
    from robust_bench_sc.cli import app
    from robust_bench_sc.paths import ENV_DATA, data_dir

    monkeypatch.setenv(ENV_DATA, str(data_dir()))  # --data-dir sets it; restored after the test

    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\ndata: {n_images: 8, dataset: cifar10}\ndefenses: [natural]\nthreat_models: [clean]\n")
    full = tmp_path / "full"
    write_cifar10(full, n_test=1000, n_train_each=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    r = CliRunner().invoke(app, ["validate", str(suite), "--data-dir", str(empty)])
    assert r.exit_code != 0
    assert f"cifar10 dataset: {empty}/cifar-10-batches-py/test_batch not found" in r.output
    r = CliRunner().invoke(app, ["validate", str(suite), "--data-dir", str(full)])
    assert r.exit_code == 0, r.output
    assert "on the first 8 CIFAR-10 test images" in r.output


def test_normalize_wraps_a_model_that_expects_normalised_inputs():
    from robust_bench_sc import Normalize
    from robust_bench_sc.models import CIFAR100_MEAN, CIFAR100_STD

    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = Normalize(nn.Identity(), CIFAR100_MEAN, CIFAR100_STD)(x)
    assert torch.allclose(out[:, 1], (x[:, 1] - 0.4865) / 0.2564)
    assert torch.allclose(out * torch.tensor(CIFAR100_STD).view(1, 3, 1, 1) + torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1), x,
                          atol=1e-6)
    with pytest.raises(ValueError, match=r"expected \(N, 3, H, W\)"):
        Normalize(nn.Identity(), CIFAR100_MEAN, CIFAR100_STD)(x[:, :1])


def test_n_images_beyond_the_split_is_one_line(tmp_path):
    with pytest.raises(DataError) as exc:
        benchmark("natural", ["clean"], n_images=5000, out=tmp_path / "run", quiet=True)
    assert _one_line(exc).startswith("n_images 5000: the cifar10_npz test split at ")
    assert "holds 1000 images (the first 1000 CIFAR-10 test images); ask for 1..1000" in str(exc.value)


PLUGIN = '''
import numpy as np
from robust_bench_sc.datasets import Arrays, Dataset


class Checkers(Dataset):
    name, title, splits = "checkers", "Checkers", ("test",)
    layout = "generated, nothing on disk"
    n_classes = 4

    def read(self, root, split):
        x = np.zeros((12, 8, 8, 3), np.uint8)
        x[:, ::2, ::2] = 200
        return Arrays(x, np.arange(12) % 4, np.arange(12), 4, self.title, "generated")
'''


def test_a_suite_references_a_dataset_plugin_file(tmp_path):
    from robust_bench_sc.config import load_suite
    from robust_bench_sc.data import load_data

    (tmp_path / "checkers.py").write_text(PLUGIN)
    suite = tmp_path / "s.yaml"
    ref = f"{tmp_path / 'checkers.py'}:Checkers"
    suite.write_text(f"name: s\ndata: {{n_images: 6, dataset: '{ref}'}}\ndefenses: [natural]\nthreat_models: [clean]\n")
    s = load_data(load_suite(suite).data)
    assert len(s) == 6 and s.n_classes == 4 and s.images == "Checkers test images"
    assert s.y.tolist() == [0, 1, 2, 3, 0, 1] and float(s.x.max()) == pytest.approx(200 / 255)
    suite.write_text(suite.read_text().replace(":Checkers", ":Nope"))
    with pytest.raises(ConfigError) as exc:
        load_suite(suite)
    assert "has no attribute 'Nope'" in _one_line(exc)


def test_2000_image_npz_of_other_sizes_runs_end_to_end(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, size=(2000, 24, 20, 3), dtype=np.uint8)
    y = rng.integers(0, 7, size=2000)
    np.savez(tmp_path / "mine.npz", x=x, y=y, n_classes=7)
    model = ColourReadout(7, seed=2)
    table = benchmark(model, ["clean"], dataset="npz", data_dir=tmp_path / "mine.npz", n_images=2000,
                      chunk_size=1000, out=tmp_path / "run", name="colour7", quiet=True)
    row = table.iloc[0]
    assert row["n_images"] == 2000 and row["subset"] == "first 2000 test images of mine.npz"
    assert row["clean_accuracy"] == pytest.approx(_accuracy(model, x, y))
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["dataset"]["image_shape"] == [3, 24, 20] and meta["dataset"]["n_classes"] == 7
