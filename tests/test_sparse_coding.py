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
    straight_through,
    ternary,
    top_t,
    top_t_indices,
    top_u_indices,
)
from defenses.sparse_coding.train import decoder_is_dead
from robust_bench_sc.training import TrainConfig, train
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


def _random_code(b, k, m, n_atoms, dtype, seed):
    """(idx, val): k distinct atoms per patch, values ternary-like with some exact zeros."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.rand(b, n_atoms, m, m, generator=g).argsort(dim=1)[:, :k].contiguous()
    val = torch.randn(b, k, m, m, generator=g, dtype=dtype)
    val[torch.rand(b, k, m, m, generator=g) < 0.2] = 0.0
    return idx, val


@pytest.mark.parametrize("m", [1, 2, 5])
def test_sparse_first_layer_equals_conv_transpose(m):
    """Per-pixel bags == ConvTranspose2d(k4, s2) on the scattered code, every grid size, float64."""
    from defenses.sparse_coding.frontend import _SparseDeconv

    n_atoms, c, k = 11, 3, 4
    idx, val = _random_code(2, k, m, n_atoms, torch.double, seed=m)
    w = torch.randn(n_atoms, c, 4, 4, dtype=torch.double, generator=torch.Generator().manual_seed(7))
    bias = torch.tensor([0.5, -1.0, 2.0], dtype=torch.double)
    z = scatter_dense(idx, val, n_atoms)
    for b_ in (bias, None):
        ref = torch.nn.functional.conv_transpose2d(z, w, b_, stride=2)
        out = _SparseDeconv.apply(idx, val, w, b_)
        assert out.shape == ref.shape == (2, c, 2 * m + 2, 2 * m + 2)
        assert torch.allclose(out, ref, atol=1e-12), float((out - ref).abs().max())
    # one atom in the corner patch only: its kernel lands unflipped at the top-left 4x4
    val1 = torch.zeros_like(val)
    val1[0, 0, 0, 0] = 2.0
    out = _SparseDeconv.apply(idx, val1, w, None)
    assert torch.equal(out[0, :, :4, :4], 2.0 * w[idx[0, 0, 0, 0]])
    assert float(out[0, :, 4:, :].abs().sum()) == 0.0 and float(out[1].abs().sum()) == 0.0


@pytest.mark.parametrize("zero_tail", [False, True])
def test_sparse_first_layer_gradients_equal_dense_and_fallback(monkeypatch, zero_tail):
    """Value, weight and bias gradients == those of the dense ConvTranspose2d (float64), with the
    gathered-dot value gradient and with the GEMM fallback used when torch lacks the op.
    zero_tail: ranks 4..6 are 0 in every patch (as a stand-in's ranks T+1..U): the forward skips
    them, yet they get their gradient."""
    import defenses.sparse_coding.frontend as fmod

    n_atoms, c, k, m = 13, 5, 6, 4
    idx, val = _random_code(3, k, m, n_atoms, torch.double, seed=3)
    if zero_tail:
        val[:, 3:] = 0.0
    gen = torch.Generator().manual_seed(4)
    w0 = torch.randn(n_atoms, c, 4, 4, dtype=torch.double, generator=gen)
    b0 = torch.randn(c, dtype=torch.double, generator=gen)
    gout = torch.randn(3, c, 2 * m + 2, 2 * m + 2, dtype=torch.double, generator=gen)

    def grads(sparse):
        v, w, b = (t.clone().requires_grad_(True) for t in (val, w0, b0))
        if sparse:
            out = fmod._SparseDeconv.apply(idx, v, w, b)
        else:
            out = torch.nn.functional.conv_transpose2d(scatter_dense(idx, v, n_atoms), w, b, stride=2)
        return torch.autograd.grad(out, (v, w, b), gout)

    ref = grads(False)
    assert float(ref[0][:, 3:].abs().max()) > 0.1 and float(ref[1].abs().max()) > 0.1
    assert fmod._PSW_BACKWARD is not None  # this torch has the gathered-dot op
    for label in ("gathered dots", "gemm fallback"):
        if label == "gemm fallback":
            monkeypatch.setattr(fmod, "_PSW_BACKWARD", None)
        for a, b in zip(grads(True), ref):
            assert torch.allclose(a, b, atol=1e-10), (label, float((a - b).abs().max()))


def test_gathered_dots_only_the_gathered_entries():
    from defenses.sparse_coding.frontend import _gathered_dots

    gen = torch.Generator().manual_seed(5)
    g = torch.randn(7, 10, dtype=torch.double, generator=gen)
    wr = torch.randn(20, 10, dtype=torch.double, generator=gen)
    fi = torch.tensor([[0, 19, 3], [5, 5, 1], [2, 3, 4], [9, 8, 7], [0, 1, 2], [19, 18, 17], [6, 0, 11]])
    out = _gathered_dots(g, wr, fi)
    ref = torch.stack([torch.stack([g[n] @ wr[fi[n, t]] for t in range(3)]) for n in range(7)])
    assert out.shape == (7, 3) and torch.allclose(out, ref, atol=1e-12)


@pytest.mark.parametrize("name", ["smooth", "top_u", "smooth_top_u"])
def test_stand_in_input_gradients_fast_equal_dense(images, name):
    """The whole stand-in (encoder, top-U, activation, decoder) through the sparse first layer
    gives the dense path's input gradient (float64)."""
    torch.manual_seed(2)
    fe = SparseCodingFrontend(T=5, widths=(12, 6)).double()
    stand = make_stand_ins(fe)[name]
    x = images[:2].double()
    gout = torch.randn(2, 3, 32, 32, dtype=torch.double)
    out_grads = []
    for fast in (True, False):
        fe.fast = fast
        xr = x.clone().requires_grad_(True)
        out = stand(xr)
        out_grads.append((out.detach(), torch.autograd.grad(out, xr, gout)[0]))
    fe.fast = True
    (oa, ga), (ob, gb) = out_grads
    assert torch.allclose(oa, ob, atol=1e-12)
    assert float(gb.abs().max()) > 0 and torch.allclose(ga, gb, atol=1e-12), float((ga - gb).abs().max())


def test_shipped_t15_fast_equals_dense():
    """The shipped checkpoint: sparse first layer == dense ConvTranspose2d (same predictions, logits 1e-5)."""
    from defenses.sparse_coding import build_net, weights_path

    if not weights_path(15).is_file():
        pytest.skip("no shipped T15 weights")
    net = build_net(15)
    x = load_test(24).x
    with torch.no_grad():
        a = net(x)
        net.frontend.fast = False
        b = net(x)
    assert torch.equal(a.argmax(1), b.argmax(1))
    assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())


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
    with torch.no_grad():
        assert torch.equal(out, frontend(images))
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(g).all() and float(g.abs().max()) > 0


def test_top_u_indices_keep_the_exact_top_t_under_ties():
    """Ranks 1..T are top_t_indices(c, T) itself; T+1..U the next largest |c| among the others."""
    torch.manual_seed(3)
    c = torch.randn(3, 40, 2, 2)
    c[0, :, 0, 0] = 0.0  # a black patch: every |c| ties
    c[1, :, 1, 1] = torch.where(torch.arange(40) % 2 == 0, 1.0, -1.0)  # 40 equal |c|
    c[2, :12, 0, 1] = 5.0  # 12 equal |c| across the rank 5 / 6 boundary and beyond U = 10
    idx = top_u_indices(c, 5, 10)
    assert idx.shape == (3, 10, 2, 2)
    assert torch.equal(idx[:, :5], top_t_indices(c, 5))
    a = c.abs()
    for b in range(3):
        for i in range(2):
            for j in range(2):
                ids = idx[b, :, i, j].tolist()
                assert len(set(ids)) == 10  # no atom twice
                rest = a[b, :, i, j].clone()
                rest[ids[:5]] = -1.0
                assert torch.equal(a[b, ids[5:], i, j], rest.topk(5).values)  # the largest remaining, sorted
    assert torch.equal(top_u_indices(c, 5, 5), top_t_indices(c, 5))


def test_straight_through_value_is_exact_bitwise_gradient_is_approx():
    exact = torch.tensor([1.0, 0.0, -3.0])
    approx = torch.tensor([0.1, 0.3, -2.9], requires_grad=True)
    out = straight_through(exact, approx)
    assert torch.equal(out, exact) and out.data_ptr() != exact.data_ptr()
    (g,) = torch.autograd.grad((out * torch.tensor([2.0, 3.0, 4.0])).sum(), approx)
    assert torch.equal(g, torch.tensor([2.0, 3.0, 4.0]))
    with pytest.raises(ValueError, match="differ in shape"):
        straight_through(exact, approx[:2])


@pytest.mark.parametrize("fast", [True, False])
def test_stand_ins_forward_bitwise_exact_with_tied_patches(images, fast):
    """Every atom twice (the copy sign-flipped) ties every |c| in pairs, and T = 15 splits a pair, so
    topk(U)'s first T differ from topk(T); black regions tie every |c| at 0. The stand-ins' forward
    is still bitwise the exact frontend's, sparse and dense first layer."""
    torch.manual_seed(0)
    atoms = load_dictionary()[:100]
    frontend = SparseCodingFrontend(T=15, dictionary=torch.cat([atoms, -atoms]), widths=(32, 16)).eval()
    x = images[:4].clone()
    x[0] = 0.0
    x[1, :, :16] = 0.0
    with torch.no_grad():
        c = frontend.encode(x)
        a, b = c.abs().topk(30, dim=1).indices[:, :15], top_t_indices(c, 15)
        assert not torch.equal(a.sort(1).values, b.sort(1).values)  # a different set of atoms: ties matter
    frontend.fast = fast
    try:
        with torch.no_grad():
            ref = frontend(x)
        for name, stand in make_stand_ins(frontend).items():
            assert stand.exact_forward is True
            out = stand(x.clone().requires_grad_(True))
            assert torch.equal(out.detach(), ref), (name, float((out.detach() - ref).abs().max()))
    finally:
        frontend.fast = True


def test_shipped_t15_stand_ins_forward_bitwise_exact():
    from defenses.sparse_coding import build_net, weights_path

    if not weights_path(15).is_file():
        pytest.skip("no shipped T15 weights")
    net = build_net(15).eval()
    fe = net.frontend
    x = load_test(16).x
    with torch.no_grad():
        ref = fe(x)
        c = fe.encode(x)
        # the shipped model on these images has patches where topk(30)'s first 15 are not topk(15)
        assert not torch.equal(c.abs().topk(30, dim=1).indices[:, :15], top_t_indices(c, 15))
    for name, stand in make_stand_ins(fe).items():
        out = stand(x.clone().requires_grad_(True))
        assert torch.equal(out.detach(), ref), name


class _Counting(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


@pytest.mark.parametrize("declared", [True, False])
def test_engine_runs_an_exact_forward_stand_in_alone(frontend, images, declared):
    """exact_forward = True: one stand-in forward per step, no exact forward, no _BPDAFunction, logits
    bitwise the defense's; undeclared: exact forward + stand-in forward in the backward (BPDA)."""
    from robust_bench_sc.defense import Capabilities, Defense

    torch.manual_seed(0)
    cls = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    exact, stand = _Counting(frontend), _Counting(make_stand_ins(frontend)["smooth_top_u"])
    if declared:
        stand.exact_forward = True
    d = Defense("sc_tiny", cls, preprocess=exact, bpda={"smooth_top_u": stand},
                capabilities=Capabilities(differentiable=False)).eval()
    model = d.attack_model("smooth_top_u")
    x = images[:3]
    xr = x.clone().requires_grad_(True)
    logits = model(xr)
    (g,) = torch.autograd.grad(logits[:, 0].sum(), xr)
    with torch.no_grad():
        ref = d(x)
    assert float(g.abs().max()) > 0
    if declared:
        assert (exact.calls, stand.calls) == (1, 1)  # the 1 exact call is d(x) above
        assert torch.equal(logits.detach(), ref)
    else:
        assert (exact.calls, stand.calls) == (2, 1)
        assert torch.allclose(logits.detach(), ref, atol=1e-6)
    # the BPDA Function is in the graph only without the declaration
    xr = x.clone().requires_grad_(True)
    names = set()
    fn = model(xr).grad_fn
    todo = [fn]
    while todo:
        f = todo.pop()
        if f is None or type(f).__name__ in names:
            continue
        names.add(type(f).__name__)
        todo.extend(nf for nf, _ in f.next_functions)
    assert ("_BPDAFunctionBackward" in names) is (not declared), names


def test_exact_forward_stand_in_gradient_equals_bpda_path(frontend, images):
    """The direct path's input gradient equals bpda_apply's (exact values, same backward)."""
    from robust_bench_sc.defense import bpda_apply

    stand = make_stand_ins(frontend)["smooth_top_u"]
    x = images[:3]
    gout = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    xa = x.clone().requires_grad_(True)
    (ga,) = torch.autograd.grad(stand(xa), xa, gout)
    xb = x.clone().requires_grad_(True)
    (gb,) = torch.autograd.grad(bpda_apply(xb, frontend, stand), xb, gout)
    assert float(ga.abs().max()) > 0 and torch.equal(ga, gb)


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


def test_missing_weights_error_names_path(tmp_path, monkeypatch):
    """A T whose weights file is absent (here: an empty weights folder) names the file it wanted."""
    import defenses.sparse_coding as sc

    monkeypatch.setattr(sc, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="T2.pt") as exc:
        sc.sparse_coding(T=2)
    assert str(tmp_path / "T2.pt") in str(exc.value)
    assert "scbench train --T 2" in str(exc.value)


def test_dead_decoder_detection():
    assert decoder_is_dead(torch.zeros(4, 3, 32, 32))
    assert not decoder_is_dead(torch.rand(4, 3, 32, 32))


def _tiny(tmp, **kw):
    base = dict(model="sparse_coding", epochs=2, batch_size=8, peak_lr=0.05, warmup_frac=0.3, ckpt_every=3,
                eval_every=100, n_test=0, progress=False, threads=1,
                options={"T": 5, "decoder_widths": (16, 8), "units_per_block": 1})
    base.update(kw)
    return TrainConfig(**base)


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


def test_shipped_names_are_sparse_coding_with_params_T():
    """``sparse_coding_T{n}`` (the names committed suites use) builds what ``{ref: sparse_coding,
    params: {T: n}}`` builds: same name, weights and code fingerprints; one per shipped file."""
    import defenses.sparse_coding as sc
    from robust_bench_sc.plugins import DEFENSES, build_defense

    names = sorted(n for n in DEFENSES.names() if n.startswith("sparse_coding_T") and not n.endswith("_long"))
    assert names == sorted(f"sparse_coding_T{T}" for T in sc.SUPPORTED_T)
    for T in sc.SUPPORTED_T:
        alias, direct = build_defense(f"sparse_coding_T{T}"), build_defense("sparse_coding", {"T": T})
        assert alias.name == direct.name == f"sparse_coding_T{T}"
        assert (alias.fingerprint(), alias.code_fingerprint()) == (direct.fingerprint(), direct.code_fingerprint())
    assert build_defense("sparse_coding_T15").fingerprint() == "b8f05f2bfe373ca7"  # results/*: the shipped T15


def test_t15_long_ships_beside_t15_with_its_own_weights():
    """sparse_coding_T15_long (run_T15_long's best validation checkpoint, step 5200): the T = 15
    model with other weights, under its own name; T15.pt and every result naming it unchanged."""
    import torch

    from robust_bench_sc.data import load_test
    from robust_bench_sc.plugins import build_defense

    long, short = build_defense("sparse_coding_T15_long"), build_defense("sparse_coding_T15")
    assert long.name == "sparse_coding_T15_long" and long.fingerprint() == "67f99ba8172eb358"
    assert short.fingerprint() == "b8f05f2bfe373ca7" and long.code_fingerprint() != ""
    s = load_test(200)
    with torch.no_grad():
        right = [int((d(s.x[i:i + 100]).argmax(1) == s.y[i:i + 100]).sum()) for d in (long, short) for i in (0, 100)]
    assert right == [85, 83, 80, 81], right  # first 200 test images, 100 a batch: T15_long, then T15
