"""Sparse-coding frontend defense: exact pieces, BPDA stand-ins, fast decoder, training/resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from defenses.sparse_coding.frontend import (
    SparseCodingFrontend,
    StandIn,
    atoms_to_filters,
    load_dictionary,
    make_stand_ins,
    scatter_dense,
    smooth_ternary,
    ternary,
    top_t,
)
from defenses.sparse_coding.train import TrainConfig, decoder_is_dead, train
from robust_bench_sc.data import load_test


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(0)
    return load_test(8).x


@pytest.fixture(scope="module")
def frontend():
    torch.manual_seed(0)
    fe = SparseCodingFrontend(T=15, widths=(32, 16)).eval()
    for p in fe.parameters():
        p.requires_grad_(False)
    return fe


def test_dictionary_layout():
    atoms = np.arange(2 * 48, dtype=np.float32).reshape(2, 48)
    f = atoms_to_filters(atoms)
    assert f.shape == (2, 3, 4, 4)
    # element (h, w, c) of the flattened patch is at index (h*4 + w)*3 + c
    assert f[1, 2, 3, 1] == atoms[1, (3 * 4 + 1) * 3 + 2]
    ref = load_dictionary()
    assert ref.shape == (500, 3, 4, 4)
    assert torch.allclose(ref.flatten(1).norm(dim=1), torch.ones(500), atol=1e-4)  # unit-norm atoms


def test_output_shapes(frontend, images):
    assert frontend.encode(images).shape == (8, 500, 15, 15)
    out = frontend(images)
    assert out.shape == (8, 3, 32, 32)
    assert out.min() >= 0


def test_top_t_keeps_exactly_t(frontend, images):
    c = frontend.encode(images)
    for T in (1, 2, 15):
        kept = top_t(c, T)
        assert torch.all((kept != 0).sum(dim=1) == T)
        # the kept ones are the largest in magnitude
        thresh = kept.abs().masked_fill(kept == 0, float("inf")).amin(dim=1)
        dropped = c.abs().masked_fill(kept != 0, 0).amax(dim=1)
        assert torch.all(dropped <= thresh)


def test_activation_is_ternary(frontend, images):
    c = top_t(frontend.encode(images), 15)
    l1 = frontend.l1.expand_as(c)
    a = ternary(c, l1)
    ok = (a == 0) | (a == l1) | (a == -l1)
    assert bool(ok.all())
    assert bool((a != 0).any()) and bool((a == 0).any())
    # threshold: |c| / (eps ||d||_1) >= 3
    on = c.abs() / (8 / 255 * l1) >= 3
    assert torch.equal(a != 0, on)


def test_smooth_activation_shape():
    l1 = torch.ones(5)
    u = torch.tensor([-0.6, -0.05, 0.0, 0.05, 0.6])
    s = smooth_ternary(u, l1, steepness=32.0)
    assert s[2] == 0 and s[0] < -0.9 and s[4] > 0.9 and abs(float(s[3])) < 0.3


def test_fast_decoder_equals_dense(frontend, images):
    idx, val = frontend.sparse_code(images)
    dec = frontend.decoder
    a = dec.forward_sparse(idx, val)
    b = dec.forward_dense(scatter_dense(idx, val, 500))
    assert torch.allclose(a, b, atol=1e-5)


def test_fast_decoder_gradients_equal_dense(images):
    torch.manual_seed(1)
    fe = SparseCodingFrontend(T=5, widths=(16, 8)).double()
    idx, val = fe.sparse_code(images[:2].double())
    val = val + 0.1 * torch.randn_like(val)
    g = torch.randn(2, 3, 32, 32, dtype=torch.double)
    grads = []
    for fast in (True, False):
        fe.decoder.zero_grad()
        v = val.clone().requires_grad_(True)
        out = fe.decoder.forward_sparse(idx, v) if fast else fe.decoder.forward_dense(scatter_dense(idx, v, 500))
        (out * g).sum().backward()
        grads.append([v.grad] + [p.grad.clone() for p in fe.decoder.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-9)


def test_exact_frontend_has_zero_input_gradient(frontend, images):
    x = images.clone().requires_grad_(True)
    out = frontend.forward_autograd(x)
    assert torch.allclose(out, frontend(images), atol=1e-5)
    (g,) = torch.autograd.grad(out.sum(), x, allow_unused=True)
    assert g is None or float(g.abs().max()) == 0.0


@pytest.mark.parametrize("name", ["smooth", "top_u", "smooth_top_u"])
def test_stand_ins_forward_exact_backward_nonzero(frontend, images, name):
    stand_in = make_stand_ins(frontend)[name]
    x = images.clone().requires_grad_(True)
    out = stand_in(x)
    assert torch.allclose(out, frontend(images), atol=1e-5)
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(g).all() and float(g.abs().max()) > 0


def test_stand_in_u_must_cover_t(frontend):
    with pytest.raises(ValueError):
        StandIn(frontend, smooth=True, U=3)


def test_top_u_reaches_more_coefficients(frontend, images):
    """U = 2T: atoms ranked T+1..2T are zero in the forward pass but get gradients."""
    stand = make_stand_ins(frontend)
    assert stand["top_u"].U == 30 and stand["smooth"].U == 15
    c = frontend.encode(images[:2]).detach().requires_grad_(True)
    for name in ("top_u", "smooth_top_u"):
        idx, val = stand[name].code_from_coefficients(c)
        assert idx.shape[1] == 30 and float(val[:, 15:].detach().abs().max()) == 0.0
        (g,) = torch.autograd.grad(val[:, 15:].sum(), c)
        assert float(g.abs().max()) > 0
    idx, val = stand["smooth"].code_from_coefficients(c)
    assert idx.shape[1] == 15


def test_bpda_engine_with_defense(images, tmp_path):
    """Through the plug-in API: exact forward, stand-in backward."""
    from defenses.sparse_coding import sparse_coding
    from defenses.sparse_coding.train import SparseCodingNet, weights_state
    from robust_bench_sc.models.resnet import ResNet32

    torch.manual_seed(0)
    net = SparseCodingNet(SparseCodingFrontend(T=15, widths=(16, 8)), ResNet32(units_per_block=1))
    path = tmp_path / "T15.pt"
    torch.save(weights_state(net), path)
    d = sparse_coding(T=15, checkpoint=str(path)).eval()
    assert d.capabilities.default_bpda == "smooth_top_u"
    assert set(d.bpda_names()) == {"identity", "smooth", "top_u", "smooth_top_u"}
    x = images[:2].clone().requires_grad_(True)
    model = d.attack_model("smooth_top_u")
    logits = model(x)
    assert torch.allclose(logits, d(images[:2]), atol=1e-4)
    (g,) = torch.autograd.grad(logits[:, 0].sum(), x)
    assert float(g.abs().max()) > 0


def test_missing_weights_error_names_path():
    from defenses.sparse_coding import sparse_coding, weights_path

    with pytest.raises(FileNotFoundError, match="T2.pt") as exc:
        if weights_path(2).is_file():
            pytest.skip("T2 weights exist")
        sparse_coding(T=2)
    assert str(weights_path(2)) in str(exc.value)


def test_dead_decoder_detection():
    assert decoder_is_dead(torch.zeros(4, 3, 32, 32))
    assert not decoder_is_dead(torch.rand(4, 3, 32, 32))


def _tiny(tmp, **kw):
    base = dict(T=5, epochs=2, batch_size=8, peak_lr=0.05, warmup_frac=0.3, ckpt_every=3, eval_every=100,
                n_test=0, decoder_widths=(16, 8), units_per_block=1, progress=False, threads=1)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def tiny_data():
    d = load_test(48)
    return (d.x[:32], d.y[:32]), (d.x[32:], d.y[32:])


def test_training_lowers_loss(tmp_path, tiny_data):
    tr, va = tiny_data
    cfg = _tiny(tmp_path, epochs=3, eval_every=4)
    train(cfg, tmp_path / "run", train_data=tr, val_data=va, log=lambda s: None)
    import json

    rows = json.loads((tmp_path / "run" / "log.json").read_text())["rows"]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    for f in ("last.pt", "best.pt", "latest_weights.pt", "log.csv"):
        assert (tmp_path / "run" / f).is_file()
    w = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert int(w["T"]) == 5


def test_resume_after_interrupt_is_exact(tmp_path, tiny_data):
    tr, va = tiny_data
    cfg = _tiny(tmp_path)
    train(cfg, tmp_path / "a", train_data=tr, val_data=va, log=lambda s: None)  # 2 epochs x 4 steps
    # interrupted in the middle of epoch 0 (after step 2: the last checkpoint was at step 2)
    train(_tiny(tmp_path, max_steps=2), tmp_path / "b", train_data=tr, val_data=va, log=lambda s: None)
    train(cfg, tmp_path / "b", train_data=tr, val_data=va, log=lambda s: None)
    a = torch.load(tmp_path / "a" / "latest_weights.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "latest_weights.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k
