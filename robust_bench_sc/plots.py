"""Report plots (matplotlib, Agg backend; each written as PNG and PDF).

* Robust accuracy vs ε, with 95 % Wilson bands, for every ε sweep: threat models that
  share attack, norm and every other setting and differ only in ε (detected, so a suite
  "declares" a sweep simply by listing such threat models). The ε = 0 point is the clean
  accuracy on the same images.
* Perturbation-norm distributions (histogram and ECDF of ‖e‖₂ of successful samples) for
  minimum-norm attacks (cw / boundary / hsj / zoo).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from robust_bench_sc.norms import Norm  # noqa: E402
from robust_bench_sc.stats import wilson_interval  # noqa: E402
from robust_bench_sc.storage import safe_name  # noqa: E402
from robust_bench_sc.subsets import describe_subset, short_subset  # noqa: E402
from robust_bench_sc.summary import fmt_eps  # noqa: E402

if TYPE_CHECKING:  # annotations only: reports imports this module to draw a report's plots
    from robust_bench_sc.report_model import Report, ThreatInfo

@dataclass
class Plot:
    title: str
    png: Path
    pdf: Path
    caption: str


def _strip_eps(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip_eps(v) for k, v in obj.items() if k not in ("epsilon", "name", "description")}
    if isinstance(obj, list):
        return [_strip_eps(v) for v in obj]
    return obj


def sweep_groups(threats: list[ThreatInfo]) -> list[list[ThreatInfo]]:
    """Groups (≥ 2 distinct ε) of threat models identical except for ε, sorted by ε."""
    groups: dict[str, list[ThreatInfo]] = {}
    for t in threats:
        if t.epsilon is None or t.kind in ("none",) or t.minimum_norm:
            continue
        key = json.dumps(_strip_eps(t.config), sort_keys=True, default=str)
        groups.setdefault(key, []).append(t)
    out = []
    for g in groups.values():
        if len({t.epsilon for t in g}) >= 2:
            out.append(sorted(g, key=lambda t: float(t.epsilon)))  # type: ignore[arg-type]  # ε is set: see above
    return out


def _save(fig, stem: Path) -> tuple[Path, Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, pdf = stem.with_suffix(".png"), stem.with_suffix(".pdf")
    fig.savefig(png, dpi=130, bbox_inches="tight")
    fig.savefig(pdf, bbox_inches="tight")
    plt.close(fig)
    return png, pdf


def _colors(n: int):
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def plot_sweep(report: Report, group: list[ThreatInfo], stem: Path) -> Plot:
    s = report.samples
    norm = group[0].norm
    on_grid = bool((n_obj := Norm.get(norm)) and n_obj.pixel_grid)
    label = n_obj.label if n_obj else norm
    scale = 255.0 if on_grid else 1.0
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    n_seen = set()
    images: dict[str, str] = {}   # defense → which images its curve is on
    legend: dict[str, str] = {}   # the same, short (the title names the data set)
    for d, color in zip(report.defenses, _colors(len(report.defenses))):
        xs, ys, lo, hi = [], [], [], []
        first = True
        seen_d: list[str] = []
        for t in group:
            part = s[(s["defense"] == d.label) & (s["threat_model"] == t.label)] if s is not None else None
            if part is None or not len(part):
                continue
            n = len(part)
            n_seen.add(n)
            seen_d.append(describe_subset(index=part["index"], images=report.images))
            if first:  # ε = 0: clean accuracy on the same images
                k0 = int(part["clean_correct"].sum())
                a, b = wilson_interval(k0, n)
                xs.append(0.0)
                ys.append(100 * k0 / n)
                lo.append(a)
                hi.append(b)
                first = False
            k = int(part["robust"].sum())
            a, b = wilson_interval(k, n)
            assert t.epsilon is not None  # sweep_groups keeps threat models with an ε only
            xs.append(t.epsilon * scale)
            ys.append(100 * k / n)
            lo.append(a)
            hi.append(b)
        if not xs:
            continue
        images[d.label] = " / ".join(dict.fromkeys(seen_d))
        legend[d.label] = " / ".join(dict.fromkeys(short_subset(x) for x in seen_d))
        ax.plot(xs, ys, "o-", color=color, label=d.label, lw=1.8, ms=4)
        ax.fill_between(xs, lo, hi, color=color, alpha=0.18, lw=0)
    g0 = group[0]
    ax.set_xlabel(f"ε ({label}" + (", ×1/255)" if on_grid else ")"))
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    mixed = len(set(images.values())) > 1
    if mixed:  # runs on different image sets: each curve says which images it is on
        for line in ax.get_lines():
            line.set_label(f"{line.get_label()} ({legend[str(line.get_label())]})")
    ax.legend(fontsize=8, loc="upper right")
    names = ", ".join(t.label for t in group)
    title = f"{g0.kind} {label}: robust accuracy vs ε"
    ax.set_title(f"{title}\n({describe_subset(n_seen, images=report.images)}; bands: 95% Wilson)", fontsize=10)
    png, pdf = _save(fig, stem)
    eps = ", ".join(fmt_eps(t.epsilon, norm) for t in group)
    on = "; ".join(f"{d}: {im}" for d, im in images.items()) if mixed else describe_subset(n_seen, images=report.images)
    return Plot(title, png, pdf, f"Robust accuracy vs ε over threat models {names} (ε = {eps}; ε = 0 is clean "
                                 f"accuracy), {on}, 95% Wilson bands.")


def plot_norms(report: Report, threat: ThreatInfo, stem: Path) -> Plot | None:
    s = report.samples
    if s is None:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    any_data = False
    all_l2 = []
    per = []
    for d, color in zip(report.defenses, _colors(len(report.defenses))):
        part = s[(s["defense"] == d.label) & (s["threat_model"] == threat.label)]
        if not len(part):
            continue
        attacked = part[part["attacked"]]
        ok = attacked[attacked["fooled"]]["l2"].astype(float).dropna().to_numpy()
        ok = ok[np.isfinite(ok)]
        per.append((d, color, ok, len(attacked), describe_subset(index=part["index"], images=report.images)))
        all_l2.extend(ok.tolist())
    if all_l2:
        hi = max(all_l2) * 1.05 or 1.0
        bins = np.linspace(0, hi, 30)
        mixed = len({p[4] for p in per}) > 1
        for d, color, ok, n_att, im in per:
            if not len(ok):
                continue
            any_data = True
            on = f", {short_subset(im)}" if mixed else ""
            # outlines, not filled bars: overlapping defenses stay readable (no muddy blends)
            ax1.hist(ok, bins=bins, color=color, histtype="step", linewidth=1.6, label=f"{d.label} (n={len(ok)}{on})")
            xs = np.sort(ok)
            ys = 100 * np.arange(1, len(xs) + 1) / max(n_att, 1)
            ax2.step(np.concatenate([[0], xs]), np.concatenate([[0], ys]), where="post", color=color,
                     label=f"{d.label}: mean {ok.mean():.2f}, {100 * len(ok) / max(n_att, 1):.0f}% succ.")
    if not any_data:
        plt.close(fig)
        return None
    ax1.yaxis.set_major_locator(MaxNLocator(integer=True))
    if threat.epsilon is not None:  # the threat model's budget: robust accuracy is read off there
        for ax in (ax1, ax2):
            ax.axvline(threat.epsilon, color="k", ls="--", lw=0.8)
        ax2.annotate(f"ε = {threat.epsilon:g}", (threat.epsilon, 96), fontsize=8, xytext=(3, 0),
                     textcoords="offset points")
    ax1.set_xlabel("‖e‖₂ of successful perturbations")
    ax1.set_ylabel("images")
    ax1.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1, frameon=False)  # off the data
    ax1.grid(alpha=0.3)
    ax2.set_xlabel("‖e‖₂ budget")
    ax2.set_ylabel("attack success (% of attacked images)")
    ax2.set_ylim(-2, 102)
    ax2.set_xlim(left=0)
    ax2.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1, frameon=False)
    ax2.grid(alpha=0.3)
    title = f"{threat.label} ({threat.kind}): perturbation norms"
    sets = list(dict.fromkeys(p[4] for p in per))
    fig.suptitle(f"{title} ({sets[0] if len(sets) == 1 else 'images per defense in the legend'})", fontsize=10)
    png, pdf = _save(fig, stem)
    return Plot(title, png, pdf, f"Histogram (left) and ECDF (right) of ‖e‖₂ of the successful {threat.kind} "
                                 f"perturbations; the ECDF is over attacked images, so it ends at the success rate; "
                                 + ("; ".join(f"{p[0].label}: {p[4]}" for p in per) if len(sets) > 1 else sets[0]) + ".")


def make_plots(report: Report, out_dir: Path) -> list[Plot]:
    """Every plot the report supports, written under ``out_dir``."""
    if report.samples is None or not len(report.samples):
        return []
    plots: list[Plot] = []
    for g in sweep_groups(report.threats):
        stem = out_dir / f"sweep_{safe_name(g[0].kind)}_{safe_name(g[0].norm)}_{safe_name(g[0].label)}"
        plots.append(plot_sweep(report, g, stem))
    for t in report.threats:
        if t.minimum_norm:
            p = plot_norms(report, t, out_dir / f"norms_{safe_name(t.label)}")
            if p is not None:
                plots.append(p)
    return plots


__all__ = ["Plot", "sweep_groups", "plot_sweep", "plot_norms", "make_plots"]
