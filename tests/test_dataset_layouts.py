"""The layouts researchers actually have (issue: datasets2): torchvision's ImageFolder tree of
image files, and npz / npy arrays in the usual variants (NCHW, floats in [0, 1], other key names,
(N, 1) or one-hot labels). Each is written here from the bundled CIFAR-10 images and read back bit
for bit; everything else is refused in one line that names the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from robust_bench_sc.data import DataError, content_hash, load_dataset
from robust_bench_sc.paths import data_dir

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture(scope="module")
def first60() -> tuple[np.ndarray, np.ndarray]:
    """The first 60 images of the bundled test_first1000.npz: x uint8 (60, 32, 32, 3), y."""
    with np.load(data_dir() / "test_first1000.npz") as f:
        return f["x"][:60].copy(), f["y"][:60].astype(np.int64)


def write_tree(folder: Path, x: np.ndarray, y: np.ndarray, names=CLASSES, ext: str = "png", **save) -> list[str]:
    """``folder/<names[y]>/img<i>.<ext>`` for each image (names unpadded: img10 sorts before img2)."""
    files = []
    for name in names:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for i, (img, label) in enumerate(zip(x, y)):
        path = folder / names[label] / f"img{i}.{ext}"
        Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).save(path, **save)
        files.append(str(path.relative_to(folder)))
    return files


def torchvision_order(files: list[str]) -> list[int]:
    """Positions of ``files`` (class/file) in torchvision's ImageFolder order: by class folder
    name, then by file name as a string."""
    return sorted(range(len(files)), key=lambda i: tuple(files[i].split("/")))


def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text and "Traceback" not in text
    return text


# -- ImageFolder --------------------------------------------------------------------------

def test_imagefolder_png_reads_back_bit_identical_in_torchvision_order(tmp_path, first60):
    x, y = first60
    files = write_tree(tmp_path / "cifar" / "test", x, y)
    s = load_dataset("imagefolder", tmp_path / "cifar", "test")
    order = torchvision_order(files)
    # the real mapping: class folders sorted (airplane … truck = CIFAR-10's own indices), then file names
    # as strings within a class (img10 before img2)
    # the npz's airplanes are images 3, 10, 21, 27, 44, 52 and its automobiles 6, 9, 37: by name, img3 comes after img27
    assert order[:9] == [10, 21, 27, 3, 44, 52, 37, 6, 9]
    got = s.x.permute(0, 2, 3, 1).mul(255).round().byte().numpy()
    assert np.array_equal(got, x[order])  # bit for bit
    assert s.y.tolist() == y[order].tolist() and s.n_classes == 10 and s.idx.tolist() == list(range(60))
    assert (s.dataset, s.split, s.images, s.n_available) == ("imagefolder", "test", "images of cifar/test/", 60)
    # the same tree without the split folder: the same images, said so
    flat = load_dataset("imagefolder", tmp_path / "cifar" / "test", "test")
    assert flat.images == "images of test/ (no split folder)"
    assert content_hash(flat) == content_hash(s)
    # the hash is the npz's images in this order: pixels and labels, nothing about the files
    from robust_bench_sc.data import Split
    import torch

    same = Split(torch.from_numpy(x[order]).permute(0, 3, 1, 2).float() / 255, torch.from_numpy(y[order]),
                 torch.arange(60))
    assert content_hash(same) == content_hash(s)


def test_imagefolder_class_index_is_the_sorted_folder_name(tmp_path, first60):
    x, y = first60
    names = ("zebra", "yak", "x9", "x10", "wolf", "vole", "urchin", "tiger", "swan", "rat")  # reverse of sorted
    files = write_tree(tmp_path / "test", x[:20], y[:20], names)
    (tmp_path / "test" / "aardvark").mkdir()  # an empty class folder is a class (index 0)
    (tmp_path / "test" / ".ipynb_checkpoints").mkdir()  # hidden: skipped
    (tmp_path / "test" / "zebra" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "test" / "README.txt").write_text("not a class")  # a file beside the classes: ignored
    s = load_dataset("imagefolder", tmp_path, "test")
    ranks = {n: i for i, n in enumerate(sorted([*names, "aardvark"]))}
    assert ranks["x10"] < ranks["x9"]
    order = torchvision_order(files)
    assert s.n_classes == 11
    assert s.y.tolist() == [ranks[names[y[i]]] for i in order]
    assert np.array_equal(s.x.permute(0, 2, 3, 1).mul(255).round().byte().numpy(), x[:20][order])


def test_imagefolder_lossless_formats_and_modes(tmp_path, first60):
    x, y = first60
    lossless = [("bmp", {}), ("ppm", {}), ("tiff", {})]
    from PIL import features

    if features.check("webp"):
        lossless.append(("webp", {"lossless": True}))
    for ext, opts in lossless:
        files = write_tree(tmp_path / ext, x[:12], y[:12], ext=ext, **opts)
        got = load_dataset("imagefolder", tmp_path / ext).x.permute(0, 2, 3, 1).mul(255).round().byte().numpy()
        assert np.array_equal(got, x[:12][torchvision_order(files)]), ext
    # L → 1 channel (bit for bit)
    gray = x[:12, :, :, :1]
    files = write_tree(tmp_path / "gray", gray, y[:12])
    g = load_dataset("imagefolder", tmp_path / "gray")
    assert g.image_shape == (1, 32, 32)
    assert np.array_equal(g.x.permute(0, 2, 3, 1).mul(255).round().byte().numpy(), gray[torchvision_order(files)])
    # RGBA → RGB (alpha dropped), P (palette) → its RGB colours
    (tmp_path / "rgba" / "a").mkdir(parents=True)
    (tmp_path / "rgba" / "b").mkdir()
    Image.fromarray(np.dstack([x[0], np.full((32, 32), 7, np.uint8)]), "RGBA").save(tmp_path / "rgba" / "a" / "0.png")
    pal = Image.fromarray(x[1]).quantize(16)
    pal.save(tmp_path / "rgba" / "b" / "1.png")
    r = load_dataset("imagefolder", tmp_path / "rgba")
    got = r.x.permute(0, 2, 3, 1).mul(255).round().byte().numpy()
    assert r.y.tolist() == [0, 1] and np.array_equal(got[0], x[0])
    assert np.array_equal(got[1], np.asarray(pal.convert("RGB")))
    # JPEG: lossy, 3 channels, close to the original
    files = write_tree(tmp_path / "jpg", x[:6], y[:6], ext="jpg", quality=95)
    j = load_dataset("imagefolder", tmp_path / "jpg")
    diff = np.abs(j.x.permute(0, 2, 3, 1).numpy() * 255 - x[:6][torchvision_order(files)].astype(float))
    assert j.image_shape == (3, 32, 32) and 0 < diff.mean() < 8


def test_a_changed_image_gives_another_data_hash(tmp_path, first60):
    x, y = first60
    write_tree(tmp_path / "test", x[:10], y[:10])
    before = content_hash(load_dataset("imagefolder", tmp_path))
    path = tmp_path / "test" / CLASSES[y[3]] / "img3.png"
    changed = x[3].copy()
    changed[0, 0, 0] ^= 1
    Image.fromarray(changed).save(path)
    os.utime(path, ns=(1, 1))  # another mtime, whatever the clock's resolution
    after = load_dataset("imagefolder", tmp_path)  # the same process: the cache sees the changed file
    assert content_hash(after) != before
    Image.fromarray(x[3]).save(path)
    os.utime(path, ns=(2, 2))
    assert content_hash(load_dataset("imagefolder", tmp_path)) == before


def test_imagefolder_bad_trees_are_one_line_errors(tmp_path, first60):
    x, y = first60
    root = tmp_path / "d"
    with pytest.raises(DataError) as exc:
        load_dataset("imagefolder", root)
    assert "imagefolder dataset: " in _one_line(exc) and "not found; expected torchvision's ImageFolder" in str(exc.value)
    write_tree(root / "train", x[:4], y[:4])
    (root / "val").mkdir()
    with pytest.raises(DataError) as exc:
        load_dataset("imagefolder", root, "test")
    assert _one_line(exc) == (f"imagefolder dataset: {root} has no test/ folder (it has train/, val/); ask for split "
                              "train (data.split), or give the split folder itself as the root")
    tree = tmp_path / "t" / "test"
    write_tree(tree, x[:6], y[:6])
    big = tree / "cat" / "big.png"
    Image.fromarray(np.zeros((40, 32, 3), np.uint8)).save(big)
    with pytest.raises(DataError) as exc:
        load_dataset("imagefolder", tree.parent)
    assert _one_line(exc) == (f"{big} is 32×40 pixels (width × height) with 3 channels, but {tree}/airplane/img3.png "
                              "is 32×32 pixels (width × height) with 3 channels; all images of an ImageFolder must "
                              "share one size and channel count (resize or convert them first)")
    Image.fromarray(x[0, :, :, 0]).save(big)  # a grayscale image among colour ones
    with pytest.raises(DataError) as exc:
        load_dataset("imagefolder", tree.parent)
    assert "big.png is 32×32 pixels (width × height) with 1 channel, but" in _one_line(exc)
    big.unlink()
    (tree / "cat" / "notes.txt").write_text("x")
    with pytest.raises(DataError) as exc:
        load_dataset("imagefolder", tree.parent)
    assert _one_line(exc).startswith(f"{tree}/cat/notes.txt: not an image file of the accepted kinds (.jpg, .jpeg, .png")
    (tree / "cat" / "notes.txt").unlink()
    (tree / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError) as exc:
        load_dataset("imagefolder", tree.parent)
    assert _one_line(exc).startswith(f"cannot read image {tree}/cat/broken.png: UnidentifiedImageError")
    (tree / "cat" / "broken.png").unlink()
    Image.fromarray(np.zeros((32, 32), np.uint16) + 300).save(tree / "cat" / "deep.png")
    with pytest.raises(DataError) as exc:
        load_dataset("imagefolder", tree.parent)
    assert _one_line(exc).startswith(f"{tree}/cat/deep.png: Pillow mode I;16 (16-bit or float pixels); expected 8-bit")
    (tree / "cat" / "deep.png").unlink()
    Image.fromarray(x[0]).save(tree / "loose.png")
    with pytest.raises(DataError) as exc:
        load_dataset("imagefolder", tree.parent)
    assert _one_line(exc).startswith(f"{tree}/loose.png: an image outside any class folder")
    flat = tmp_path / "flat" / "test"
    flat.mkdir(parents=True)
    (flat / "only").mkdir()
    with pytest.raises(DataError) as exc:
        load_dataset("imagefolder", flat.parent)
    assert _one_line(exc).startswith(f"{flat}: no image files in its class folders")
    Image.fromarray(x[0]).save(flat / "only" / "a.png")
    with pytest.raises(DataError) as exc:
        load_dataset("imagefolder", flat.parent)
    assert _one_line(exc) == f"{flat} has 1 class folder; a classifier needs at least 2"


def test_imagefolder_runs_audits_and_diagnoses_from_the_cli(tmp_path, first60, monkeypatch):
    from robust_bench_sc.cli import app
    from robust_bench_sc.paths import ENV_DATA

    monkeypatch.setenv(ENV_DATA, str(data_dir()))  # --data-dir sets it; restored after the test
    x, y = first60
    files = write_tree(tmp_path / "tiny" / "test", x[:8], y[:8])
    order = torchvision_order(files)
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\ndata: {n_images: 8, chunk_size: 8}\ndefenses: [natural]\nthreat_models: [clean]\n")
    r = CliRunner().invoke(app, ["run", str(suite), "--dataset", "imagefolder", "--data-dir", str(tmp_path / "tiny"),
                                 "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["subset"] == "first 8 images of tiny/test/" and meta["dataset"]["name"] == "imagefolder"
    assert meta["data_hash"] == content_hash(load_dataset("imagefolder", tmp_path / "tiny"))
    rec = json.loads(next((tmp_path / "run").rglob("records/**/*.json")).read_text())
    assert rec["data"] == {"dataset": "imagefolder", "split": "test", "hash": meta["data_hash"]}
    # the natural ResNet's answers on these 8 images: the npz's images in the tree's order
    import torch

    from robust_bench_sc.plugins import build_defense

    with torch.no_grad():
        pred = build_defense("natural").classifier(torch.from_numpy(x[:8][order]).permute(0, 3, 1, 2).float() / 255)
    expected = 100 * float((pred.argmax(1) == torch.from_numpy(y[:8][order])).float().mean())
    assert f"{expected:.2f}" in r.output

    r = CliRunner().invoke(app, ["audit", "defenses.archetypes:madry", "--n-images", "4", "--budget", "quick", "--quiet",
                                 "--dataset", "imagefolder", "--data-dir", str(tmp_path / "tiny"),
                                 "--out", str(tmp_path / "audit")])
    assert r.exit_code == 0, r.output
    card = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert card["subset"] == "first 4 images of tiny/test/" and card["dataset"]["name"] == "imagefolder"
    r = CliRunner().invoke(app, ["diagnose", "defenses.archetypes:madry", "--n-images", "4", "--steps", "1",
                                 "--strong-steps", "2", "--sweep-steps", "1", "--queries", "10", "--noise-draws", "2",
                                 "--eot", "1", "--unconstrained-steps", "1", "--dataset", "imagefolder",
                                 "--data-dir", str(tmp_path / "tiny"), "--out", str(tmp_path / "diag")])
    assert r.exit_code == 0, r.output
    assert "first 4 images of tiny/test/" in r.output
    # a bad tree is one line, no traceback
    r = CliRunner().invoke(app, ["audit", "defenses.archetypes:madry", "--n-images", "4", "--dataset", "imagefolder",
                                 "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a2")])
    assert r.exit_code == 2 and "not found; expected torchvision's ImageFolder layout" in r.output
    assert "Traceback" not in r.output


# -- npz / npy variants ---------------------------------------------------------------------

def _pixels(s) -> np.ndarray:
    return s.x.permute(0, 2, 3, 1).mul(255).round().byte().numpy()


def test_npz_variants_read_the_same_images(tmp_path, first60):
    x, y = first60
    np.savez(tmp_path / "ref.npz", x=x, y=y)
    ref = load_dataset("npz", tmp_path / "ref.npz")
    variants = {
        "nchw": dict(x=x.transpose(0, 3, 1, 2), y=y),
        "float32": dict(x=x.astype(np.float32) / 255, y=y),
        "float64_nchw": dict(x=x.transpose(0, 3, 1, 2) / 255.0, y=y),
        "int64": dict(x=x.astype(np.int64), y=y),
        "aliases": dict(images=x, labels=y),
        "keras": dict(x_train=x[:5], y_train=y[:5], x_test=x, y_test=y),
        "data_targets": dict(data=x, targets=y.astype(np.uint8)),
        "column": dict(X=x, Y=y[:, None]),
        "onehot": dict(x=x, y=np.eye(10, dtype=np.float32)[y]),
        "float_labels": dict(x=x, y=y.astype(np.float64)),
    }
    for name, arrays in variants.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        s = load_dataset("npz", tmp_path / f"{name}.npz")
        assert np.array_equal(_pixels(s), x), name
        assert s.y.tolist() == y.tolist() and s.n_classes == 10 and s.image_shape == (3, 32, 32), name
        assert content_hash(s) == content_hash(ref), name  # floats k/255 hash as the bytes k
    # x_<split>: the keras-style file gives its train arrays for split train
    train = load_dataset("npz", tmp_path / "keras.npz", "train")
    assert len(train) == 5 and np.array_equal(_pixels(train), x[:5])
    # float images keep their values (no rounding to 1/255): the model sees them as stored
    soft = (x.astype(np.float32) + 0.5) / 256
    np.savez(tmp_path / "soft.npz", x=soft, y=y)
    assert np.array_equal(load_dataset("npz", tmp_path / "soft.npz").x.permute(0, 2, 3, 1).numpy(), soft)
    # one-hot with an absent last class: K classes, not max + 1
    np.savez(tmp_path / "k12.npz", x=x, y=np.eye(12, dtype=np.uint8)[y])
    assert load_dataset("npz", tmp_path / "k12.npz").n_classes == 12
    # axis 3 in {1, 3} wins: (N, 3, 8, 3) is channels last
    odd = np.arange(4 * 3 * 8 * 3, dtype=np.uint8).reshape(4, 3, 8, 3)
    np.savez(tmp_path / "odd.npz", x=odd, y=np.array([0, 1, 0, 1]))
    o = load_dataset("npz", tmp_path / "odd.npz")
    assert o.image_shape == (3, 3, 8) and np.array_equal(_pixels(o), odd)
    # grayscale NCHW
    np.savez(tmp_path / "g.npz", x=x[:, None, :, :, 0], y=y)
    assert np.array_equal(_pixels(load_dataset("npz", tmp_path / "g.npz")), x[:, :, :, :1])
    # grayscale (N, H, W) with N labels, as Keras' mnist.npz stores it (x_train, y_train, x_test, y_test)
    np.savez(tmp_path / "keras.npz", x_train=x[:40, :, :, 0], y_train=y[:40], x_test=x[40:, :, :, 0], y_test=y[40:])
    k = load_dataset("npz", tmp_path / "keras.npz", "test")
    assert k.image_shape == (1, 32, 32) and np.array_equal(_pixels(k), x[40:, :, :, :1]) and k.y.tolist() == y[40:].tolist()
    assert np.array_equal(_pixels(load_dataset("npz", tmp_path / "keras.npz", "train")), x[:40, :, :, :1])
    # a 3-D array whose first axis is not the label count stays an error (one H×W×C image?)
    np.savez(tmp_path / "one.npz", x=x[0], y=y[:3])
    with pytest.raises(DataError, match=r"one.npz: x is uint8\(32, 32, 3\); expected x uint8 \(N, H, W, C\)"):
        load_dataset("npz", tmp_path / "one.npz")


def test_a_pair_of_npy_files(tmp_path, first60):
    x, y = first60
    np.save(tmp_path / "x_test.npy", x.transpose(0, 3, 1, 2))
    np.save(tmp_path / "y_test.npy", y)
    s = load_dataset("npz", tmp_path, "test")
    assert np.array_equal(_pixels(s), x) and s.y.tolist() == y.tolist()
    assert s.images == f"test images of {tmp_path.name}/"
    np.save(tmp_path / "images.npy", x)
    with pytest.raises(DataError) as exc:
        load_dataset("npz", tmp_path, "test")
    assert _one_line(exc) == (f"{tmp_path} holds several image (.npy) arrays (images, x_test); keep one of "
                              "x, images, data, X, x_test")


def test_a_torch_save_file_of_a_dict_or_a_pair(tmp_path, first60):
    """What PyTorch users keep: torch.save({'images': X, 'labels': Y}) or torch.save((X, Y)),
    float NCHW in [0, 1] or uint8; read exactly (weights_only: no code runs)."""
    import torch

    x, y = first60
    as_float = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    torch.save({"images": as_float, "labels": torch.from_numpy(y)}, tmp_path / "d.pt")
    torch.save((torch.from_numpy(x), torch.from_numpy(y)), tmp_path / "pair.pth")
    for name in ("d.pt", "pair.pth"):
        s = load_dataset("npz", tmp_path / name, "test")
        assert np.array_equal(_pixels(s), x) and s.y.tolist() == y.tolist() and s.n_classes == 10, name
        assert s.images == f"test images of {name}"
    torch.save(as_float, tmp_path / "one.pt")
    with pytest.raises(DataError) as exc:
        load_dataset("npz", tmp_path / "one.pt", "test")
    assert _one_line(exc) == (f"{tmp_path / 'one.pt'}: torch.save of a Tensor; expected a dict {{'x': images, "
                              "'y': labels} or a pair (x, y) of tensors")
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(DataError) as exc:
        load_dataset("npz", tmp_path / "bad.pt", "test")
    assert _one_line(exc).startswith(f"cannot read {tmp_path / 'bad.pt'}: ")


def test_npz_values_and_shapes_refused_in_one_line(tmp_path, first60):
    x, y = first60
    p = tmp_path / "bad.npz"
    cases = [
        (dict(x=x.astype(np.float32), y=y),
         f"{p}: x is float32(60, 32, 32, 3) with values 0..255, outside [0, 1]; expected floats in [0, 1]; they look "
         "like pixels 0..255 stored as floats: divide by 255 (or store uint8); nothing is rescaled silently"),
        (dict(x=x.astype(np.float32) / 127.5 - 1, y=y),
         f"{p}: x is float32(60, 32, 32, 3) with values -1..1, outside [0, 1]; expected floats in [0, 1] (nothing is "
         "rescaled silently)"),
        (dict(x=np.full((2, 4, 4, 3), np.nan, np.float32), y=[0, 1]),
         f"{p}: x is float32(2, 4, 4, 3): it holds NaN or infinite values; expected floats in [0, 1]"),
        (dict(x=x.astype(np.int16) * 2, y=y),
         f"{p}: x is int16(60, 32, 32, 3) with values 0..510; expected integer pixels in 0..255 (or floats in [0, 1])"),
        (dict(x=np.zeros((2, 5, 4, 4), np.uint8), y=[0, 1]),
         f"{p}: x is uint8(2, 5, 4, 4): neither axis 3 (channels last) nor axis 1 (channels first) has 1 or 3 channels"),
        (dict(x=x[:, :, :, 0], y=y[:59]),  # (N, H, W) is grayscale only with N labels
         f"{p}: x is uint8(60, 32, 32); expected x uint8 (N, H, W, C) with C 1 or 3 and y of shape (N,)"),
        (dict(pixels=x, y=y),
         f"{p} has no image array: it holds pixels, y; accepted names: x, images, data, X, x_test"),
        (dict(x=x, images=x, label=y),
         f"{p} has no label array: it holds x, images, label; accepted names: y, labels, targets, Y, y_test"),
        (dict(images=x, data=x, y=y),
         f"{p} holds several image arrays (images, data); keep one of x, images, data, X, x_test"),
        (dict(x=x, y=np.full((60, 10), 0.1)),
         f"{p}: y is float64(60, 10) is not one-hot (each row one 1, the rest 0); soft or multi-label targets are not "
         "accepted: store integer labels (N,)"),
        (dict(x=x, y=y[:59]),
         f"{p}: y is int64(59,); expected y of shape (N,) = (60,) for the 60 images, (N, 1) or one-hot (N, K)"),
        (dict(x=x, y=y + 0.5),
         f"{p}: y is float64(60,) with values that are not whole numbers; expected integer class labels"),
        (dict(x=x, y=y, idx=np.arange(3)),
         f"{p}: idx is int64(3,); expected (60,), one position per image"),
    ]
    for arrays, expect in cases:
        np.savez(p, **arrays)
        with pytest.raises(DataError) as exc:
            load_dataset("npz", p)
        assert _one_line(exc).startswith(expect), (expect, str(exc.value))
    p.write_bytes(b"not a zip")
    with pytest.raises(DataError) as exc:
        load_dataset("npz", p)
    assert _one_line(exc).startswith(f"cannot read {p}: ")
    with pytest.raises(DataError) as exc:
        load_dataset("npz", tmp_path / "empty_dir")
    assert "test.npz not found; expected one .npz" in _one_line(exc) and "x.npy and y.npy" in str(exc.value)
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(DataError) as exc:
        load_dataset("npz", tmp_path / "x.npy")
    assert _one_line(exc).startswith(f"npz dataset: {tmp_path / 'x.npy'} is a file but not an .npz (nor a torch.save .pt/.pth); give the .npz file, "
                                     "or the folder holding test.npz or the .npy files")
    with pytest.raises(DataError) as exc:
        load_dataset("imagefolder", tmp_path / "x.npy")
    assert _one_line(exc).startswith(f"imagefolder dataset: {tmp_path / 'x.npy'} is a file; expected the folder ROOT")


def test_scbench_datasets_lists_imagefolder():
    from robust_bench_sc.cli import app

    r = CliRunner().invoke(app, ["datasets"])
    assert r.exit_code == 0
    out = " ".join(r.output.split())
    assert "imagefolder" in out and "ImageFolder" in out and "npz" in out


def test_16_bit_colour_png_is_refused_not_cut_to_8_bits(tmp_path, first60):
    """Pillow opens a 16-bit RGB PNG as mode RGB, keeping the high byte: the reader refuses it."""
    import struct
    import zlib

    x, y = first60
    tree = tmp_path / "t"
    write_tree(tree, x[:4], y[:4])
    path = tree / CLASSES[y[0]] / "deep.png"
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in x[0].astype(np.uint16) * 257)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 32, 32, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    assert Image.open(path).mode == "RGB"  # what Pillow says of it
    with pytest.raises(DataError) as exc:
        load_dataset("imagefolder", tree)
    assert _one_line(exc) == (f"{path}: 16 bits per channel (RGB;16B), which Pillow would cut to 8 bits; expected "
                              "8-bit images (convert them yourself)")


def test_an_added_empty_class_folder_is_seen(tmp_path, first60):
    x, y = first60
    names = tuple(f"c{k}" for k in range(1, 11))
    order = torchvision_order(write_tree(tmp_path, x[:6], y[:6], names=names))
    before = load_dataset("imagefolder", tmp_path)
    rank = {n: i for i, n in enumerate(sorted(names))}  # c1, c10, c2, ...
    assert before.n_classes == 10 and before.y.tolist() == [rank[names[y[i]]] for i in order]
    (tmp_path / "c0").mkdir()  # a new first class, empty: every index moves up by one
    s = load_dataset("imagefolder", tmp_path)
    assert s.n_classes == 11 and s.y.tolist() == [rank[names[y[i]]] + 1 for i in order]
    assert content_hash(s) != content_hash(before)
