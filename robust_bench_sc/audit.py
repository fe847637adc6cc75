"""``scbench audit DEFENSE``: probes, an attack cascade chosen by them, indicators, a verdict.

The steps (docs/audit.md explains every rule, with references):

1. **Probes** (:mod:`robust_bench_sc.probes`) on the first few images: is the defense
   randomised (declared or not), does an input gradient exist, is its softmax saturated,
   is its preprocess differentiable.
2. **Cascade** (:func:`plan_cascade`): one ``worst_case`` threat model whose members run in
   order, each only on the images every earlier one left robust (AutoAttack's rule), cheap
   and strong first: APGD-CE, APGD-DLR (DLR first on a saturated defense), APGD-T (targeted;
   after Square when the gradients are a BPDA stand-in's),
   with EOT when the defense is randomised and BPDA only for a preprocess that is not
   differentiable; transfer from robust surrogates (the reference Madry ResNet-32, and
   TRADES where gradients are unavailable); Square (gradient free). The settings the audit
   chooses are explicit fields of the threat model, so they are in its spec hash, and each
   choice is stated with its reason. The cascade runs as an ordinary, resumable run folder
   (:func:`robust_bench_sc.runner.run_suite`).
3. **Passive indicators** (:mod:`robust_bench_sc.diagnostics`) and the **binarization test**
   (:mod:`robust_bench_sc.binarization`) of the cascade's first gradient attack.
4. **Report card**: ``audit.json``, ``audit.md`` and ``audit.html`` in the run folder, with a
   verdict that combines all of it (:func:`verdict`).
"""

from __future__ import annotations

import datetime as _dt
import html
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robust_bench_sc.stats import CHANCE_REMEDY, at_chance, chance_evidence

if TYPE_CHECKING:
    import torch

    from robust_bench_sc.defense import Defense
    from robust_bench_sc.executor import Executor
    from robust_bench_sc.probes import ProbeFindings

CASCADE = "audit"                       # the worst_case threat model's name (its records' folder)
SURROGATE = "madry_pgd_at"              # robust surrogate of the transfer attack (reference checkpoint)
SECOND_SURROGATE = "trades"             # a second one where the defense has no usable gradient
GRADIENT_MEMBERS = ("apgd-ce", "apgd-dlr", "apgd-t")
AUTOATTACK_SQUARE_QUERIES = 5000        # AutoAttack's Square budget (its schedule, unrescaled, is AutoAttack's)
LATE_FOOLED_MIN_IMAGES = 2              # gradient-free / transfer fool ≥ this many images the gradient attacks
LATE_FOOLED_MIN_FRAC = 0.02             # missed, and ≥ this share of the clean-correct images → masking
PROBE_IMAGES = 8
AUDIT_NORMS = ("linf", "l2")            # the norms every cascade member (APGD, Square, PGD transfer) attacks in
DEFAULT_EPSILON = {"linf": 8 / 255, "l2": 0.5}  # RobustBench's CIFAR-10 threat models


class AuditError(RuntimeError):
    """The audit cannot run (bad input, a probe that fails): one line."""


@dataclass(frozen=True)
class AuditBudget:
    """Every budget of the audit. ``standard`` is the default; ``quick`` is for tests and
    smoke runs (same cascade, smaller budgets)."""

    epsilon: float = 8 / 255
    norm: str = "linf"            # linf or l2 (AUDIT_NORMS): every member attacks in this ball
    apgd_iterations: int = 100
    apgd_restarts: int = 1
    eot: int = 20                 # AutoAttack's rand version: EOT 20
    recheck: int = 5              # re-evaluations of a success on a randomised defense
    square_queries: int = AUTOATTACK_SQUARE_QUERIES
    square_eot: int = 4           # scores averaged per Square query on a randomised defense
    transfer_steps: int = 100
    batch_size: int = 100
    chunk_size: int = 100
    indicators: bool = True
    indicator_images: int = 50
    indicator_queries: int = 100
    binarization: bool = True
    binarization_samples: int = 20
    binarization_inner: int = 49
    seed: int = 0

    def __post_init__(self) -> None:
        if self.norm not in AUDIT_NORMS:
            raise ValueError(f"audit norm {self.norm!r}: one of {', '.join(AUDIT_NORMS)} (APGD, Square and PGD "
                             "transfer all attack in it)")
        if not (isinstance(self.epsilon, (int, float)) and not isinstance(self.epsilon, bool) and self.epsilon > 0):
            raise ValueError(f"audit epsilon {self.epsilon!r}: must be a number > 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


BUDGETS: dict[str, AuditBudget] = {
    "standard": AuditBudget(),
    "quick": AuditBudget(apgd_iterations=20, eot=5, recheck=3, square_queries=300, square_eot=2, transfer_steps=20,
                         indicator_images=16, indicator_queries=50, binarization_samples=8, binarization_inner=19),
}


@dataclass
class CascadePlan:
    """The cascade's members (threat-model mappings, in order), why each is there and with
    which settings, and the attacks left out with the reason."""

    members: list[dict[str, Any]]
    reasons: dict[str, list[str]]
    skipped: list[dict[str, str]]
    randomised: bool
    bpda: str | None
    gradient_attacks: bool
    eot: int = 1

    def threat_model(self, batch_size: int) -> dict[str, Any]:
        return {"attack": "worst_case", "name": CASCADE, "batch_size": batch_size,
                "description": "scbench audit: the cascade chosen by the probes", "attacks": self.members}


# --------------------------------------------------------------------------- gradient check
def attack_gradient(defense: Defense, bpda: str | None, x: torch.Tensor, y: torch.Tensor) -> tuple[str, str]:
    """The input gradient the cascade's gradient attacks would follow (``bpda`` applied):
    ``(status, one line)``, status ok / missing / zero / nonfinite. Margin loss, so a
    saturated softmax does not read as zero."""
    import torch

    from robust_bench_sc.defense import resolve_bpda

    model = defense.attack_model(bpda=resolve_bpda(defense, bpda), eot=1)
    xg = x.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            logits = model(xg)
            true = logits.gather(1, y.view(-1, 1)).squeeze(1)
            other = logits.masked_fill(torch.nn.functional.one_hot(y, logits.shape[1]).bool(), -math.inf).max(1).values
            (grad,) = torch.autograd.grad((other - true).sum(), xg, allow_unused=True)
    except RuntimeError as exc:
        return "missing", f"backward raises: {str(exc).splitlines()[0]}"
    if grad is None:
        return "missing", "the loss does not depend on the input in the autograd graph"
    if not torch.isfinite(grad).all():
        return "nonfinite", "the gradient has NaN or inf entries"
    zero = (grad.flatten(1).abs().sum(1) == 0).float().mean().item()
    if zero > 0.5:
        return "zero", f"the gradient is zero on {zero:.0%} of {x.shape[0]} images"
    return "ok", f"non-zero on {1 - zero:.0%} of {x.shape[0]} images"


# --------------------------------------------------------------------------- the cascade
def plan_cascade(defense: Defense, findings: ProbeFindings, budget: AuditBudget,
                 gradient: tuple[str, str] | None = None, bpda: str | None = None,
                 surrogates_fit: bool = True, n_classes: int = 10) -> CascadePlan:
    """The cascade for ``defense`` given its probes' ``findings``. ``gradient``: the status of
    the gradient the attacks would follow with ``bpda`` (:func:`attack_gradient`); None means
    the probe's own (``findings.gradient``). ``surrogates_fit``: the images are CIFAR-10's
    kind (10 classes, 3×32×32), which the transfer surrogates were trained on; otherwise the
    transfer members are left out. ``n_classes``: the dataset's (the DLR loss needs 3 or more)."""
    eps = budget.epsilon
    randomised = bool(findings.randomised or findings.randomised_declared)
    eot = budget.eot if randomised else 1
    recheck = budget.recheck if randomised else 1
    status, detail = gradient or (findings.gradient, findings.gradient_detail)
    reasons: dict[str, list[str]] = {}
    skipped: list[dict[str, str]] = []
    common_why: list[str] = []
    if randomised:
        how = "declared" if findings.randomised_declared else "found by the probes, not declared"
        common_why.append(f"eot {eot}, recheck {recheck}: randomised ({how}); AutoAttack's rand version uses EOT 20")
    if defense.preprocess is not None:
        if bpda is None:
            common_why.append("no BPDA: the preprocess is differentiable (probe), its exact gradients are followed")
        else:
            common_why.append(f"bpda {bpda}: the preprocess is not differentiable (probe)")

    members: list[dict[str, Any]] = []
    gradient_ok = status == "ok"
    if gradient_ok:
        margin_first = findings.saturated or findings.probabilities
        order = ["apgd-dlr", "apgd-ce", "apgd-t"] if margin_first else ["apgd-ce", "apgd-dlr", "apgd-t"]
        if randomised:  # AutoAttack's rand version: APGD-CE and APGD-DLR with EOT, no targeted attack
            order.remove("apgd-t")
            skipped.append({"attack": "apgd-t", "reason": f"left out on a randomised defense, as in AutoAttack's rand "
                                                          f"version (its 9 target classes × EOT {eot} would cost "
                                                          "9 times APGD-DLR's queries)"})
        if n_classes < 3:  # DLR = -(z_y - max_other) / (z_1 - z_3): it needs a third logit
            for which in [w for w in order if w != "apgd-ce"]:
                order.remove(which)
                skipped.append({"attack": which, "reason": f"not applicable: the DLR loss needs 3 or more classes "
                                                           f"(the dataset has {n_classes})"})
        for which in order:
            members.append({
                "attack": "autoattack", "name": which, "norm": budget.norm, "epsilon": eps, "version": "custom",
                "attacks_to_run": [which], "apgd_iterations": budget.apgd_iterations,
                "apgd_restarts": budget.apgd_restarts, "bpda": bpda, "eot": eot, "recheck": recheck,
                "batch_size": budget.batch_size})
            why = [f"{budget.apgd_iterations} iterations × {budget.apgd_restarts} restart(s) (AutoAttack's APGD)"]
            if which == "apgd-dlr" and findings.saturated:
                why.insert(0, "first: the softmax is saturated (probe), so the CE gradient underflows and the "
                              "scale-invariant DLR margin loss leads")
            elif which == "apgd-dlr" and findings.probabilities:
                why.insert(0, "first: the outputs are probabilities, not logits (probe), so CE applies a second "
                              "softmax (a flat loss, vanishing gradients) and the scale-invariant DLR margin loss "
                              "leads")
            if which == "apgd-t":
                why.insert(0, f"targeted APGD-DLR over the {min(9, n_classes - 1)} most likely other classes "
                              "(AutoAttack's apgd-t)")
            reasons[which] = why + common_why
    else:
        for which in GRADIENT_MEMBERS:
            skipped.append({"attack": which, "reason": f"not applicable (no gradient): {status}: {detail}"})

    if not gradient_ok and surrogates_fit:
        name = f"bpda-transfer:{SURROGATE}"
        members.append({
            "attack": "transfer", "name": name, "source": SURROGATE, "craft_forward": "defense", "recheck": recheck,
            "batch_size": budget.batch_size,
            "craft": {"attack": "pgd", "norm": budget.norm, "epsilon": eps, "steps": budget.transfer_steps, "restarts": 1,
                      "step_size": "epsilon/4", "loss": "cw" if findings.saturated or findings.probabilities else "ce",
                      "random_start": True,
                      "keep_adversarial_iterate": True, "eot": eot}})
        reasons[name] = [f"PGD-{budget.transfer_steps} on the defense's own forward pass with the gradient of the "
                         f"robust surrogate {SURROGATE!r}: BPDA with the surrogate standing in for the whole defense "
                         "(Athalye et al. 2018 §4.1), since its gradient is unusable and no preprocess can be "
                         "replaced; an image stops at its first iterate that fools the defense"
                         + (f"; eot {eot}" if eot > 1 else "")]
    surrogates = [SURROGATE] if gradient_ok else [SURROGATE, SECOND_SURROGATE]
    if not surrogates_fit:
        for src in surrogates + ([f"bpda-{SURROGATE}"] if not gradient_ok else []):
            skipped.append({"attack": f"transfer:{src}", "reason": "not applicable: the robust surrogates are CIFAR-10 "
                                                                   "models (10 classes, 3×32×32 images), the dataset's "
                                                                   "images are not"})
        surrogates = []
    for src in surrogates:
        name = f"transfer:{src}"
        members.append({
            "attack": "transfer", "name": name, "source": src, "recheck": recheck, "batch_size": budget.batch_size,
            "craft": {"attack": "pgd", "norm": budget.norm, "epsilon": eps, "steps": budget.transfer_steps,
                      "restarts": 1, "step_size": "epsilon/4", "loss": "ce", "random_start": True,
                      "keep_adversarial_iterate": False}})
        reasons[name] = [f"PGD-{budget.transfer_steps} (CE, last iterate) crafted on the robust surrogate {src!r} "
                         "(Tramèr et al. 2020: transfer needs no gradient of the defense)"]
        if src == SECOND_SURROGATE:
            reasons[name].append("a second surrogate: the defense has no usable gradient, so the verdict rests on "
                                 "gradient-free and transfer attacks")
    square_eot = min(budget.square_eot, eot) if randomised else 1
    rescale = budget.square_queries != AUTOATTACK_SQUARE_QUERIES
    members.append({
        "attack": "square", "name": "square", "norm": budget.norm, "epsilon": eps, "n_queries": budget.square_queries,
        "p_init": 0.8, "restarts": 1, "rescale_schedule": rescale, "eot": square_eot, "recheck": recheck,
        "batch_size": budget.batch_size})
    reasons["square"] = [
        f"{budget.square_queries} queries, margin loss, p_init 0.8 (gradient free: immune to gradient masking)",
        ("square-size schedule rescaled to the budget (the toolkit's schedule is calibrated for 10 000 queries)"
         if rescale else "AutoAttack's own schedule at 5000 queries (not rescaled)")]
    if randomised:
        reasons["square"].append(f"eot {square_eot}: scores averaged over {square_eot} passes of the randomised "
                                 f"defense, recheck {recheck}")
    targeted = next((m for m in members if m["name"] == "apgd-t"), None)
    if targeted is not None and bpda is not None:
        members.remove(targeted)
        members.append(targeted)
        reasons["apgd-t"].insert(0, f"last, after Square: the gradient attacks follow the BPDA stand-in "
                                    f"({bpda}), an approximation of the defense's gradient, and the targeted "
                                    f"attack's 9 target classes × {budget.apgd_iterations} iterations are the "
                                    "cascade's most expensive part; Square, exact forward passes that stop at an "
                                    "image's first success, leaves it only the images it could not fool")
    return CascadePlan(members=members, reasons=reasons, skipped=skipped, randomised=randomised, bpda=bpda,
                       gradient_attacks=gradient_ok, eot=eot)


def choose_bpda(defense: Defense, findings: ProbeFindings) -> str | None:
    """None (exact gradients) unless there is a preprocess the probes found not differentiable:
    then ``auto`` (the defense's declared stand-in, else identity)."""
    from robust_bench_sc.defense import AUTO_BPDA

    if defense.preprocess is None or findings.preprocess_differentiable:
        return None
    return AUTO_BPDA


# --------------------------------------------------------------------------- reading the records
def cascade_outcome(records: list[dict[str, Any]], member_names: list[str]) -> dict[str, Any]:
    """Per member: the images it ran on (clean-correct, robust to every earlier member), how
    many it fooled, its robust accuracy there; which member fooled each image; the worst case."""
    from robust_bench_sc.stats import wilson_interval

    n = len(records)
    correct = [r for r in records if r["clean_correct"]]
    alive = {r["index"] for r in correct}
    errors: dict[str, str] = {}  # member → its error (the engine records members that raised, member_errors)
    for r in records:
        for part in str(r.get("member_errors") or "").split(" | "):
            name, sep, message = part.partition(": ")
            if sep:
                errors.setdefault(name, message)
    per_member = []
    for name in member_names:
        fooled = {r["index"] for r in correct if r.get("fooled_by") == name}
        ran = len(alive)
        per_member.append({"name": name, "ran_on": ran, "fooled": len(fooled),
                           "robust_accuracy": None if ran == 0 or name in errors
                           else round(100.0 * (ran - len(fooled)) / ran, 2),
                           "error": errors.get(name)})
        alive -= fooled
    robust = sum(bool(r["robust"]) for r in records)
    lo, hi = wilson_interval(robust, n)
    # the expectation over the re-check draws (randomised): a clean-misclassified image, whose record
    # is the clean one (no re-check, no robust_frac), is robust on none of them
    fracs = [float(r["robust_frac"]) if r.get("robust_frac") is not None else 0.0 if not r["clean_correct"] else None
             for r in records]
    has_fracs = any(r.get("robust_frac") is not None for r in records)
    expected = round(100.0 * sum(f for f in fracs if f is not None) / n, 2) \
        if n and has_fracs and None not in fracs else None
    return {
        "n_images": n, "clean_correct": len(correct),
        "clean_accuracy": round(100.0 * len(correct) / max(n, 1), 2),
        "worst_case": {"robust_accuracy": round(100.0 * robust / max(n, 1), 2), "robust": robust, "n": n,
                       "ci95": [round(lo, 2), round(hi, 2)], "interval": "Wilson 95 %",
                       "expected_robust_accuracy": expected},
        "per_attack": per_member,
        "fooled_by": {str(r["index"]): r.get("fooled_by") or ("misclassified" if not r["clean_correct"] else "")
                      for r in records},
    }


# --------------------------------------------------------------------------- the verdict
@dataclass
class Finding:
    source: str          # probe, cascade, indicator, binarization
    status: str          # fail or warn
    category: str        # input, masking, randomness, batch, optimisation
    problem: str
    remedy: str


def _and(names: list[str]) -> str:
    return " and ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} and {names[-1]}"


def verdict(findings: ProbeFindings, plan: CascadePlan, outcome: dict[str, Any], indicators: dict[str, Any] | None,
            binarization: dict[str, Any] | None, n_classes: int = 10) -> dict[str, Any]:
    """The verdict: every failing probe, cascade signal, indicator and the binarization test,
    each with its remedy; ``trustworthy`` only when none fails. ``n_classes``: the dataset's
    (chance level is 1/n_classes)."""
    out: list[Finding] = []
    n, correct = outcome["n_images"], outcome["clean_correct"]
    if at_chance(correct, n, n_classes):
        out.append(Finding("cascade", "fail", "input",
                           f"{chance_evidence(correct, n, n_classes)}: a robust accuracy of a classifier that does "
                           "not classify these images says nothing", CHANCE_REMEDY))
    if findings.randomised and not findings.randomised_declared:
        out.append(Finding("probe", "fail", "randomness",
                           (f"undeclared randomness: logits differ over {findings.n_passes} passes on the same "
                            f"{findings.n_images} probe images ({findings.prediction_flip_frac:.0%} changed prediction)"
                            if findings.outputs_differ is not False else
                            f"undeclared randomness: the outputs on the {findings.n_images} probe images are identical "
                            f"over {findings.n_passes} passes, but "
                            + " and ".join((["differ at points next to a decision boundary"]
                                            if findings.boundary_differ else [])
                                           + (["each pass draws random numbers (a global random generator "
                                               "advances)"] if findings.draws_random else []))
                            + " (quantised outputs such as votes hide it on the images)"),
                           "declare randomised=True (Capabilities) so that every evaluation uses EOT and re-checks"))
    if plan.randomised:
        out.append(Finding("probe", "fail", "masking",
                           "stochastic gradients (Athalye et al. 2018): the defense is randomised, so an attack "
                           "without EOT follows the gradient of one random draw",
                           f"evaluate with EOT (the audit used eot {plan.eot}); report the robust accuracy of the EOT "
                           "attacks only"))
    if findings.gradient != "ok":
        handled = plan.bpda is not None and plan.gradient_attacks  # a preprocess replaced by a usable stand-in
        out.append(Finding("probe", "fail", "masking",
                           f"gradient {findings.gradient} through the exact defense ({findings.gradient_detail})"
                           + (" (shattered gradients, Athalye et al. 2018 §4.1)" if handled else ""),
                           (f"applied here: the gradient attacks followed the BPDA stand-in (bpda {plan.bpda}) and the "
                            "worst case includes gradient-free and transfer attacks; report that worst case, never "
                            "a number from the exact gradient") if handled else
                           ("BPDA for a non-differentiable preprocess (declare it as Defense.preprocess with "
                            "differentiable=False and a stand-in); a break inside the classifier leaves only the "
                            "gradient-free and transfer attacks, which the worst case here rests on")))
    if not plan.gradient_attacks and findings.gradient == "ok":
        out.append(Finding("probe", "fail", "masking", "the gradient the attacks would follow (with BPDA) is unusable",
                           "declare a differentiable BPDA stand-in for the preprocess"))
    if findings.saturated:
        out.append(Finding("probe", "fail", "masking",
                           f"saturated softmax on {findings.saturated_frac:.0%} of the probe images: the CE "
                           "gradient underflows (Carlini & Wagner 2017)",
                           "margin losses (DLR/CW) lead, as in this cascade; a CE-only PGD number is not valid"))
    if findings.probabilities:
        out.append(Finding("probe", "fail", "masking",
                           f"the outputs are probabilities, not logits, on {findings.probabilities_frac:.0%} of the "
                           "probe images (a softmax inside the classifier): a CE loss applies a second softmax to "
                           "values in [0, 1], a nearly flat loss whose gradient vanishes where the first softmax "
                           "saturates (Carlini & Wagner 2017; Carlini et al. 2019 §4.4)",
                           "return the logits (drop the final softmax); attack with margin losses (DLR, or CW on the "
                           "log of the outputs), as in this cascade; a CE-only number is not valid"))
    if findings.batch_dependent:
        out.append(Finding("probe", "fail", "batch",
                           f"an image's prediction depends on its batch-mates: {findings.batch_evidence()}, so the "
                           "robust accuracy depends on "
                           "which images share a batch, which a per-image threat model does not fix (transductive "
                           "defenses: Chen et al. 2022; Croce et al. 2022; Wu et al. 2023)",
                           "make each image's prediction independent of its batch (BatchNorm with running statistics, "
                           "in eval mode; no batch-level normalisation or adaptation), or evaluate with a threat "
                           "model that states the batch and lets the attacker perturb all of it"))
    for m in outcome["per_attack"]:
        if m.get("error"):
            out.append(Finding("cascade", "fail", "optimisation", f"{m['name']} raised and contributed nothing "
                               f"({m['error']})", "the worst case rests on the other attacks; fix what the message "
                               "names"))
    late = [m for m in outcome["per_attack"] if m["name"] not in GRADIENT_MEMBERS and m["fooled"] > 0]
    n_late = sum(m["fooled"] for m in late)
    if plan.gradient_attacks and n_late >= max(LATE_FOOLED_MIN_IMAGES,
                                                math.ceil(LATE_FOOLED_MIN_FRAC * outcome["clean_correct"])):
        names = ", ".join(f"{m['name']} ({m['fooled']})" for m in late)
        order = [m["name"] for m in outcome["per_attack"]]
        before = [g for g in order[:order.index(late[0]["name"])] if g in GRADIENT_MEMBERS]  # ran before them
        out.append(Finding("cascade", "fail", "masking",
                           f"the worst case comes from {names}: they fooled {n_late} images that "
                           f"{_and(before) or 'the gradient attacks'} left robust, so gradients are masked",
                           "do not trust gradient-attack numbers; report this worst case and find the masking "
                           "(BPDA for non-differentiable steps, EOT for randomness)"))
    elif plan.gradient_attacks and n_late:
        out.append(Finding("cascade", "warn", "optimisation",
                           f"{n_late} image(s) fooled only by the gradient-free / transfer attacks",
                           "within noise; more APGD restarts would tell"))
    if indicators is not None:
        if indicators.get("error"):
            out.append(Finding("indicator", "fail", "masking", f"the indicators could not run: {indicators['error']}",
                               "rely on the cascade; fix what the message names"))
        # the gradient attacks fooled every correctly classified image: no image is left whose robustness
        # masked gradients could fake, so an indicator's masking signal is a warning here, not the verdict
        # (an undefended model's fragile margins fail unstable_predictions, measured on natural)
        by_gradient = sum(m["fooled"] for m in outcome["per_attack"] if m["name"] in GRADIENT_MEMBERS)
        moot = plan.gradient_attacks and outcome["clean_correct"] > 0 and by_gradient == outcome["clean_correct"]
        for ind in indicators.get("indicators", []):
            if ind["status"] in ("fail", "warn"):
                category = ind.get("category", "masking")
                status = "warn" if moot and category == "masking" else ind["status"]
                note = (" (moot: the gradient attacks fooled every correctly classified image)"
                        if status != ind["status"] else "")
                out.append(Finding("indicator", status, category, f"{ind['name']}: {ind['evidence']}{note}",
                                   ind.get("remedy") or "see docs/diagnostics.md"))
    blind: list[str] = []
    if binarization is not None:
        if binarization.get("status") == "fail":
            out.append(Finding("binarization", "fail", "optimisation",
                               f"binarization test failed: {binarization.get('evidence')}",
                               "the gradient attack cannot find adversarial examples that exist: stronger or "
                               "adaptive attacks"))
        if findings.saturated:
            blind.append("the binarization test replaces the readout (the last linear layer), so it cannot see the "
                         "saturated logits that mask this defense's CE gradient: its pass says nothing about them")
    fails = [f for f in out if f.status == "fail"]
    warns = [f for f in out if f.status == "warn"]
    if any(f.category == "input" for f in fails):  # nothing else means anything on a classifier at chance
        code = "chance_level"
    elif any(f.category == "masking" for f in fails):
        code = "gradient_masking"
    elif any(f.category == "randomness" for f in fails):
        code = "undeclared_randomness"
    elif any(f.category == "batch" for f in fails):
        code = "batch_dependent"
    elif fails:
        code = "attack_failure"
    elif warns:
        code = "trustworthy_with_warnings"
    else:
        code = "trustworthy"
    wc = outcome["worst_case"]
    number = f"worst case {wc['robust_accuracy']:.1f}% [{wc['ci95'][0]:.1f}, {wc['ci95'][1]:.1f}]"
    if code.startswith("trustworthy"):
        text = (f"{number}; evaluation trustworthy" if code == "trustworthy"
                else f"{number}; plausibly trustworthy, warnings: {'; '.join(f.problem for f in warns)}")
    else:
        label = {"gradient_masking": "gradient masking", "undeclared_randomness": "undeclared randomness",
                 "batch_dependent": "batch-dependent predictions", "chance_level": "clean accuracy at chance",
                 "attack_failure": "attack failure"}[code]
        remedies = list(dict.fromkeys(f.remedy for f in fails))
        text = f"{number}; {label}: {'; '.join(f.problem for f in fails)}. Remedy: {'; '.join(remedies)}"
    return {"code": code, "text": text, "findings": [asdict(f) for f in out], "blind_spots": blind}


# --------------------------------------------------------------------------- indicators, binarization
EXACT_PREPROCESS_SKIP = ("skipped: the cascade follows the preprocess's exact gradients (differentiable, probe), so "
                         "no BPDA stand-in's transfer is in question")


def _indicators(defense: Defense, budget: AuditBudget, n_images: int, device: str, randomised: bool,
                log: Callable[[str], None], exact_preprocess: bool = False, dataset: str | None = None,
                data_dir: str | None = None, probe_timeout: float | None = None,
                split: str | None = None) -> dict[str, Any]:
    """The indicators of ``scbench diagnose``. ``exact_preprocess``: the cascade follows the
    exact gradients of a differentiable preprocess, so ``transfer_failure`` (how well the
    identity / declared BPDA stand-in transfers to the exact defense) says nothing about the
    audit's attacks and is skipped: on a differentiable median filter it fails while the
    exact-gradient attacks are strong."""
    from robust_bench_sc.diagnostics import DiagnosticsConfig, diagnose

    cfg = DiagnosticsConfig(n_images=min(n_images, budget.indicator_images), seed=budget.seed, device=device,
                            norm=budget.norm, epsilon=budget.epsilon, eot=max(2, min(budget.eot, 5)) if randomised else 5,
                            queries=budget.indicator_queries, batch_size=budget.batch_size,
                            skip=("transfer_failure",) if exact_preprocess else (), dataset=dataset,
                            split=split, data_dir=data_dir, probe_timeout=probe_timeout)
    t0 = time.perf_counter()
    try:
        rep = diagnose(defense, cfg, log=log)
    except Exception as exc:  # noqa: BLE001 - an indicator that cannot run is a finding, never an abort
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                "seconds": round(time.perf_counter() - t0, 1), "n_images": cfg.n_images}
    d = rep.to_dict()
    return {"verdict": rep.verdict, "verdict_code": rep.verdict_code, "n_images": rep.n_images,
            "plain_robust_accuracy": rep.plain_robust_accuracy, "seconds": rep.wall_seconds,
            "indicators": [{"name": r["name"], "status": r["status"],
                            "evidence": EXACT_PREPROCESS_SKIP if r["name"] in cfg.skip else r["evidence"],
                            "category": r.get("category")} for r in d["indicators"]]}


def _binarization(defense: Defense, plan: CascadePlan, budget: AuditBudget, n_images: int, device: str,
                  log: Callable[[str], None], dataset: str | None = None,
                  data_dir: str | None = None, split: str | None = None) -> dict[str, Any]:
    from robust_bench_sc.binarization import BinarizationConfig, NotApplicable, binarization_test
    from robust_bench_sc.config import validate_threat_model

    gradient = [m for m in plan.members if m["name"] in GRADIENT_MEMBERS]
    if not gradient:
        return {"status": "not_applicable", "evidence": "no gradient attack in the cascade (no usable gradient)"}
    member = dict(gradient[0])
    tm = validate_threat_model(member, "audit binarization", default_name=member["name"])
    cfg = BinarizationConfig(n_samples=budget.binarization_samples, max_images=max(n_images, 1),
                             n_inner=budget.binarization_inner, seed=budget.seed, device=device, dataset=dataset,
                             split=split, data_dir=data_dir)
    t0 = time.perf_counter()
    try:
        rep = binarization_test(defense, tm, cfg, log=log)
    except NotApplicable as exc:
        return {"status": "not_applicable", "evidence": str(exc), "threat_model": member["name"]}
    except Exception as exc:  # noqa: BLE001 - recorded, never an abort
        return {"status": "error", "evidence": f"{type(exc).__name__}: {exc}", "threat_model": member["name"],
                "seconds": round(time.perf_counter() - t0, 1)}
    return {"status": rep.status, "evidence": rep.evidence, "threat_model": member["name"],
            "n_testable": rep.n_testable, "n_passed": rep.n_passed, "pass_rate": rep.pass_rate,
            "seconds": rep.wall_seconds}


# --------------------------------------------------------------------------- the audit
def audit(ref: str, n_images: int = 100, out: str | Path | None = None, *, budget: AuditBudget | None = None,
          device: str = "cpu", threads: int | None = None, console: Any = None, show_progress: bool = False,
          results_root: str | Path = "results", command: list[str] | None = None, dataset: str | None = None,
          data_dir: str | Path | None = None, probe_timeout: float | None = None,
          split: str | None = None, accept_code_change: bool = False,
          executor: Executor | None = None, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Audit the defense ``ref`` (a registered name, ``module:attr`` or ``file.py:attr``) on the
    first ``n_images`` images of ``split`` (default ``test``) of ``dataset`` (a dataset plug-in,
    ``scbench datasets``; default ``cifar10_npz``, this project's CIFAR-10 files) read from
    ``data_dir`` (default $SCBENCH_DATA, else shared/data/cifar10); the cascade, the indicators
    and the binarization test all read that split. Returns the report card (``audit.json``'s
    content) and writes it, with ``audit.md`` and ``audit.html``, into the run folder ``out``.
    ``probe_timeout``: seconds each probe may take (default: scaled from one forward pass).
    ``accept_code_change``: resume ``out`` although the defense's code fingerprint changed (as
    ``scbench run --accept-code-change``; said in the output). ``executor``: where the cascade's
    jobs (one per chunk of images) run, an :class:`~robust_bench_sc.executor.Executor` (``--executor
    ray``: chunks in parallel); None runs them one after another here. The probes, the indicators
    and the binarization test run in this process. ``params``: keyword arguments of the defense's
    factory (``--param KEY=VALUE``), in the cascade's suite (so in its spec) and on the card."""
    import torch
    from rich.console import Console

    from robust_bench_sc.api import build_suite
    from robust_bench_sc.data import DataError, load_dataset
    from robust_bench_sc.datasets import DEFAULT_DATASET, DEFAULT_SPLIT, check_split, get_dataset
    from robust_bench_sc.registry import RegistryError
    from robust_bench_sc.plan import plan_jobs
    from robust_bench_sc.plugins import build_defense
    from robust_bench_sc.probes import ProbeError, probe_defense
    from robust_bench_sc.errors import RunError
    from robust_bench_sc.runner import prepare_run_dir, run_suite
    from robust_bench_sc.storage import RunDir, safe_name
    from robust_bench_sc.subsets import describe_subset

    budget = budget or BUDGETS["standard"]
    console = console or Console(stderr=True)
    say: Callable[[str], None] = lambda s: console.print(s, highlight=False, soft_wrap=True)  # noqa: E731
    if probe_timeout is not None and (isinstance(probe_timeout, bool) or not isinstance(probe_timeout, (int, float))
                                      or not probe_timeout > 0):
        raise AuditError(f"--probe-timeout {probe_timeout!r}: must be a number of seconds > 0")
    if split is not None:  # a split the dataset does not have: one line naming the ones it has
        try:
            check_split(get_dataset(dataset or DEFAULT_DATASET), split)
        except DataError as exc:
            raise AuditError(f"--split {split}: {exc}") from None
        except RegistryError as exc:
            raise AuditError(f"--dataset {dataset or DEFAULT_DATASET}: {exc}") from None
    split_name = split or DEFAULT_SPLIT
    try:  # the whole split: its size bounds --n-images
        whole = load_dataset(dataset or DEFAULT_DATASET, data_dir, split_name)
    except (DataError, RegistryError) as exc:
        raise AuditError(f"--dataset {dataset or DEFAULT_DATASET}: {exc}") from None
    n_all = len(whole)
    if isinstance(n_images, bool) or not isinstance(n_images, int) or not 1 <= n_images <= n_all:
        raise AuditError(f"--n-images {n_images!r}: must be in 1..{n_all} (the {whole.dataset} {split_name} split at "
                         f"{data_dir or 'the default data folder'} holds {n_all} {whole.images})")
    if threads is not None:
        torch.set_num_threads(threads)
    t_start = time.perf_counter()
    seconds: dict[str, float] = {}
    params = dict(params or {})
    try:
        defense = build_defense(ref, params).to(device)
    except RegistryError as exc:
        raise AuditError(str(exc)) from None
    label = defense.name
    run_dir = Path(out) if out else Path(results_root) / "audit" / safe_name(label) / \
        _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        prepare_run_dir(run_dir.resolve())  # before any compute: a folder we may write (a run folder or empty)
    except RunError as exc:
        raise AuditError(str(exc)) from None
    data = whole.take(list(range(n_images)))

    # 1. probes
    k = min(PROBE_IMAGES, n_images)
    try:
        findings = probe_defense(defense, data.x[:k], data.y[:k], device=device, n_passes=4, seed=budget.seed,
                                 n_classes=data.n_classes, timeout=probe_timeout)
    except ProbeError as exc:
        raise AuditError(f"defense {label!r}: {exc}") from None
    seconds["probes"] = round(findings.seconds, 2)
    for line in findings.summary_lines():
        say(f"probe: {line}")
    randomised = bool(findings.randomised or findings.randomised_declared)
    attacked_defense = defense
    if randomised and not defense.capabilities.randomised:
        # the run's own probes (robust_bench_sc.adapt) treat it as randomised too: re-checks in every job
        attacked_defense = replace(defense, capabilities=replace(defense.capabilities, randomised=True))
        say(f"warning: defense {label!r} is randomised but does not declare it: the audit treats it as randomised "
            "(EOT and re-checks); declare randomised=True")

    # 2. the cascade
    bpda = choose_bpda(defense, findings)
    gradient = attack_gradient(attacked_defense, bpda, data.x[:k].to(device), data.y[:k].to(device))
    plan = plan_cascade(attacked_defense, findings, budget, gradient=gradient, bpda=bpda,
                        surrogates_fit=data.n_classes == 10 and data.image_shape == (3, 32, 32),
                        n_classes=data.n_classes)
    for s in plan.skipped:
        say(f"cascade: {s['attack']} left out: {s['reason']}")
    for m in plan.members:
        say(f"cascade: {m['name']}: {'; '.join(plan.reasons.get(m['name'], []))}")
    suite = build_suite(ref, [plan.threat_model(budget.batch_size)], n_images=n_images, name=label, params=params,
                        seed=budget.seed, chunk_size=min(budget.chunk_size, n_images),
                        suite_name=f"audit_{safe_name(label)}", dataset=dataset, split=split,
                        data_dir=None if data_dir is None else str(data_dir))
    t0 = time.perf_counter()
    outcome_run = run_suite(suite, out=run_dir, device=device, executor=executor, console=console,
                            results_root=results_root,
                            command=command or [f"scbench audit {ref} --n-images {n_images}"],
                            show_progress=show_progress, probe_timeout=probe_timeout,
                            accept_code_change=accept_code_change)
    seconds["cascade"] = round(time.perf_counter() - t0, 2)
    layout = RunDir(outcome_run.run_dir)
    records: list[dict[str, Any]] = []
    job_seconds = 0.0
    for job in plan_jobs(suite):
        blob = layout.read_chunk(job.defense, job.threat, job.chunk)
        records.extend(blob["records"])
        job_seconds += float(blob.get("seconds") or 0.0)
    records.sort(key=lambda r: r["index"])
    outcome = cascade_outcome(records, [m["name"] for m in plan.members])

    # 3. indicators and the binarization test
    indicators = binarization = None
    if budget.indicators:
        t0 = time.perf_counter()
        say("indicators (scbench diagnose)")
        indicators = _indicators(defense, budget, n_images, device, randomised, log=lambda s: None,
                                 exact_preprocess=defense.preprocess is not None and bpda is None, dataset=dataset,
                                 data_dir=None if data_dir is None else str(data_dir), probe_timeout=probe_timeout,
                                 split=split)
        seconds["indicators"] = round(time.perf_counter() - t0, 2)
    if budget.binarization:
        t0 = time.perf_counter()
        say("binarization test")
        binarization = _binarization(attacked_defense, plan, budget, n_images, device, log=lambda s: None,
                                     dataset=dataset, data_dir=None if data_dir is None else str(data_dir),
                                     split=split)
        seconds["binarization"] = round(time.perf_counter() - t0, 2)
    seconds["total"] = round(time.perf_counter() - t_start, 2)

    card = {
        "defense": label, "ref": ref, **({"params": params} if params else {}),
        "subset": describe_subset(n_images, images=data.images), "n_images": n_images,
        **({"dataset": {"name": data.dataset, "n_classes": data.n_classes, "data_dir": str(data_dir),
                        **({"split": split} if split is not None else {})}}
           if dataset is not None or data_dir is not None or split is not None else {}),
        "threat": {"norm": budget.norm, "epsilon": budget.epsilon},
        "budget": budget.to_dict(),
        "run_dir": str(outcome_run.run_dir),
        "verdict": verdict(findings, plan, outcome, indicators, binarization, n_classes=data.n_classes),
        "worst_case": outcome["worst_case"],
        "clean_accuracy": outcome["clean_accuracy"],
        "probes": {**findings.to_dict(), "summary": findings.summary_lines(),
                   "attack_gradient": {"status": gradient[0], "detail": gradient[1], "bpda": bpda}},
        "cascade": [{**m, "reasons": plan.reasons.get(m["name"], [])} for m in outcome["per_attack"]],
        "cascade_settings": plan.members,
        "skipped": plan.skipped,
        "fooled_by": outcome["fooled_by"],
        "indicators": indicators,
        "binarization": binarization,
        "seconds": {**seconds, "cascade_job_seconds": round(job_seconds, 2)},
        "created_at": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    write_card(card, outcome_run.run_dir)
    return card


# --------------------------------------------------------------------------- the report card
def _eps(eps: float) -> str:
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else f"{eps:.6g}"


def _ball(threat: dict[str, Any]) -> str:
    """``ℓ∞ ε = 8/255``, ``ℓ2 ε = 0.5``: the card's threat in words."""
    from robust_bench_sc.norms import Norm

    norm = Norm.get(threat["norm"])
    return f"{norm.label if norm else threat['norm']} ε = {_eps(threat['epsilon'])}"


def card_markdown(card: dict[str, Any]) -> str:
    wc, v = card["worst_case"], card["verdict"]
    lines = [f"# Audit: {card['defense']}", "",
             f"{card['subset'][:1].upper()}{card['subset'][1:]}; {_ball(card['threat'])}; clean accuracy "
             f"{card['clean_accuracy']:.1f}%. Run folder: `{card['run_dir']}`.", "",
             f"**Verdict ({v['code']}):** {v['text']}", "",
             f"**Worst case:** {wc['robust_accuracy']:.1f}% robust ({wc['robust']}/{wc['n']}; {wc['interval']} "
             f"[{wc['ci95'][0]:.1f}, {wc['ci95'][1]:.1f}])"
             + (f"; as the expectation over the re-check draws of a randomised defense: "
                f"{wc['expected_robust_accuracy']:.1f}%." if wc.get("expected_robust_accuracy") is not None else ".")
             + " An image counts as robust only if every re-check draw classifies it correctly.", "", "## Probes", ""]
    lines += [f"- {s}" for s in card["probes"]["summary"]]
    g = card["probes"]["attack_gradient"]
    lines += [f"- gradient the attacks follow (bpda {g['bpda']}): {g['status']}: {g['detail']}", "",
              "## Cascade (each attack runs on the images every earlier one left robust)", "",
              "| attack | ran on | fooled | robust accuracy there | why / settings |", "|---|---|---|---|---|"]
    for m in card["cascade"]:
        acc = f"error: {m['error']}" if m.get("error") else _pct(m["robust_accuracy"])
        lines.append(f"| {m['name']} | {m['ran_on']} | {m['fooled']} | {acc} | {'; '.join(m['reasons'])} |")
    for s in card["skipped"]:
        lines.append(f"| {s['attack']} | — | — | not applicable | {s['reason']} |")
    lines += ["", "## Findings", ""]
    if not v["findings"]:
        lines.append("None.")
    for f in v["findings"]:
        lines.append(f"- **{f['status']}** ({f['source']}, {f['category']}): {f['problem']}. Remedy: {f['remedy']}.")
    for b in v["blind_spots"]:
        lines.append(f"- **blind spot:** {b}")
    ind = card.get("indicators")
    lines += ["", "## Passive indicators", ""]
    if ind is None:
        lines.append("Not run (budget).")
    elif ind.get("error"):
        lines.append(f"Could not run: {ind['error']}")
    else:
        lines.append(f"{ind['n_images']} images; verdict: {ind['verdict']}")
        lines += ["", "| indicator | status | evidence |", "|---|---|---|"]
        lines += [f"| {i['name']} | {i['status']} | {i['evidence'].replace('|', '/')} |" for i in ind["indicators"]]
    b = card.get("binarization")
    lines += ["", "## Binarization test", "", "Not run (budget)." if b is None else
              f"{b['status']} ({b.get('threat_model', '—')}): {b['evidence']}", "",
              "## Time", "", ", ".join(f"{k} {v:.0f} s" for k, v in card["seconds"].items()), ""]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}%"


def card_html(card: dict[str, Any]) -> str:
    e = html.escape
    wc, v = card["worst_case"], card["verdict"]
    colour = "#1a7f37" if v["code"] == "trustworthy" else "#9a6700" if v["code"].startswith("trustworthy") else "#cf222e"
    rows = "".join(
        f"<tr><td>{e(m['name'])}</td><td>{m['ran_on']}</td><td>{m['fooled']}</td>"
        f"<td>{_pct(m['robust_accuracy'])}</td>"
        f"<td>{e('; '.join(m['reasons']))}</td></tr>" for m in card["cascade"])
    rows += "".join(f"<tr><td>{e(s['attack'])}</td><td>—</td><td>—</td><td>n/a</td><td>{e(s['reason'])}</td></tr>"
                    for s in card["skipped"])
    findings = "".join(f"<li><b>{e(f['status'])}</b> ({e(f['source'])}): {e(f['problem'])}. Remedy: {e(f['remedy'])}."
                       "</li>" for f in v["findings"]) or "<li>none</li>"
    findings += "".join(f"<li><b>blind spot</b>: {e(b)}</li>" for b in v["blind_spots"])
    probes = "".join(f"<li>{e(s)}</li>" for s in card["probes"]["summary"])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Audit: {e(card['defense'])}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em;vertical-align:top}}.v{{color:{colour};font-weight:bold}}</style>
</head><body><h1>Audit: {e(card['defense'])}</h1>
<p>{e(card['subset'])}; {_ball(card['threat'])}; clean accuracy {card['clean_accuracy']:.1f}%</p>
<p class="v">{e(v['code'])}: {e(v['text'])}</p>
<p><b>Worst case</b>: {wc['robust_accuracy']:.1f}% ({wc['robust']}/{wc['n']}, {e(wc['interval'])}
[{wc['ci95'][0]:.1f}, {wc['ci95'][1]:.1f}])</p>
<h2>Probes</h2><ul>{probes}</ul>
<h2>Cascade</h2><table><tr><th>attack</th><th>ran on</th><th>fooled</th><th>robust there</th><th>why</th></tr>{rows}</table>
<h2>Findings</h2><ul>{findings}</ul>
</body></html>
"""


def write_card(card: dict[str, Any], run_dir: str | Path) -> None:
    from robust_bench_sc.storage import atomic_write_json, atomic_write_text

    run_dir = Path(run_dir)
    atomic_write_json(run_dir / "audit.json", card)
    atomic_write_text(run_dir / "audit.md", card_markdown(card))
    atomic_write_text(run_dir / "audit.html", card_html(card))
