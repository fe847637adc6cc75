"""The binarization test (Zimmermann, Brendel, Tramèr, Carlini, NeurIPS 2022): an *active*
check that an evaluation's attack finds adversarial examples that provably exist.

For each clean, correctly classified image x:

1. sample ``n_inner`` inner points uniformly in the threat model's ε-ball around x
   (radius ``inner_radius``·ε) and one target x̃ on the ball's surface, all inside [0, 1];
2. take the defense's features — everything up to the classifier's last linear layer,
   preprocess / frontend included (:meth:`Defense.feature_split`) — of x, the inner
   points and x̃ on the *exact* forward pass;
3. fit a two-class linear readout on them (x and inner points: class 0 "clean", x̃: class 1
   "adversarial"; class-balanced logistic regression on standardised features, folded back
   into one ``nn.Linear`` on the raw features). The fit is accepted only if the new network
   classifies x clean and x̃ adversarial; otherwise the sample is *untestable* (never a pass);
4. the two-class network keeps the defense's preprocess and BPDA stand-ins, so the threat
   model's own attack (same backend, budget, BPDA, EOT) runs against it unchanged, through
   :func:`robust_bench_sc.evaluate.evaluate_threat` and its independent re-check, on x;
5. the sample passes if the attack returns a point of the ε-ball (box, budget, re-check)
   that the two-class network classifies adversarial.

x̃ is such a point by construction, so a correct attack passes every testable sample. The
evaluation *fails the test* when the pass rate over testable samples is below
``pass_threshold`` (docs/diagnostics.md, "Binarization test").
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robust_bench_sc.attacks.base import AttackContext
from robust_bench_sc.predictions import predicted
from robust_bench_sc.datasets import images_of_settings
from robust_bench_sc.defense import Defense, NoFeatureSplit
from robust_bench_sc.norms import NORMS, Norm
from robust_bench_sc.subsets import describe_subset
from robust_bench_sc.threat_models import THREAT_MODELS

PASS, FAIL, NOT_APPLICABLE = "pass", "fail", "not_applicable"

# kinds with an ε-ball the attack must stay in, and why the others have none: each schema's
# ``no_epsilon_ball`` (threat_models.py)
_NO_BALL = {k: cls.no_epsilon_ball for k, cls in THREAT_MODELS.items() if cls.no_epsilon_ball}
_BALL_KINDS = tuple(k for k in THREAT_MODELS if k not in _NO_BALL)


class NotApplicable(ValueError):
    """The binarization test does not apply (one line: why)."""


@dataclass
class BinarizationConfig:
    n_samples: int = 100  # correctly classified images tested: the first ones in the split's order
    max_images: int = 1000  # search the first this many images of the split for them
    n_inner: int = 99
    inner_radius: float = 1.0  # inner points uniform in the ball of radius inner_radius·ε
    pass_threshold: float = 0.95  # pass rate below this over testable samples: the evaluation fails
    fit_iters: int = 100  # L-BFGS iterations of the readout fit
    l2: float = 1e-3  # ridge on the standardised readout weights
    feature_batch: int = 128
    seed: int = 0
    device: str = "cpu"
    # the images: a dataset plug-in (None: cifar10_npz), its split (None: test) and its folder or file
    # (None: $SCBENCH_DATA, else shared/data/cifar10)
    dataset: str | None = None
    split: str | None = None
    data_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The settings as a report records them (``binarization.json``'s ``config``); ``split`` only
        when given, so a report on the default split reads as it did before splits were an option."""
        return {k: v for k, v in asdict(self).items() if not (k == "split" and v is None)}


@dataclass
class BinarizationReport:
    defense: str
    threat_model: dict[str, Any]
    config: dict[str, Any]
    status: str
    evidence: str
    n_images_scanned: int
    n_samples: int
    n_testable: int
    n_untestable: int
    n_passed: int
    pass_rate: float | None
    ci95: tuple[float, float] | None  # Wilson, in percent
    tested_indices: list[int]
    failed_indices: list[int]
    untestable_indices: list[int]
    samples: list[dict[str, Any]]
    wall_seconds: float
    created_at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- applicability
def check_applicable(defense: Defense, threat) -> None:
    """Raise :class:`NotApplicable` with the reason when the test cannot run."""
    kind = threat.kind
    if kind in _NO_BALL:
        raise NotApplicable(f"binarization test not applicable to threat model {threat.name!r}: {_NO_BALL[kind]}")
    if kind not in _BALL_KINDS:
        raise NotApplicable(f"binarization test not applicable to threat model {threat.name!r} (attack {kind!r}); "
                            f"it applies to: {', '.join(_BALL_KINDS)}")
    eps = threat.epsilon_value
    if eps is None:
        raise NotApplicable(f"binarization test not applicable to threat model {threat.name!r}: it has no ε "
                            f"(a minimum-norm attack without a budget has no ε-ball)")
    if not eps > 0:
        raise NotApplicable(f"binarization test not applicable to threat model {threat.name!r}: ε = {eps:g}, the "
                            f"ε-ball is the clean point alone, so no adversarial example can be planted in it")
    if Norm.get(threat.norm_name) is None:
        raise NotApplicable(f"binarization test not applicable to threat model {threat.name!r}: norm "
                            f"{threat.norm_name!r}; allowed: {', '.join(NORMS)}")
    if defense.capabilities.randomised and threat.eot < 2:
        raise NotApplicable(f"binarization test not applicable: defense {defense.name!r} is randomised and threat "
                            f"model {threat.name!r} has eot: {threat.eot}; without EOT the readout is fitted and "
                            f"attacked on single noisy passes, so a miss says nothing about the attack (set eot ≥ 2)")


def check_epsilon_raw(value: Any, where: str) -> None:
    """ε of a raw threat-model mapping (before validation): 0 → the one-line reason."""
    from robust_bench_sc.threat_models import parse_number

    if value is None:
        return
    try:
        eps = float(parse_number(value)) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        return  # the schema reports it
    if eps == 0:
        raise NotApplicable(f"{where}: binarization test not applicable with ε = 0: the ε-ball is the clean point "
                            f"alone, so no adversarial example can be planted in it")


# --------------------------------------------------------------------------- sampling
def sample_points(x: torch.Tensor, norm: str, eps: float, n_inner: int, inner_radius: float,
                  g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_inner`` inner points uniform in the ball of radius ``inner_radius``·ε and one point
    on the ε-sphere around the single image ``x`` (C×H×W), all clipped to [0, 1] (clipping
    only shrinks every coordinate of the perturbation, so points stay in the ball)."""
    ball = Norm.of(norm)
    xs = x.unsqueeze(0).expand(n_inner, *x.shape)
    inner = (xs + inner_radius * ball.random_start(xs, eps, g)).clamp(0, 1)
    target = (x + ball.on_sphere(x, eps, g)).clamp(0, 1)
    return inner, target


# --------------------------------------------------------------------------- readout
def fit_readout(feats: torch.Tensor, labels: torch.Tensor, iters: int = 100, l2: float = 1e-3) -> nn.Linear:
    """Class-balanced logistic regression (labels 0/1) on standardised ``feats`` (N × d),
    returned as one ``nn.Linear(d, 2)`` on the raw features: rows ±w/2, so its two logits
    differ by the fitted score (standardisation folded into the weights)."""
    f = feats.double()
    y = labels.double()
    mu = f.mean(0)
    sd = f.std(0, unbiased=False)
    sd = torch.where(sd > 1e-8 * (1 + sd.max()), sd, torch.ones_like(sd))
    z = (f - mu) / sd
    n1 = float(y.sum())
    n0 = float(y.numel() - n1)
    if n0 == 0 or n1 == 0:
        raise ValueError("fit_readout needs both classes")
    wt = torch.where(y > 0, 0.5 / n1, 0.5 / n0)
    w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-10, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        s = z @ w + b
        loss = (wt * nn.functional.softplus(torch.where(y > 0, -s, s))).sum() + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        wr = w / sd
        br = b - (wr * mu).sum()
        lin = nn.Linear(f.shape[1], 2)
        lin.weight.copy_(torch.stack([-wr / 2, wr / 2]).to(feats.dtype))
        lin.bias.copy_(torch.stack([-br / 2, br / 2]).to(feats.dtype))
    for p in lin.parameters():
        p.requires_grad_(False)
    return lin


class TwoClassReadout(nn.Module):
    """``linear`` (d → 2: logit 0 "clean", logit 1 "adversarial") padded to the engine's ten
    CIFAR-10 logits: classes 2–9 get min(z₀, z₁) − 10⁴ (detached), so they are never
    predicted, carry no softmax mass and no gradient, and CE / CW losses are the two-class
    ones (the CW margin's "max other logit" is the other of the two)."""

    PAD = 1e4

    def __init__(self, linear: nn.Linear, n_classes: int = 10):
        super().__init__()
        self.linear, self.n_classes = linear, n_classes

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        z = self.linear(f)
        pad = (z.min(1, keepdim=True).values - self.PAD).detach().expand(-1, self.n_classes - 2)
        return torch.cat([z, pad], 1)


def binarized_defense(defense: Defense, split, readout: nn.Linear, tag: str = "") -> Defense:
    """The two-class network: the defense's preprocess and stand-ins, its features, ``readout``."""
    from robust_bench_sc.evaluate import N_CLASSES  # the engine checks for one logit per CIFAR-10 class

    return Defense(name=f"{defense.name}/binarized{tag}", classifier=split.with_readout(TwoClassReadout(readout, N_CLASSES)),
                   preprocess=defense.preprocess, bpda=dict(defense.bpda), capabilities=defense.capabilities,
                   description=f"binarization test of {defense.name}")


# --------------------------------------------------------------------------- driver
def _features(defense: Defense, split, x: torch.Tensor, passes: int, batch: int, device) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            xb = x[i: i + batch].to(device)
            acc = torch.zeros(())
            for _ in range(passes):
                h = defense.preprocess(xb) if defense.preprocess is not None else xb
                acc = acc + split.features(h).float()
            out.append((acc / passes).cpu())
    return torch.cat(out)


def binarization_test(defense: Defense, threat, cfg: BinarizationConfig | None = None,
                      log: Callable[[str], None] | None = None) -> BinarizationReport:
    """Run the binarization test of ``threat`` (a validated threat model) on ``defense``.

    Raises :class:`NotApplicable` (one line) when it does not apply."""
    from robust_bench_sc.data import load_dataset
    from robust_bench_sc.datasets import DEFAULT_DATASET, DEFAULT_SPLIT
    from robust_bench_sc.evaluate import evaluate_threat, predict
    from robust_bench_sc.stats import wilson_interval

    cfg = cfg or BinarizationConfig()
    if cfg.n_samples < 1 or cfg.n_inner < 1:
        raise ValueError(f"binarization test: n_samples and n_inner must be ≥ 1 (got {cfg.n_samples}, {cfg.n_inner})")
    if not 0 < cfg.inner_radius <= 1:
        raise ValueError(f"binarization test: inner_radius must be in (0, 1] (fraction of ε), got {cfg.inner_radius}")
    if not 0 < cfg.pass_threshold <= 1:
        raise ValueError(f"binarization test: pass_threshold must be in (0, 1], got {cfg.pass_threshold}")
    check_applicable(defense, threat)
    log = log or (lambda s: None)
    t0 = time.perf_counter()
    device = torch.device(cfg.device)
    defense.to(device).eval()
    split_data = load_dataset(cfg.dataset or DEFAULT_DATASET, cfg.data_dir, cfg.split or DEFAULT_SPLIT)
    split_data = split_data.take(list(range(min(cfg.max_images, len(split_data)))))
    passes = threat.recheck if defense.capabilities.randomised else 1
    feat_passes = threat.eot if defense.capabilities.randomised else 1
    found: list[torch.Tensor] = []  # scan in chunks: stop at the n_samples-th correct image
    for i in range(0, split_data.x.shape[0], 100):
        pred = predict(defense, split_data.x[i: i + 100], 100, device, n_classes=split_data.n_classes)
        found.append((pred == split_data.y[i: i + 100]).nonzero().squeeze(1) + i)
        if sum(t.numel() for t in found) >= cfg.n_samples:
            break
    correct = torch.cat(found)[: cfg.n_samples]
    if correct.numel() == 0:
        what = "test images" if cfg.split is None else split_data.images  # the split read, when one is named
        raise NotApplicable(f"binarization test: defense {defense.name!r} classifies none of the first "
                            f"{cfg.max_images} {what} correctly")
    n_scanned = int(correct[-1]) + 1
    x_all, idx_all = split_data.x[correct], split_data.idx[correct]
    with torch.no_grad():
        probe = x_all[:2].to(device)
        probe = defense.preprocess(probe) if defense.preprocess is not None else probe
    try:
        split = defense.feature_split(probe)
    except NoFeatureSplit as exc:
        raise NotApplicable(f"binarization test not applicable: {exc}") from None
    eps, norm = float(threat.epsilon_value), threat.norm_name
    samples: list[dict[str, Any]] = []
    for j in range(x_all.shape[0]):
        x, index = x_all[j], int(idx_all[j])
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + index)
        inner, target = sample_points(x, norm, eps, cfg.n_inner, cfg.inner_radius, g)
        pts = torch.cat([x[None], inner, target[None]])
        feats = _features(defense, split, pts, feat_passes, cfg.feature_batch, device)
        labels = torch.zeros(pts.shape[0], dtype=torch.long)
        labels[-1] = 1
        rec: dict[str, Any] = {"index": index, "label": int(split_data.y[correct[j]])}
        readout = fit_readout(feats, labels, cfg.fit_iters, cfg.l2).to(device)
        bdef = binarized_defense(defense, split, readout, f"[{index}]")
        with torch.no_grad():  # the fit on its own features (inner points: no second pass through the defense)
            inner_clean = float((TwoClassReadout(readout)(feats[1:-1].to(device)).argmax(1) == 0).float().mean())
        # acceptance on the two-class network itself, exact forward (every re-check pass)
        pair = torch.stack([x, target])
        p = torch.stack([predicted(bdef, pair, device=device) for _ in range(passes)])  # passes × 2
        x_clean, t_adv = bool((p[:, 0] == 0).all()), bool((p[:, 1] == 1).all())
        with torch.no_grad():
            lt = bdef(target[None].to(device)).float().cpu()[0]
        rec.update(inner_clean=round(inner_clean, 4), target_margin=float(lt[1] - lt[0]),
                   target_linf=float((target - x).abs().max()), target_l2=float((target - x).norm()),
                   target_l1=float((target - x).abs().sum()))
        if not (x_clean and t_adv):
            rec.update(testable=False, passed=None,
                       reason="readout does not separate: " + ("x classified adversarial" if not x_clean else
                                                               "x̃ classified clean"))
            samples.append(rec)
            log(f"image {index}: untestable")
            continue
        ctx = AttackContext(bdef, device, cfg.seed * 1_000_003 + index)
        y0 = torch.zeros(1, dtype=torch.long)
        r = evaluate_threat(bdef, threat, x[None], y0, idx_all[j: j + 1], ctx, torch.zeros(1, dtype=torch.long))[0]
        passed = bool(r["clean_correct"]) and not bool(r["robust"])
        rec.update(testable=True, passed=passed, reason="",
                   attack={k: r.get(k) for k in ("adv_pred", "fooled_frac", "linf", "l2", "l1", "flags",
                                                  "restarts_used", "image_steps", "claimed")})
        samples.append(rec)
        log(f"image {index}: {'pass' if passed else 'FAIL'}")
    testable = [s for s in samples if s["testable"]]
    k = sum(1 for s in testable if s["passed"])
    n = len(testable)
    untestable = [s["index"] for s in samples if not s["testable"]]
    failed = [s["index"] for s in testable if not s["passed"]]
    what = (f"{threat.name} ({threat.kind}:{threat.backend}, {norm} ε = {eps:.6g}"
            + (f", bpda {threat.bpda}" if threat.bpda else "") + (f", eot {threat.eot}" if threat.eot > 1 else "") + ")")
    ci: tuple[float, float] | None = None
    rate: float | None = None
    if n == 0:
        status = NOT_APPLICABLE
        evidence = (f"no testable sample: the readout separated none of {len(samples)} images "
                    f"({len(untestable)} untestable), so the test says nothing about {what}")
    else:
        rate = k / n
        lo, hi = wilson_interval(k, n)
        ci = (round(lo, 2), round(hi, 2))
        status = PASS if rate >= cfg.pass_threshold else FAIL
        evidence = (f"{what} found the planted adversarial example on {k}/{n} testable images "
                    f"({100 * rate:.1f}%, 95% CI {ci[0]:.1f}–{ci[1]:.1f}%; threshold {100 * cfg.pass_threshold:g}%); "
                    f"{len(untestable)} untestable")
    return BinarizationReport(
        defense=defense.name, threat_model=threat.model_dump(), config=cfg.to_dict(), status=status, evidence=evidence,
        n_images_scanned=n_scanned, n_samples=len(samples), n_testable=n, n_untestable=len(untestable), n_passed=k,
        pass_rate=rate, ci95=ci, tested_indices=[s["index"] for s in samples], failed_indices=failed,
        untestable_indices=untestable, samples=samples, wall_seconds=round(time.perf_counter() - t0, 1),
        created_at=_dt.datetime.now().isoformat(timespec="seconds"))


# --------------------------------------------------------------------------- output
def report_markdown(rep: BinarizationReport) -> str:
    c, t = rep.config, rep.threat_model
    lines = [
        f"# Binarization test: {rep.defense} × {t.get('name')}",
        "",
        f"Zimmermann et al. 2022. First {rep.n_samples} correctly classified images among the "
        f"{describe_subset(rep.n_images_scanned, images=images_of_settings(c))}; {c['n_inner']} inner points (radius {c['inner_radius']:g}·ε) "
        f"and one ε-sphere point per image; threshold {100 * c['pass_threshold']:g}%. Wall time "
        f"{rep.wall_seconds:.0f} s.",
        "",
        f"**{rep.status.upper()}**: {rep.evidence}",
        "",
        "| testable | untestable | passed | pass rate | 95% CI (Wilson) |",
        "|---|---|---|---|---|",
        f"| {rep.n_testable} | {rep.n_untestable} | {rep.n_passed} | "
        + (f"{100 * rep.pass_rate:.1f}% | {rep.ci95[0]:.1f}–{rep.ci95[1]:.1f}% |"
           if rep.pass_rate is not None and rep.ci95 is not None
           else "— | — |"),
        "",
        f"Failed images: {', '.join(map(str, rep.failed_indices)) or 'none'}. "
        f"Untestable images: {', '.join(map(str, rep.untestable_indices)) or 'none'}.",
        "",
        "Threat model: `" + ", ".join(f"{k}={v}" for k, v in t.items() if k not in ("description",)) + "`",
        "",
    ]
    return "\n".join(lines)


def save_report(rep: BinarizationReport, out_dir: str | Path, stem: str = "binarization") -> tuple[Path, Path]:
    from robust_bench_sc.storage import write_report_files

    return write_report_files(out_dir, stem, rep.to_dict(), report_markdown(rep))


def run_suite_binarization(suite, run_dir: str | Path, device: str = "cpu", console=None,
                           cfg: BinarizationConfig | None = None) -> dict[str, str]:
    """The test for every (defense, threat model) of ``suite``: ``<run>/diagnostics/binarization/
    <defense>/<threat>.json/.md``; a pair it does not apply to gets a ``.md`` with the reason."""
    from robust_bench_sc.plugins import build_defense
    from robust_bench_sc.storage import RunDir, atomic_write_text, read_json, safe_name

    base = cfg or BinarizationConfig(seed=suite.seed, device=device,
                                     n_samples=min(suite.data.n_images, BinarizationConfig.n_samples),
                                     **suite.data.reader_settings())  # the suite's own images
    out: dict[str, str] = {}
    for spec in suite.defenses:
        defense = None
        for threat in suite.threat_models:
            folder = RunDir(run_dir).diagnostics_dir / "binarization" / safe_name(spec.label)
            stem = safe_name(threat.name)
            key = f"{spec.label} × {threat.name}"
            jpath = folder / f"{stem}.json"
            if jpath.is_file():
                try:
                    old = read_json(jpath)
                    if old.get("config") == base.to_dict() and old.get("threat_model") == threat.model_dump():
                        out[key] = old["evidence"]
                        continue
                except ValueError:
                    pass
            if defense is None:
                defense = build_defense(spec.load_ref, spec.params, name=spec.label)
            try:
                rep = binarization_test(defense, threat, base)
            except NotApplicable as exc:
                atomic_write_text(folder / f"{stem}.md", f"# Binarization test: {key}\n\n{exc}\n")
                out[key] = str(exc)
                continue
            save_report(rep, folder, stem)
            out[key] = f"{rep.status}: {rep.evidence}"
            if console:
                console.print(f"[bold]binarization test[/] {key}: {rep.status}: {rep.evidence}")
    return out


def resolve_threat(threat: str | None, sets: list[str] | None = None, *, norm: str = "linf",
                   epsilon: str | float = "8/255", steps: int = 20, restarts: int = 1, bpda: str | None = None):
    """The threat model ``scbench diagnose --active`` tests: ``threat`` (a name in
    attack_suites/ or a YAML file) or, without it, the plain evaluation's native PGD
    (``norm``, ``epsilon``, ``steps``, ``restarts``, step ε/4, CE); then ``sets``
    (``key=value``) and ``bpda``. Bad input raises ConfigError / NotApplicable (one line)."""
    from robust_bench_sc.config import parse_set, resolve_threat_entry, validate_threat_model

    if threat is None:
        raw: dict[str, Any] = dict(attack="pgd", name="diag_pgd", norm=norm, epsilon=epsilon, steps=steps,
                                   restarts=restarts, step_size="epsilon/4")
        source = "--active (the plain evaluation's PGD)"
    else:  # a name in attack_suites/ or a YAML file, as everywhere
        r = resolve_threat_entry(threat, allow_path=True)
        raw = dict(r.mapping)
        source = str(r.path)
    for key, value in parse_set(list(sets or [])):
        raw[key] = value
    if bpda is not None:
        raw["bpda"] = bpda
    check_epsilon_raw(raw.get("epsilon"), source)
    return validate_threat_model(raw, source)
