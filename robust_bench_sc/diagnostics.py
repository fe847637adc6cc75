"""Automatic indicators that a robustness evaluation failed (gradient masking, attack failure).

``diagnose(defense, config)`` attacks the first N CIFAR-10 test images with a small native
PGD (the *plain* evaluation: exact gradients, no BPDA) and runs a set of named checks, each
registered in :data:`INDICATORS`. Every check returns an :class:`IndicatorResult` with a
status (``pass`` / ``warn`` / ``fail``, or ``skip`` when it does not apply), one line of
evidence, the indices of the flagged images where the check is per sample, and the numbers
behind it. A one-line verdict summarises them.

Sources: Pintor et al. 2022 ("Indicators of Attack Failure": silent success, incomplete
optimisation, transfer failure, unavailable gradients, unstable predictions, unconstrained
attack failure); AutoAttack's automatic checks (randomness over 5 forward passes,
probabilities instead of logits, a gradient-free attack beating the white-box one);
Carlini et al. 2019 (accuracy decreasing monotonically in ε, more steps/restarts not
lowering it further, BPDA / EOT variants not beating the plain attack).

All attacks go through :func:`robust_bench_sc.evaluate.evaluate_threat`, so every number is
re-checked on the exact defense. Thresholds are in :class:`DiagnosticsConfig` and
documented in ``docs/diagnostics.md``.
"""

from __future__ import annotations

import datetime as _dt
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from robust_bench_sc.attacks.base import AttackContext
from robust_bench_sc.attacks.pgd import margin_loss, random_start
from robust_bench_sc.config import validate_threat_model
from robust_bench_sc.defense import IDENTITY_BPDA, Capabilities, Defense
from robust_bench_sc.registry import Registry

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
_ORDER = {SKIP: 0, PASS: 1, WARN: 2, FAIL: 3}

# categories drive the verdict
MASKING, OPTIMISATION, RANDOMNESS = "masking", "optimisation", "randomness"


# --------------------------------------------------------------------------- configuration
@dataclass
class DiagnosticsConfig:
    """Every budget and threshold of ``scbench diagnose`` (all are CLI options)."""

    n_images: int = 50
    seed: int = 0
    device: str = "cpu"
    batch_size: int = 100
    norm: str = "linf"
    epsilon: float = 8 / 255
    # the plain evaluation being diagnosed (native PGD, exact gradients)
    steps: int = 20
    restarts: int = 1
    step_size: str = "epsilon/4"
    # BPDA stand-in to compare with / to propose (None: the defense's default, else identity)
    bpda: str | None = None
    eot: int = 5  # EOT passes for randomised defenses
    # Carlini et al.: ε sweep (multiples of ε) and a stronger attack
    eps_factors: tuple[float, ...] = (0.5, 2.0)
    sweep_steps: int = 10
    strong_steps: int = 40
    strong_restarts: int = 1
    # Pintor et al.: unconstrained attack, noise draws
    unconstrained_steps: int = 5
    noise_draws: int = 10
    noise_radius: float | None = None  # default ε/10
    # AutoAttack: forward passes for the randomness check; gradient-free attack budget
    random_passes: int = 5
    gradient_free: str = "auto"  # auto (Square via pyautoattack, else random search), square, random_search, none
    queries: int = 100
    # thresholds (fractions of the N images unless said otherwise)
    fail_gain: float = 0.10  # another attack fools ≥ this share of the images the plain attack missed → fail
    warn_gain: float = 0.04
    min_gain_images: int = 2  # ... and at least this many images
    silent_fail: float = 0.05
    incomplete_tail: float = 0.05  # loss gain in the last quarter / total loss gain
    incomplete_fail: float = 0.25  # share of unfooled samples still improving → fail
    unstable_rel: float = 0.10  # |Δmargin| / max(|margin|, 1) under noise
    unstable_fail: float = 0.10
    gradient_fail: float = 0.10  # share of images with a zero / NaN / Inf gradient → fail
    unconstrained_fail: float = 0.10  # robust accuracy at ε = whole range above chance → fail
    transfer_fail: float = 0.50  # share of surrogate successes that do not transfer → fail
    transfer_warn: float = 0.20
    monotone_tol: int = 1  # images of slack before a non-monotone ε curve fails
    skip: tuple[str, ...] = ()

    @property
    def radius(self) -> float:
        return self.noise_radius if self.noise_radius is not None else self.epsilon / 10

    @property
    def whole_range(self) -> float:
        """ε covering the whole [0, 1] input box."""
        d = 3 * 32 * 32
        return {"linf": 1.0, "l2": math.sqrt(d), "l1": float(d)}[self.norm]


@dataclass
class IndicatorResult:
    name: str
    title: str
    source: str
    category: str
    status: str
    evidence: str
    flagged: list[int] | None = None  # dataset indices of flagged images (per-sample checks)
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Indicator:
    name: str
    title: str
    source: str
    category: str
    fn: Callable[["DiagnosticRun"], IndicatorResult]


INDICATORS: Registry = Registry("diagnostic indicator")


def indicator(name: str, title: str, source: str, category: str):
    """Register ``fn(run) -> (status, evidence, flagged, metrics)`` as a named check."""

    def deco(fn):
        INDICATORS.register(name, Indicator(name, title, source, category, fn))
        return fn

    return deco


# --------------------------------------------------------------------------- shared state
class DiagnosticRun:
    """Data, defense and lazily computed attack records shared by the checks."""

    def __init__(self, defense: Defense, cfg: DiagnosticsConfig, log: Callable[[str], None] | None = None):
        from robust_bench_sc.data import load_test
        from robust_bench_sc.evaluate import predict

        self.defense = defense
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        defense.to(self.device).eval()
        split = load_test(cfg.n_images)
        self.x, self.y, self.idx = split.x, split.y, split.idx
        self.n = int(self.y.shape[0])
        self.log = log or (lambda s: None)
        self.clean_pred = predict(defense, self.x, cfg.batch_size, self.device)
        self.correct = self.clean_pred == self.y
        self._cache: dict[str, Any] = {}
        self.attack_seconds: dict[str, float] = {}

    # -- helpers ------------------------------------------------------------------------
    @property
    def randomised(self) -> bool:
        return bool(self.defense.capabilities.randomised)

    @property
    def bpda_name(self) -> str | None:
        """The stand-in compared with / proposed: --bpda, else the default, else identity."""
        if self.defense.preprocess is None:
            return None
        return self.cfg.bpda or self.defense.capabilities.default_bpda or IDENTITY_BPDA

    def pct(self, k: int | float) -> str:
        return f"{100.0 * k / max(self.n, 1):.1f}%"

    def threat(self, **kw):
        d = {"batch_size": self.cfg.batch_size}
        if self.randomised:
            d.update(eot=self.cfg.eot, recheck=self.cfg.random_passes)
        d.update(kw)
        return validate_threat_model(d, "diagnostics")

    def pgd(self, **kw):
        d = dict(attack="pgd", norm=self.cfg.norm, epsilon=self.cfg.epsilon, steps=self.cfg.steps,
                 restarts=self.cfg.restarts, step_size=self.cfg.step_size)
        d.update(kw)
        return self.threat(**d)

    def evaluate(self, key: str, threat, subset: torch.Tensor | None = None, ctx: AttackContext | None = None):
        """Records of ``threat`` (cached under ``key``), on all images or the ``subset`` mask."""
        from robust_bench_sc.evaluate import evaluate_threat

        if key in self._cache:
            return self._cache[key]
        sel = torch.arange(self.n) if subset is None else subset.nonzero().squeeze(1)
        t0 = time.perf_counter()
        self.log(f"attack {key}: {threat.kind} on {sel.numel()} images")
        if sel.numel() == 0:
            recs = []
        else:
            ctx = ctx or AttackContext(self.defense, self.device, self.cfg.seed)
            recs = evaluate_threat(self.defense, threat, self.x[sel], self.y[sel], self.idx[sel], ctx,
                                   self.clean_pred[sel])
        self.attack_seconds[key] = round(time.perf_counter() - t0, 2)
        self._cache[key] = recs
        return recs

    def robust_mask(self, recs, subset: torch.Tensor | None = None) -> torch.Tensor:
        """Boolean per image (all N): robust under ``recs`` (images outside a subset: False)."""
        out = torch.zeros(self.n, dtype=torch.bool)
        pos = {int(i): j for j, i in enumerate(self.idx.tolist())}
        for r in recs:
            out[pos[r["index"]]] = bool(r["robust"])
        return out

    def base(self):
        """The plain evaluation: native PGD, exact gradients, no BPDA."""
        # the last iterate, as plain PGD returns it: silent_success reports what that loses
        return self.evaluate("plain_pgd", self.pgd(name="diag_plain_pgd", keep_adversarial_iterate=False))

    def base_robust(self) -> torch.Tensor:
        return self.robust_mask(self.base())

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for i in range(0, x.shape[0], self.cfg.batch_size):
                out.append(self.defense(x[i: i + self.cfg.batch_size].to(self.device)).float().cpu())
        return torch.cat(out)

    def clean_logits(self) -> torch.Tensor:
        """One forward pass on the clean images (cached; shared by several checks)."""
        if "clean_logits" not in self._cache:
            self._cache["clean_logits"] = self.logits(self.x)
        return self._cache["clean_logits"]

    def gain_over_plain(self, key: str, what: str, threat=None, recs=None, **metrics):
        """The indicator result for "``what`` (``threat``, or its ``recs``) on the images the
        plain PGD missed": status by the gain rule, evidence, the images it fooled there,
        and metrics (``gained`` plus ``metrics``)."""
        survivors = self.base_robust()
        if recs is None:
            recs = self.evaluate(key, threat, subset=survivors)
        still = self.robust_mask(recs)
        mask = survivors & ~still
        k = int(mask.sum())
        ev = (f"{what} fooled {k}/{int(survivors.sum())} images PGD-{self.cfg.steps} missed (robust accuracy "
              f"{self.pct(int(survivors.sum()))} → {self.pct(int((survivors & still).sum()))})")
        return self.gain_status(k), ev, _flagged(self, mask), {"gained": k, **metrics}

    def gain_status(self, gained: int) -> str:
        """Status for 'another attack fooled ``gained`` images the plain attack missed'."""
        c = self.cfg
        if gained >= max(c.min_gain_images, math.ceil(c.fail_gain * self.n)):
            return FAIL
        if gained >= max(c.min_gain_images, math.ceil(c.warn_gain * self.n)):
            return WARN
        return PASS


def _flagged(run: DiagnosticRun, mask: torch.Tensor) -> list[int]:
    return [int(i) for i in run.idx[mask].tolist()]


def _rec_col(recs, key, default=float("nan")) -> torch.Tensor:
    return torch.tensor([default if r.get(key) is None else float(r[key]) for r in recs], dtype=torch.float64)


# --------------------------------------------------------------------------- Pintor et al.
@indicator("silent_success", "silent success", "Pintor et al. 2022", OPTIMISATION)
def _silent_success(run: DiagnosticRun):
    recs = run.base()
    it = _rec_col(recs, "iterate_fooled", 0.0) > 0
    attacked = torch.tensor([r["attacked"] for r in recs])
    fooled = torch.tensor([r["fooled"] for r in recs])
    mask = it & attacked & ~fooled
    k, na = int(mask.sum()), int(attacked.sum())
    status = FAIL if k >= max(1, math.ceil(run.cfg.silent_fail * run.n)) else WARN if k else PASS
    ev = (f"{k}/{na} attacked images had an adversarial PGD iterate but the returned point is not adversarial"
          + (f" (robust accuracy overstated by {run.pct(k)}; keep the adversarial iterate: "
                   f"keep_adversarial_iterate, on by default in the native engine)" if k else ""))
    return status, ev, _flagged(run, mask), {"silent": k, "attacked": na}


@indicator("incomplete_optimisation", "incomplete optimisation", "Pintor et al. 2022", OPTIMISATION)
def _incomplete(run: DiagnosticRun):
    recs = run.base()
    first, q3, last = (_rec_col(recs, k) for k in ("loss_first", "loss_3q", "loss_last"))
    fooled = torch.tensor([r["fooled"] for r in recs])
    attacked = torch.tensor([r["attacked"] for r in recs])
    ok = attacked & ~fooled & torch.isfinite(first) & torch.isfinite(q3) & torch.isfinite(last)
    total = (last - first).abs().clamp_min(1e-3)
    tail = last - q3
    mask = ok & (tail > run.cfg.incomplete_tail * total) & (tail > 1e-3)
    k, m = int(mask.sum()), int(ok.sum())
    frac = k / m if m else 0.0
    status = FAIL if frac > run.cfg.incomplete_fail else WARN if k >= max(2, math.ceil(0.05 * run.n)) else PASS
    ev = (f"{k}/{m} images the attack missed still gained > {run.cfg.incomplete_tail:.0%} of their loss gain "
          f"in the last quarter of {run.cfg.steps} steps" + (" (increase steps)" if status != PASS else ""))
    return status, ev, _flagged(run, mask), {"still_improving": k, "unfooled": m,
                                              "median_tail_ratio": float((tail[ok] / total[ok]).median()) if m else None}


def _surrogate(run: DiagnosticRun) -> Defense:
    d = run.defense
    name = run.bpda_name
    stand_in = d.stand_in(name)
    return Defense(name=f"{d.name}/surrogate[{name}]", classifier=d.classifier,
                   preprocess=None if name == IDENTITY_BPDA else stand_in,
                   capabilities=Capabilities(differentiable=True, randomised=d.capabilities.randomised,
                                             input_range=d.capabilities.input_range))


@indicator("transfer_failure", "transfer failure", "Pintor et al. 2022", MASKING)
def _transfer_failure(run: DiagnosticRun):
    if run.defense.preprocess is None:
        return SKIP, "no preprocess, hence no BPDA surrogate", None, {}
    label = "diagnostics-surrogate"
    ctx = AttackContext(run.defense, run.device, run.cfg.seed)
    ctx.cache[f"transfer-source:{label}"] = _surrogate(run).to(run.device).eval()
    craft = dict(attack="pgd", norm=run.cfg.norm, epsilon=run.cfg.epsilon, steps=run.cfg.steps,
                 restarts=run.cfg.restarts, step_size=run.cfg.step_size)
    threat = run.threat(attack="transfer", name="diag_transfer", source=label, craft=craft)
    recs = run.evaluate("transfer_from_surrogate", threat, ctx=ctx)
    src = _rec_col(recs, "source_fooled", 0.0) > 0
    fooled = torch.tensor([r["fooled"] for r in recs])
    attacked = torch.tensor([r["attacked"] for r in recs])
    mask = attacked & src & ~fooled
    k, s = int(mask.sum()), int((attacked & src).sum())
    frac = k / s if s else 0.0
    status = FAIL if s and frac >= run.cfg.transfer_fail else WARN if s and frac >= run.cfg.transfer_warn else PASS
    ev = (f"{k}/{s} images adversarial on the surrogate (stand-in {run.bpda_name!r}) are not adversarial on the "
          f"exact defense" + (": the stand-in is a poor approximation" if status == FAIL else ""))
    return status, ev, _flagged(run, mask), {"surrogate_fooled": s, "not_transferred": k}


def _input_gradients(run: DiagnosticRun, model: torch.nn.Module) -> tuple[torch.Tensor, str | None]:
    """Per-image CE input gradients of ``model`` (None rows: graph broken)."""
    grads = []
    for i in range(0, run.n, run.cfg.batch_size):
        xb = run.x[i: i + run.cfg.batch_size].to(run.device).clone().requires_grad_(True)
        yb = run.y[i: i + run.cfg.batch_size].to(run.device)
        try:
            with torch.enable_grad():
                out = model(xb)
                if not out.requires_grad:
                    return torch.zeros_like(run.x), "the output does not depend on the input in the autograd graph"
                (g,) = torch.autograd.grad(F.cross_entropy(out, yb, reduction="sum"), xb, allow_unused=True)
        except RuntimeError as exc:
            return torch.zeros_like(run.x), f"backward raised: {str(exc).splitlines()[0][:120]}"
        if g is None:
            return torch.zeros_like(run.x), "the input is not part of the autograd graph"
        grads.append(g.detach().cpu())
    return torch.cat(grads), None


def _bad_gradients(g: torch.Tensor) -> dict[str, torch.Tensor]:
    f = g.flatten(1)
    nonfinite = ~torch.isfinite(f).all(1)
    zero = (f == 0).all(1)
    return {"zero": zero & ~nonfinite, "nonfinite": nonfinite, "bad": zero | nonfinite}


@indicator("unavailable_gradients", "unavailable gradients", "Pintor et al. 2022; AutoAttack", MASKING)
def _unavailable_gradients(run: DiagnosticRun):
    exact_model = run.defense.attack_model(bpda=None).to(run.device).eval()
    g, broken = _input_gradients(run, exact_model)
    b = _bad_gradients(g)
    bad = b["bad"] if broken is None else torch.ones(run.n, dtype=torch.bool)
    k = int(bad.sum())
    metrics: dict[str, Any] = {"bad": k, "zero": int(b["zero"].sum()), "nonfinite": int(b["nonfinite"].sum()),
                               "broken_graph": broken}
    ev = (f"exact defense: graph broken ({broken})" if broken else
          f"exact defense: {int(b['zero'].sum())}/{run.n} zero, {int(b['nonfinite'].sum())}/{run.n} NaN/Inf input gradients")
    if run.bpda_name is not None:
        sm = run.defense.attack_model(bpda=run.bpda_name).to(run.device).eval()
        g2, broken2 = _input_gradients(run, sm)
        b2 = _bad_gradients(g2)
        k2 = run.n if broken2 else int(b2["bad"].sum())
        metrics.update(bpda=run.bpda_name, bpda_bad=k2, bpda_fixes=bool(k and k2 < k))
        ev += f"; with bpda {run.bpda_name!r}: {k2}/{run.n} unusable" + (" (BPDA fixes it)" if k and k2 < k else "")
    status = FAIL if k >= max(1, math.ceil(run.cfg.gradient_fail * run.n)) else WARN if k else PASS
    return status, ev, _flagged(run, bad), metrics


@indicator("unstable_predictions", "unstable predictions", "Pintor et al. 2022", MASKING)
def _unstable(run: DiagnosticRun):
    c = run.cfg
    base = margin_loss(run.clean_logits(), run.y)
    g = torch.Generator().manual_seed(c.seed + 17)
    worst = torch.zeros(run.n, dtype=torch.float64)
    for _ in range(c.noise_draws):
        noise = random_start(run.x, c.norm if c.norm != "l1" else "l2", c.radius, g)
        m = margin_loss(run.logits((run.x + noise).clamp(0, 1)), run.y)
        worst = torch.maximum(worst, (m - base).abs().double())
    rel = worst / base.abs().double().clamp_min(1.0)
    mask = rel > c.unstable_rel
    k = int(mask.sum())
    status = FAIL if k >= max(1, math.ceil(c.unstable_fail * run.n)) else WARN if k else PASS
    ev = (f"{k}/{run.n} images: margin moved by > {c.unstable_rel:.0%} of max(abs(margin), 1) under {c.noise_draws} "
          f"uniform noise draws of radius {c.radius:.4g}; median change {float(rel.median()):.3g}")
    return status, ev, _flagged(run, mask), {"unstable": k, "median_rel_change": float(rel.median()),
                                              "max_rel_change": float(rel.max())}


@indicator("unconstrained_attack", "unconstrained attack failure", "Pintor et al. 2022; ART", MASKING)
def _unconstrained(run: DiagnosticRun):
    c = run.cfg
    t = run.pgd(name="diag_unconstrained", epsilon=c.whole_range, steps=c.unconstrained_steps, restarts=1,
                step_size="epsilon/4", random_start=False)
    recs = run.evaluate("unconstrained_pgd", t)
    robust = run.robust_mask(recs)
    k = int(robust.sum())
    run._cache["acc_unconstrained"] = k / run.n
    status = FAIL if k / run.n > c.unconstrained_fail else WARN if k else PASS
    ev = (f"PGD with ε = whole input range ({c.whole_range:g}, {c.unconstrained_steps} steps, no random start): "
          f"robust accuracy {run.pct(k)} (must be ~0%)")
    return status, ev, _flagged(run, robust), {"robust_accuracy": k / run.n}


# --------------------------------------------------------------------------- AutoAttack checks
@indicator("randomness", "randomised outputs", "AutoAttack checks", RANDOMNESS)
def _randomness(run: DiagnosticRun):
    outs = torch.stack([run.clean_logits()] + [run.logits(run.x) for _ in range(run.cfg.random_passes - 1)])
    spread = (outs - outs[0:1]).abs().flatten(2).amax(dim=(0, 2))
    scale = outs[0].abs().flatten(1).amax(1).clamp_min(1.0)
    mask = spread > 1e-5 * scale
    preds_vary = (outs.argmax(2) != outs[0:1].argmax(2)).any(0)
    k = int(mask.sum())
    declared = run.randomised
    if k and not declared:
        status, ev = FAIL, (f"{k}/{run.n} images get different outputs over {run.cfg.random_passes} forward passes "
                            f"({int(preds_vary.sum())} change prediction) but the defense does not declare "
                            f"randomised=True: attacks ran without EOT and successes were not re-checked")
    elif k:
        status, ev = PASS, (f"randomised (declared): {k}/{run.n} outputs vary, {int(preds_vary.sum())} predictions; "
                            f"attacks use eot={run.cfg.eot}, recheck={run.cfg.random_passes}")
    elif declared:
        status, ev = WARN, f"declared randomised but {run.cfg.random_passes} forward passes are identical"
    else:
        status, ev = PASS, f"deterministic: {run.cfg.random_passes} forward passes identical"
    return status, ev, _flagged(run, mask), {"varying": k, "prediction_varying": int(preds_vary.sum()),
                                              "max_spread": float(spread.max())}


@indicator("probability_outputs", "probabilities instead of logits", "AutoAttack checks", MASKING)
def _probabilities(run: DiagnosticRun):
    out = run.clean_logits()
    in_unit = bool(((out >= -1e-6) & (out <= 1 + 1e-6)).all())
    sums_one = bool(((out.sum(1) - 1).abs() < 1e-3).all())
    if in_unit and sums_one:
        return FAIL, ("outputs are in [0, 1] and rows sum to 1: the defense returns probabilities (softmax) where "
                      "logits are expected; CE on them saturates"), None, {"in_unit": True, "sums_to_one": True}
    if in_unit:
        return WARN, "all outputs lie in [0, 1]: check they are logits", None, {"in_unit": True, "sums_to_one": False}
    return PASS, f"logits (range {float(out.min()):.3g} .. {float(out.max()):.3g}, rows do not sum to 1)", None, \
        {"in_unit": False, "sums_to_one": sums_one}


def random_search_linf(defense: Defense, x: torch.Tensor, y: torch.Tensor, eps: float, queries: int,
                       seed: int, device: torch.device, p_init: float = 0.1) -> torch.Tensor:
    """A small score-based random search in the ℓ∞ ball (our own, Square-like).

    Start at a random vertex (±ε per pixel); each query redraws ±ε per channel inside one
    random square window, kept when the margin (max wrong − true logit) grows. The window
    shrinks from ``p_init`` of the image to one pixel over the budget.
    """
    g = torch.Generator().manual_seed(seed)
    n, ch, h, w = x.shape
    sign = torch.randint(0, 2, (n, ch, 1, w), generator=g).float() * 2 - 1
    delta = eps * sign.expand(n, ch, h, w).clone()

    def score(d, idx):
        with torch.no_grad():
            return margin_loss(defense((x[idx] + d).clamp(0, 1).to(device)).float().cpu(), y[idx])

    best = score(delta, torch.arange(n))
    for q in range(queries):
        active = (best <= 0).nonzero().squeeze(1)
        if active.numel() == 0:
            break
        frac = p_init * (1 - q / max(queries, 1)) ** 2
        s = max(1, int(round(math.sqrt(frac * h * w))))
        cand = delta[active].clone()
        for j in range(active.numel()):
            r = int(torch.randint(0, h - s + 1, (1,), generator=g))
            c_ = int(torch.randint(0, w - s + 1, (1,), generator=g))
            v = (torch.randint(0, 2, (ch, 1, 1), generator=g).float() * 2 - 1) * eps
            cand[j, :, r: r + s, c_: c_ + s] = v
        new = score(cand, active)
        better = new > best[active]
        delta[active[better]] = cand[better]
        best[active[better]] = new[better]
    return (x + delta).clamp(0, 1)


def _gradient_free_records(run: DiagnosticRun, subset: torch.Tensor) -> tuple[list[dict], str]:
    c = run.cfg
    note = ""
    if c.gradient_free in ("auto", "square") and c.norm in ("linf", "l2"):
        t = run.threat(attack="square", name="diag_square", backend="autoattack", norm=c.norm, epsilon=c.epsilon,
                       n_queries=c.queries)
        try:
            return run.evaluate("gradient_free", t, subset=subset), f"Square (pyautoattack, {c.queries} queries)"
        except Exception as exc:  # backend missing or failing: fall back to our random search
            if c.gradient_free == "square":
                raise
            note = f" (Square unavailable: {type(exc).__name__})"
            run._cache.pop("gradient_free", None)
    if c.norm != "linf":
        raise ValueError("the built-in random search is ℓ∞ only; use --gradient-free square for ℓ2")
    from robust_bench_sc.evaluate import predict

    t0 = time.perf_counter()
    sel = subset.nonzero().squeeze(1)
    recs = []
    if sel.numel():
        xs, ys = run.x[sel], run.y[sel]
        xa = random_search_linf(run.defense, xs, ys, c.epsilon, c.queries, c.seed, run.device)
        xa = torch.min(torch.max(xa, xs - c.epsilon), xs + c.epsilon).clamp(0, 1)  # re-check the budget
        passes = c.random_passes if run.randomised else 1
        preds = torch.stack([predict(run.defense, xa, c.batch_size, run.device) for _ in range(passes)])
        fooled = (preds != ys[None]).any(0)
        recs = [{"index": int(run.idx[i]), "robust": bool(run.correct[i]) and not bool(fooled[j])}
                for j, i in enumerate(sel.tolist())]
    run.attack_seconds["gradient_free"] = round(time.perf_counter() - t0, 2)
    return recs, f"random search ({c.queries} queries){note}"


@indicator("gradient_free_beats_whitebox", "gradient-free attack beats white-box", "AutoAttack checks", MASKING)
def _gradient_free(run: DiagnosticRun):
    if run.cfg.gradient_free == "none":
        return SKIP, "disabled (--gradient-free none)", None, {}
    recs, what = _gradient_free_records(run, run.base_robust())
    return run.gain_over_plain("gradient_free", what, recs=recs, attack=what)


# --------------------------------------------------------------------------- Carlini et al.
@indicator("epsilon_monotonicity", "accuracy not falling with ε", "Carlini et al. 2019", MASKING)
def _monotone(run: DiagnosticRun):
    c = run.cfg
    curve: dict[float, torch.Tensor] = {c.epsilon: run.base_robust()}
    for f in c.eps_factors:
        eps = c.epsilon * f
        recs = run.evaluate(f"pgd_eps_x{f:g}", run.pgd(name=f"diag_eps_x{f:g}", epsilon=eps, steps=c.sweep_steps))
        curve[eps] = run.robust_mask(recs)
    if "unconstrained_pgd" in run._cache:
        curve[c.whole_range] = run.robust_mask(run._cache["unconstrained_pgd"])
    eps_sorted = sorted(curve)
    accs = [int(curve[e].sum()) for e in eps_sorted]
    violations = [(eps_sorted[i], eps_sorted[i + 1]) for i in range(len(accs) - 1)
                  if accs[i + 1] > accs[i] + c.monotone_tol]
    # per sample: robust at a larger ε but fooled at a smaller one
    mask = torch.zeros(run.n, dtype=torch.bool)
    for i in range(len(eps_sorted)):
        for j in range(i + 1, len(eps_sorted)):
            mask |= curve[eps_sorted[j]] & ~curve[eps_sorted[i]]
    big = [e for e in eps_sorted if e > c.epsilon and e < c.whole_range]
    flat = bool(big) and accs[eps_sorted.index(c.epsilon)] > 0 and \
        int(curve[big[-1]].sum()) >= accs[eps_sorted.index(c.epsilon)]
    if violations:
        status = FAIL
    elif flat:
        status = WARN
    else:
        status = PASS
    pts = ", ".join(f"{e * 255:.3g}/255: {run.pct(a)}" if e < 1 or c.norm != "linf" else f"{e:g}: {run.pct(a)}"
                    for e, a in zip(eps_sorted, accs))
    ev = f"robust accuracy vs ε: {pts}"
    if violations:
        ev += " (increases with ε)"
    elif flat:
        ev += f" (no drop from ε to {big[-1] / c.epsilon:g}ε)"
    return status, ev, _flagged(run, mask), {"curve": {f"{e:.6g}": a / run.n for e, a in zip(eps_sorted, accs)}}


@indicator("more_iterations", "more steps / restarts still help", "Carlini et al. 2019", OPTIMISATION)
def _more_iterations(run: DiagnosticRun):
    c = run.cfg
    t = run.pgd(name="diag_strong_pgd", steps=c.strong_steps, restarts=c.strong_restarts)
    return run.gain_over_plain("strong_pgd", f"PGD {c.strong_steps} steps × {c.strong_restarts} restarts "
                               f"(vs {c.restarts})", t)


@indicator("single_step_beats_iterative", "single-step attack beats the iterative one", "Carlini et al. 2019; Athalye et al. 2018",
           MASKING)
def _single_step(run: DiagnosticRun):
    """FGSM (one step of size ε from the clean point, no random start) on the images the
    plain PGD missed: an iterative attack must be at least as strong as its first step, so
    FGSM succeeding where PGD fails points at a loss surface that misleads small steps
    (gradient masking) rather than at robustness."""
    t = run.pgd(name="diag_fgsm", steps=1, restarts=1, step_size=run.cfg.epsilon, random_start=False)
    return run.gain_over_plain("fgsm", "FGSM (1 step of ε)", t)


@indicator("bpda_eot_beats_plain", "BPDA / EOT beats the plain attack", "Carlini et al. 2019; Athalye et al. 2018",
           MASKING)
def _bpda_eot(run: DiagnosticRun):
    c = run.cfg
    if run.defense.preprocess is None and not run.randomised:
        return SKIP, "no preprocess and deterministic: plain gradients are the exact ones", None, {}
    kw: dict[str, Any] = {}
    parts = []
    if run.defense.preprocess is not None:
        kw["bpda"] = run.bpda_name
        parts.append(f"bpda {run.bpda_name!r}")
    if run.randomised:
        kw["eot"] = max(c.eot * 2, 2)
        parts.append(f"eot {kw['eot']}")
    t = run.pgd(name="diag_bpda_eot_pgd", **kw)
    result = run.gain_over_plain("bpda_eot_pgd", f"PGD-{c.steps} with {', '.join(parts)}", t,
                                 variant=", ".join(parts))
    run._cache["bpda_gain"] = result[3]["gained"]
    return result


# --------------------------------------------------------------------------- driver
@dataclass
class DiagnosticsReport:
    defense: str
    config: dict[str, Any]
    n_images: int
    clean_accuracy: float
    plain_robust_accuracy: float
    indicators: list[IndicatorResult]
    verdict: str
    verdict_code: str
    wall_seconds: float
    attack_seconds: dict[str, float]
    created_at: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return d

    def status_of(self, name: str) -> str:
        for r in self.indicators:
            if r.name == name:
                return r.status
        raise KeyError(name)


def verdict(results: list[IndicatorResult], run: DiagnosticRun | None = None) -> tuple[str, str]:
    fails = {r.name: r for r in results if r.status == FAIL}
    warns = [r.name for r in results if r.status == WARN]
    by_cat = lambda cat: [n for n, r in fails.items() if r.category == cat]  # noqa: E731
    masking, optim, rnd = by_cat(MASKING), by_cat(OPTIMISATION), by_cat(RANDOMNESS)
    if masking:
        advice = []
        if run is not None and run.bpda_name is not None:
            advice.append(f"use bpda {run.bpda_name!r} (or bpda: auto)")
        if run is not None and (run.randomised or rnd):
            advice.append(f"eot ≥ {run.cfg.eot}")
        if not advice:
            advice.append("use gradient-free (square) and adaptive attacks")
        return "gradient_masking", f"gradient masking suspected ({', '.join(masking)}): {'; '.join(advice)}"
    if rnd:
        return "randomness", "undeclared randomness: declare randomised=True and evaluate with eot and recheck"
    if optim:
        return "attack_failure", (f"attack failure ({', '.join(optim)}): increase steps / restarts and keep the "
                                  f"best iterate")
    if warns:
        return "trustworthy_with_warnings", f"evaluation plausibly trustworthy; warnings: {', '.join(warns)}"
    return "trustworthy", "evaluation trustworthy"


def diagnose(defense: Defense, cfg: DiagnosticsConfig | None = None, log: Callable[[str], None] | None = None,
             only: list[str] | None = None) -> DiagnosticsReport:
    """Run every registered indicator (or ``only`` those) on ``defense``."""
    cfg = cfg or DiagnosticsConfig()
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    run = DiagnosticRun(defense, cfg, log)
    names = only or INDICATORS.names()
    # the unconstrained attack feeds the ε curve: run it first
    names = sorted(names, key=lambda n: (n != "unconstrained_attack", _PREFERRED.index(n) if n in _PREFERRED else 99, n))
    results = []
    for name in names:
        ind: Indicator = INDICATORS.get(name)
        if name in cfg.skip:
            results.append(IndicatorResult(name, ind.title, ind.source, ind.category, SKIP, "skipped (--skip)"))
            continue
        t1 = time.perf_counter()
        if log:
            log(f"indicator {name}")
        status, evidence, flagged, metrics = ind.fn(run)
        results.append(IndicatorResult(name, ind.title, ind.source, ind.category, status, evidence, flagged, metrics,
                                       round(time.perf_counter() - t1, 2)))
    results.sort(key=lambda r: (_PREFERRED.index(r.name) if r.name in _PREFERRED else 99, r.name))
    code, text = verdict(results, run)
    base_acc = float(run.base_robust().float().mean()) if "plain_pgd" in run._cache else float("nan")
    return DiagnosticsReport(
        defense=defense.name, config=asdict(cfg), n_images=run.n,
        clean_accuracy=float(run.correct.float().mean()), plain_robust_accuracy=base_acc,
        indicators=results, verdict=text, verdict_code=code, wall_seconds=round(time.perf_counter() - t0, 1),
        attack_seconds=dict(run.attack_seconds), created_at=_dt.datetime.now().isoformat(timespec="seconds"))


_PREFERRED = ["silent_success", "incomplete_optimisation", "transfer_failure", "unavailable_gradients",
              "unstable_predictions", "unconstrained_attack", "randomness", "probability_outputs",
              "gradient_free_beats_whitebox", "epsilon_monotonicity", "more_iterations", "single_step_beats_iterative",
              "bpda_eot_beats_plain"]


# --------------------------------------------------------------------------- output
_ICON = {PASS: "pass", WARN: "WARN", FAIL: "FAIL", SKIP: "skip"}


def report_markdown(rep: DiagnosticsReport) -> str:
    c = rep.config
    lines = [
        f"# Diagnostics: {rep.defense}",
        "",
        f"First {rep.n_images} CIFAR-10 test images; plain evaluation: native PGD {c['norm']} "
        f"ε = {c['epsilon']:.6g}, {c['steps']} steps × {c['restarts']} restarts, step {c['step_size']}, no BPDA. "
        f"Clean accuracy {100 * rep.clean_accuracy:.1f}%, plain robust accuracy {100 * rep.plain_robust_accuracy:.1f}%. "
        f"Wall time {rep.wall_seconds:.0f} s.",
        "",
        "| indicator | source | status | evidence | flagged |",
        "|---|---|---|---|---|",
    ]
    for r in rep.indicators:
        fl = "—" if r.flagged is None else str(len(r.flagged))
        lines.append(f"| {r.title} (`{r.name}`) | {r.source} | **{_ICON[r.status]}** | {r.evidence.replace('|', '/')} | {fl} |")
    lines += ["", f"**Verdict:** {rep.verdict}", ""]
    return "\n".join(lines)


def save_report(rep: DiagnosticsReport, out_dir: str | Path, stem: str = "diagnostics") -> tuple[Path, Path]:
    from robust_bench_sc.storage import write_report_files

    return write_report_files(out_dir, stem, rep.to_dict(), report_markdown(rep))


def config_for_suite(suite, **overrides) -> DiagnosticsConfig:
    """Diagnostics settings for a suite: its seed, its first ℓ∞/ℓ2 budget, ≤ 50 images."""
    cfg = DiagnosticsConfig(seed=suite.seed, n_images=min(suite.data.n_images, DiagnosticsConfig.n_images))
    for t in suite.threat_models:
        eps, norm = t.epsilon_value, t.norm_name
        if eps is not None and norm in ("linf", "l2"):
            cfg.norm, cfg.epsilon = norm, float(eps)
            break
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def run_suite_diagnostics(suite, run_dir: str | Path, device: str = "cpu", console=None,
                          overrides: dict[str, Any] | None = None) -> dict[str, str]:
    """Diagnose every defense of ``suite``; writes ``diagnostics/<defense>.json/.md`` (resumable).

    ``diagnostics: active`` (or ``all``) in the suite runs the binarization test instead
    (or as well): ``diagnostics/binarization/<defense>/<threat>.json/.md``."""
    from robust_bench_sc.plugins import build_defense
    from robust_bench_sc.storage import read_json, safe_name

    verdicts: dict[str, str] = {}
    if suite.diagnostics in ("active", "all"):
        from robust_bench_sc.binarization import run_suite_binarization

        verdicts.update(run_suite_binarization(suite, run_dir, device=device, console=console))
        if suite.diagnostics == "active":
            return verdicts
    out = Path(run_dir) / "diagnostics"
    cfg = config_for_suite(suite, device=device, **(overrides or {}))
    for spec in suite.defenses:
        stem = safe_name(spec.label)
        path = out / f"{stem}.json"
        if path.is_file():
            try:
                old = read_json(path)
                if old.get("config") == _jsonable(asdict(cfg)):
                    verdicts[spec.label] = old["verdict"]
                    continue
            except ValueError:
                pass
        defense = build_defense(spec.ref, spec.params, name=spec.label)
        rep = diagnose(defense, cfg, log=(lambda s: console.print(f"  diagnostics {spec.label}: {s}")) if console else None)
        save_report(rep, out, stem)
        verdicts[spec.label] = rep.verdict
        if console:
            console.print(f"[bold]diagnostics[/] {spec.label}: {rep.verdict}")
    return verdicts


def _jsonable(obj):
    import json

    return json.loads(json.dumps(obj, default=str))
