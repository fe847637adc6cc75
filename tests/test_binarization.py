"""The binarization test (robust_bench_sc/binarization.py) on tiny, real inputs.

A fixed random conv net on real CIFAR-10 images keeps every check to seconds: the readout
separates, a strong PGD finds the planted example (pass), the same net behind a
quantising preprocess attacked without BPDA fails the test and passes with BPDA identity,
and every input the test does not apply to gets its one-line reason. One check runs on the
real Madry ResNet-32 (feature split of the bundled model).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robust_bench_sc.binarization import (FAIL, PASS, BinarizationConfig, NotApplicable,
                                          TwoClassReadout, binarization_test, binarized_defense, fit_readout,
                                          report_markdown, resolve_threat, sample_points)
from robust_bench_sc.config import validate_threat_model
from robust_bench_sc.defense import Capabilities, Defense, NoFeatureSplit
from robust_bench_sc.stats import wilson_interval

EPS = 8 / 255


class Quantise(nn.Module):
    """round(8x)/8: zero gradient almost everywhere."""

    def forward(self, x):
        return torch.round(x * 8) / 8


class TinyNet(nn.Module):
    """Fixed random conv net with a 32-d penultimate layer and a final Linear (logits)."""

    def __init__(self, softmax: bool = False, linear: bool = True):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 4, stride=4)
        self.hidden = nn.Linear(8 * 8 * 8, 32)
        self.fc = nn.Linear(32, 10)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.2
        self.softmax, self.linear = softmax, linear

    def features(self, x):
        return torch.relu(self.hidden(torch.relu(self.conv(x)).flatten(1)))

    def forward(self, x):
        out = self.fc(self.features(x))
        return out.softmax(1) if self.softmax else out


class NoLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 10, 32)

    def forward(self, x):
        return self.conv(x).flatten(1)


def pgd(**kw):
    d = dict(attack="pgd", name="t_pgd", norm="linf", epsilon=EPS, steps=20, restarts=1, step_size="epsilon/4")
    d.update(kw)
    return validate_threat_model(d, "test")


def small(**kw) -> BinarizationConfig:
    base = dict(n_samples=4, max_images=200, n_inner=30)
    base.update(kw)
    return BinarizationConfig(**base)


def test_sampling_stays_in_the_ball_and_box(test_split):
    x = test_split.x[0]
    g = torch.Generator().manual_seed(0)
    for norm, eps in (("linf", EPS), ("l2", 0.5), ("l1", 10.0)):
        inner, target = sample_points(x, norm, eps, 50, 1.0, g)
        p = {"linf": float("inf"), "l2": 2, "l1": 1}[norm]
        dn = (inner - x).flatten(1).norm(p=p, dim=1)
        assert inner.shape == (50, *x.shape)
        assert float(dn.max()) <= eps * (1 + 1e-5) and float(dn.min()) > 0
        assert float(inner.min()) >= 0 and float(inner.max()) <= 1
        dt = float((target - x).flatten().norm(p=p))
        assert dt <= eps * (1 + 1e-5)
        if norm == "linf":  # a vertex of the cube: ε on every coordinate not clipped by the box
            assert dt == pytest.approx(eps, rel=1e-5)
            unclipped = ((x > EPS) & (x < 1 - EPS))
            assert torch.allclose((target - x).abs()[unclipped], torch.tensor(EPS), atol=1e-6)
    inner_half, _ = sample_points(x, "linf", EPS, 50, 0.5, g)
    assert float((inner_half - x).abs().max()) <= 0.5 * EPS + 1e-6


def test_readout_separates_and_folds_standardisation(test_split):
    net = TinyNet()
    x = test_split.x[3]
    inner, target = sample_points(x, "linf", EPS, 30, 1.0, torch.Generator().manual_seed(1))
    pts = torch.cat([x[None], inner, target[None]])
    with torch.no_grad():
        f = net.features(pts)
    labels = torch.zeros(32, dtype=torch.long)
    labels[-1] = 1
    lin = fit_readout(f, labels)
    with torch.no_grad():
        z = lin(f)
    pred = z.argmax(1)
    assert pred[0] == 0 and pred[-1] == 1
    assert int((pred[1:-1] == 0).sum()) == 30  # every inner point on the clean side
    assert torch.allclose(z[:, 0], -z[:, 1], atol=1e-5)  # rows ±w/2
    assert float(z[-1, 1] - z[-1, 0]) > 1.0  # a real margin, not a tie broken by rounding
    # padded to ten logits: classes 2..9 never win, the two-class ordering is kept
    full = TwoClassReadout(lin)(f)
    assert full.shape == (32, 10) and torch.equal(full.argmax(1), pred)
    assert float(full[:, 2:].max()) < float(full[:, :2].min()) - 1e3
    with pytest.raises(ValueError, match="both classes"):
        fit_readout(f, torch.zeros(32, dtype=torch.long))


def test_feature_split_of_the_resnet(madry, test_split):
    x = test_split.x[:3]
    split = madry.feature_split(x)
    assert split.readout is madry.classifier.linear and split.dim == 64
    with torch.no_grad():
        ref = madry.classifier(x)
        f = split.features(x)
        assert f.shape == (3, 64)
        assert torch.allclose(split.readout(f), ref, atol=1e-5)
        lin = nn.Linear(64, 2)
        swapped = split.with_readout(lin)
        assert torch.allclose(swapped(x), lin(f), atol=1e-5)
        assert torch.equal(madry.classifier(x), ref)  # the original classifier is untouched (hook removed)


def test_feature_split_declared_and_refused(test_split):
    x = test_split.x[:2]
    net = TinyNet()
    d = Defense("declared", classifier=net, features=nn.Sequential(net.conv, nn.ReLU(), nn.Flatten(), net.hidden,
                                                                    nn.ReLU()), readout=net.fc)
    split = d.feature_split(x)
    assert split.readout is net.fc and split.dim == 32
    with pytest.raises(NoFeatureSplit, match="not the classifier's final operation"):
        Defense("soft", classifier=TinyNet(softmax=True)).feature_split(x)
    with pytest.raises(NoFeatureSplit, match="has no nn.Linear"):
        Defense("conv", classifier=NoLinear()).feature_split(x)
    with pytest.raises(ValueError, match="both features and readout"):
        Defense("half", classifier=net, readout=net.fc)


def test_planted_example_found_by_a_strong_attack():
    rep = binarization_test(Defense("tiny", classifier=TinyNet()), pgd(steps=20), small())
    assert rep.status == PASS
    assert rep.n_samples == 4 and rep.n_testable + rep.n_untestable == 4 and rep.n_testable >= 3
    assert rep.n_passed == rep.n_testable and rep.pass_rate == 1.0
    lo, hi = wilson_interval(rep.n_passed, rep.n_testable)
    assert rep.ci95 == (round(lo, 2), round(hi, 2))
    for s in rep.samples:
        if s["testable"]:  # the engine's re-check: inside the ball, predicted adversarial (class 1)
            assert s["attack"]["linf"] <= EPS * (1 + 1e-4) and s["attack"]["adv_pred"] == 1
            assert s["attack"]["flags"] == ""
    assert "found the planted adversarial example on" in rep.evidence
    assert "PASS" in report_markdown(rep)


def test_masked_preprocess_fails_without_bpda_and_passes_with_identity():
    d = Defense("quantised_tiny", classifier=TinyNet(), preprocess=Quantise(),
                capabilities=Capabilities(differentiable=False))
    masked = binarization_test(d, pgd(steps=10), small())
    assert masked.status == FAIL
    assert masked.n_testable >= 3 and masked.n_passed == 0 and masked.pass_rate == 0.0
    assert sorted(masked.failed_indices) == sorted(s["index"] for s in masked.samples if s["testable"])
    bpda = binarization_test(d, pgd(steps=10, bpda="identity"), small())
    assert bpda.status == PASS and bpda.n_passed == bpda.n_testable >= 3
    # same images, same readouts: only the attack's gradient differs
    assert bpda.tested_indices == masked.tested_indices
    assert [s["target_margin"] for s in bpda.samples] == [s["target_margin"] for s in masked.samples]


def test_gradient_free_random_search_passes_where_masked_pgd_fails():
    """``attack: random_search`` is an ordinary ball attack: the test applies to it, and a
    search that never uses gradients finds the planted example behind round(8x)/8."""
    d = Defense("quantised_tiny", classifier=TinyNet(), preprocess=Quantise(),
                capabilities=Capabilities(differentiable=False))
    rs = validate_threat_model({"attack": "random_search", "name": "t_rs", "epsilon": EPS, "n_queries": 100}, "test")
    rep = binarization_test(d, rs, small())
    assert rep.status == PASS and rep.n_passed == rep.n_testable >= 3, rep.evidence
    assert "random_search:native" in rep.evidence
    for s in rep.samples:
        if s["testable"]:
            assert s["attack"]["linf"] <= EPS * (1 + 1e-4) and s["attack"]["flags"] == ""
    assert binarization_test(d, pgd(steps=10), small()).status == FAIL


def test_binarized_network_keeps_preprocess_and_stand_ins(test_split):
    d = Defense("q", classifier=TinyNet(), preprocess=Quantise(), bpda={"soft": nn.Identity()})
    split = d.feature_split(Quantise()(test_split.x[:2]))
    b = binarized_defense(d, split, nn.Linear(32, 2))
    assert b.preprocess is d.preprocess and b.bpda_names() == ["identity", "soft"]
    x = test_split.x[:2].clone().requires_grad_(True)
    b.attack_model(bpda="identity")(x)[:, 1].sum().backward()
    assert float(x.grad.abs().sum()) > 0  # BPDA gives a gradient through round()
    x2 = test_split.x[:2].clone().requires_grad_(True)
    out = b.attack_model()(x2)[:, 1].sum()
    g = torch.autograd.grad(out, x2, allow_unused=True)[0]
    assert g is None or float(g.abs().sum()) == 0  # without BPDA: none


@pytest.mark.parametrize("threat, why", [
    (dict(attack="boundary", name="b"), "minimum-norm decision-based attack with no ε-ball"),
    (dict(attack="hsj", name="h"), "no ε-ball"),
    (dict(attack="zoo", name="z"), "no ε-ball"),
    (dict(attack="none", name="c"), "runs no attack"),
])
def test_not_applicable_threat_models(threat, why):
    tm = validate_threat_model(threat, "test")
    with pytest.raises(NotApplicable, match=why) as exc:
        binarization_test(Defense("tiny", classifier=TinyNet()), tm, small())
    assert "\n" not in str(exc.value)


def test_not_applicable_eps_zero_randomised_no_linear():
    with pytest.raises(NotApplicable, match="ε = 0: the ε-ball is the clean point alone") as exc:
        resolve_threat("linf_pgd_ce", ["epsilon=0"])
    assert "\n" not in str(exc.value)
    rnd = Defense("noisy", classifier=TinyNet(), capabilities=Capabilities(randomised=True))
    with pytest.raises(NotApplicable, match="randomised and threat model 't_pgd' has eot: 1"):
        binarization_test(rnd, pgd(), small())
    with pytest.raises(NotApplicable, match="has no nn.Linear"):
        binarization_test(Defense("conv", classifier=NoLinear()), pgd(), small())
    with pytest.raises(ValueError, match="inner_radius must be in"):
        binarization_test(Defense("tiny", classifier=TinyNet()), pgd(), small(inner_radius=0))


def test_randomised_defense_with_eot_runs():
    class Noisy(TinyNet):
        def forward(self, x):
            return super().forward(x + 0.002 * torch.randn_like(x))

    rnd = Defense("noisy", classifier=Noisy(), capabilities=Capabilities(randomised=True))
    rep = binarization_test(rnd, pgd(eot=2, recheck=2, steps=10), small(n_samples=2))
    assert rep.status == PASS and rep.n_samples == 2 and rep.n_testable == 2
    assert rep.n_passed == 2  # a mild noise does not hide the planted example from EOT-PGD
    assert "eot 2" in rep.evidence


def test_cli_one_line_reasons(tmp_path):
    from typer.testing import CliRunner

    from robust_bench_sc.cli import app

    r = CliRunner().invoke(app, ["diagnose", "madry_pgd_at", "--active", "--threat", "boundary"])
    assert r.exit_code == 3 and "no ε-ball" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["diagnose", "madry_pgd_at", "--active", "--set", "epsilon=0"])
    assert r.exit_code == 3 and "ε = 0" in r.output
    r = CliRunner().invoke(app, ["diagnose", "madry_pgd_at", "--active", "--threat", "linf_pgd_cx"])
    assert r.exit_code == 1 and "did you mean" in r.output


def tiny_defense() -> Defense:
    """Plug-in factory for the suite test."""
    return Defense("tiny", classifier=TinyNet())


def test_constant_features_are_untestable_never_a_pass():
    net = TinyNet()
    with torch.no_grad():
        net.hidden.weight.zero_()  # features = relu(bias): the same for every input
    rep = binarization_test(Defense("flat", classifier=net), pgd(steps=5), small(n_samples=3))
    assert rep.n_untestable == 3 and rep.n_testable == 0 and rep.n_passed == 0
    assert rep.status == "not_applicable" and rep.pass_rate is None and rep.ci95 is None
    assert all(s["passed"] is None and "does not separate" in s["reason"] for s in rep.samples)


def test_suite_option_diagnostics_active(tmp_path):
    import json

    from robust_bench_sc.config import load_suite
    from robust_bench_sc.diagnostics import run_suite_diagnostics

    suite_file = tmp_path / "s.yaml"
    suite_file.write_text(
        "name: bt\nseed: 0\ndata: {n_images: 3, chunk_size: 3}\ndiagnostics: active\n"
        f"defenses: ['{__file__}:tiny_defense']\n"
        "threat_models:\n  - {attack: pgd, name: p, norm: linf, epsilon: 8/255, steps: 10, step_size: epsilon/4}\n"
        "  - boundary\n")
    suite = load_suite(suite_file)
    assert suite.diagnostics == "active"
    out = run_suite_diagnostics(suite, tmp_path / "run")
    (folder,) = (tmp_path / "run" / "diagnostics" / "binarization").iterdir()  # <safe defense label>/
    rep = json.loads((folder / "p.json").read_text())
    assert rep["status"] == "pass" and rep["n_samples"] == 3 and rep["n_passed"] == rep["n_testable"] >= 2
    assert "no ε-ball" in (folder / "boundary.md").read_text() and not (folder / "boundary.json").exists()
    assert sorted(p.name for p in (tmp_path / "run" / "diagnostics").iterdir()) == ["binarization"]  # no passive
    assert sorted(k.split(" × ")[1] for k in out) == ["boundary", "p"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(suite_file.read_text().replace("diagnostics: active", "diagnostics: activ"))
    from robust_bench_sc.yamlio import ConfigError

    with pytest.raises(ConfigError, match="diagnostics"):
        load_suite(bad)
