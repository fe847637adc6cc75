"""Run the indicators, give the verdict, write the report (``diagnostics.json`` / ``.md``)."""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from robust_bench_sc.datasets import images_of_settings
from robust_bench_sc.defense import Defense
from robust_bench_sc.diagnostics import indicators as _indicators  # noqa: F401  (registers the indicators)
from robust_bench_sc.diagnostics.base import (FAIL, INDICATORS, INPUTS, MASKING, OPTIMISATION, PASS, RANDOMNESS,
                                              SKIP, WARN, Indicator, IndicatorResult, Outcome)
from robust_bench_sc.diagnostics.config import DiagnosticsConfig
from robust_bench_sc.diagnostics.run import PROVIDERS, DiagnosticRun
from robust_bench_sc.subsets import describe_subset

assert set(PROVIDERS) == set(INPUTS), "every declared input has exactly one provider"

# report order (and execution order, the unconstrained attack first: the order of earlier
# versions, which keeps a randomised defense's numbers identical, its forward passes drawing
# from the global generator)
PREFERRED = ["silent_success", "incomplete_optimisation", "transfer_failure", "unavailable_gradients",
             "unstable_predictions", "unconstrained_attack", "randomness", "probability_outputs",
             "gradient_free_beats_whitebox", "epsilon_monotonicity", "more_iterations", "single_step_beats_iterative",
             "bpda_eot_beats_plain"]


def _rank(name: str) -> tuple[int, str]:
    return (PREFERRED.index(name) if name in PREFERRED else 99, name)


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
    probes: dict[str, Any] | None = None  # robust_bench_sc.probes.ProbeFindings.to_dict(), run before any attack

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def status_of(self, name: str) -> str:
        for r in self.indicators:
            if r.name == name:
                return r.status
        raise KeyError(name)


def verdict(results: list[IndicatorResult], run: DiagnosticRun | None = None) -> tuple[str, str]:
    """``(verdict_code, one line)``: masking fails first, then randomness, then a batch-dependent
    defense (the probe), then optimisation."""
    fails = {r.name: r for r in results if r.status == FAIL}
    warns = [r.name for r in results if r.status == WARN]

    def by_cat(cat: str) -> list[str]:
        return [n for n, r in fails.items() if r.category == cat]

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
    probes = run.probes if run is not None else None
    if probes is not None and probes.batch_dependent:  # the probe; every indicator ran in batches of its choosing
        return "batch_dependent", (f"batch-dependent predictions ({probes.batch_evidence()}): every number here depends "
                                   "on how the images were batched; make each prediction independent of its batch")
    if optim:
        return "attack_failure", (f"attack failure ({', '.join(optim)}): increase steps / restarts and keep the "
                                  f"best iterate")
    if warns:
        return "trustworthy_with_warnings", f"evaluation plausibly trustworthy; warnings: {', '.join(warns)}"
    return "trustworthy", "evaluation trustworthy"


def run_indicator(ind: Indicator, run: DiagnosticRun, inputs: dict[str, Any]) -> IndicatorResult:
    """``ind`` on ``run``, its declared inputs taken from ``inputs`` (computed there on first
    need, once per run)."""
    t0 = time.perf_counter()
    args = []
    for need in ind.needs:
        if need not in inputs:
            inputs[need] = PROVIDERS[need](run)
        args.append(inputs[need])
    outcome = ind.fn(run, *args)
    if not isinstance(outcome, Outcome):
        raise TypeError(f"indicator {ind.name!r} returned {type(outcome).__name__}, not an Outcome")
    return ind.result(outcome, round(time.perf_counter() - t0, 2))


def diagnose(defense: Defense, cfg: DiagnosticsConfig | None = None, log: Callable[[str], None] | None = None,
             only: list[str] | None = None) -> DiagnosticsReport:
    """Run every registered indicator (or ``only`` those) on ``defense``."""
    cfg = cfg or DiagnosticsConfig()
    cfg.validate()
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    # probes first (a few images, their own random state): undeclared randomness is treated as randomised
    # from here on (EOT, PGD's stopping rule, re-checks); the randomness indicator still reports the declaration
    run = DiagnosticRun(defense, cfg, log, probe=True)
    found = run.probes
    assert found is not None
    declared = defense.capabilities  # restored at the end: the caller's defense is left as it was
    if found.undeclared_randomness:
        defense.capabilities = replace(defense.capabilities, randomised=True)
        if log:
            log(found.summary_lines()[0])
    names = sorted(only or INDICATORS.names(), key=lambda n: (n != "unconstrained_attack", *_rank(n)))
    inputs: dict[str, Any] = {}
    results = []
    try:
        for name in names:
            ind: Indicator = INDICATORS.get(name)
            if name in cfg.skip:
                results.append(ind.result(Outcome(SKIP, "skipped (--skip)")))
                continue
            if log:
                log(f"indicator {name}")
            results.append(run_indicator(ind, run, inputs))
        results.sort(key=lambda r: _rank(r.name))
        code, text = verdict(results, run)
    finally:
        defense.capabilities = declared
    plain = inputs.get("plain")
    return DiagnosticsReport(
        defense=defense.name, config=cfg.to_dict(), n_images=run.n,
        clean_accuracy=float(run.correct.float().mean()),
        plain_robust_accuracy=float(plain.robust.float().mean()) if plain is not None else float("nan"),
        indicators=results, verdict=text, verdict_code=code, wall_seconds=round(time.perf_counter() - t0, 1),
        attack_seconds=dict(run.attack_seconds), created_at=_dt.datetime.now().isoformat(timespec="seconds"),
        probes=found.to_dict())


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


_ICON: dict[str, str] = {PASS: "pass", WARN: "WARN", FAIL: "FAIL", SKIP: "skip"}


def report_markdown(rep: DiagnosticsReport) -> str:
    c = rep.config
    lines = [
        f"# Diagnostics: {rep.defense}",
        "",
        f"{_capital(describe_subset(rep.n_images, images=images_of_settings(c)))}; plain evaluation: native PGD {c['norm']} "
        f"ε = {c['epsilon']:.6g}, {c['steps']} steps × {c['restarts']} restarts, step {c['step_size']}, no BPDA. "
        f"Clean accuracy {100 * rep.clean_accuracy:.1f}%, plain robust accuracy {100 * rep.plain_robust_accuracy:.1f}%. "
        f"Wall time {rep.wall_seconds:.0f} s.",
        "",
        "| indicator | source | status | evidence | flagged |",
        "|---|---|---|---|---|",
    ]
    for r in rep.indicators:
        fl = "—" if r.flagged is None else str(len(r.flagged))
        lines.append(f"| {r.title} (`{r.name}`) | {r.source} | **{_ICON[r.status]}** | {r.evidence.replace('|', '/')} "
                     f"| {fl} |")
    if rep.probes is not None:  # reports from before the probes render as they were committed
        from robust_bench_sc.probes import ProbeFindings

        lines += ["", f"Probes ({rep.probes.get('n_images')} images, before any attack):", ""]
        lines += [f"- {line}" for line in ProbeFindings.from_dict(rep.probes).summary_lines()]
    lines += ["", f"**Verdict:** {rep.verdict}", ""]
    return "\n".join(lines)


def save_report(rep: DiagnosticsReport, out_dir: str | Path, stem: str = "diagnostics") -> tuple[Path, Path]:
    from robust_bench_sc.storage import write_report_files

    return write_report_files(out_dir, stem, rep.to_dict(), report_markdown(rep))
