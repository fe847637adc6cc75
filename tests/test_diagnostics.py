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
from robust_bench_sc.diagnostics import indicators as ind
from robust_bench_sc.diagnostics.base import Outcome, indicator
from robust_bench_sc.diagnostics.run import PROVIDERS, DiagnosticRun, Records

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
    # a batch-dependent defense (the probe): after masking and randomness, before optimisation
    from types import SimpleNamespace

    from robust_bench_sc.probes import ProbeFindings

    found = ProbeFindings(n_images=8, randomised=False, randomised_declared=False, prediction_flip_frac=0.0,
                          gradient="ok", gradient_detail="", preprocess_differentiable=None, saturated=False,
                          saturated_frac=0.0, seconds=0.1, batch_dependent=True, batch_changed_frac=0.75,
                          batch_flip_frac=0.25)
    run = SimpleNamespace(probes=found, bpda_name=None, randomised=False)
    code, text = verdict([mk("a", FAIL, "optimisation")], run)  # type: ignore[arg-type]
    assert code == "batch_dependent" and text.startswith("batch-dependent predictions (6/8 probe images' logits "
                                                         "changed when run alone instead of in a batch of 8 (2/8 "
                                                         "changed prediction)): "), text
    assert verdict([mk("b", FAIL, "masking")], run)[0] == "gradient_masking"  # type: ignore[arg-type]
    assert verdict([mk("a", PASS, "masking")], SimpleNamespace(probes=None))[0] == "trustworthy"  # type: ignore[arg-type]


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
    assert "diagnostics: tiny (first 4 CIFAR-10 test images; clean" in " ".join(res.output.split())
    assert (tmp_path / "diagnostics.json").is_file() and (tmp_path / "diagnostics.md").is_file()
    bad = CliRunner().invoke(app, ["diagnose", f"{__file__}:tiny_defense", "--skip", "nonsense"])
    assert bad.exit_code == 2 and "unknown indicator" in bad.output
    bad = CliRunner().invoke(app, ["diagnose", f"{__file__}:tiny_defense", "--norm", "l1"])
    assert bad.exit_code == 2 and "--norm: linf or l2" in bad.output
    bad = CliRunner().invoke(app, ["diagnose", f"{__file__}:tiny_defense", "--norm", "l2", "--eps", "0.5",
                                   "--gradient-free", "random_search"])
    assert bad.exit_code == 2 and "'random_search' is linf only, the norm is 'l2'; use square" in bad.output


def test_config_refuses_what_diagnose_cannot_run():
    with pytest.raises(ValueError, match=r"^diagnostics norm 'l1': the plain evaluation is one of linf, l2$"):
        DiagnosticsConfig(norm="l1")
    with pytest.raises(ValueError, match=r"^diagnostics gradient_free 'zoo': one of auto, square, random_search, none$"):
        DiagnosticsConfig(gradient_free="zoo")
    cfg = DiagnosticsConfig(norm="l2", epsilon=0.5)
    cfg.gradient_free = "random_search"  # changed after construction: diagnose checks again, before any attack
    with pytest.raises(ValueError, match="'random_search' is linf only"):
        diagnose(Defense("tiny", classifier=TinyNet()), cfg)


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
    assert (cfg.dataset, cfg.data_dir, cfg.split) == (None, None, None)  # the default data: settings as before
    # a suite on other data: its diagnostics and binarization test read the same images as its attacks
    other = suite.model_copy(update={"data": suite.data.model_copy(update={"dataset": "npz", "root": "/d/x.npz",
                                                                            "split": "val"})})
    cfg = config_for_suite(other)
    assert (cfg.dataset, cfg.data_dir, cfg.split) == ("npz", "/d/x.npz", "val")
    assert other.data.reader_settings() == {"dataset": "npz", "data_dir": "/d/x.npz", "split": "val"}
    verdicts = run_suite_diagnostics(suite, tmp_path / "run", overrides=dict(
        steps=2, strong_steps=3, strong_restarts=1, sweep_steps=2, unconstrained_steps=2, queries=3,
        gradient_free="random_search", noise_draws=2))
    assert set(verdicts) == {"tiny"}
    assert (tmp_path / "run" / "diagnostics" / "tiny.json").is_file()
    assert (tmp_path / "run" / "diagnostics" / "tiny.md").is_file()


# --------------------------------------------------------------------------- each indicator on its own inputs


@pytest.fixture(scope="module")
def tiny_run() -> DiagnosticRun:
    torch.set_num_threads(1)
    return DiagnosticRun(tiny_defense(), _small(n_images=30, steps=5))  # 3 of 30 classified correctly


def _records(run: DiagnosticRun, robust: list[bool], **cols) -> Records:
    """Hand-made records over all N images of ``run`` (attacked = clean-correct)."""
    recs = []
    for j in range(run.n):
        r = {"index": int(run.idx[j]), "attacked": bool(run.correct[j]), "robust": robust[j],
             "fooled": bool(run.correct[j]) and not robust[j]}
        r.update({k: v[j] for k, v in cols.items()})
        recs.append(r)
    return Records(recs, torch.tensor(robust, dtype=torch.bool))


def test_every_indicator_declares_inputs_its_signature_takes():
    import inspect

    for name in INDICATORS.names():
        i = INDICATORS.get(name)
        assert list(inspect.signature(i.fn).parameters) == ["run", *i.needs]
        assert set(i.needs) <= set(PROVIDERS)
    assert INDICATORS.get("epsilon_monotonicity").needs == ("plain", "unconstrained")
    assert INDICATORS.get("probability_outputs").needs == ("clean_logits",)
    assert INDICATORS.get("unavailable_gradients").needs == ()
    with pytest.raises(TypeError, match="must take \\(run, plain\\)"):
        indicator("t_bad", "t", "t", "masking", needs=("plain",))(lambda run, clean_logits: Outcome(PASS, ""))
    with pytest.raises(ValueError, match="unknown input\\(s\\) cache; allowed: plain, clean_logits, unconstrained"):
        indicator("t_bad", "t", "t", "masking", needs=("cache",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="allowed: pass, warn, fail, skip"):
        Outcome("ok", "")  # type: ignore[arg-type]
    assert "t_bad" not in INDICATORS


def test_silent_success_and_incomplete_optimisation_read_only_the_plain_records(tiny_run):
    run = tiny_run
    n, att = run.n, run.correct.tolist()
    first = att.index(True)  # an attacked image
    robust = list(att)
    iterate = [0.0] * n
    iterate[first] = 1.0  # adversarial iterate, returned point not adversarial
    out = ind.silent_success(run, _records(run, robust, iterate_fooled=iterate))
    assert isinstance(out, Outcome) and out.flagged == [int(run.idx[first])]
    assert out.metrics == {"silent": 1, "attacked": sum(att)}
    assert out.status == WARN  # 1 < max(1, ⌈0.05·30⌉) = 2
    iterate[run.correct.tolist().index(True, first + 1)] = 1.0
    assert ind.silent_success(run, _records(run, robust, iterate_fooled=iterate)).status == FAIL
    # loss still rising in the last quarter on exactly one missed image: 3 → 3.5 after 0 → 3
    lf, l3, ll = [0.0] * n, [1.0] * n, [1.0] * n
    lf[first], l3[first], ll[first] = 0.0, 3.0, 3.5
    out = ind.incomplete_optimisation(run, _records(run, robust, loss_first=lf, loss_3q=l3, loss_last=ll))
    assert out.flagged == [int(run.idx[first])] and out.metrics["still_improving"] == 1
    assert out.metrics["unfooled"] == sum(att)
    assert out.status == (FAIL if 1 / sum(att) > 0.25 else PASS)


def test_unconstrained_and_probability_checks_on_given_inputs(tiny_run):
    run = tiny_run
    robust = [False] * run.n
    robust[3] = True
    out = ind.unconstrained_attack(run, _records(run, robust))
    assert out.status == WARN and out.flagged == [int(run.idx[3])] and out.metrics["robust_accuracy"] == 1 / 30
    robust[5:8] = [True] * 3  # 4/30 still robust at ε = the whole box: above the 10 % limit
    assert ind.unconstrained_attack(run, _records(run, robust)).status == FAIL
    assert ind.unconstrained_attack(run, _records(run, [False] * run.n)).status == PASS
    logits = run.logits(run.x)
    assert ind.probability_outputs(run, logits).status == PASS
    assert ind.probability_outputs(run, logits.softmax(1)).status == FAIL
    half = torch.full((run.n, 10), 0.5)
    out = ind.probability_outputs(run, half)
    assert out.status == WARN and out.metrics == {"in_unit": True, "sums_to_one": False}


def test_randomness_and_unstable_compare_the_given_clean_logits_with_new_passes(tiny_run):
    run = tiny_run
    logits = PROVIDERS["clean_logits"](run)
    assert torch.equal(logits, run.logits(run.x))
    out = ind.randomness(run, logits)
    assert out.status == PASS and out.flagged == [] and out.metrics["max_spread"] == 0.0
    shifted = logits.clone()
    shifted[4, 0] += 1.0  # as if the first pass had differed on image 4
    out = ind.randomness(run, shifted)
    assert out.status == FAIL and out.flagged == [int(run.idx[4])] and out.metrics["max_spread"] == pytest.approx(1.0)
    # a clean margin 100 away from what the net computes: image 4 is "unstable" under any noise
    moved = logits.clone()
    moved[4, int(run.y[4])] += 100.0
    base = ind.unstable_predictions(run, logits)
    out = ind.unstable_predictions(run, moved)
    assert int(run.idx[4]) in out.flagged and int(run.idx[4]) not in base.flagged
    assert out.metrics["max_rel_change"] >= 0.9 * 100 / (abs(float(moved[4, int(run.y[4])])) + 10)


def test_gain_checks_attack_exactly_the_images_the_given_plain_records_left(tiny_run):
    run = tiny_run
    none_left = ind.single_step_beats_iterative(run, _records(run, [False] * run.n))
    assert none_left.status == PASS and none_left.metrics == {"gained": 0} and none_left.flagged == []
    assert run.attack_seconds["fgsm"] >= 0
    # pretend the plain PGD fooled nothing: FGSM's own records decide the gain
    survivors = run.correct.tolist()
    out = ind.single_step_beats_iterative(run, _records(run, survivors))
    fgsm = run.attack("fgsm_check", run.pgd(name="diag_fgsm", steps=1, restarts=1, step_size=run.cfg.epsilon,
                                            random_start=False), subset=run.correct)
    fooled = run.correct & ~fgsm.robust
    assert out.metrics["gained"] == int(fooled.sum()) == len(out.flagged) > 0
    assert out.flagged == [int(i) for i in run.idx[fooled]]
    assert out.status == ind.gain_status(run, int(fooled.sum()))
    assert ind.bpda_eot_beats_plain(run, _records(run, survivors)).status == SKIP  # no preprocess, deterministic


def test_epsilon_curve_uses_the_given_plain_and_unconstrained_records(tiny_run):
    run = tiny_run
    c = run.cfg
    plain = _records(run, [False] * run.n)
    everything = _records(run, run.correct.tolist())  # "robust at ε = whole range": impossible
    out = ind.epsilon_monotonicity(run, plain, everything)
    assert out.status == FAIL and "increases with ε" in out.evidence
    curve = out.metrics["curve"]
    assert curve[f"{c.epsilon:.6g}"] == 0.0 and curve[f"{c.whole_range:.6g}"] == int(run.correct.sum()) / run.n == 0.1
    assert set(out.flagged) >= {int(i) for i in run.idx[run.correct]}
    honest = ind.epsilon_monotonicity(run, plain, _records(run, [False] * run.n))
    assert honest.metrics["curve"][f"{c.whole_range:.6g}"] == 0.0


def test_unavailable_gradients_needs_nothing_shared(tiny_run):
    out = ind.unavailable_gradients(tiny_run)
    assert out.status == PASS and out.flagged == [] and out.metrics["bad"] == 0 and "bpda" not in out.metrics
    q = ind.unavailable_gradients(DiagnosticRun(Defense("qt", classifier=TinyNet(), preprocess=Quantise()),
                                                _small(n_images=5)))
    assert q.status == FAIL and q.metrics["zero"] == 5 and q.metrics["bpda_bad"] == 0 and q.metrics["bpda_fixes"]
    assert q.flagged == list(range(5))  # the first 5 test images, all with a zero gradient through round()


class Gray(nn.Module):
    """Replaces every image by mid-gray: the output no longer depends on the input."""

    def forward(self, x):
        return torch.full_like(x, 0.5)


def test_transfer_failure_crafts_on_the_surrogate_and_checks_the_exact_defense(tiny_run):
    assert ind.transfer_failure(tiny_run).status == SKIP  # no preprocess, no surrogate
    cfg = _small(n_images=100, steps=5, epsilon=16 / 255)
    good = ind.transfer_failure(DiagnosticRun(Defense("qt", classifier=TinyNet(), preprocess=Quantise()), cfg))
    assert good.metrics["surrogate_fooled"] >= 10 and good.metrics["not_transferred"] == len(good.flagged)
    assert good.status == PASS  # ±16/255 survives round(8x)/8 well enough: identity is a fair stand-in
    # identity stands in for "replace the image by gray": nothing crafted on the surrogate transfers
    gray = DiagnosticRun(Defense("gray", classifier=TinyNet(), preprocess=Gray()), cfg)
    bad = ind.transfer_failure(gray)
    s = bad.metrics["surrogate_fooled"]
    assert s >= 1 and bad.metrics["not_transferred"] == s == len(bad.flagged)
    assert bad.status == FAIL and "poor approximation" in bad.evidence


def test_each_shared_input_is_computed_once_per_run(monkeypatch):
    from robust_bench_sc.diagnostics import run as run_mod

    calls: dict[str, int] = {}
    for name, fn in list(run_mod.PROVIDERS.items()):
        def counted(run, _fn=fn, _name=name):
            calls[_name] = calls.get(_name, 0) + 1
            return _fn(run)
        monkeypatch.setitem(run_mod.PROVIDERS, name, counted)
    rep = diagnose(tiny_defense(), _small(n_images=4))
    assert calls == {"plain": 1, "clean_logits": 1, "unconstrained": 1}
    assert {"plain_pgd", "unconstrained_pgd", "gradient_free", "strong_pgd", "fgsm"} <= set(rep.attack_seconds)
    only = diagnose(tiny_defense(), _small(n_images=4), only=["probability_outputs"])
    assert only.attack_seconds == {} and only.plain_robust_accuracy != only.plain_robust_accuracy  # NaN: no PGD


# --------------------------------------------------------------------------- random_search, an ordinary attack
def _rs_threat(**kw):
    from robust_bench_sc.config import validate_threat_model

    return validate_threat_model({"attack": "random_search", "name": "rs", "epsilon": "16/255", "n_queries": 30,
                                  **kw}, "test")


def test_random_search_runs_through_the_engine_and_is_rechecked(test_split):
    from robust_bench_sc.attacks.base import AttackContext
    from robust_bench_sc.attacks.random_search import random_search_linf
    from robust_bench_sc.evaluate import evaluate_threat, predict

    eps, cpu = 32 / 255, torch.device("cpu")
    masked = Defense("quantised_tiny", classifier=TinyNet(), preprocess=Quantise())
    x, y, idx = test_split.x[:100], test_split.y[:100], test_split.idx[:100]
    recs = evaluate_threat(masked, _rs_threat(epsilon=eps, n_queries=30), x, y, idx, AttackContext(masked, cpu, 0))
    attacked = [i for i, r in enumerate(recs) if r["attacked"]]
    assert len(attacked) >= 5
    for i in attacked:
        r = recs[i]
        assert r["linf"] <= eps * (1 + 1e-4) and r["flags"] in ("", "unchanged")
        assert r["claimed"] == r["fooled"]  # deterministic defense: its claim survives the re-check
        assert 1 <= r["queries"] <= 31 and (r["fooled"] or r["queries"] == 31)  # a fooled image stops early
    fooled = [i for i in attacked if recs[i]["fooled"]]
    assert len(fooled) >= 3  # masked gradients do not stop a gradient-free search
    # the engine's verdict is the defense's own prediction on what the search returns
    xa = random_search_linf(masked, x[attacked], y[attacked], eps, 30, 0, "cpu")
    pred = predict(masked, xa, 100, cpu)
    assert [recs[i]["adv_pred"] for i in attacked] == pred.tolist()
    assert fooled == [i for j, i in enumerate(attacked) if int(pred[j]) != int(y[i])]


def test_random_search_budget_violation_is_flagged_not_counted(test_split, monkeypatch):
    from robust_bench_sc.attacks import random_search as rs
    from robust_bench_sc.attacks.base import AttackContext
    from robust_bench_sc.evaluate import evaluate_threat

    real = rs.search

    def overshoot(model, x, y, eps, *a, **kw):  # a buggy search: twice the budget
        xa, margin, used = real(model, x, y, eps, *a, **kw)
        return (x.cpu() + 2 * eps * torch.sign(xa - x.cpu() + 1e-9)).clamp(0, 1), torch.ones_like(margin), used

    monkeypatch.setattr(rs, "search", overshoot)
    d = tiny_defense()
    x, y, idx = test_split.x[:6], test_split.y[:6], test_split.idx[:6]
    recs = evaluate_threat(d, _rs_threat(n_queries=3), x, y, idx, AttackContext(d, torch.device("cpu"), 0))
    attacked = [r for r in recs if r["attacked"]]
    assert attacked and all("norm_exceeded" in r["flags"].split(";") for r in attacked)
    assert all(r["linf"] == 0.0 and not r["fooled"] and r["robust"] for r in attacked)  # the clean image counts
    assert all("claim_mismatch" in r["flags"] for r in attacked)  # it claimed success on every image


def test_random_search_in_a_suite_yaml(tmp_path):
    from robust_bench_sc.config import load_suite
    from robust_bench_sc.runner import run_suite

    f = tmp_path / "s.yaml"
    f.write_text(f"name: rs\ndata: {{n_images: 4, chunk_size: 4}}\ndefenses:\n  - ref: '{__file__}:tiny_defense'\n"
                 "    name: tiny\nthreat_models:\n  - {name: rs, attack: random_search, epsilon: 8/255, n_queries: 5}\n")
    out = run_suite(load_suite(f), out=tmp_path / "run", show_progress=False)
    row = out.summary.set_index("threat_model").loc["rs"]
    assert 0.0 <= float(row["robust_accuracy"]) <= float(row["clean_accuracy"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(f.read_text().replace("epsilon: 8/255", "epsilon: 8/255, norm: l2"))
    with pytest.raises(Exception, match="bad.yaml.*norm"):
        load_suite(bad)
