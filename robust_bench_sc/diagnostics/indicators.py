"""The indicators: a flat list of independent checks, each ``fn(run, <needs...>) -> Outcome``.

Sources: Pintor et al. 2022 ("Indicators of Attack Failure": silent success, incomplete
optimisation, transfer failure, unavailable gradients, unstable predictions, unconstrained
attack failure); AutoAttack's automatic checks (randomness over 5 forward passes,
probabilities instead of logits, a gradient-free attack beating the white-box one);
Carlini et al. 2019 (accuracy decreasing monotonically in ε, more steps/restarts not
lowering it further, BPDA / EOT variants not beating the plain attack).

Each check declares the shared inputs it takes (``needs``: the plain evaluation's records,
the clean logits, the unconstrained attack's records); any further attack it runs is its
own. Thresholds are in :class:`~robust_bench_sc.diagnostics.config.DiagnosticsConfig`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from robust_bench_sc.attacks.pgd import margin_loss
from robust_bench_sc.defense import IDENTITY_BPDA, Capabilities, Defense
from robust_bench_sc.diagnostics.base import (FAIL, MASKING, OPTIMISATION, PASS, RANDOMNESS, SKIP, WARN, Outcome,
                                              Status, indicator)
from robust_bench_sc.diagnostics.run import DiagnosticRun, Records
from robust_bench_sc.norms import Norm
from robust_bench_sc.probes import bad_gradients, input_gradient
from robust_bench_sc.threat_models import RandomSearchThreat, SquareThreat


# --------------------------------------------------------------------------- the gain rule
def gain_status(run: DiagnosticRun, gained: int) -> Status:
    """Status for 'another attack fooled ``gained`` images the plain attack missed'."""
    c = run.cfg
    if gained >= max(c.min_gain_images, math.ceil(c.fail_gain * run.n)):
        return FAIL
    if gained >= max(c.min_gain_images, math.ceil(c.warn_gain * run.n)):
        return WARN
    return PASS


def gain_over_plain(run: DiagnosticRun, plain: Records, other: Records, what: str, **metrics: Any) -> Outcome:
    """"``what`` (records ``other``) on the images the plain PGD missed": status by the gain
    rule, evidence, the images it fooled there, and metrics (``gained`` plus ``metrics``)."""
    survivors = plain.robust
    mask = survivors & ~other.robust
    k = int(mask.sum())
    ev = (f"{what} fooled {k}/{int(survivors.sum())} images PGD-{run.cfg.steps} missed (robust accuracy "
          f"{run.pct(int(survivors.sum()))} → {run.pct(int((survivors & other.robust).sum()))})")
    return Outcome(gain_status(run, k), ev, run.flagged(mask), {"gained": k, **metrics})


# --------------------------------------------------------------------------- Pintor et al.
@indicator("silent_success", "silent success", "Pintor et al. 2022", OPTIMISATION, needs=("plain",))
def silent_success(run: DiagnosticRun, plain: Records) -> Outcome:
    it = plain.col("iterate_fooled", 0.0) > 0
    attacked, fooled = plain.flag("attacked"), plain.flag("fooled")
    mask = it & attacked & ~fooled
    k, na = int(mask.sum()), int(attacked.sum())
    status = FAIL if k >= max(1, math.ceil(run.cfg.silent_fail * run.n)) else WARN if k else PASS
    ev = (f"{k}/{na} attacked images had an adversarial PGD iterate but the returned point is not adversarial"
          + (f" (robust accuracy overstated by {run.pct(k)}; keep the adversarial iterate: "
             f"keep_adversarial_iterate, on by default in the native engine)" if k else ""))
    return Outcome(status, ev, run.flagged(mask), {"silent": k, "attacked": na})


@indicator("incomplete_optimisation", "incomplete optimisation", "Pintor et al. 2022", OPTIMISATION,
           needs=("plain",))
def incomplete_optimisation(run: DiagnosticRun, plain: Records) -> Outcome:
    first, q3, last = (plain.col(k) for k in ("loss_first", "loss_3q", "loss_last"))
    fooled, attacked = plain.flag("fooled"), plain.flag("attacked")
    ok = attacked & ~fooled & torch.isfinite(first) & torch.isfinite(q3) & torch.isfinite(last)
    total = (last - first).abs().clamp_min(1e-3)
    tail = last - q3
    mask = ok & (tail > run.cfg.incomplete_tail * total) & (tail > 1e-3)
    k, m = int(mask.sum()), int(ok.sum())
    frac = k / m if m else 0.0
    status = FAIL if frac > run.cfg.incomplete_fail else WARN if k >= max(2, math.ceil(0.05 * run.n)) else PASS
    ev = (f"{k}/{m} images the attack missed still gained > {run.cfg.incomplete_tail:.0%} of their loss gain "
          f"in the last quarter of {run.cfg.steps} steps" + (" (increase steps)" if status != PASS else ""))
    return Outcome(status, ev, run.flagged(mask),
                   {"still_improving": k, "unfooled": m,
                    "median_tail_ratio": float((tail[ok] / total[ok]).median()) if m else None})


def surrogate(run: DiagnosticRun) -> Defense:
    """``classifier(stand_in(x))``: the defense with its preprocess replaced by the BPDA stand-in."""
    d = run.defense
    name = run.bpda_name
    assert name is not None, "a surrogate needs a preprocess"
    stand_in = d.stand_in(name)
    return Defense(name=f"{d.name}/surrogate[{name}]", classifier=d.classifier,
                   preprocess=None if name == IDENTITY_BPDA else stand_in,
                   capabilities=Capabilities(differentiable=True, randomised=d.capabilities.randomised,
                                             input_range=d.capabilities.input_range))


@indicator("transfer_failure", "transfer failure", "Pintor et al. 2022", MASKING)
def transfer_failure(run: DiagnosticRun) -> Outcome:
    if run.defense.preprocess is None:
        return Outcome(SKIP, "no preprocess, hence no BPDA surrogate")
    label = "diagnostics-surrogate"
    ctx = run.context()
    ctx.cache[f"transfer-source:{label}"] = surrogate(run).to(run.device).eval()
    c = run.cfg
    craft = dict(attack="pgd", norm=c.norm, epsilon=c.epsilon, steps=c.steps, restarts=c.restarts,
                 step_size=c.step_size)
    threat = run.threat(attack="transfer", name="diag_transfer", source=label, craft=craft)
    recs = run.attack("transfer_from_surrogate", threat, ctx=ctx)
    src = recs.col("source_fooled", 0.0) > 0
    fooled, attacked = recs.flag("fooled"), recs.flag("attacked")
    mask = attacked & src & ~fooled
    k, s = int(mask.sum()), int((attacked & src).sum())
    frac = k / s if s else 0.0
    status = FAIL if s and frac >= c.transfer_fail else WARN if s and frac >= c.transfer_warn else PASS
    ev = (f"{k}/{s} images adversarial on the surrogate (stand-in {run.bpda_name!r}) are not adversarial on the "
          f"exact defense" + (": the stand-in is a poor approximation" if status == FAIL else ""))
    return Outcome(status, ev, run.flagged(mask), {"surrogate_fooled": s, "not_transferred": k})


def input_gradients(run: DiagnosticRun, model: torch.nn.Module) -> tuple[torch.Tensor, str | None]:
    """Per-image CE input gradients of ``model`` and None, or zeros and why the graph is broken
    (:func:`robust_bench_sc.probes.input_gradient`, batch by batch)."""
    grads = []
    for i in range(0, run.n, run.cfg.batch_size):
        xb = run.x[i: i + run.cfg.batch_size].to(run.device)
        yb = run.y[i: i + run.cfg.batch_size].to(run.device)
        g, broken = input_gradient(model, xb, lambda out: F.cross_entropy(out, yb, reduction="none"))
        if broken is not None or g is None:
            return torch.zeros_like(run.x), broken
        grads.append(g.cpu())
    return torch.cat(grads), None


@indicator("unavailable_gradients", "unavailable gradients", "Pintor et al. 2022; AutoAttack", MASKING)
def unavailable_gradients(run: DiagnosticRun) -> Outcome:
    exact_model = run.defense.attack_model(bpda=None).to(run.device).eval()
    g, broken = input_gradients(run, exact_model)
    b = bad_gradients(g)
    bad = b["bad"] if broken is None else torch.ones(run.n, dtype=torch.bool)
    k = int(bad.sum())
    metrics: dict[str, Any] = {"bad": k, "zero": int(b["zero"].sum()), "nonfinite": int(b["nonfinite"].sum()),
                               "broken_graph": broken}
    ev = (f"exact defense: graph broken ({broken})" if broken else
          f"exact defense: {int(b['zero'].sum())}/{run.n} zero, {int(b['nonfinite'].sum())}/{run.n} NaN/Inf "
          f"input gradients")
    if run.bpda_name is not None:
        sm = run.defense.attack_model(bpda=run.bpda_name).to(run.device).eval()
        g2, broken2 = input_gradients(run, sm)
        k2 = run.n if broken2 else int(bad_gradients(g2)["bad"].sum())
        metrics.update(bpda=run.bpda_name, bpda_bad=k2, bpda_fixes=bool(k and k2 < k))
        ev += f"; with bpda {run.bpda_name!r}: {k2}/{run.n} unusable" + (" (BPDA fixes it)" if k and k2 < k else "")
    status = FAIL if k >= max(1, math.ceil(run.cfg.gradient_fail * run.n)) else WARN if k else PASS
    return Outcome(status, ev, run.flagged(bad), metrics)


@indicator("unstable_predictions", "unstable predictions", "Pintor et al. 2022", MASKING, needs=("clean_logits",))
def unstable_predictions(run: DiagnosticRun, clean_logits: torch.Tensor) -> Outcome:
    c = run.cfg
    base = margin_loss(clean_logits, run.y)
    g = torch.Generator().manual_seed(c.seed + 17)
    worst = torch.zeros(run.n, dtype=torch.float64)
    ball = Norm.of(c.norm)  # noise uniform in the ball of the plain evaluation's norm
    for _ in range(c.noise_draws):
        noise = ball.random_start(run.x, c.radius, g)
        m = margin_loss(run.logits((run.x + noise).clamp(0, 1)), run.y)
        worst = torch.maximum(worst, (m - base).abs().double())
    rel = worst / base.abs().double().clamp_min(1.0)
    mask = rel > c.unstable_rel
    k = int(mask.sum())
    status = FAIL if k >= max(1, math.ceil(c.unstable_fail * run.n)) else WARN if k else PASS
    ev = (f"{k}/{run.n} images: margin moved by > {c.unstable_rel:.0%} of max(abs(margin), 1) under {c.noise_draws} "
          f"uniform noise draws of radius {c.radius:.4g}; median change {float(rel.median()):.3g}")
    return Outcome(status, ev, run.flagged(mask), {"unstable": k, "median_rel_change": float(rel.median()),
                                                   "max_rel_change": float(rel.max())})


@indicator("unconstrained_attack", "unconstrained attack failure", "Pintor et al. 2022; ART", MASKING,
           needs=("unconstrained",))
def unconstrained_attack(run: DiagnosticRun, unconstrained: Records) -> Outcome:
    c = run.cfg
    k = int(unconstrained.robust.sum())
    status = FAIL if k / run.n > c.unconstrained_fail else WARN if k else PASS
    ev = (f"PGD with ε = whole input range ({c.whole_range:g}, {c.unconstrained_steps} steps, no random start): "
          f"robust accuracy {run.pct(k)} (must be ~0%)")
    return Outcome(status, ev, run.flagged(unconstrained.robust), {"robust_accuracy": k / run.n})


# --------------------------------------------------------------------------- AutoAttack checks
@indicator("randomness", "randomised outputs", "AutoAttack checks", RANDOMNESS, needs=("clean_logits",))
def randomness(run: DiagnosticRun, clean_logits: torch.Tensor) -> Outcome:
    c = run.cfg
    outs = torch.stack([clean_logits] + [run.logits(run.x) for _ in range(c.random_passes - 1)])
    spread = (outs - outs[0:1]).abs().flatten(2).amax(dim=(0, 2))
    scale = outs[0].abs().flatten(1).amax(1).clamp_min(1.0)
    mask = spread > 1e-5 * scale
    preds_vary = (outs.argmax(2) != outs[0:1].argmax(2)).any(0)
    k = int(mask.sum())
    declared = run.declared_randomised
    status: Status
    if k and not declared:
        status, ev = FAIL, (f"{k}/{run.n} images get different outputs over {c.random_passes} forward passes "
                            f"({int(preds_vary.sum())} change prediction) but the defense does not declare "
                            f"randomised=True; treated as randomised here (the probes: EOT and re-checks), declare it")
    elif k:
        status, ev = PASS, (f"randomised (declared): {k}/{run.n} outputs vary, {int(preds_vary.sum())} predictions; "
                            f"attacks use eot={c.eot}, recheck={c.random_passes}")
    elif declared:
        status, ev = WARN, f"declared randomised but {c.random_passes} forward passes are identical"
    else:
        status, ev = PASS, f"deterministic: {c.random_passes} forward passes identical"
    return Outcome(status, ev, run.flagged(mask), {"varying": k, "prediction_varying": int(preds_vary.sum()),
                                                   "max_spread": float(spread.max())})


@indicator("probability_outputs", "probabilities instead of logits", "AutoAttack checks", MASKING,
           needs=("clean_logits",))
def probability_outputs(run: DiagnosticRun, clean_logits: torch.Tensor) -> Outcome:
    out = clean_logits
    from robust_bench_sc.probes import probability_rows

    in_unit = bool(((out >= -1e-6) & (out <= 1 + 1e-6)).all())
    sums_one = bool(((out.sum(1) - 1).abs() < 1e-3).all())
    if bool(probability_rows(out).all()):
        return Outcome(FAIL, "outputs are in [0, 1] and rows sum to 1: the defense returns probabilities (softmax) "
                             "where logits are expected; CE on them saturates", None,
                       {"in_unit": True, "sums_to_one": True})
    if in_unit:
        return Outcome(WARN, "all outputs lie in [0, 1]: check they are logits", None,
                       {"in_unit": True, "sums_to_one": False})
    return Outcome(PASS, f"logits (range {float(out.min()):.3g} .. {float(out.max()):.3g}, rows do not sum to 1)",
                   None, {"in_unit": False, "sums_to_one": sums_one})


def gradient_free_records(run: DiagnosticRun, subset: torch.Tensor) -> tuple[Records, str]:
    """Square (pyautoattack) on ``subset`` where asked for and importable, else our random
    search (``attack: random_search``); both through the engine, both re-checked there."""
    c = run.cfg
    note = ""
    if c.gradient_free in ("auto", "square") and c.norm in SquareThreat.allowed_norms():
        t = run.threat(attack="square", name="diag_square", backend="autoattack", norm=c.norm, epsilon=c.epsilon,
                       n_queries=c.queries)
        try:
            return run.attack("gradient_free", t, subset=subset), f"Square (pyautoattack, {c.queries} queries)"
        except Exception as exc:  # backend missing or failing: fall back to our random search
            if c.gradient_free == "square":
                raise
            note = f" (Square unavailable: {type(exc).__name__})"
    if c.norm not in RandomSearchThreat.allowed_norms():
        raise ValueError("the built-in random search is ℓ∞ only; use --gradient-free square for ℓ2")
    t = run.threat(attack="random_search", name="diag_random_search", epsilon=c.epsilon, n_queries=c.queries)
    return run.attack("gradient_free", t, subset=subset), f"random search ({c.queries} queries){note}"


@indicator("gradient_free_beats_whitebox", "gradient-free attack beats white-box", "AutoAttack checks", MASKING,
           needs=("plain",))
def gradient_free_beats_whitebox(run: DiagnosticRun, plain: Records) -> Outcome:
    if run.cfg.gradient_free == "none":
        return Outcome(SKIP, "disabled (--gradient-free none)")
    recs, what = gradient_free_records(run, plain.robust)
    return gain_over_plain(run, plain, recs, what, attack=what)


# --------------------------------------------------------------------------- Carlini et al.
@indicator("epsilon_monotonicity", "accuracy not falling with ε", "Carlini et al. 2019", MASKING,
           needs=("plain", "unconstrained"))
def epsilon_monotonicity(run: DiagnosticRun, plain: Records, unconstrained: Records) -> Outcome:
    c = run.cfg
    curve: dict[float, torch.Tensor] = {c.epsilon: plain.robust, c.whole_range: unconstrained.robust}
    for f in c.eps_factors:
        eps = c.epsilon * f
        curve[eps] = run.attack(f"pgd_eps_x{f:g}", run.pgd(name=f"diag_eps_x{f:g}", epsilon=eps,
                                                           steps=c.sweep_steps)).robust
    eps_sorted = sorted(curve)
    accs = [int(curve[e].sum()) for e in eps_sorted]
    violations = [(eps_sorted[i], eps_sorted[i + 1]) for i in range(len(accs) - 1)
                  if accs[i + 1] > accs[i] + c.monotone_tol]
    # per sample: robust at a larger ε but fooled at a smaller one
    mask = torch.zeros(run.n, dtype=torch.bool)
    for i in range(len(eps_sorted)):
        for j in range(i + 1, len(eps_sorted)):
            mask |= curve[eps_sorted[j]] & ~curve[eps_sorted[i]]
    big = [e for e in eps_sorted if c.epsilon < e < c.whole_range]
    at_eps = accs[eps_sorted.index(c.epsilon)]
    flat = bool(big) and at_eps > 0 and int(curve[big[-1]].sum()) >= at_eps
    status = FAIL if violations else WARN if flat else PASS
    grid = Norm.of(c.norm).pixel_grid  # ℓ∞ budgets below the whole box read as k/255
    pts = ", ".join(f"{e * 255:.3g}/255: {run.pct(a)}" if grid and e < 1 else f"{e:.4g}: {run.pct(a)}"
                    for e, a in zip(eps_sorted, accs))
    ev = f"robust accuracy vs ε: {pts}"
    if violations:
        ev += " (increases with ε)"
    elif flat:
        ev += f" (no drop from ε to {big[-1] / c.epsilon:g}ε)"
    return Outcome(status, ev, run.flagged(mask), {"curve": {f"{e:.6g}": a / run.n for e, a in zip(eps_sorted, accs)}})


@indicator("more_iterations", "more steps / restarts still help", "Carlini et al. 2019", OPTIMISATION,
           needs=("plain",))
def more_iterations(run: DiagnosticRun, plain: Records) -> Outcome:
    c = run.cfg
    t = run.pgd(name="diag_strong_pgd", steps=c.strong_steps, restarts=c.strong_restarts)
    recs = run.attack("strong_pgd", t, subset=plain.robust)
    return gain_over_plain(run, plain, recs, f"PGD {c.strong_steps} steps × {c.strong_restarts} restarts "
                           f"(vs {c.restarts})")


@indicator("single_step_beats_iterative", "single-step attack beats the iterative one",
           "Carlini et al. 2019; Athalye et al. 2018", MASKING, needs=("plain",))
def single_step_beats_iterative(run: DiagnosticRun, plain: Records) -> Outcome:
    """FGSM (one step of size ε from the clean point, no random start) on the images the
    plain PGD missed: an iterative attack must be at least as strong as its first step, so
    FGSM succeeding where PGD fails points at a loss surface that misleads small steps
    (gradient masking) rather than at robustness."""
    t = run.pgd(name="diag_fgsm", steps=1, restarts=1, step_size=run.cfg.epsilon, random_start=False)
    return gain_over_plain(run, plain, run.attack("fgsm", t, subset=plain.robust), "FGSM (1 step of ε)")


@indicator("bpda_eot_beats_plain", "BPDA / EOT beats the plain attack", "Carlini et al. 2019; Athalye et al. 2018",
           MASKING, needs=("plain",))
def bpda_eot_beats_plain(run: DiagnosticRun, plain: Records) -> Outcome:
    c = run.cfg
    if run.defense.preprocess is None and not run.randomised:
        return Outcome(SKIP, "no preprocess and deterministic: plain gradients are the exact ones")
    kw: dict[str, Any] = {}
    parts = []
    if run.defense.preprocess is not None:
        kw["bpda"] = run.bpda_name
        parts.append(f"bpda {run.bpda_name!r}")
    if run.randomised:
        kw["eot"] = max(c.eot * 2, 2)
        parts.append(f"eot {kw['eot']}")
    recs = run.attack("bpda_eot_pgd", run.pgd(name="diag_bpda_eot_pgd", **kw), subset=plain.robust)
    return gain_over_plain(run, plain, recs, f"PGD-{c.steps} with {', '.join(parts)}", variant=", ".join(parts))
