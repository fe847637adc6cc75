"""Per-sample records → one summary row per (defense, threat model)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from robust_bench_sc.config import SuiteConfig

SUMMARY_COLUMNS = [
    "defense", "threat_model", "attack", "backend", "norm", "epsilon", "bpda", "n_images",
    "clean_accuracy", "robust_accuracy", "success_rate", "mean_l2", "median_l2",
    "mean_linf", "n_flagged", "seconds", "subset",
]


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval for k successes out of n, in percent."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (100 * max(0.0, centre - half), 100 * min(1.0, centre + half))


def summarise(suite: SuiteConfig, samples: pd.DataFrame, seconds: dict[tuple[str, str], float]) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    for d in suite.defenses:
        for t in suite.threat_models:
            part = samples[(samples["defense"] == d.label) & (samples["threat_model"] == t.name)]
            subset = f"first {len(part)} CIFAR-10 test images"
            if "selected" in part.columns and part["selected"].notna().any():
                # attacks on a random subset (ZOO): count only the images drawn
                part = part[part["selected"] == 1]
                subset = f"{len(part)} seeded random correctly classified images of the {subset}"
            n = len(part)
            if n == 0:
                continue
            fooled = part[part["attacked"] & part["fooled"]]
            attacked = int(part["attacked"].sum())
            eps = t.epsilon_value
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
                "robust_accuracy": 100.0 * part["robust"].mean(),
                "success_rate": 100.0 * len(fooled) / attacked if attacked else math.nan,
                "mean_l2": fooled["l2"].mean() if len(fooled) else math.nan,
                "median_l2": fooled["l2"].median() if len(fooled) else math.nan,
                "mean_linf": fooled["linf"].mean() if len(fooled) else math.nan,
                "n_flagged": int((part["flags"].fillna("") != "").sum()),
                "seconds": round(seconds.get((d.label, t.name), 0.0), 3),
                "subset": subset,
            })
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def cell(row: pd.Series, minimum_norm: bool) -> str:
    """The number a paper table shows for this (defense, threat model)."""
    if minimum_norm:
        if math.isnan(row["mean_l2"]):
            return f"no success ({row['robust_accuracy']:.2f}% survive)"
        return f"‖e‖₂ = {row['mean_l2']:.2f} ({row['success_rate']:.0f}% succ.)"
    if row["attack"] == "none":
        return f"{row['clean_accuracy']:.2f}"
    return f"{row['robust_accuracy']:.2f}"


def summary_markdown(suite: SuiteConfig, table: pd.DataFrame) -> str:
    """Defenses as rows, threat models as columns (accuracies in % with n and 95 % Wilson
    intervals); rendered by :mod:`robust_bench_sc.reports`, as ``scbench report`` does."""
    from robust_bench_sc.reports import report_from_suite, to_markdown

    return to_markdown(report_from_suite(suite, table))
