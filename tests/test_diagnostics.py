"""Gradient-masking / attack-failure indicators on real images and real weights.

A quantising front end (``round(8x)/8``, zero gradient almost everywhere) in front of the
Madry ResNet-32 must be flagged; the Madry ResNet-32 itself must not be. Budgets are tiny
(a few images, a few steps) so the file runs in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from robust_bench_sc.defense import Capabilities, Defense
from robust_bench_sc.diagnostics import (FAIL, INDICATORS, PASS, SKIP, WARN, DiagnosticsConfig, IndicatorResult,
                                         diagnose, random_search_linf, report_markdown, save_report, verdict)

MASKING_CHECKS = ["unavailable_gradients", "unconstrained_attack", "bpda_eot_beats_plain", "single_step_beats_iterative",
                  "probability_outputs", "randomness"]


class Quantise(nn.Module):
    """Non-differentiable: zero gradient almost everywhere."""

    def forward(self, x):
        return torch.round(x * 8) / 8


class TinyNet(nn.Module):
    """A fixed random conv net (fast; logits, not probabilities)."""

    def __init__(self, softmax: bool = False, noise: float = 0.0):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 4, stride=4)
        self.fc = nn.Linear(8 * 8 * 8, 10)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3
        self.softmax, self.noise = softmax, noise

    def forward(self, x):
        if self.noise:
            x = x + self.noise * torch.randn_like(x)
        out = self.fc(torch.relu(self.conv(x)).flatten(1))
        return out.softmax(1) if self.softmax else out


def tiny_defense() -> Defense:
    return Defense("tiny", classifier=TinyNet())


def quantised_madry() -> Defense:
    from robust_bench_sc.plugins import build_defense

    madry = build_defense("madry_pgd_at")
    return Defense("quantised_madry", classifier=madry.classifier, preprocess=Quantise(),
                   description="Madry ResNet-32 behind round(8x)/8 (a gradient-masking toy)")


def _small(**kw) -> DiagnosticsConfig:
    base = dict(n_images=6, steps=4, sweep_steps=2, strong_steps=6, strong_restarts=1, unconstrained_steps=4,
                queries=10, noise_draws=3, random_passes=3, gradient_free="random_search")
    base.update(kw)
    return DiagnosticsConfig(**base)


def test_registry_has_the_indicators():
    names = set(INDICATORS.names())
    assert {"silent_success", "incomplete_optimisation", "transfer_failure", "unavailable_gradients",
            "unstable_predictions", "unconstrained_attack", "randomness", "probability_outputs",
            "gradient_free_beats_whitebox", "epsilon_monotonicity", "more_iterations",
            "single_step_beats_iterative", "bpda_eot_beats_plain"} <= names


def test_masking_defense_is_flagged(madry):
    masked = Defense("quantised_madry", classifier=madry.classifier, preprocess=Quantise())
    rep = diagnose(masked, _small(n_images=8, steps=5, unconstrained_steps=3), only=MASKING_CHECKS)
    st = {r.name: r for r in rep.indicators}
    assert st["unavailable_gradients"].status == FAIL
    assert len(st["unavailable_gradients"].flagged) == rep.n_images  # round() has zero gradient everywhere
    assert st["unavailable_gradients"].metrics["bpda_fixes"] is True
    assert st["unconstrained_attack"].status == FAIL
    assert st["bpda_eot_beats_plain"].status == FAIL
    assert st["probability_outputs"].status == PASS and st["randomness"].status == PASS
    assert rep.verdict_code == "gradient_masking"
    assert "bpda 'identity'" in rep.verdict


def test_undefended_madry_is_not_flagged(madry):
    rep = diagnose(madry, _small(), only=MASKING_CHECKS + ["silent_success"])
    st = {r.name: r.status for r in rep.indicators}
    assert st["unavailable_gradients"] == PASS
    assert st["unconstrained_attack"] == PASS
    assert st["bpda_eot_beats_plain"] == SKIP  # no preprocess, deterministic
    assert st["probability_outputs"] == PASS and st["randomness"] == PASS
    assert rep.verdict_code in ("trustworthy", "trustworthy_with_warnings", "attack_failure")
    assert 0.0 <= rep.plain_robust_accuracy <= rep.clean_accuracy


class DetachedQuantise(nn.Module):
    """Non-differentiable with a broken graph (as the sparse-coding top-T / ternary code)."""

    def forward(self, x):
        return (torch.round(x.detach() * 8) / 8)


def test_broken_graph_does_not_crash_plain_pgd_and_is_flagged(madry):
    broken = Defense("detached_madry", classifier=madry.classifier, preprocess=DetachedQuantise())
    rep = diagnose(broken, _small(n_images=6, steps=3, unconstrained_steps=2),
                   only=["unavailable_gradients", "unconstrained_attack", "bpda_eot_beats_plain"])
    st = {r.name: r for r in rep.indicators}
    assert st["unavailable_gradients"].status == FAIL and "graph broken" in st["unavailable_gradients"].evidence
    assert st["unconstrained_attack"].status == FAIL  # zero gradients: the attack cannot move
    assert rep.verdict_code == "gradient_masking"


def test_single_step_beating_a_crippled_iterative_attack_is_flagged(madry):
    # a "PGD" whose steps are 1/1000 of ε only keeps its random start; FGSM's one full
    # step of ε must then fool images it missed, and the check must say so
    crippled = _small(n_images=20, steps=2, step_size="epsilon/1000")
    rep = diagnose(madry, crippled, only=["single_step_beats_iterative"])
    r = rep.indicators[0]
    assert r.status == FAIL and r.metrics["gained"] >= 2 and len(r.flagged) == r.metrics["gained"]
    fair = diagnose(madry, _small(n_images=20, steps=10), only=["single_step_beats_iterative"]).indicators[0]
    assert fair.status == PASS and fair.metrics["gained"] <= 1


def test_softmax_and_undeclared_randomness_are_flagged():
    soft = Defense("soft", classifier=TinyNet(softmax=True))
    rep = diagnose(soft, _small(n_images=4), only=["probability_outputs"])
    assert rep.status_of("probability_outputs") == FAIL
    noisy = Defense("noisy", classifier=TinyNet(noise=0.05))
    rep = diagnose(noisy, _small(n_images=4), only=["randomness"])
    assert rep.status_of("randomness") == FAIL and rep.verdict_code == "randomness"
    declared = Defense("noisy", classifier=TinyNet(noise=0.05), capabilities=Capabilities(randomised=True))
    rep = diagnose(declared, _small(n_images=4), only=["randomness"])
    assert rep.status_of("randomness") == PASS


def test_gradient_free_beats_masked_whitebox():
    """The built-in random search finds what zero-gradient PGD cannot (fast tiny net)."""
    masked = Defense("quantised_tiny", classifier=TinyNet(), preprocess=Quantise())
    rep = diagnose(masked, _small(n_images=100, queries=50, epsilon=32 / 255), only=["gradient_free_beats_whitebox"])
    r = rep.indicators[0]
    assert r.status == FAIL, r.evidence
    assert r.metrics["gained"] == len(r.flagged) >= 10


def test_random_search_stays_in_budget(test_split):
    x, y = test_split.x[:4], test_split.y[:4]
    xa = random_search_linf(TinyNet(), x, y, 8 / 255, 5, 0, torch.device("cpu"))
    assert float((xa - x).abs().max()) <= 8 / 255 + 1e-6
    assert float(xa.min()) >= 0 and float(xa.max()) <= 1


def test_verdict_rules():
    mk = lambda n, s, c: IndicatorResult(n, n, "", c, s, "")  # noqa: E731
    assert verdict([mk("a", PASS, "masking")])[0] == "trustworthy"
    assert verdict([mk("a", WARN, "masking")])[0] == "trustworthy_with_warnings"
    assert verdict([mk("a", FAIL, "optimisation")])[0] == "attack_failure"
    assert verdict([mk("a", FAIL, "optimisation"), mk("b", FAIL, "masking")])[0] == "gradient_masking"


def test_full_run_writes_reports(tmp_path):
    rep = diagnose(tiny_defense(), _small(n_images=4))
    assert {r.name for r in rep.indicators} == set(INDICATORS.names())
    j, m = save_report(rep, tmp_path)
    blob = json.loads(j.read_text())
    assert blob["defense"] == "tiny" and blob["verdict"] == rep.verdict
    assert len(blob["indicators"]) == len(INDICATORS.names())
    assert "| indicator |" in m.read_text() and rep.verdict in report_markdown(rep)


def test_cli_diagnose(tmp_path):
    from typer.testing import CliRunner

    from robust_bench_sc.cli import app

    res = CliRunner().invoke(app, ["diagnose", f"{__file__}:tiny_defense", "--n-images", "4", "--steps", "3",
                                   "--strong-steps", "4", "--strong-restarts", "1", "--sweep-steps", "2",
                                   "--unconstrained-steps", "3", "--queries", "5", "--gradient-free",
                                   "random_search", "--noise-draws", "2", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "verdict:" in res.output
    assert (tmp_path / "diagnostics.json").is_file() and (tmp_path / "diagnostics.md").is_file()
    bad = CliRunner().invoke(app, ["diagnose", f"{__file__}:tiny_defense", "--skip", "nonsense"])
    assert bad.exit_code == 2 and "unknown indicator" in bad.output


def test_suite_diagnostics(tmp_path):
    from robust_bench_sc.config import load_suite
    from robust_bench_sc.diagnostics import config_for_suite, run_suite_diagnostics

    suite_file = tmp_path / "s.yaml"
    suite_file.write_text(
        f"name: diag\ndiagnostics: true\ndata:\n  n_images: 4\ndefenses:\n  - ref: '{__file__}:tiny_defense'\n"
        f"    name: tiny\nthreat_models:\n  - {{name: p, attack: pgd, norm: linf, epsilon: 4/255, steps: 2}}\n")
    suite = load_suite(suite_file)
    cfg = config_for_suite(suite)
    assert cfg.n_images == 4 and abs(cfg.epsilon - 4 / 255) < 1e-9
    verdicts = run_suite_diagnostics(suite, tmp_path / "run", overrides=dict(
        steps=2, strong_steps=3, strong_restarts=1, sweep_steps=2, unconstrained_steps=2, queries=3,
        gradient_free="random_search", noise_draws=2))
    assert set(verdicts) == {"tiny"}
    assert (tmp_path / "run" / "diagnostics" / "tiny.json").is_file()
    assert (tmp_path / "run" / "diagnostics" / "tiny.md").is_file()
