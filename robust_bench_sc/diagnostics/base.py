"""What an indicator is, what it returns, and the registry of indicators.

An indicator is a plain function ``fn(run, **inputs) -> Outcome``. ``run`` is the
:class:`~robust_bench_sc.diagnostics.run.DiagnosticRun` (images, defense, settings, and a
way to run further attacks); ``inputs`` are the named shared inputs it declares in
``needs`` (:data:`INPUTS`), which :func:`~robust_bench_sc.diagnostics.report.diagnose`
computes once per run and passes to every indicator that declares them. Nothing else is
shared between indicators. This module imports nothing heavy: the binarization test builds
its :class:`IndicatorResult` from it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from robust_bench_sc.registry import Registry

Status = Literal["pass", "warn", "fail", "skip"]
PASS: Status = "pass"
WARN: Status = "warn"
FAIL: Status = "fail"
SKIP: Status = "skip"
ORDER: dict[str, int] = {SKIP: 0, PASS: 1, WARN: 2, FAIL: 3}

# categories drive the verdict
Category = Literal["masking", "optimisation", "randomness"]
MASKING: Category = "masking"
OPTIMISATION: Category = "optimisation"
RANDOMNESS: Category = "randomness"

# the shared inputs an indicator may declare (computed by robust_bench_sc.diagnostics.run):
#   plain          Records of the plain evaluation (native PGD, exact gradients, last iterate), all N images
#   clean_logits   one forward pass on the clean images, (N, 10) float CPU tensor
#   unconstrained  Records of PGD with ε = the whole input range, all N images
InputName = Literal["plain", "clean_logits", "unconstrained"]
INPUTS: tuple[str, ...] = get_args(InputName)


@dataclass(frozen=True)
class Outcome:
    """What one indicator found: a status, one line of evidence, the dataset indices of the
    images it flags (per-sample checks; None otherwise) and the numbers behind it."""

    status: Status
    evidence: str
    flagged: list[int] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in ORDER:
            raise ValueError(f"indicator status {self.status!r}; allowed: {', '.join(get_args(Status))}")


@dataclass
class IndicatorResult:
    """One row of a diagnostics report (``diagnostics.json``: ``indicators[]``)."""

    name: str
    title: str
    source: str
    category: str
    status: str
    evidence: str
    flagged: list[int] | None = None  # dataset indices of flagged images (per-sample checks)
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class Indicator:
    """A registered check: its identity, the inputs it needs, and the function."""

    name: str
    title: str
    source: str
    category: Category
    needs: tuple[InputName, ...]
    fn: Callable[..., Outcome]

    def result(self, outcome: Outcome, seconds: float = 0.0) -> IndicatorResult:
        return IndicatorResult(self.name, self.title, self.source, self.category, outcome.status, outcome.evidence,
                               outcome.flagged, dict(outcome.metrics), seconds)


INDICATORS: Registry[Indicator] = Registry("diagnostic indicator", accepts=Indicator)


def indicator(name: str, title: str, source: str, category: Category, needs: tuple[InputName, ...] = ()):
    """Register ``fn(run, <needs...>) -> Outcome`` as the check ``name``.

    ``needs`` names the shared inputs (:data:`INPUTS`) the function takes, in order, after
    ``run``; the function's signature must say exactly that (checked here, at import)."""
    if category not in get_args(Category):
        raise ValueError(f"indicator {name!r}: category {category!r}; allowed: {', '.join(get_args(Category))}")
    unknown = [n for n in needs if n not in INPUTS]
    if unknown:
        raise ValueError(f"indicator {name!r}: unknown input(s) {', '.join(unknown)}; allowed: {', '.join(INPUTS)}")

    def deco(fn: Callable[..., Outcome]) -> Callable[..., Outcome]:
        params = list(inspect.signature(fn).parameters)
        if params != ["run", *needs]:
            raise TypeError(f"indicator {name!r}: {fn.__name__}({', '.join(params)}) must take "
                            f"({', '.join(['run', *needs])}) as its needs declare")
        INDICATORS.register(name, Indicator(name, title, source, category, tuple(needs), fn))
        return fn

    return deco
