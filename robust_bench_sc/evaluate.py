"""Run one threat model on one chunk of images and produce per-sample records.

Whatever an attack returns is re-checked here, never trusted: finite values, the [0, 1]
box, the ε budget (with a small tolerance) and the defense's own prediction on the
returned image. A toolkit bug therefore cannot leak into a table; it shows up as a flag.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from robust_bench_sc.attacks.base import AttackContext, run_attack
from robust_bench_sc.data import N_CLASSES
from robust_bench_sc.defense import Defense
from robust_bench_sc.norms import NORMS
from robust_bench_sc.predictions import NO_PREDICTION, DefenseOutputError, checked_logits, predict
from robust_bench_sc.threat_models import CleanThreat, ThreatModel

__all__ = ["ATTACK_ERROR", "BOX_TOL", "NORM_TOL_ABS", "NORM_TOL_REL", "NO_GRADIENT", "NO_PREDICTION",
           "DefenseOutputError", "attack_error_text", "checked_logits", "evaluate_threat", "perturbation_norms",
           "predict", "run_attack"]  # predict, checked_logits and run_attack live below the attacks; kept here too

BOX_TOL = 1e-5
NORM_TOL_REL = 1e-4
NORM_TOL_ABS = 1e-5


ATTACK_ERROR = "attack_error"  # flag and record field: the attack raised; the field holds its one-line message
NO_GRADIENT = "no_gradient"    # flag: a gradient attack not run, the probes found no usable gradient (attack_error says)


def attack_error_text(threat: ThreatModel, exc: BaseException) -> str:
    """One line: which attack raised what (a record's ``attack_error``, a table's note)."""
    msg = " ".join(str(exc).split())[:200]
    return f"{threat.kind} ({threat.backend}) raised {type(exc).__name__}{': ' + msg if msg else ''}"


def perturbation_norms(x: torch.Tensor, x_adv: torch.Tensor) -> dict[str, torch.Tensor]:
    d = (x_adv - x).flatten(1).double()
    return {name: norm.measure(d) for name, norm in NORMS.items()}


def _budget_ok(norms: dict[str, torch.Tensor], norm: str, eps: float | None) -> torch.Tensor:
    if eps is None or norm not in norms:
        return torch.ones_like(norms["l2"], dtype=torch.bool)
    return norms[norm] <= eps * (1 + NORM_TOL_REL) + NORM_TOL_ABS


def _check_and_predict(defense, threat_norm, eps, x, y, x_adv, recheck, device, batch_size, minimum_norm,
                       n_classes=N_CLASSES):
    """Validate adversarial images and re-evaluate them on the exact defense."""
    flags: list[list[str]] = [[] for _ in range(x.shape[0])]
    finite = torch.isfinite(x_adv.flatten(1)).all(1)
    x_adv = torch.where(finite.view(-1, 1, 1, 1), x_adv, x)
    in_box = (x_adv.flatten(1).min(1).values >= -BOX_TOL) & (x_adv.flatten(1).max(1).values <= 1 + BOX_TOL)
    norms = perturbation_norms(x, x_adv)
    within = _budget_ok(norms, threat_norm, None if minimum_norm else eps)
    valid = finite & in_box & within
    for i in range(x.shape[0]):
        if not finite[i]:
            flags[i].append("non_finite")
        if not in_box[i]:
            flags[i].append("out_of_box")
        if not within[i]:
            flags[i].append("norm_exceeded")
    checked = torch.where(valid.view(-1, 1, 1, 1), x_adv, x)
    preds = torch.stack([predict(defense, checked, batch_size, device, non_finite="flag", n_classes=n_classes)
                         for _ in range(recheck)])
    for i in (preds == NO_PREDICTION).any(0).nonzero().squeeze(1).tolist():
        flags[i].append("non_finite_logits")  # counted as fooled: the defense gave no class
    fooled_frac = (preds != y[None]).float().mean(0)
    return checked, preds[0], fooled_frac, perturbation_norms(x, checked), flags, valid


def _records(idx, y, clean_pred, attacked, adv_pred, fooled_frac, norms, flags, claimed, info, robust):
    recs = []
    for i in range(y.shape[0]):
        r: dict[str, Any] = {
            "index": int(idx[i]),
            "label": int(y[i]),
            "clean_pred": int(clean_pred[i]),
            "clean_correct": bool(clean_pred[i] == y[i]),
            "attacked": bool(attacked[i]),
            "adv_pred": int(adv_pred[i]),
            "fooled": bool(fooled_frac[i] > 0),
            "fooled_frac": float(fooled_frac[i]),
            "robust": bool(robust[i]),
            "linf": float(norms["linf"][i]),
            "l2": float(norms["l2"][i]),
            "l1": float(norms["l1"][i]),
            "claimed": None if claimed is None else bool(claimed[i]),
            "flags": ";".join(flags[i]),
        }
        for k, v in info.items():
            val = v[i].item()
            r[k] = None if isinstance(val, float) and math.isnan(val) else val
        recs.append(r)
    return recs


def evaluate_threat(defense: Defense, threat: ThreatModel, x: torch.Tensor, y: torch.Tensor,
                    idx: torch.Tensor, ctx: AttackContext, clean_pred: torch.Tensor | None = None,
                    ) -> list[dict[str, Any]]:
    """Per-sample records of ``threat`` against ``defense`` on images ``x`` (CPU tensors)."""
    device = ctx.device
    if clean_pred is None:
        clean_pred = predict(defense, x, threat.batch_size, device, n_classes=ctx.n_classes)
    correct = clean_pred == y
    n = y.shape[0]
    if threat.kind == "none":
        z = perturbation_norms(x, x)
        if ctx.progress:
            ctx.progress(n)
        return _records(idx, y, clean_pred, torch.zeros(n, dtype=torch.bool), clean_pred,
                        (~correct).float(), z, [[] for _ in range(n)], None, {}, correct)
    if threat.nested_fields and threat.members_run_on == "defense":  # the engine composes its members' records
        return _evaluate_worst_case(defense, threat, x, y, idx, ctx, clean_pred)

    attacked = correct.clone() if threat.only_correct else torch.ones(n, dtype=torch.bool)
    sel = attacked.nonzero().squeeze(1)
    x_adv = x.clone()
    claimed_all = None
    info_all: dict[str, torch.Tensor] = {}
    recheck = threat.recheck if defense.capabilities.randomised else 1
    error = ""
    if sel.numel() and threat.gradient_based and ctx.no_gradient:  # the probes found no usable gradient
        error = f"not applicable (no gradient): {ctx.no_gradient}"
        x_adv[sel] = x[sel]
        if ctx.progress:
            ctx.progress(int(sel.numel()))
    elif sel.numel():
        ctx.seed_everything()
        try:
            xa, claimed, info = run_attack(threat, ctx, x[sel], y[sel])
        except Exception as exc:  # no attack aborts a run: the job records the error, every other job goes on
            error = attack_error_text(threat, exc)
            xa, claimed, info = x[sel], None, {}
        x_adv[sel] = xa
        if claimed is not None:
            claimed_all = torch.zeros(n, dtype=torch.bool)
            claimed_all[sel] = claimed
        for k, v in info.items():
            full = torch.full((n,), float("nan"), dtype=torch.float64)
            full[sel] = v.double()
            info_all[k] = full
    elif ctx.progress:
        ctx.progress(0)
    eps = threat.epsilon_value
    checked, adv_pred, fooled_frac, norms, flags, valid = _check_and_predict(
        defense, threat.norm_name, eps, x, y, x_adv, recheck, device, threat.batch_size, threat.minimum_norm,
        ctx.n_classes)
    fooled_frac = torch.where(attacked, fooled_frac, (~correct).float())
    adv_pred = torch.where(attacked, adv_pred, clean_pred)
    for i in sel.tolist():
        if error:
            flags[i].append(NO_GRADIENT if error.startswith("not applicable") else ATTACK_ERROR)
            continue
        if torch.equal(x_adv[i], x[i]):
            flags[i].append("unchanged")
        if claimed_all is not None and bool(claimed_all[i]) != bool(fooled_frac[i] > 0):
            flags[i].append("claim_mismatch")
    fooled = fooled_frac > 0
    if threat.minimum_norm and eps is not None:
        fooled_at_budget = fooled & (norms[threat.norm_name] <= eps * (1 + NORM_TOL_REL) + NORM_TOL_ABS)
        robust = correct & ~fooled_at_budget
    else:
        robust = correct & ~fooled
    recs = _records(idx, y, clean_pred, attacked, adv_pred, fooled_frac, norms, flags, claimed_all,
                    info_all, robust)
    if recheck > 1 and not threat.minimum_norm:
        # a randomised defense: the expectation over the re-check's fresh draws, per image
        robust_frac = torch.where(attacked & correct, 1.0 - fooled_frac, correct.float())
        for i, r in enumerate(recs):
            r["robust_frac"] = float(robust_frac[i])
    if error:
        for i in sel.tolist():
            recs[i][ATTACK_ERROR] = error
    return recs


def _evaluate_worst_case(defense, threat: ThreatModel, x, y, idx, ctx, clean_pred):
    """AutoAttack-style: each member runs only on the samples every earlier one missed; a
    sample is robust only where every member failed (the per-sample worst case)."""
    n = y.shape[0]
    robust = (clean_pred == y).clone()
    final: list[dict[str, Any] | None] = [None] * n
    errors: list[str] = []  # members that raised: the cascade goes on without them, every record says so
    for sub_tm in threat.members():  # typed, named and with the parent's defaults (threat_models.py)
        alive = robust.nonzero().squeeze(1)
        if alive.numel() == 0:
            break
        recs = evaluate_threat(defense, sub_tm, x[alive], y[alive], idx[alive], ctx, clean_pred[alive])
        err = next((r[ATTACK_ERROR] for r in recs if r.get(ATTACK_ERROR)), "")
        if err:
            errors.append(f"{sub_tm.name}: {err}")
        for j, i in enumerate(alive.tolist()):
            rec = dict(recs[j])
            rec["fooled_by"] = sub_tm.name if not rec["robust"] else ""
            final[i] = rec
            if not rec["robust"]:
                robust[i] = False
    base = evaluate_threat(defense, CleanThreat(name="none"), x, y, idx, AttackContext(defense, ctx.device, ctx.seed),
                           clean_pred)
    out = [rec if rec is not None else dict(base[i], fooled_by="") for i, rec in enumerate(final)]
    if errors:  # a member that raised is no part of this worst case: each record names it
        for rec in out:
            rec.pop(ATTACK_ERROR, None)
            rec["flags"] = ";".join(dict.fromkeys([f for f in str(rec.get("flags") or "").split(";") if f]
                                                  + ["member_error"]))
            rec["member_errors"] = " | ".join(errors)
    return out
