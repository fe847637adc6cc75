"""Markdown: the runner's summary.md and `scbench report --format md`."""

from __future__ import annotations

from pathlib import Path

from robust_bench_sc.renderers.text import _blank, _git, _paper_footnote, _paper_label, _text_cell, describe
from robust_bench_sc.report_model import (FLAGGED_NOTE, Report, any_flagged, cell_value, column_n, paper_cell,
                                          threat_settings)
from robust_bench_sc.summary import fmt_eps


def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|")


def to_markdown(report: Report, paper: bool = False, plots: list | None = None,
                plots_relative_to: Path | None = None, details: bool = True) -> str:
    ts = report.threats
    lines = [f"# {report.title}", "", describe(report)]
    for note in report.notes:
        lines += ["", note]
    lines += ["", "| defense | " + " | ".join(_md_escape(t.label) for t in ts) + " |",
              "|" + "---|" * (len(ts) + 1)]
    any_paper = False
    for d in report.defenses:
        cells = [_text_cell(cell_value(r, t) if (r := report.cell(d.label, t.label)) is not None else None,
                            images=report.cell_images(d.label, t.label)) for t in ts]
        lines.append(f"| {_md_escape(d.label)} | " + " | ".join(cells) + " |")
        if paper:
            pcs = [paper_cell(d, t) for t in ts]
            if any(p is not None for p in pcs):
                any_paper = True
                lines.append(f"| *{_paper_label(d)}* | " + " | ".join(
                    "" if p is None else f"*{_text_cell(p, ci=False)}*" for p in pcs) + " |")
    lines.append("| n images | " + " | ".join(column_n(report, t) for t in ts) + " |")
    if any_flagged(report):
        lines += ["", FLAGGED_NOTE]
    if paper:
        lines += ["", _paper_footnote(report) if any_paper else
                  "No defense/threat model here matches a column of the paper's Tables 1, 3, 4."]
    if details:
        lines += ["", "| threat model | attack | backend | norm | ε | BPDA | settings |", "|---|---|---|---|---|---|---|"]
        for t in ts:
            c = t.config
            lines.append(f"| {_md_escape(t.label)} | {t.kind} | {c.get('backend', '')} | {t.norm or '—'} | "
                         f"{fmt_eps(t.epsilon, t.norm)} | {c.get('bpda') or '—'} | {_md_escape(threat_settings(t))} |")
    if plots:
        lines += ["", "## Plots", ""]
        for p in plots:
            png = Path(p.png)
            if plots_relative_to is not None:
                try:
                    png = png.resolve().relative_to(plots_relative_to.resolve())
                except ValueError:
                    pass
            lines += [f"![{p.title}]({png.as_posix()})", "", f"*{p.caption}*", ""]
    if report.runs:
        lines += ["", "## Runs", "", "| run | suite | suite hash | subset | seed | git commit | torch | status |",
                  "|---|---|---|---|---|---|---|---|"]
        for run in report.runs:
            m = run.meta
            lines.append(f"| `{run.path}` | {_blank(m.suite)} | {_blank(m.suite_hash)} | {run.subset or _blank(m.subset)} | "
                         f"{_blank(m.seed)} | {_git(m)} | {_blank(m.versions.get('torch'))} | {_blank(m.status)} |")
    return "\n".join(lines).rstrip() + "\n"

