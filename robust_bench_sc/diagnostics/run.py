"""The run of ``scbench diagnose``: images, defense, settings, attacks, and the shared inputs.

:class:`DiagnosticRun` holds the first N images of a dataset's split (default: CIFAR-10 test
images), the defense and its clean predictions, and runs attacks through :func:`robust_bench_sc.evaluate.evaluate_threat`
(so every number is re-checked on the exact defense), timing each. It keeps no results:
the inputs several indicators share (:data:`~robust_bench_sc.diagnostics.base.INPUTS`)
are computed by :data:`PROVIDERS`, once per run, by whoever drives the run
(:func:`robust_bench_sc.diagnostics.report.diagnose`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from robust_bench_sc.attacks.base import AttackContext
from robust_bench_sc.config import validate_threat_model
from robust_bench_sc.defense import AUTO_BPDA, Defense, resolve_bpda
from robust_bench_sc.diagnostics.config import DiagnosticsConfig
from robust_bench_sc.threat_models import ThreatModel


@dataclass(frozen=True)
class Records:
    """The re-checked per-sample records of one attack (``evaluate_threat``), in the order
    of the images attacked, and ``robust``: a boolean per image of the run (all N; False
    for images outside the attacked subset)."""

    recs: list[dict[str, Any]]
    robust: torch.Tensor

    def col(self, key: str, default: float = float("nan")) -> torch.Tensor:
        """A float64 column of the records (``default`` where missing or None)."""
        return torch.tensor([default if r.get(key) is None else float(r[key]) for r in self.recs],
                            dtype=torch.float64)

    def flag(self, key: str) -> torch.Tensor:
        """A boolean column (``attacked``, ``fooled``, ...)."""
        return torch.tensor([bool(r[key]) for r in self.recs], dtype=torch.bool)


class DiagnosticRun:
    """Data, defense and settings of one diagnosis, and the attacks its indicators run."""

    def __init__(self, defense: Defense, cfg: DiagnosticsConfig, log: Callable[[str], None] | None = None,
                 probe: bool = False):
        """``probe``: run the probes (robust_bench_sc.probes) on the first 8 images before
        anything else touches the defense (``self.probes``; None without)."""
        from robust_bench_sc.data import load_dataset
        from robust_bench_sc.datasets import DEFAULT_DATASET, DEFAULT_SPLIT
        from robust_bench_sc.predictions import predict
        from robust_bench_sc.probes import ProbeFindings, probe_defense

        self.defense = defense
        self.cfg = cfg
        # as declared, before the probes may treat an undeclared randomised defense as randomised
        self.declared_randomised = bool(defense.capabilities.randomised)
        self.device = torch.device(cfg.device)
        defense.to(self.device).eval()
        split = load_dataset(cfg.dataset or DEFAULT_DATASET, cfg.data_dir, cfg.split or DEFAULT_SPLIT, cfg.n_images)
        self.split = split
        self.x, self.y, self.idx = split.x, split.y, split.idx
        self.n = int(self.y.shape[0])
        self.log = log or (lambda s: None)
        self.probes: ProbeFindings | None = None
        if probe:  # before the clean predictions: a defense that hangs is stopped by the probes' time limit
            self.probes = probe_defense(defense, self.x[:8], self.y[:8], device=self.device, seed=cfg.seed,
                                        n_classes=split.n_classes, timeout=cfg.probe_timeout)
        self.clean_pred = predict(defense, self.x, cfg.batch_size, self.device, n_classes=split.n_classes)
        self.correct = self.clean_pred == self.y
        self.attack_seconds: dict[str, float] = {}
        self._pos = {int(i): j for j, i in enumerate(self.idx.tolist())}

    def context(self, defense: Defense | None = None) -> AttackContext:
        """An attack context for ``defense`` (default the diagnosed one) on these images."""
        from robust_bench_sc.paths import data_dir

        return AttackContext(defense or self.defense, self.device, self.cfg.seed, n_classes=self.split.n_classes,
                             input_shape=self.split.image_shape, dataset=self.split.dataset,
                             data_root=str(data_dir(self.cfg.data_dir)))

    # -- facts ------------------------------------------------------------------------
    @property
    def randomised(self) -> bool:
        return bool(self.defense.capabilities.randomised)

    @property
    def bpda_name(self) -> str | None:
        """The stand-in compared with / proposed: ``--bpda``, else what ``bpda: auto`` means
        for this defense (:func:`robust_bench_sc.defense.resolve_bpda`); None without a preprocess."""
        if self.defense.preprocess is None:
            return None
        return resolve_bpda(self.defense, self.cfg.bpda or AUTO_BPDA)

    def pct(self, k: int | float) -> str:
        return f"{100.0 * k / max(self.n, 1):.1f}%"

    def flagged(self, mask: torch.Tensor) -> list[int]:
        """Dataset indices of the images where ``mask`` (over all N) is set."""
        return [int(i) for i in self.idx[mask].tolist()]

    # -- threat models ----------------------------------------------------------------
    def threat(self, **kw: Any) -> ThreatModel:
        """A validated threat model with the run's batch size (and, for a randomised defense,
        EOT ``eot`` and ``random_passes`` re-checks)."""
        d: dict[str, Any] = {"batch_size": self.cfg.batch_size}
        if self.randomised:
            d.update(eot=self.cfg.eot, recheck=self.cfg.random_passes)
        d.update(kw)
        return validate_threat_model(d, "diagnostics")

    def pgd(self, **kw: Any) -> ThreatModel:
        """Native PGD with the plain evaluation's settings, ``kw`` overriding them."""
        c = self.cfg
        d: dict[str, Any] = dict(attack="pgd", norm=c.norm, epsilon=c.epsilon, steps=c.steps, restarts=c.restarts,
                                 step_size=c.step_size)
        d.update(kw)
        return self.threat(**d)

    # -- attacks ----------------------------------------------------------------------
    def attack(self, key: str, threat: ThreatModel, subset: torch.Tensor | None = None,
               ctx: AttackContext | None = None) -> Records:
        """Records of ``threat`` on all images or on the ``subset`` mask; its wall time goes
        into ``attack_seconds[key]``."""
        from robust_bench_sc.evaluate import evaluate_threat

        sel = torch.arange(self.n) if subset is None else subset.nonzero().squeeze(1)
        t0 = time.perf_counter()
        self.log(f"attack {key}: {threat.kind} on {sel.numel()} images")
        recs: list[dict[str, Any]] = []
        if sel.numel():
            ctx = ctx or self.context()
            recs = evaluate_threat(self.defense, threat, self.x[sel], self.y[sel], self.idx[sel], ctx,
                                   self.clean_pred[sel])
        self.attack_seconds[key] = round(time.perf_counter() - t0, 2)
        robust = torch.zeros(self.n, dtype=torch.bool)
        for r in recs:
            robust[self._pos[r["index"]]] = bool(r["robust"])
        return Records(recs, robust)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Forward passes on ``x`` in batches (float CPU logits)."""
        out = []
        with torch.no_grad():
            for i in range(0, x.shape[0], self.cfg.batch_size):
                out.append(self.defense(x[i: i + self.cfg.batch_size].to(self.device)).float().cpu())
        return torch.cat(out)


# --------------------------------------------------------------------------- shared inputs
def plain(run: DiagnosticRun) -> Records:
    """The plain evaluation: native PGD, exact gradients, no BPDA, on all N images. It returns
    the last iterate, as plain PGD does: ``silent_success`` reports what that loses."""
    return run.attack("plain_pgd", run.pgd(name="diag_plain_pgd", keep_adversarial_iterate=False))


def clean_logits(run: DiagnosticRun) -> torch.Tensor:
    """One forward pass on the clean images."""
    return run.logits(run.x)


def unconstrained(run: DiagnosticRun) -> Records:
    """PGD with ε = the whole input range (no random start: in that ball it is a random
    image), ``unconstrained_steps`` steps: it must fool every image."""
    c = run.cfg
    t = run.pgd(name="diag_unconstrained", epsilon=c.whole_range, steps=c.unconstrained_steps, restarts=1,
                step_size="epsilon/4", random_start=False)
    return run.attack("unconstrained_pgd", t)


PROVIDERS: dict[str, Callable[[DiagnosticRun], Any]] = {
    "plain": plain, "clean_logits": clean_logits, "unconstrained": unconstrained}
