"""Per-sample records → one summary row per (defense, threat model)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pandas as pd

from robust_bench_sc.config import WORST_CASE, WorstCaseError  # noqa: F401 (both also read from here)
from robust_bench_sc.norms import Norm
from robust_bench_sc.subsets import IMAGES, describe_subset

if TYPE_CHECKING:
    from robust_bench_sc.config import SuiteConfig

SUMMARY_COLUMNS = [
    "defense", "threat_model", "attack", "backend", "norm", "epsilon", "bpda", "n_images",
    "clean_accuracy", "robust_accuracy", "success_rate", "mean_l2", "median_l2",
    "mean_linf", "n_flagged", "seconds", "subset", "error",
]


def column_error(part: pd.DataFrame) -> tuple[str, bool]:
    """Why a (defense, threat model) column is missing or partial, and whether it is missing:
    the attack raised on some of its images (records' ``attack_error``, evaluate.py: no
    number), or a worst case's member did (``member_errors``: the number stands, over the
    other members). ("", False) when neither."""
    for key, missing in (("attack_error", True), ("member_errors", False)):
        if key in part.columns:
            msgs = [m for m in part[key].dropna().astype(str) if m]
            if msgs:
                return (msgs[0] if missing else f"worst case without {msgs[0]}"), missing
    return "", False


def robust_mean(part: pd.DataFrame) -> float:
    """Robust accuracy as a fraction: on a randomised defense the expectation over the
    re-check's fresh draws (records' ``robust_frac``), else the share of robust records."""
    if "robust_frac" in part.columns and len(part) and part["robust_frac"].notna().all():
        return float(part["robust_frac"].astype(float).mean())
    return float(part["robust"].mean())


# -- per-sample worst case across threat models -----------------------------------------

def worst_case_over_for(over: list[str], runs_on_defense: list[str] | None) -> list[str]:
    """The threat models of ``over`` a defense's worst case is over: those its jobs run
    (``runs_on_defense``: the defense's ``threat_models``, None = all). A worst case needs two."""
    kept = [t for t in over if runs_on_defense is None or t in runs_on_defense]
    return kept if len(kept) >= 2 else []


def worst_case_notes(over: list[str], defenses: list[tuple[str, list[str] | None]]) -> list[str]:
    """One line per defense whose worst case is over fewer threat models than ``over``
    (``defenses``: (label, its ``threat_models`` or None))."""
    notes = []
    for label, runs in defenses:
        kept = worst_case_over_for(over, runs)
        left = [t for t in over if t not in kept]
        if not left:
            continue
        if kept:
            notes.append(f"{WORST_CASE} of {label} is over {', '.join(kept)} only: {', '.join(left)} "
                         f"{'is' if len(left) == 1 else 'are'} not run on it.")
        else:
            notes.append(f"{WORST_CASE} of {label}: not computed, fewer than two of {', '.join(over)} are run on it.")
    return notes


def worst_case_samples(samples: pd.DataFrame, over: list[str], defense: str) -> tuple[pd.DataFrame | None, str]:
    """Per-image worst case of ``defense`` over the threat models ``over``: robust only if
    robust under every one of them. Returns (records, "") or (None, why not).

    Raises :class:`WorstCaseError` when the threat models' records are on different images.
    Records: index, label, clean_correct (under every threat model), attacked (by every one),
    fooled (by at least one), robust, flags (joined), fooled_by (the threat models that fooled
    it, ';'-separated).
    """
    parts = {t: samples[(samples["defense"] == defense) & (samples["threat_model"] == t)] for t in over}
    missing = [t for t, p in parts.items() if p.empty]
    if missing:
        return None, f"{WORST_CASE} for {defense} not computed: no records of {', '.join(missing)}"
    sets = {t: frozenset(int(i) for i in p["index"]) for t, p in parts.items()}
    if len(set(sets.values())) > 1:
        each = "; ".join(f"{t}: {describe_subset(index=ix)}" for t, ix in sets.items())
        raise WorstCaseError(f"{WORST_CASE} of {defense} over {', '.join(over)}: the threat models are on different "
                             f"images ({each}); an image counts only if every threat model attacked it")
    frames = [p.set_index(p["index"].astype(int)).sort_index() for p in parts.values()]
    first = frames[0]
    clean = pd.concat([f["clean_correct"].astype(bool) for f in frames], axis=1).all(axis=1)
    attacked = pd.concat([f["attacked"].astype(bool) for f in frames], axis=1).all(axis=1)
    robust_each = pd.concat([f["robust"].astype(bool).rename(t) for t, f in zip(over, frames)], axis=1)
    robust = robust_each.all(axis=1)
    flags = pd.concat([f["flags"].astype(object).where(f["flags"].notna(), "").astype(str) for f in frames],
                      axis=1).apply(
        lambda r: ";".join(dict.fromkeys(x for v in r for x in v.split(";") if x)), axis=1)
    fooled_by = robust_each.apply(lambda r: ";".join(t for t in over if not r[t]), axis=1).where(clean, "")
    extra: dict[str, Any] = {}
    if all("robust_frac" in f.columns and f["robust_frac"].notna().all() for f in frames):
        # a randomised defense: per image, the least expected robustness over the threat models
        extra["robust_frac"] = pd.concat([f["robust_frac"].astype(float) for f in frames], axis=1).min(axis=1).to_numpy()
    out = pd.DataFrame({
        "defense": defense, "threat_model": WORST_CASE, "index": first.index.to_numpy(),
        "label": first["label"].to_numpy(), "clean_correct": clean.to_numpy(), "attacked": attacked.to_numpy(),
        "fooled": (clean & ~robust).to_numpy(), "robust": robust.to_numpy(), "flags": flags.to_numpy(),
        "fooled_by": fooled_by.to_numpy(), **extra,
    })
    return out, ""


def worst_case_row(part: pd.DataFrame, norm: str, eps: float | None, seconds: float = 0.0,
                   images: str = IMAGES) -> dict[str, Any]:
    """The summary row of :func:`worst_case_samples`' records (``norm``, ``eps``: the budget
    its threat models share; ``images``: what the images are, the dataset's words)."""
    n = len(part)
    attacked = int(part["attacked"].sum())
    return {
        "defense": part["defense"].iloc[0], "threat_model": WORST_CASE, "attack": "worst_case", "backend": "",
        "norm": norm, "epsilon": eps if eps is not None else math.nan, "bpda": "", "n_images": n,
        "clean_accuracy": 100.0 * part["clean_correct"].mean(), "robust_accuracy": 100.0 * robust_mean(part),
        "success_rate": 100.0 * int((part["attacked"] & part["fooled"]).sum()) / attacked if attacked else math.nan,
        "mean_l2": math.nan, "median_l2": math.nan, "mean_linf": math.nan,
        "n_flagged": int((part["flags"] != "").sum()), "seconds": round(seconds, 3),
        "subset": describe_subset(index=part["index"], images=images),
    }


def summarise(suite: SuiteConfig, samples: pd.DataFrame, seconds: dict[tuple[str, str], float]) -> pd.DataFrame:
    """One row per (defense, threat model); with the suite's ``worst_case_over``, one
    ``worst case`` row per defense as well (per image: robust only if robust under every one)."""
    from robust_bench_sc.datasets import images_of

    images = images_of(suite.data)  # the dataset's words: "CIFAR-100 test images"
    rows: list[dict[str, Any]] = []
    for d in suite.defenses:
        for t in suite.threat_models:
            part = samples[(samples["defense"] == d.label) & (samples["threat_model"] == t.name)]
            subset = describe_subset(index=part["index"], images=images)
            if "selected" in part.columns and part["selected"].notna().any():
                # attacks on a random subset (ZOO): count only the images drawn
                drawn = part[part["selected"] == 1]
                subset = describe_subset(index=part["index"], drawn=len(drawn), images=images)
                part = drawn
            n = len(part)
            if n == 0:
                continue
            fooled = part[part["attacked"] & part["fooled"]]
            attacked = int(part["attacked"].sum())
            eps = t.epsilon_value
            error, missing = column_error(part)  # the attack raised: no number, the table says why
            rows.append({
                "defense": d.label,
                "threat_model": t.name,
                "attack": t.kind,
                "backend": t.backend,
                "norm": t.norm_name,
                "epsilon": eps if eps is not None else math.nan,
                "bpda": t.bpda or "",
                "n_images": n,
                "clean_accuracy": 100.0 * part["clean_correct"].mean(),
                "robust_accuracy": math.nan if missing else 100.0 * robust_mean(part),
                "success_rate": 100.0 * len(fooled) / attacked if attacked and not missing else math.nan,
                "mean_l2": fooled["l2"].mean() if len(fooled) else math.nan,
                "median_l2": fooled["l2"].median() if len(fooled) else math.nan,
                "mean_linf": fooled["linf"].mean() if len(fooled) else math.nan,
                "n_flagged": int((part["flags"].notna() & (part["flags"].astype(str) != "")).sum()),
                "seconds": round(seconds.get((d.label, t.name), 0.0), 3),
                "subset": subset,
                "error": error,
            })
    over = list(getattr(suite, "worst_case_over", []) or [])
    if over:
        t0 = suite.threat(over[0])
        for d in suite.defenses:
            over_d = worst_case_over_for(over, d.threat_models)
            if not over_d:
                continue
            part, _why = worst_case_samples(samples, over_d, d.label)
            if part is not None:
                rows.append(worst_case_row(part, t0.norm_name, t0.epsilon_value,
                                           sum(seconds.get((d.label, t), 0.0) for t in over_d), images))
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def fmt_eps(eps: float | None, norm: str = "") -> str:
    """A budget as tables print it: ``8/255`` for an ℓ∞ budget on the 8-bit grid, else 6 digits."""
    try:
        if eps is None or math.isnan(float(eps)):
            return ""
    except (TypeError, ValueError):
        return ""
    if (n := Norm.get(norm)) is not None and n.pixel_grid:
        k = eps * 255
        if abs(k - round(k)) < 1e-6 and round(k) > 0:
            return f"{int(round(k))}/255"
    return f"{eps:.6g}"
