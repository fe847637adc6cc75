"""Automatic indicators that a robustness evaluation failed (gradient masking, attack failure).

``diagnose(defense, config)`` attacks the first N images of a dataset's split (default: the
CIFAR-10 test images; ``config.dataset``, ``config.split``) with a small native
PGD (the *plain* evaluation: exact gradients, no BPDA) and runs a set of named checks, each
registered in :data:`INDICATORS`. Every check returns an :class:`Outcome` (status ``pass`` /
``warn`` / ``fail``, or ``skip`` when it does not apply; one line of evidence; the indices
of the flagged images where the check is per sample; the numbers behind it), which the
report turns into an :class:`IndicatorResult`. A one-line verdict summarises them.

Modules:

- :mod:`~robust_bench_sc.diagnostics.config`: :class:`DiagnosticsConfig`, every budget and threshold;
- :mod:`~robust_bench_sc.diagnostics.base`: statuses, :class:`Outcome`, :class:`IndicatorResult`,
  the registry and the ``@indicator(name, title, source, category, needs=...)`` decorator;
- :mod:`~robust_bench_sc.diagnostics.run`: :class:`DiagnosticRun` (images, defense, attacks through
  the engine) and the providers of the shared inputs (``plain``, ``clean_logits``, ``unconstrained``);
- :mod:`~robust_bench_sc.diagnostics.indicators`: the checks, a flat list of independent functions;
- :mod:`~robust_bench_sc.diagnostics.report`: :func:`diagnose`, :func:`verdict`, the report files;
- :mod:`~robust_bench_sc.diagnostics.suite`: the suite hook (``diagnostics:`` in a suite).

All attacks go through :func:`robust_bench_sc.evaluate.evaluate_threat`, so every number is
re-checked on the exact defense; the gradient-free fallback is the ordinary attack
``random_search`` (:mod:`robust_bench_sc.attacks.random_search`). Thresholds are documented
in ``docs/diagnostics.md``.
"""

from robust_bench_sc.attacks.random_search import random_search_linf
from robust_bench_sc.diagnostics.base import (FAIL, INDICATORS, INPUTS, MASKING, OPTIMISATION, PASS, RANDOMNESS,
                                              SKIP, WARN, Indicator, IndicatorResult, Outcome, indicator)
from robust_bench_sc.diagnostics.config import DiagnosticsConfig
from robust_bench_sc.diagnostics.report import DiagnosticsReport, diagnose, report_markdown, save_report, verdict
from robust_bench_sc.diagnostics.run import DiagnosticRun, Records
from robust_bench_sc.diagnostics.suite import config_for_suite, run_suite_diagnostics

__all__ = ["FAIL", "INDICATORS", "INPUTS", "MASKING", "OPTIMISATION", "PASS", "RANDOMNESS", "SKIP", "WARN",
           "DiagnosticRun", "DiagnosticsConfig", "DiagnosticsReport", "Indicator", "IndicatorResult", "Outcome",
           "Records", "config_for_suite", "diagnose", "indicator", "random_search_linf", "report_markdown",
           "run_suite_diagnostics", "save_report", "verdict"]
