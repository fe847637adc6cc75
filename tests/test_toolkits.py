"""Toolkit backends (torchattacks, foolbox, ART, pyautoattack) on real test images with the
Madry PGD-AT ResNet-32: robust accuracy really drops, budgets are respected and actually
used, native and torchattacks agree, and a toolkit that cheats is caught by the re-check."""

from __future__ import annotations

import pytest
import torch

from robust_bench_sc.attacks.base import AttackContext
from robust_bench_sc.config import validate_threat_model
from robust_bench_sc.evaluate import evaluate_threat
from robust_bench_sc.yamlio import ConfigError

EPS = 8 / 255


@pytest.fixture(scope="module")
def correct(madry, test_split):
    """The first 40 test images Madry's model classifies correctly."""
    with torch.no_grad():
        ok = (madry(test_split.x).argmax(1) == test_split.y).nonzero().squeeze(1)[:40]
    return test_split.take(ok)


def evaluate(defense, raw, split, n=None, seed=0):
    tm = validate_threat_model(raw, "test")
    part = split if n is None else split.take(range(n))
    ctx = AttackContext(defense=defense, device=torch.device("cpu"), seed=seed)
    return evaluate_threat(defense, tm, part.x, part.y, part.idx, ctx)


def robust_acc(recs):
    return sum(r["robust"] for r in recs) / len(recs)


def pgd(backend, norm="linf", eps=EPS, steps=10, **kw):
    return {"attack": "pgd", "norm": norm, "epsilon": eps, "steps": steps, "step_size": "epsilon/4",
            "restarts": 1, "backend": backend, **kw}


@pytest.mark.parametrize("backend,loss", [("torchattacks", "ce"), ("foolbox", "ce"), ("foolbox", "cw"),
                                          ("art", "ce"), ("art", "cw")])
def test_linf_pgd_drops_accuracy_within_budget(madry, correct, backend, loss):
    recs = evaluate(madry, pgd(backend, loss=loss), correct, n=12)
    assert all(r["clean_correct"] for r in recs)
    assert robust_acc(recs) <= 0.75, "ε=8/255 PGD must fool a real share of Madry's correct images"
    assert not any(r["flags"] for r in recs)
    norms = [r["linf"] for r in recs]
    assert max(norms) <= EPS + 1e-6
    assert sum(n >= 0.95 * EPS for n in norms) >= len(norms) // 2, "the budget must actually be used"


@pytest.mark.parametrize("backend", ["torchattacks", "foolbox", "art"])
def test_linf_whole_range_fools_everything(madry, correct, backend):
    recs = evaluate(madry, pgd(backend, eps=1.0, steps=5), correct, n=6)
    assert robust_acc(recs) == 0.0


@pytest.mark.parametrize("backend", ["torchattacks", "foolbox", "art"])
def test_l2_pgd_uses_its_budget(madry, correct, backend):
    recs = evaluate(madry, pgd(backend, norm="l2", eps=0.6), correct, n=8)
    norms = [r["l2"] for r in recs if r["fooled"] is False]
    assert max(r["l2"] for r in recs) <= 0.6 * (1 + 1e-4) + 1e-5
    assert all(n >= 0.5 for n in norms), f"ℓ2 PGD stopped short of ε: {norms}"
    assert robust_acc(recs) < 1.0


def test_foolbox_sparse_l1_passes_steps_and_start(madry, correct):
    recs = evaluate(madry, pgd("foolbox", norm="l1", eps=30.0, steps=10), correct, n=6)
    assert max(r["l1"] for r in recs) <= 30 * (1 + 1e-4) + 1e-5
    assert min(r["l1"] for r in recs) > 5.0, "random start + 10 steps must move far inside the ℓ1 ball"
    assert robust_acc(recs) < 1.0


def test_art_l1_runs_and_stays_in_budget(madry, correct):
    # ART's ℓ1 step is weak (documented); only the budget is asserted
    recs = evaluate(madry, pgd("art", norm="l1", eps=30.0, steps=5), correct, n=4)
    assert max(r["l1"] for r in recs) <= 30 * (1 + 1e-4) + 1e-5


def test_native_and_torchattacks_agree(madry, correct):
    a = robust_acc(evaluate(madry, pgd("native"), correct))
    b = robust_acc(evaluate(madry, pgd("torchattacks"), correct))
    assert a < 0.8 and b < 0.8
    assert abs(a - b) <= 0.10, f"native {a:.2f} vs torchattacks {b:.2f} on the same {len(correct)} images"


def test_restarts_attack_only_survivors(madry, correct):
    recs = evaluate(madry, pgd("torchattacks", steps=3, restarts=3), correct, n=8)
    used = [r["restarts_used"] for r in recs]
    assert all(u == 3 for u, r in zip(used, recs) if r["robust"])
    assert all(r["image_steps"] == r["restarts_used"] * 3 for r in recs)


def test_out_of_budget_toolkit_point_is_flagged(madry, correct, monkeypatch):
    import torchattacks

    def cheat(self, images, labels):  # a "toolkit bug": twice the budget
        return (images + 2 * EPS * torch.sign(torch.randn_like(images))).clamp(0, 1)

    monkeypatch.setattr(torchattacks.PGD, "forward", cheat)
    recs = evaluate(madry, pgd("torchattacks"), correct, n=4)
    assert all("norm_exceeded" in r["flags"] for r in recs)
    assert all(r["robust"] and r["linf"] == 0.0 for r in recs), "evaluated at the clean point"


def test_foolbox_cw_minimum_norm(madry, correct):
    recs = evaluate(madry, {"attack": "cw", "backend": "foolbox", "steps": 30, "binary_search_steps": 3,
                            "initial_const": 0.1, "epsilon": 0.6}, correct, n=4)
    fooled = [r for r in recs if r["fooled"]]
    assert fooled, "CW must find some adversarial examples"
    assert all(0 < r["l2"] < 3.0 for r in fooled)
    assert all(r["claimed"] == r["fooled"] for r in recs)


def test_torchattacks_cw_fixed_constant(madry, correct):
    recs = evaluate(madry, {"attack": "cw", "backend": "torchattacks", "steps": 30, "binary_search_steps": 1,
                            "initial_const": 1.0}, correct, n=4)
    assert all(r["l2"] == 0.0 for r in recs if not r["fooled"])
    assert any(r["fooled"] for r in recs)


def test_boundary_from_closest_other_label(madry, correct):
    recs = evaluate(madry, {"attack": "boundary", "steps": 20, "init_pool": "test"}, correct, n=3)
    assert all(r["start_found"] == 1 for r in recs)
    assert all(r["fooled"] for r in recs), "Boundary keeps its iterates adversarial"
    assert all(r["l2"] <= r["start_l2"] + 1e-4 for r in recs)


def test_closest_other_prediction_picks_nearest_other_label():
    from robust_bench_sc.attacks.decision import closest_other_prediction

    pool = torch.zeros(4, 1, 1, 2)
    pool[:, 0, 0, 0] = torch.tensor([0.1, 0.2, 0.5, 0.9])
    pred = torch.tensor([3, 1, 1, 2])
    x = torch.zeros(1, 1, 1, 2)
    idx, dist = closest_other_prediction(x, torch.tensor([3]), pool, pred, block=3)
    assert int(idx[0]) == 1 and abs(float(dist[0]) - 0.2) < 1e-6


def test_zoo_selects_seeded_subset(madry, correct):
    raw = {"attack": "zoo", "n_samples": 2, "max_iter": 2, "nb_parallel": 32}
    recs = evaluate(madry, raw, correct, n=5)
    sel = [r["selected"] for r in recs]
    assert sum(sel) == 2
    assert all(r["l2"] == 0.0 and "unchanged" in r["flags"] for r in recs if not r["selected"])
    assert sel == [r["selected"] for r in evaluate(madry, raw, correct, n=5)], "same seed, same draw"
    # ZOO's finite differences: 2 × nb_parallel coordinates per iteration (plus a few loss checks)
    assert all(2 * 2 * 32 <= r["queries"] <= 2 * (2 * 32 + 1) + 4 for r in recs if r["selected"]), recs
    assert all(r["queries"] == 0 for r in recs if not r["selected"])


def test_square_within_budget(madry, correct):
    recs = evaluate(madry, {"attack": "square", "norm": "linf", "epsilon": EPS, "n_queries": 30}, correct, n=6)
    assert max(r["linf"] for r in recs) <= EPS + 1e-6
    assert not any("norm_exceeded" in r["flags"] for r in recs)


def test_autoattack_custom_apgd(madry, correct):
    recs = evaluate(madry, {"attack": "autoattack", "norm": "linf", "epsilon": EPS, "version": "custom",
                            "attacks_to_run": ["apgd-ce"]}, correct, n=8)
    assert robust_acc(recs) <= 0.75
    assert max(r["linf"] for r in recs) <= EPS + 1e-6
    assert not any(r["flags"] for r in recs if r["fooled"])


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["art", "foolbox"])
def test_hopskipjump(madry, correct, backend):
    recs = evaluate(madry, {"attack": "hsj", "backend": backend, "max_iter": 3, "max_eval": 200,
                            "init_eval": 20, "init_size": 50}, correct, n=3)
    assert any(r["fooled"] for r in recs)
    assert all(r["claimed"] == r["fooled"] for r in recs)


def test_schema_refuses_unsupported_toolkit_modes():
    with pytest.raises(ConfigError, match="cross-entropy"):
        validate_threat_model(pgd("torchattacks", loss="cw"), "t")
    with pytest.raises(ConfigError, match="binary_search_steps: 1"):
        validate_threat_model({"attack": "cw", "backend": "torchattacks"}, "t")
    with pytest.raises(ConfigError, match="dense"):
        validate_threat_model(pgd("foolbox", norm="l1", eps=30, l1_step="dense"), "t")


def test_autoattack_apgd_budgets_reach_pyautoattack(test_split):
    """apgd_iterations / apgd_restarts are passed to the reference APGD: a classifier that
    can never be fooled makes APGD spend its whole budget, counted in forward passes."""
    from torch import nn

    from robust_bench_sc import Defense

    class Unfoolable(nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            logits = torch.zeros(x.shape[0], 10, dtype=x.dtype)
            logits[:, 0] = 10.0
            return logits + 0.0 * x.flatten(1).sum(1, keepdim=True)

    x, y = test_split.x[:3], torch.zeros(3, dtype=torch.long)

    def calls(**budget):
        clf = Unfoolable()
        d = Defense(name="unfoolable", classifier=clf).eval()
        tm = validate_threat_model({"attack": "autoattack", "norm": "linf", "epsilon": EPS, "version": "custom",
                                    "attacks_to_run": ["apgd-ce"], **budget}, "test")
        recs = evaluate_threat(d, tm, x, y, test_split.idx[:3], AttackContext(d, torch.device("cpu"), 0))
        assert all(r["robust"] for r in recs)
        return clf.calls

    one, two = calls(apgd_iterations=4, apgd_restarts=1), calls(apgd_iterations=4, apgd_restarts=2)
    assert one < 20  # not the default 100 iterations
    assert two - one >= 4  # a second restart of 4 iterations
    assert calls(apgd_iterations=8, apgd_restarts=1) - one >= 4


def test_predicted_in_batches_is_one_pass():
    """The attacks' prediction helper: batches (moved to the device one at a time) give the
    one-pass argmax, in order, on the input's device."""
    from robust_bench_sc.predictions import predicted

    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 10))
    x = torch.randn(23, 3, 2, 2, generator=g)
    with torch.no_grad():
        ref = net(x).argmax(1)
    assert len(set(ref.tolist())) > 3  # a test of order needs different classes
    for b in (1, 4, 23, 100):
        out = predicted(net, x, b, torch.device("cpu"))
        assert torch.equal(out, ref) and out.device == x.device
    assert torch.equal(predicted(net, x), ref)
    assert predicted(net, x[:0], 5).shape == (0,)
    with pytest.raises(ValueError, match="batch_size must be ≥ 1, got 0"):
        predicted(net, x, 0)
