"""Regression checks of a run against a committed baseline (``scbench check``).

A baseline (JSON) holds, per (defense, threat model): the number of images, clean and
robust accuracy, mean ‖e‖₂ for minimum-norm attacks, and the per-sample clean/robust bits
keyed by image index. A new run is compared number by number:

* same images (same indices and data hash): exact McNemar test on the paired bits
  (two-sided binomial test on the discordant pairs);
* different images: two-proportion z-test (pooled);
* mean ‖e‖₂ (minimum-norm attacks): relative tolerance; p from a Wilcoxon signed-rank
  test on images fooled in both runs (Mann–Whitney U when the images differ).

A baseline also keeps, per entry, the job seeds and the defense's weight fingerprint. A job's
seed comes from the suite seed, the defense label, the threat-model name and the chunk
(``plan.SEED_RULE``): a renamed defense draws other random starts, restarts and samples. A
baseline entry whose label the run lacks is matched to the run's entry of the same weights
and threat model (a rename), and every change on other seeds says so, with which of the
seed's inputs differ: such a move can be the attack's own sampling noise.

A number has *moved* when it changed by more than the tolerance (points, or relative for
norms) or its change is significant at ``alpha``. A (defense, threat model) of the
baseline that the run lacks is a failure too. Timings are never compared.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from robust_bench_sc.reports import load_run
from robust_bench_sc.stats import mcnemar_exact, two_proportion
from robust_bench_sc.storage import RunDir

FORMAT = "scbench-baseline/1"


class BaselineError(RuntimeError):
    pass


# -- statistics (the tests themselves: robust_bench_sc.stats) --------------------------

def _norm_pvalue(old: dict[int, float], new: dict[int, float], paired: bool) -> float:
    try:
        from scipy import stats
    except ImportError:  # pragma: no cover
        return math.nan
    if paired:
        common = sorted(set(old) & set(new))
        diffs = [new[i] - old[i] for i in common]
        if not diffs or all(abs(d) < 1e-12 for d in diffs):
            return 1.0
        return float(stats.wilcoxon([old[i] for i in common], [new[i] for i in common]).pvalue)
    a, b = list(old.values()), list(new.values())
    if not a or not b:
        return math.nan
    return float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)


# -- index ranges -----------------------------------------------------------------------

def to_ranges(indices: list[int]) -> list[list[int]]:
    """Sorted indices → [[start, stop), ...]."""
    out: list[list[int]] = []
    for i in sorted(indices):
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


def from_ranges(ranges: list[list[int]]) -> list[int]:
    return [i for a, b in ranges for i in range(a, b)]


def _bits(values) -> str:
    return "".join("1" if bool(v) else "0" for v in values)


# -- building baselines -----------------------------------------------------------------

def baseline_from_run(run_dir: str | Path) -> dict[str, Any]:
    info, defenses, threats, table, samples = load_run(run_dir)
    if samples is None:
        raise BaselineError(f"{run_dir}: no {RunDir.SAMPLES}; a baseline needs per-sample records")
    from robust_bench_sc.plan import job_seed

    mn = {t.name: t.minimum_norm for t in threats}
    m = info.meta
    planned = {t.name for t in threats}
    fingerprints = m.defense_fingerprints
    entries: dict[str, dict[str, Any]] = {}
    for _, r in table.iterrows():
        d, t = r["defense"], r["threat_model"]
        part = samples[(samples["defense"] == d) & (samples["threat_model"] == t)].sort_values("index")
        idx = [int(i) for i in part["index"]]
        e: dict[str, Any] = {
            "attack": r.get("attack"),
            "norm": "" if pd.isna(r.get("norm")) else r.get("norm"),
            "epsilon": None if pd.isna(r.get("epsilon")) else float(r["epsilon"]),
            "minimum_norm": bool(mn.get(t, False)),
            "n_images": int(r["n_images"]),
            # from the per-sample bits, so numbers and bits can never disagree
            "clean_accuracy": round(100.0 * float(part["clean_correct"].mean()), 4) if len(part) else float(r["clean_accuracy"]),
            "robust_accuracy": round(100.0 * float(part["robust"].mean()), 4) if len(part) else float(r["robust_accuracy"]),
            "indices": to_ranges(idx),
            "clean_bits": _bits(part["clean_correct"]),
            "robust_bits": _bits(part["robust"]),
        }
        if e["minimum_norm"]:
            fooled = part[part["attacked"] & part["fooled"]]
            l2 = fooled["l2"].astype(float).dropna()
            e["mean_l2"] = round(float(l2.mean()), 6) if len(l2) else None
            e["l2"] = {str(int(i)): round(float(v), 6) for i, v in zip(fooled["index"], fooled["l2"]) if not pd.isna(v)}
        if t in planned and "chunk" in part and m.seed is not None and len(part):  # not a derived column
            e["seeds"] = sorted({job_seed(m.seed, d, t, int(c)) for c in part["chunk"].dropna()})
        if fingerprints.get(d):
            e["fingerprint"] = fingerprints[d]
        entries.setdefault(d, {})[t] = e
    return {
        "format": FORMAT,
        "suite": m.suite,
        "suite_hash": m.suite_hash,
        "data_hash": m.data_hash,
        "subset": m.subset,
        "seed": m.seed,
        "profile": m.profile,
        "git": m.git or None,  # None: a run.json without it
        "versions": {k: v for k, v in m.versions.items() if v},
        "created_at": _dt.datetime.now().isoformat(timespec="seconds"),
        "entries": entries,
    }


def read_baseline(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise BaselineError(f"baseline {path} does not exist; create it with: scbench check RUN_DIR --baseline {path} --update")
    try:
        b = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BaselineError(f"baseline {path}: not valid JSON ({exc})") from None
    problem = baseline_problem(b)
    if problem:
        raise BaselineError(f"baseline {path}: {problem}")
    return b


_ENTRY_FIELDS: dict[str, type | tuple[type, ...]] = {"n_images": int, "clean_accuracy": (int, float), "robust_accuracy": (int, float),
                 "indices": list, "clean_bits": str, "robust_bits": str}


def baseline_problem(b: Any) -> str | None:
    """What makes ``b`` not a usable baseline (None when it is): the format, at least one
    entry, and per entry the fields, index ranges and bit strings of matching length."""
    if not isinstance(b, dict):
        return f"a JSON {type(b).__name__}, expected an object with format {FORMAT!r} and entries"
    if b.get("format") != FORMAT:
        return f"format {b.get('format')!r}, expected {FORMAT!r}"
    entries = b.get("entries")
    if not isinstance(entries, dict) or not entries or not all(isinstance(v, dict) and v for v in entries.values()):
        return ("no entries: nothing to compare against (a baseline needs entries.DEFENSE.THREAT_MODEL; "
                "rebuild it with scbench check RUN_DIR --baseline PATH --update --force)")
    for d, per in entries.items():
        for t, e in per.items():
            where = f"entries.{d}.{t}"
            if not isinstance(e, dict):
                return f"{where}: a JSON {type(e).__name__}, expected an object"
            for key, typ in _ENTRY_FIELDS.items():
                if key not in e:
                    return f"{where}: missing {key!r}"
                if not isinstance(e[key], typ) or isinstance(e[key], bool):
                    return f"{where}.{key}: {type(e[key]).__name__}, expected {getattr(typ, '__name__', 'a number')}"
            if not all(isinstance(r, list) and len(r) == 2 and all(isinstance(x, int) for x in r) and r[0] < r[1]
                       for r in e["indices"]):
                return f"{where}.indices: expected [[start, stop], ...] with start < stop"
            n = sum(r[1] - r[0] for r in e["indices"])
            for key in ("clean_bits", "robust_bits"):
                if len(e[key]) != n or set(e[key]) - {"0", "1"}:
                    return f"{where}.{key}: {len(e[key])} characters of 0/1 expected {n} (one per index)"
            if e.get("minimum_norm") and not isinstance(e.get("l2", {}), dict):
                return f"{where}.l2: expected an object of index → norm"
    return None


def write_baseline(path: str | Path, baseline: dict[str, Any]) -> None:
    from robust_bench_sc.storage import atomic_write_text

    atomic_write_text(path, json.dumps(baseline, indent=1, sort_keys=False) + "\n")


# -- comparing --------------------------------------------------------------------------

@dataclass
class Change:
    defense: str
    threat: str
    metric: str                 # "clean accuracy", "robust accuracy", "mean ‖e‖₂", "missing"
    old: float | None
    new: float | None
    p_value: float | None
    test: str
    moved: bool
    detail: str = ""

    def line(self) -> str:
        if self.metric == "missing":
            return f"{self.defense} × {self.threat}: in the baseline but missing from the run"
        unit = " %" if "accuracy" in self.metric else ""
        delta = (self.new or 0) - (self.old or 0)
        dunit = " pts" if "accuracy" in self.metric else ""
        p = "n/a" if self.p_value is None or math.isnan(self.p_value) else f"{self.p_value:.3g}"
        return (f"{self.defense} × {self.threat}: {self.metric} {_f(self.old)} → {_f(self.new)}{unit} "
                f"(Δ {delta:+.2f}{dunit}; {self.test} p = {p}{'; ' + self.detail if self.detail else ''})")


def _f(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


@dataclass
class CheckResult:
    changes: list[Change] = field(default_factory=list)
    new_pairs: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    n_compared: int = 0

    @property
    def failed(self) -> list[Change]:
        return [c for c in self.changes if c.moved]

    @property
    def ok(self) -> bool:
        return not self.failed


def renamed_defenses(baseline: dict[str, Any], current: dict[str, Any]) -> dict[str, str]:
    """Baseline label → run label, for defenses the run lacks by name but holds under another
    label with the same weight fingerprint and threat models (a rename)."""
    old_e, new_e = baseline.get("entries", {}), current.get("entries", {})

    def fp(per: dict[str, Any]) -> str | None:
        fps = {e.get("fingerprint") for e in per.values()}
        return fps.pop() if len(fps) == 1 else None

    gone = {d: fp(per) for d, per in old_e.items() if d not in new_e}
    arrived = {d: fp(per) for d, per in new_e.items() if d not in old_e}
    out: dict[str, str] = {}
    for d, f in gone.items():
        same = [n for n, g in arrived.items() if f and g == f and n not in out.values()
                and set(old_e[d]) <= set(new_e[n])]
        if len(same) == 1:
            out[d] = same[0]
    return out


def seed_change(baseline: dict[str, Any], current: dict[str, Any], old: dict[str, Any], new: dict[str, Any],
                old_label: str, new_label: str) -> str:
    """Which inputs of the job seed changed for a (defense, threat model) whose seeds differ
    from the baseline's; '' when they do not (or the baseline predates seeds)."""
    if "seeds" not in old or "seeds" not in new or old["seeds"] == new["seeds"]:
        return ""
    why = []
    if baseline.get("seed") != current.get("seed"):
        why.append(f"suite seed {baseline.get('seed')} → {current.get('seed')}")
    if old_label != new_label:
        why.append(f"defense label {old_label!r} → {new_label!r}")
    if not why:
        why.append("threat-model name or chunks")
    return ", ".join(why)


SEED_NOTE = ("a job's seed comes from the suite seed, the defense label, the threat-model name and the chunk, so "
             "the attack drew other random starts and samples: part of a change there can be its sampling noise")


def compare(baseline: dict[str, Any], current: dict[str, Any], tolerance: float = 0.5, alpha: float = 0.01,
            norm_tolerance: float = 0.05) -> CheckResult:
    """Compare two baseline-shaped dicts (``current`` built from the new run)."""
    res = CheckResult()
    for key in ("suite_hash", "data_hash"):
        if baseline.get(key) != current.get(key):
            res.warnings.append(f"{key.replace('_', ' ')} differs: baseline {baseline.get(key)} vs run {current.get(key)}")
    same_data = baseline.get("data_hash") == current.get("data_hash")
    renamed = renamed_defenses(baseline, current)
    seed_notes: list[str] = []
    for d, now in renamed.items():
        res.warnings.append(f"defense {d!r} of the baseline is {now!r} in the run (same weights "
                            f"{baseline['entries'][d][next(iter(baseline['entries'][d]))].get('fingerprint')}); "
                            "compared as one")
    for d, per in baseline.get("entries", {}).items():
        for t, old in per.items():
            dn = renamed.get(d, d)
            new = current.get("entries", {}).get(dn, {}).get(t)
            if new is None:
                res.changes.append(Change(d, t, "missing", None, None, None, "", True))
                continue
            res.n_compared += 1
            seeds = seed_change(baseline, current, old, new, d, dn)
            note = f"other job seeds than the baseline's ({seeds}): {SEED_NOTE}"
            if seeds and note not in seed_notes:
                seed_notes.append(note)
            label = d if dn == d else f"{d} (now {dn})"
            first = len(res.changes)
            oi, ni = from_ranges(old["indices"]), from_ranges(new["indices"])
            paired = same_data and oi == ni
            for metric, bits_key, acc_key in (("clean accuracy", "clean_bits", "clean_accuracy"),
                                              ("robust accuracy", "robust_bits", "robust_accuracy")):
                ob, nb = old[bits_key], new[bits_key]
                if paired:
                    lost = sum(1 for a, b in zip(ob, nb) if a == "1" and b == "0")
                    gained = sum(1 for a, b in zip(ob, nb) if a == "0" and b == "1")
                    p = mcnemar_exact(lost, gained)
                    test, detail = "exact McNemar", f"{lost} images lost, {gained} gained of {len(ni)}"
                    if lost == gained == 0:
                        continue
                else:
                    p = two_proportion(ob.count("1"), len(ob), nb.count("1"), len(nb))
                    test, detail = "two-proportion z", f"n {len(oi)} → {len(ni)}, different images"
                o, n = float(old[acc_key]), float(new[acc_key])
                moved = abs(n - o) > tolerance + 1e-9 or (not math.isnan(p) and p < alpha)
                if moved or abs(n - o) > 1e-9 or paired:
                    res.changes.append(Change(d, t, metric, o, n, p, test, moved, detail))
            if old.get("minimum_norm"):
                o, n = old.get("mean_l2"), new.get("mean_l2")
                if (o is None) != (n is None):
                    res.changes.append(Change(d, t, "mean ‖e‖₂", o, n, None, "", True, "success appeared/vanished"))
                elif o is not None and n is not None:
                    ol = {int(k): v for k, v in (old.get("l2") or {}).items()}
                    nl = {int(k): v for k, v in (new.get("l2") or {}).items()}
                    if abs(n - o) > 1e-6 or ol != nl:
                        p = _norm_pvalue(ol, nl, paired)
                        rel = abs(n - o) / max(abs(o), 1e-12)
                        moved = rel > norm_tolerance or (not math.isnan(p) and p < alpha)
                        res.changes.append(Change(d, t, "mean ‖e‖₂", o, n, p, "Wilcoxon" if paired else "Mann–Whitney",
                                                  moved, f"relative change {100 * rel:.1f}% (tolerance "
                                                  f"{100 * norm_tolerance:.0f}%)"))
            for c in res.changes[first:]:  # this pair's changes name the rename and the seeds
                c.defense = label
                if seeds:
                    c.detail = f"{c.detail}; other job seeds: {seeds}" if c.detail else f"other job seeds: {seeds}"
    for d, per in current.get("entries", {}).items():
        for t in per:
            if t not in baseline.get("entries", {}).get(d, {}) and d not in renamed.values():
                res.new_pairs.append((d, t))
    res.warnings += seed_notes
    return res


def check_run(run_dir: str | Path, baseline_path: str | Path, tolerance: float = 0.5, alpha: float = 0.01,
              norm_tolerance: float = 0.05) -> CheckResult:
    return compare(read_baseline(baseline_path), baseline_from_run(run_dir), tolerance, alpha, norm_tolerance)


def format_result(res: CheckResult, run_dir: str | Path, baseline_path: str | Path, tolerance: float,
                  alpha: float) -> str:
    lines = [f"check {run_dir} against {baseline_path} (tolerance {tolerance:g} pts, alpha {alpha:g})"]
    for w in res.warnings:
        lines.append(f"warning: {w}")
    for c in res.failed:
        lines.append(f"MOVED {c.line()}")
    for c in res.changes:
        if not c.moved:
            lines.append(f"  changed within tolerance: {c.line()}")
    for d, t in res.new_pairs:
        lines.append(f"  new (not in the baseline): {d} × {t}; --update to add it")
    if res.ok:
        lines.append(f"OK: {res.n_compared} (defense, threat model) pairs match the baseline")
    else:
        lines.append(f"FAILED: {len(res.failed)} number(s) moved or disappeared "
                     f"({res.n_compared} pairs compared); rerun with --update to accept the new numbers")
    return "\n".join(lines)
