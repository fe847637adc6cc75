"""What a run will cost, said before it starts: each threat model's budget in words (steps ×
restarts, queries, EOT), its job count, and an estimate of the job time from the job seconds
that committed records carry (``results/*/records``), where records of the same weights and
attack exist.

The estimate scales a committed job's seconds per image by the ratio of the budgets' work
units (:func:`work_units`: gradient steps, Boundary steps, queries); it ignores early stops and
the share of images a defense misclassifies (those are not attacked), so it is a rough guide,
measured on the machine that computed the committed records (their ``run.json`` says which).
"""

from __future__ import annotations

import json
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robust_bench_sc.threat_models import (THREAT_MODELS, UNHASHED, ThreatModel, autoattack_runs_square, fields_with,
                                           stored_config)

if TYPE_CHECKING:
    from robust_bench_sc.config import SuiteConfig
    from robust_bench_sc.plan import Job

#: restarts at or above which the budget line says how to run one (``linf_pgd_ce`` has 100)
MANY_RESTARTS = 10
_LABEL_FIELDS = (*sorted(fields_with(UNHASHED)), "name", "batch_size")  # labels, the images, the batch


def _n(k: int, one: str, many: str | None = None) -> str:
    return f"{k} {one if k == 1 else (many or one + 's')}"


def budget(t: ThreatModel) -> str:
    """How much attack ``t`` runs per image, in words (its cost-setting fields, all of them)."""
    k = t.kind
    v: Any = t
    if k == "none":
        text = "no attack"
    elif k == "pgd":
        text = f"{v.steps} steps × {_n(v.restarts, 'restart')}"
        if v.restarts > 1:
            text += ", stops restarting an image once fooled" if v.early_stop else ", every restart runs"
    elif k == "cw":
        text = f"{v.steps} steps × {_n(v.binary_search_steps, 'binary-search step')}"
    elif k == "boundary":
        pool = f"the {v.init_pool} images" if v.init_pool_size is None else \
            f"the first {v.init_pool_size} {v.init_pool} images"
        text = f"{v.steps} steps, start from {pool}"
    elif k == "hsj":
        text = f"{_n(v.max_iter, 'iteration')}, ≤ {v.max_eval} queries per gradient estimate ({v.init_pool} start)"
    elif k == "zoo":
        text = (f"{_n(v.max_iter, 'iteration')} × {_n(v.binary_search_steps, 'binary-search step')} on "
                f"{_n(v.n_samples, 'drawn image')} per call")
    elif k == "square":
        text = f"{v.n_queries} queries × {_n(v.restarts, 'restart')}"
    elif k == "random_search":
        text = f"{v.n_queries} queries"
    elif k == "autoattack":
        parts = [v.version + (f" ({', '.join(v.attacks_to_run)})" if v.version == "custom" else "")]
        if v.apgd_iterations is not None:
            parts.append(f"APGD {v.apgd_iterations} iterations")
        if v.apgd_restarts is not None:
            parts.append(_n(v.apgd_restarts, "APGD restart"))
        if autoattack_runs_square(v.version, v.attacks_to_run):
            parts.append(f"Square {v.n_queries} queries")
        text = ", ".join(parts)
    elif k == "transfer":
        src = v.source_spec[2]
        text = f"crafted on {src} with {v.craft.kind} {budget(v.craft)}"
    elif k == "worst_case":
        text = " then ".join(f"{m.kind} {budget(m)}" for m in v.attacks)
    else:  # a kind registered later: its fields say it
        text = t.kind
    extra = []
    if t.eot > 1:
        extra.append(f"EOT {t.eot} passes per gradient" if t.gradient_based else f"EOT {t.eot}")
    if t.recheck > 1:
        extra.append(f"{t.recheck} re-checks")
    if t.bpda:
        extra.append(f"BPDA {t.bpda}")
    if t.max_images:
        extra.append(f"first {t.max_images} images")
    return text + (f" ({'; '.join(extra)})" if extra else "")


def budget_hint(t: ThreatModel) -> str:
    """How to run less, where a default runs much (e.g. ``linf_pgd_ce``'s 100 restarts)."""
    restarts = getattr(t, "restarts", 1)
    if t.kind == "pgd" and restarts >= MANY_RESTARTS:
        return f"--set {t.name}.restarts=1 for one restart"
    return ""


def work_units(t: ThreatModel) -> float | None:
    """Per-image work of ``t`` in its kind's unit (gradient steps, Boundary steps, queries), the
    scale between two budgets of one kind; None where no single number stands for it."""
    v: Any = t
    eot = t.eot
    if t.kind == "none":
        return 1.0
    if t.kind == "pgd":
        return float(v.steps * v.restarts * eot)
    if t.kind == "cw":
        return float(v.steps * v.binary_search_steps * eot)
    if t.kind == "boundary":
        return float(v.steps)
    if t.kind == "hsj":
        return float(v.max_iter)
    if t.query_budget:
        return float(v.n_queries * getattr(v, "restarts", 1) * eot)
    return None


def _family(t: ThreatModel) -> tuple[Any, ...]:
    """Budgets of one family scale into each other by :func:`work_units` (BPDA left out: on a
    defense without a frontend it changes nothing; where it does, the exact tier usually matches)."""
    return (t.kind, t.backend, getattr(t, "norm", None), getattr(t, "loss", None),
            getattr(t, "l1_step", None), getattr(t, "init_pool", None))


def _exact(t: ThreatModel) -> str:
    d = t.model_dump(exclude_defaults=True)
    return t.kind + json.dumps({k: x for k, x in d.items() if k not in _LABEL_FIELDS}, sort_keys=True, default=str)


@dataclass
class _Rate:
    seconds_per_image: float
    units: float | None
    run: str


_JOB = re.compile(r'"job":\s*(\{[^{}]*\})')
_FINGERPRINT = re.compile(r'"defense_fingerprint":\s*"([0-9a-f]+)"')
_SECONDS = re.compile(r'"seconds":\s*([0-9.eE+-]+)')


def _record_head(path: Path) -> tuple[dict[str, Any], str | None, float] | None:
    """(job, defense fingerprint or None, seconds) of a record file, read from its first bytes
    (they precede the per-sample records)."""
    try:
        with open(path, encoding="utf-8") as fh:
            head = fh.read(2048).split('"records"')[0]
        job, fp, sec = _JOB.search(head), _FINGERPRINT.search(head), _SECONDS.search(head)
        if job is None or sec is None:
            return None
        return json.loads(job.group(1)), fp.group(1) if fp else None, float(sec.group(1))
    except (OSError, ValueError):
        return None


def committed_rates(results_root: Path) -> dict[tuple[str, str], list[tuple[ThreatModel, _Rate]]]:
    """(defense fingerprint, exact threat spec or family) → the job rates of committed records."""
    from robust_bench_sc.storage import RunDir

    out: dict[tuple[str, str], list[tuple[ThreatModel, _Rate]]] = defaultdict(list)
    for meta_path in sorted(results_root.glob(f"*/{RunDir.META}")):
        layout = RunDir(meta_path.parent)
        try:
            meta = layout.read_run_meta()
            if meta is None:
                continue
            threats = {}
            for c in meta.config["threat_models"]:
                threats[c["name"]] = THREAT_MODELS[c["attack"]].model_validate(stored_config(c))
        except Exception:  # an old or damaged folder gives no rates, never an error  # noqa: BLE001
            continue
        for path in layout.records_dir.glob("*/*/*.json"):
            head = _record_head(path)
            if head is None:
                continue
            job, fp, seconds = head
            fp = fp or meta.defense_fingerprints.get(str(job.get("defense")))
            t = threats.get(job.get("threat"))
            n = int(job.get("stop", 0)) - int(job.get("start", 0))
            if t is None or fp is None or n <= 0 or seconds <= 0:
                continue
            rate = (t, _Rate(seconds / n, work_units(t), meta_path.parent.name))
            out[(fp, "exact:" + _exact(t))].append(rate)
            out[(fp, "family:" + repr(_family(t)))].append(rate)
    return out


def estimate_seconds(fingerprint: str, t: ThreatModel, n_images: int,
                     rates: dict[tuple[str, str], list[tuple[ThreatModel, _Rate]]]) -> tuple[float, set[str]] | None:
    """Job seconds of ``n_images`` of ``t`` on the defense with ``fingerprint``: the median
    committed rate of the same settings, else of the same family scaled by work units; with
    the committed runs it came from. None without such records."""
    same = rates.get((fingerprint, "exact:" + _exact(t)))
    if same:
        return n_images * statistics.median(r.seconds_per_image for _, r in same), {r.run for _, r in same}
    units = work_units(t)
    family = [r for _, r in rates.get((fingerprint, "family:" + repr(_family(t))), []) if r.units]
    if units is None or not family:
        return None
    per_unit = statistics.median(r.seconds_per_image / r.units for r in family if r.units)
    return n_images * per_unit * units, {r.run for r in family}


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def start_lines(suite: SuiteConfig, jobs: list[Job], todo: list[Job], fingerprints: dict[str, str],
                results_root: Path | None = None) -> list[str]:
    """What ``scbench run`` says before computing: per threat model its budget, its jobs (to
    do, of planned) and, where committed records allow, their estimated job time; then the
    total."""
    from robust_bench_sc.paths import REPO_ROOT

    root = results_root if results_root is not None else REPO_ROOT / "results"
    rates = committed_rates(root) if root.is_dir() else {}
    planned: dict[str, int] = defaultdict(int)
    for j in jobs:
        planned[j.threat] += 1
    pending: dict[str, list[Job]] = defaultdict(list)
    for j in todo:
        pending[j.threat].append(j)
    lines = []
    total, covered, runs = 0.0, 0, set()
    unknown: list[str] = []
    for t in suite.threat_models:
        if not planned[t.name]:
            continue
        todo_t = pending[t.name]
        est = 0.0
        n_est = 0
        for j in todo_t:
            e = estimate_seconds(fingerprints.get(j.defense, ""), t, j.stop - j.start, rates)
            if e is None:
                unknown.append(j.key)
                continue
            est += e[0]
            n_est += 1
            runs |= e[1]
        total += est
        covered += n_est
        count = f"{len(todo_t)} of {planned[t.name]} jobs to do" if len(todo_t) != planned[t.name] \
            else _n(planned[t.name], "job")
        when = ""
        if todo_t and n_est == len(todo_t):
            when = f", ≈ {duration(est)}"
        elif n_est:
            when = f", ≈ {duration(est)} for {n_est} of them"
        hint = budget_hint(t)
        lines.append(f"  {t.name}: {budget(t)} — {count}{when}" + (f" [{hint}]" if hint else ""))
    if todo:
        if covered:
            lines.append(f"  estimated job time ≈ {duration(total)} for {covered} of {len(todo)} jobs to do (committed "
                         f"job seconds of the same weights in {', '.join(sorted(runs)[:3])}"
                         f"{'…' if len(runs) > 3 else ''}, scaled by the budgets; the machine that wrote them: their "
                         "run.json)" + (f"; none for {len(todo) - covered} (e.g. {unknown[0]})" if unknown else ""))
        else:
            lines.append(f"  no estimate of the job time: no committed records of these weights and attacks in {root}")
    return lines
