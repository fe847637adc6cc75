"""`scbench audit`: the cascade the probes choose, the verdict, and the audit of each archetype
of defenses/archetypes against a tailored attack written here (the truth).

Default tests: the planning and verdict rules on synthetic probe findings, and one real audit
(the quantiser inside the classifier: no gradient, no abort) on 4 images. The archetype-by-
archetype comparisons run a few minutes each on a CPU: ``@pytest.mark.slow``.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from robust_bench_sc.audit import (BUDGETS, GRADIENT_MEMBERS, AuditError, CascadePlan, attack_gradient, audit,
                                   cascade_outcome, plan_cascade, verdict)
from robust_bench_sc.data import load_test
from robust_bench_sc.plugins import build_defense
from robust_bench_sc.probes import ProbeFindings

EPS = 8 / 255
TINY = replace(BUDGETS["quick"], apgd_iterations=10, eot=3, recheck=2, square_queries=50, square_eot=2,
               transfer_steps=10, indicators=False, binarization=False)


def findings(**kw) -> ProbeFindings:
    d = dict(n_images=8, randomised=False, randomised_declared=False, prediction_flip_frac=0.0, gradient="ok",
             gradient_detail="non-zero", preprocess_differentiable=None, saturated=False, saturated_frac=0.0,
             seconds=0.1)
    d.update(kw)
    return ProbeFindings(**d)


@pytest.fixture(scope="module")
def madry():
    return build_defense("defenses.archetypes:madry")


# --------------------------------------------------------------------------- planning rules
def test_plan_honest_defense_runs_apgd_then_transfer_then_square(madry):
    plan = plan_cascade(madry, findings(), BUDGETS["standard"])
    names = [m["name"] for m in plan.members]
    assert names == ["apgd-ce", "apgd-dlr", "apgd-t", "transfer:madry_pgd_at", "square"]
    assert all(m.get("eot", 1) == 1 for m in plan.members) and not plan.skipped
    sq = plan.members[-1]
    assert sq["n_queries"] == 5000 and sq["rescale_schedule"] is False  # AutoAttack's own schedule at 5000
    assert plan.members[0]["apgd_iterations"] == 100


def test_plan_and_backend_fit_datasets_with_few_classes(madry):
    """APGD-T tries at most n_classes - 1 targets (pyautoattack's 9 indexed past 5 logits:
    IndexError, measured on a 5-class npz); with 2 classes the DLR loss (a third logit) is
    not applicable and only APGD-CE runs, with the reason."""
    from torch import nn

    from robust_bench_sc.attacks.base import AttackContext
    from robust_bench_sc.config import validate_threat_model
    from robust_bench_sc.defense import module_defense
    from robust_bench_sc.evaluate import evaluate_threat

    five = plan_cascade(madry, findings(), BUDGETS["standard"], surrogates_fit=False, n_classes=5)
    assert [m["name"] for m in five.members] == ["apgd-ce", "apgd-dlr", "apgd-t", "square"]
    assert "over the 4 most likely other classes" in five.reasons["apgd-t"][0]
    two = plan_cascade(madry, findings(), BUDGETS["standard"], surrogates_fit=False, n_classes=2)
    assert [m["name"] for m in two.members] == ["apgd-ce", "square"]
    assert {s["attack"] for s in two.skipped if "3 or more classes" in s["reason"]} == {"apgd-dlr", "apgd-t"}
    torch.manual_seed(0)
    net = module_defense(nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)), "lin5", "5 classes").eval()
    x, y = torch.rand(6, 3, 4, 4), torch.arange(6) % 5
    t = validate_threat_model({"attack": "autoattack", "version": "custom", "attacks_to_run": ["apgd-t"],
                               "norm": "linf", "epsilon": 0.5, "apgd_iterations": 5}, "test")
    recs = evaluate_threat(net, t, x, y, torch.arange(6), AttackContext(net, torch.device("cpu"), 0, n_classes=5))
    assert not any(r.get("attack_error") for r in recs), recs[0].get("attack_error")
    assert sum(r["robust"] for r in recs) < sum(r["clean_correct"] for r in recs)  # ε 0.5 fools a linear model


def test_plan_saturated_puts_dlr_first(madry):
    plan = plan_cascade(madry, findings(saturated=True, saturated_frac=1.0), BUDGETS["standard"])
    assert [m["name"] for m in plan.members][:2] == ["apgd-dlr", "apgd-ce"]
    assert "saturated" in plan.reasons["apgd-dlr"][0]


def test_plan_probabilities_put_dlr_first_and_the_verdict_says_so(madry):
    plan = plan_cascade(madry, findings(probabilities=True, probabilities_frac=1.0), BUDGETS["standard"])
    assert [m["name"] for m in plan.members][:2] == ["apgd-dlr", "apgd-ce"]
    assert "outputs are probabilities" in plan.reasons["apgd-dlr"][0]
    honest = cascade_outcome(_records(["apgd-dlr"] * 6 + [""] * 4), [*GRADIENT_MEMBERS, "square"])
    v = verdict(findings(probabilities=True, probabilities_frac=1.0), plan, honest, None, None)
    assert v["code"] == "gradient_masking" and "outputs are probabilities, not logits" in v["text"]
    assert "drop the final softmax" in v["text"]
    # without a gradient: the BPDA transfer's PGD uses the margin loss
    plan = plan_cascade(madry, findings(probabilities=True, probabilities_frac=1.0, gradient="missing"),
                        BUDGETS["standard"])
    assert plan.members[0]["name"].startswith("bpda-transfer") and plan.members[0]["craft"]["loss"] == "cw"


def test_plan_randomised_uses_eot_and_recheck_everywhere(madry):
    plan = plan_cascade(madry, findings(randomised=True, prediction_flip_frac=0.25), BUDGETS["standard"])
    grad = [m for m in plan.members if m["name"] in GRADIENT_MEMBERS]
    assert [m["name"] for m in grad] == ["apgd-ce", "apgd-dlr"]  # AutoAttack's rand version: no APGD-T
    assert plan.skipped[0]["attack"] == "apgd-t" and "rand version" in plan.skipped[0]["reason"]
    assert all(m["eot"] == 20 and m["recheck"] == 5 for m in grad)
    assert all(m["recheck"] == 5 for m in plan.members)
    assert any("not declared" in r for r in plan.reasons["apgd-ce"])


def test_plan_without_gradient_leaves_gradient_attacks_out_with_the_reason(madry):
    plan = plan_cascade(madry, findings(gradient="missing", gradient_detail="graph broken"), BUDGETS["standard"],
                        gradient=("missing", "graph broken"))
    assert [s["attack"] for s in plan.skipped] == list(GRADIENT_MEMBERS)
    assert all("not applicable (no gradient)" in s["reason"] for s in plan.skipped)
    assert [m["name"] for m in plan.members] == ["bpda-transfer:madry_pgd_at", "transfer:madry_pgd_at",
                                                 "transfer:trades", "square"]
    bpda = plan.members[0]  # the defense's forward, the surrogate's gradient
    assert bpda["craft_forward"] == "defense" and bpda["craft"]["keep_adversarial_iterate"] is True
    # a rescaled Square schedule whenever the budget is not AutoAttack's 5000 queries
    assert plan_cascade(madry, findings(), replace(BUDGETS["standard"], square_queries=1000)).members[-1][
        "rescale_schedule"] is True


def test_plan_with_bpda_runs_the_targeted_apgd_after_square():
    """Through a BPDA stand-in the gradient is an approximation, so the costly targeted APGD
    (9 target classes) runs last, on what Square left: on the sparse-coding frontend (T = 15)
    the committed run has APGD at 37.7 % and Square at 0.6 % of 1000 images."""
    filtered = build_defense("defenses.archetypes:median_filter")  # a preprocess in front, as on T15
    plan = plan_cascade(filtered, findings(preprocess_differentiable=False), BUDGETS["standard"], bpda="auto")
    assert [m["name"] for m in plan.members] == ["apgd-ce", "apgd-dlr", "transfer:madry_pgd_at", "square", "apgd-t"]
    assert all(m["bpda"] == "auto" for m in plan.members if m["name"] in GRADIENT_MEMBERS)
    assert plan.reasons["apgd-t"][0].startswith("last, after Square: the gradient attacks follow the BPDA stand-in")
    # exact gradients (no BPDA): AutoAttack's order stands
    plan = plan_cascade(filtered, findings(preprocess_differentiable=True), BUDGETS["standard"], bpda=None)
    assert [m["name"] for m in plan.members] == ["apgd-ce", "apgd-dlr", "apgd-t", "transfer:madry_pgd_at", "square"]


def test_gradient_through_the_quantiser_is_missing_and_through_madry_ok(madry):
    s = load_test(2)
    q = build_defense("defenses.archetypes:quantised_classifier")
    assert attack_gradient(q, None, s.x, s.y)[0] == "missing"
    assert attack_gradient(madry, None, s.x, s.y)[0] == "ok"


# --------------------------------------------------------------------------- verdict rules
def _records(fooled_by: list[str]) -> list[dict]:
    return [{"index": i, "clean_correct": f != "misclassified", "robust": f == "", "fooled_by": "" if f ==
             "misclassified" else f} for i, f in enumerate(fooled_by)]


def _plan(gradient=True, randomised=False, bpda=None) -> CascadePlan:
    names = [*(GRADIENT_MEMBERS if gradient else ()), "transfer:madry_pgd_at", "square"]
    return CascadePlan(members=[{"name": n} for n in names], reasons={}, skipped=[], randomised=randomised,
                       bpda=bpda, gradient_attacks=gradient, eot=20 if randomised else 1)


def test_verdict_on_a_missing_gradient_says_whether_bpda_already_handled_it():
    """A declared non-differentiable preprocess (shattered gradients) attacked through a usable
    stand-in: the finding stays (the exact gradient is masked), its remedy says the audit
    applied it; a break the audit could not route around names what to do."""
    honest = cascade_outcome(_records(["apgd-ce"] * 6 + [""] * 4), [*GRADIENT_MEMBERS, "transfer:madry_pgd_at",
                                                                      "square"])
    missing = findings(gradient="zero", gradient_detail="the gradient is zero on 100% of 8 images",
                       preprocess_differentiable=False)
    handled = verdict(missing, _plan(bpda="auto"), honest, None, None)
    f = next(f for f in handled["findings"] if f["problem"].startswith("gradient zero through the exact defense"))
    assert f["status"] == "fail" and "shattered gradients" in f["problem"]
    assert f["remedy"].startswith("applied here: the gradient attacks followed the BPDA stand-in (bpda auto)")
    broken = verdict(findings(gradient="missing", gradient_detail="x"), _plan(gradient=False), honest, None, None)
    f = next(f for f in broken["findings"] if f["problem"].startswith("gradient missing through the exact defense"))
    assert f["remedy"].startswith("BPDA for a non-differentiable preprocess") and "shattered" not in f["problem"]
    assert handled["code"] == broken["code"] == "gradient_masking"


def test_cascade_outcome_counts_each_attack_on_the_images_it_ran_on():
    recs = _records(["apgd-ce", "apgd-ce", "", "square", "misclassified", ""])
    out = cascade_outcome(recs, [*GRADIENT_MEMBERS, "transfer:madry_pgd_at", "square"])
    per = {m["name"]: m for m in out["per_attack"]}
    assert (per["apgd-ce"]["ran_on"], per["apgd-ce"]["fooled"]) == (5, 2)
    assert (per["square"]["ran_on"], per["square"]["fooled"], per["square"]["robust_accuracy"]) == (3, 1, 66.67)
    assert out["worst_case"]["robust"] == 2 and out["worst_case"]["robust_accuracy"] == pytest.approx(33.33)
    lo, hi = out["worst_case"]["ci95"]
    assert lo < 33.33 < hi
    assert out["fooled_by"]["3"] == "square" and out["fooled_by"]["4"] == "misclassified"


def test_cascade_outcome_expectation_counts_a_misclassified_image_as_robust_on_no_draw():
    """On a randomised defense the worst case's records carry robust_frac, except a clean-
    misclassified image's (its record is the clean one): it counts 0, not "no expectation"."""
    recs = _records(["apgd-ce", "", "", "misclassified"])
    for r, frac in zip(recs, (0.0, 1.0, 2 / 3, None)):
        if frac is not None:
            r["robust_frac"] = frac
    out = cascade_outcome(recs, [*GRADIENT_MEMBERS, "square"])
    assert out["worst_case"]["robust"] == 2
    assert out["worst_case"]["expected_robust_accuracy"] == pytest.approx(100 * (1 + 2 / 3) / 4, abs=0.01)
    # a deterministic defense (no robust_frac anywhere): no expectation
    assert cascade_outcome(_records(["apgd-ce", "", "misclassified"]), ["apgd-ce"])["worst_case"][
        "expected_robust_accuracy"] is None


def test_verdict_honest_is_trustworthy_and_square_wins_mean_masking():
    honest = cascade_outcome(_records(["apgd-ce"] * 6 + [""] * 4), [*GRADIENT_MEMBERS, "square"])
    v = verdict(findings(), _plan(), honest, None, None)
    assert v["code"] == "trustworthy" and "masking" not in v["text"]
    masked = cascade_outcome(_records(["square"] * 5 + ["apgd-ce"] + [""] * 4), [*GRADIENT_MEMBERS, "square"])
    v = verdict(findings(), _plan(), masked, None, None)
    assert v["code"] == "gradient_masking"
    assert "the worst case comes from square" in v["text"] and "gradients are masked" in v["text"]
    assert "images that apgd-ce, apgd-dlr and apgd-t left robust" in v["text"]
    # through a BPDA stand-in APGD-T runs after Square: the text names only those that ran before
    late_t = cascade_outcome(_records(["square"] * 5 + ["apgd-ce"] + [""] * 4),
                             ["apgd-ce", "apgd-dlr", "square", "apgd-t"])
    v = verdict(findings(), _plan(), late_t, None, None)
    assert "images that apgd-ce and apgd-dlr left robust" in v["text"], v["text"]


def test_verdict_never_trustworthy_while_a_probe_or_indicator_fails():
    honest = cascade_outcome(_records(["apgd-ce"] * 6 + [""] * 4), [*GRADIENT_MEMBERS, "square"])
    v = verdict(findings(randomised=True, prediction_flip_frac=0.5), _plan(randomised=True), honest, None, None)
    assert v["code"] != "trustworthy" and "declare randomised=True" in v["text"]
    v = verdict(findings(randomised=True, outputs_differ=False, draws_random=True), _plan(randomised=True), honest,
                None, None)
    assert v["code"] == "gradient_masking" and "each pass draws random numbers" in v["text"]
    v = verdict(findings(saturated=True, saturated_frac=1.0), _plan(), honest, None, {"status": "pass",
                                                                                       "evidence": "8/8"})
    assert v["code"] == "gradient_masking" and v["blind_spots"] and "saturated" in v["blind_spots"][0]
    ind = {"indicators": [{"name": "unavailable_gradients", "status": "fail", "evidence": "x", "category": "masking"}]}
    assert verdict(findings(), _plan(), honest, ind, None)["code"] == "gradient_masking"
    assert verdict(findings(), _plan(), honest, {"error": "boom"}, None)["code"] != "trustworthy"


def test_verdict_batch_dependent_predictions_are_never_trustworthy():
    honest = cascade_outcome(_records(["apgd-ce"] * 6 + [""] * 4), [*GRADIENT_MEMBERS, "square"])
    v = verdict(findings(batch_dependent=True, batch_changed_frac=1.0, batch_flip_frac=0.75), _plan(), honest,
                None, None)
    assert v["code"] == "batch_dependent", v["code"]
    assert v["text"].startswith("worst case 40.0% [16.8, 68.7]; batch-dependent predictions: an image's "
                                "prediction depends on its batch-mates: 8/8 probe images' logits changed when run alone "
                                "instead of in a batch of 8 (6/8 changed prediction), so the robust accuracy"), v["text"]
    assert "make each image's prediction independent of its batch" in v["text"]
    # masking outranks it; a defense not found batch-dependent (or not measured: None) is untouched
    v = verdict(findings(batch_dependent=True, saturated=True, saturated_frac=1.0), _plan(), honest, None, None)
    assert v["code"] == "gradient_masking" and "depends on its batch-mates" in v["text"]
    for measured in (False, None):
        assert verdict(findings(batch_dependent=measured), _plan(), honest, None, None)["code"] == "trustworthy"


def test_verdict_clean_accuracy_at_chance_says_check_the_inputs():
    """2/10 right with 10 classes is what guessing gives (p = 0.26): no robust accuracy means anything."""
    at_chance = cascade_outcome(_records(["misclassified"] * 8 + ["apgd-ce", ""]), [*GRADIENT_MEMBERS, "square"])
    v = verdict(findings(), _plan(), at_chance, None, None)
    assert v["code"] == "chance_level"
    assert v["text"].startswith("worst case 10.0% [1.8, 40.4]; clean accuracy at chance: clean accuracy 20.0% (2/10) "
                                "is not above chance (1/10; one-sided binomial test p = 0.26)"), v["text"]
    assert "scbench feeds float images in [0, 1], NCHW, RGB" in v["text"]
    # 4/10 is still not above chance at 1 % (p = 0.013), 5/10 is (p = 0.0016); with 2 classes 8/10 is not (p = 0.055)
    four = cascade_outcome(_records(["misclassified"] * 6 + ["apgd-ce"] * 4), [*GRADIENT_MEMBERS, "square"])
    five = cascade_outcome(_records(["misclassified"] * 5 + ["apgd-ce"] * 5), [*GRADIENT_MEMBERS, "square"])
    assert verdict(findings(), _plan(), four, None, None)["code"] == "chance_level"
    assert verdict(findings(), _plan(), five, None, None)["code"] == "trustworthy"
    eight = cascade_outcome(_records(["misclassified"] * 2 + ["apgd-ce"] * 8), [*GRADIENT_MEMBERS, "square"])
    assert verdict(findings(), _plan(), eight, None, None, n_classes=2)["code"] == "chance_level"
    assert verdict(findings(), _plan(), eight, None, None, n_classes=10)["code"] == "trustworthy"


def test_audit_of_a_model_fed_the_wrong_input_range_says_so(tmp_path):
    """A user's model trained on [0, 255] inputs, handed [0, 1] images: near-black inputs, chance-
    level accuracy, and (before this check) a plausible 0 % robust accuracy, 'trustworthy'."""
    f = tmp_path / "mine.py"
    f.write_text("from defenses.archetypes import _madry_net\nfrom torch import nn\n\n"
                 "class Expects255(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                 "        self.net = _madry_net()\n\n    def forward(self, x):\n        return self.net(x / 255.0)\n\n"
                 "def make():\n    return Expects255()\n")
    card = audit(f"{f}:make", n_images=20, out=tmp_path / "run", budget=TINY)
    assert card["clean_accuracy"] <= 20.0, card["clean_accuracy"]
    assert card["verdict"]["code"] == "chance_level", card["verdict"]["text"]
    assert "check what the defense expects" in card["verdict"]["text"]


def test_a_masking_indicator_is_moot_where_the_gradient_attacks_fooled_every_image():
    """results/audit_1000/natural: APGD-CE fooled all 1000 images of the undefended model and
    unstable_predictions failed (its margins are fragile); that is no gradient masking."""
    ind = {"indicators": [{"name": "unstable_predictions", "status": "fail", "evidence": "9/50", "category": "masking"}]}
    everything = cascade_outcome(_records(["apgd-ce"] * 8 + ["misclassified"] * 2), [*GRADIENT_MEMBERS, "square"])
    v = verdict(findings(), _plan(), everything, ind, None)
    assert v["code"] == "trustworthy_with_warnings" and "moot" in v["text"], v["text"]
    one_left = cascade_outcome(_records(["apgd-ce"] * 7 + [""] + ["misclassified"] * 2), [*GRADIENT_MEMBERS, "square"])
    assert verdict(findings(), _plan(), one_left, ind, None)["code"] == "gradient_masking"
    by_square = cascade_outcome(_records(["apgd-ce"] * 7 + ["square"] + ["misclassified"] * 2),
                                [*GRADIENT_MEMBERS, "square"])
    assert verdict(findings(), _plan(), by_square, ind, None)["code"] == "gradient_masking"


# --------------------------------------------------------------------------- tailored attacks (the truth)
def pgd(loss_of, x, y, steps=20, step=EPS / 4, seed=0):
    """ℓ∞ PGD (random start) maximising ``loss_of(x_adv, y)``; the last iterate."""
    g = torch.Generator().manual_seed(seed)
    xa = (x + (torch.rand(x.shape, generator=g) * 2 - 1) * EPS).clamp(0, 1)
    for _ in range(steps):
        xa.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_of(xa, y), xa)
        xa = (xa.detach() + step * grad.sign()).clamp(x - EPS, x + EPS).clamp(0, 1)
    return xa.detach()


def robust_count(defense, x, y, xa, draws=1, seed=1) -> int:
    """Images classified correctly clean and on every one of ``draws`` passes at ``xa``."""
    torch.manual_seed(seed)
    with torch.no_grad():
        ok = defense(x).argmax(1) == y
        for _ in range(draws):
            ok &= defense(xa).argmax(1) == y
    return int(ok.sum())


def ce(model, eot=1):
    return lambda xa, y: F.cross_entropy(torch.stack([model(xa) for _ in range(eot)]).mean(0), y)


def cw(model):
    def loss(xa, y):
        z = model(xa)
        true = z.gather(1, y.view(-1, 1)).squeeze(1)
        other = z.masked_fill(F.one_hot(y, 10).bool(), -1e30).max(1).values
        return (other - true).clamp(max=1.0).sum()
    return loss


def tailored(name: str, x, y, draws: int) -> int:
    d = build_defense(f"defenses.archetypes:{name}")
    if name == "quantised_classifier":  # BPDA: the quantiser's forward, the identity's backward
        quantise, net = d.classifier[0], d.classifier[1]
        loss = ce(lambda h: net(h + (quantise(h) - h).detach()))
    elif name in ("random_resize_pad", "random_resize_pad_undeclared", "gaussian_noise"):  # EOT
        torch.manual_seed(0)
        loss = ce(d, eot=10)
    elif name == "saturated_logits":  # a margin loss: the CE gradient underflows
        loss = cw(d)
    elif name == "softmax_output":  # the outputs are probabilities: a margin on their log (the logits + a constant)
        loss = cw(lambda h: torch.log(d(h).clamp_min(1e-30)))
    elif name == "majority_vote_smoothing":  # EOT on the smoothed soft classifier: the base's mean softmax
        vote = d.classifier
        torch.manual_seed(0)

        def loss(xa, yy):
            noisy = [(xa + vote.sigma * torch.randn_like(xa)).clamp(0, 1) for _ in range(10)]
            p = torch.stack([F.softmax(vote.base(h), 1) for h in noisy]).mean(0)
            return F.nll_loss(torch.log(p.clamp_min(1e-30)), yy)
    elif name == "random_bit_depth":  # BPDA (identity backward) and EOT over the random depths
        squeeze, net = d.preprocess, d.classifier
        torch.manual_seed(0)
        loss = ce(lambda h: net(h + (squeeze(h) - h).detach()), eot=10)
    elif name == "stochastic_activation_pruning":  # EOT (Athalye et al. 2018 §5.3.1)
        torch.manual_seed(0)
        loss = ce(d, eot=10)
    else:  # exact gradients (the median filter's too)
        loss = ce(d)
    xa = pgd(loss, x, y, steps=40)
    return robust_count(d, x, y, xa, draws=draws)


# --------------------------------------------------------------------------- real audits
def test_audit_quantiser_inside_the_classifier_no_abort_no_gradient_columns(tmp_path):
    n = 3
    card = audit("defenses.archetypes:quantised_classifier", n_images=n, out=tmp_path / "run", budget=TINY)
    assert [s["attack"] for s in card["skipped"]] == list(GRADIENT_MEMBERS)
    assert [m["name"] for m in card["cascade"]] == ["bpda-transfer:madry_pgd_at", "transfer:madry_pgd_at",
                                                    "transfer:trades", "square"]
    assert card["verdict"]["code"] == "gradient_masking" and card["probes"]["gradient"] == "missing"
    assert all(not m.get("error") for m in card["cascade"])
    for f in ("audit.json", "audit.md", "audit.html", "run.json", "summary.csv"):
        assert (tmp_path / "run" / f).is_file()
    s = load_test(n)
    truth = tailored("quantised_classifier", s.x, s.y, draws=1)
    assert card["worst_case"]["robust"] <= truth + 1, (card["worst_case"], truth)  # within one image, or stronger
    # the same command resumes: every job is reused, the card is the same
    again = audit("defenses.archetypes:quantised_classifier", n_images=n, out=tmp_path / "run", budget=TINY)
    assert again["worst_case"] == card["worst_case"] and again["fooled_by"] == card["fooled_by"]


def test_audit_of_a_batch_dependent_defense_says_so(tmp_path):
    """Prediction-time BatchNorm: the probe finds the batch dependence, the run warns, the card
    fails it (no per-image truth to compare with: the number depends on the batching)."""
    card = audit("defenses.archetypes:test_time_batchnorm", n_images=4, out=tmp_path / "run", budget=TINY)
    assert card["probes"]["batch_dependent"] is True and card["probes"]["batch_changed_frac"] == 1.0
    assert card["verdict"]["code"] != "trustworthy"
    batch = [f for f in card["verdict"]["findings"] if f["category"] == "batch"]
    assert len(batch) == 1 and batch[0]["status"] == "fail"
    assert "an image's prediction depends on its batch-mates" in card["verdict"]["text"]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    (warning,) = run["probes"]["archetype_test_time_batchnorm"]["warnings"]
    assert warning.startswith("defense 'archetype_test_time_batchnorm': batch-dependent: 4/4 probe images' logits "
                              "changed when run alone instead of in a batch of 4"), warning


def test_audit_in_the_l2_ball(tmp_path):
    """--norm l2 --eps 0.5 (RobustBench's CIFAR-10 ℓ2 threat model): every member attacks in the
    ℓ2 ball; the card says ℓ2 ε = 0.5; every perturbation the records keep is within it."""
    budget = replace(TINY, norm="l2", epsilon=0.5)
    card = audit("defenses.archetypes:madry", n_images=4, out=tmp_path / "run", budget=budget)
    assert card["threat"] == {"norm": "l2", "epsilon": 0.5}
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    (tm,) = run["config"]["threat_models"]
    assert {m["name"]: m.get("norm") or m["craft"]["norm"] for m in tm["attacks"]} == \
        {"apgd-ce": "l2", "apgd-dlr": "l2", "apgd-t": "l2", "transfer:madry_pgd_at": "l2", "square": "l2"}
    assert "; ℓ2 ε = 0.5; clean accuracy" in (tmp_path / "run" / "audit.md").read_text()
    from robust_bench_sc.storage import RunDir

    recs = RunDir(tmp_path / "run").read_chunk("archetype_madry", "audit", 0)["records"]
    norms = [r["l2"] for r in recs if r["clean_correct"] and not r["robust"]]
    assert norms and max(norms) <= 0.5 + 1e-4, norms
    with pytest.raises(ValueError, match="audit norm 'l1': one of linf, l2"):
        replace(TINY, norm="l1")


def test_audit_bad_input_is_one_line(tmp_path):
    with pytest.raises(AuditError, match="--n-images 0: must be in 1..1000"):
        audit("defenses.archetypes:madry", n_images=0, out=tmp_path / "a")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(AuditError, match="not a run folder"):
        audit("defenses.archetypes:madry", n_images=2, out=tmp_path / "foreign")


def test_cli_audit_errors(tmp_path):
    from typer.testing import CliRunner

    from robust_bench_sc.cli import app

    res = CliRunner().invoke(app, ["audit", "defenses.archetypes:madry", "--n-images", "0", "--out",
                                   str(tmp_path / "x")])
    assert res.exit_code == 2 and "--n-images 0" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["audit", "madry_pgdat", "--budget", "quick"])
    assert res.exit_code == 2 and "did you mean" in res.output
    res = CliRunner().invoke(app, ["audit", "madry_pgd_at", "--budget", "huge"])
    assert res.exit_code == 2 and "standard, quick" in res.output
    res = CliRunner().invoke(app, ["audit", "madry_pgd_at", "--norm", "l1"])
    assert res.exit_code == 2 and "--norm l1: allowed values are linf, l2" in res.output
    for bad, why in (("8/0", "divides by zero"), ("-0.1", "must be > 0"), ("big", "like '8/255'")):
        res = CliRunner().invoke(app, ["audit", "madry_pgd_at", "--eps", bad])
        assert res.exit_code == 2 and f"--eps {bad}: " in res.output and why in res.output, res.output


ARCHETYPE_CASES = [  # name, masked (the verdict may not say trustworthy)
    ("random_resize_pad", True), ("random_resize_pad_undeclared", True), ("gaussian_noise", True),
    ("quantised_classifier", True), ("saturated_logits", True), ("median_filter", False), ("madry", False),
    ("softmax_output", True), ("majority_vote_smoothing", True), ("stochastic_activation_pruning", True),
    ("random_bit_depth", True)]


@pytest.mark.slow
@pytest.mark.parametrize("name,masked", ARCHETYPE_CASES)
def test_archetype_audit_matches_a_tailored_attack(tmp_path, name, masked):
    n = 20  # one image is 5 points: the target is the tailored attack's worst case within 5 points
    budget = replace(BUDGETS["quick"], indicators=not masked, binarization=False)
    card = audit(f"defenses.archetypes:{name}", n_images=n, out=tmp_path / "run", budget=budget)
    s = load_test(n)
    draws = budget.recheck if card["probes"]["randomised"] or card["probes"]["randomised_declared"] else 1
    truth = tailored(name, s.x, s.y, draws)
    got = card["worst_case"]["robust"]
    print(f"{name}: audit {got}/{n} robust vs tailored {truth}/{n}, verdict {card['verdict']['code']}, "
          f"{card['seconds']['total']:.0f} s")
    assert got <= truth + 1  # within one image (5 points) of the truth, or stronger
    assert all(not m.get("error") for m in card["cascade"])  # no aborts, no member errors
    if masked:
        assert not card["verdict"]["code"].startswith("trustworthy"), card["verdict"]
    else:  # honest (the median filter's exact gradients included): no masking finding
        assert card["verdict"]["code"] != "gradient_masking" and "masking" not in card["verdict"]["text"], \
            card["verdict"]
