"""Comparison reports: one or more run directories → tables in the paper's layout.

Defenses are rows, threat models columns. Accuracy cells are in % with the number of
images and a 95 % Wilson interval; minimum-norm attacks (cw / boundary / hsj / zoo) show
the mean ‖e‖₂ of successful perturbations and the success rate. Every table says which
images it is on ("first N CIFAR-10 test images"); with ``paper=True`` the paper's own
numbers (full test set, :mod:`robust_bench_sc.paper_numbers`) are shown beside ours.

The runner's ``summary.md`` is rendered by :func:`to_markdown` too (see
:func:`robust_bench_sc.tables.write_tables`).

Formats: the registry :data:`~robust_bench_sc.renderers.FORMATS` (md, csv, latex, html:
:func:`to_markdown`, :func:`to_csv`, :func:`to_latex`, :func:`to_html`, one module each in
:mod:`robust_bench_sc.renderers`; plug-ins add theirs by entry point); the data they render is
:mod:`robust_bench_sc.report_model`'s. This module ties the two together (:func:`render`) and
keeps every name importable from here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from robust_bench_sc.registry import did_you_mean
from robust_bench_sc.renderers import FORMATS, ReportFormat, latex_escape, to_csv, to_frame, to_html, to_latex, to_markdown
from robust_bench_sc.report_model import (CellValue, DefenseInfo, Report, ReportError, RunInfo, ThreatInfo, cell_value,
                                          load_report, load_run, paper_cell, report_from_suite)

NOTHING_TO_PLOT = ("no plots: nothing to draw (an ε-sweep plot needs one attack at two or more ε, a norm histogram "
                   "a minimum-norm attack: cw, boundary, hsj or zoo)")


def render(run_dirs: list[str | Path], fmt: str = "md", paper: bool = False, out: str | Path | None = None,
           plots_dir: str | Path | None = None, with_plots: bool | None = None, embed: bool = False,
           on_note: Callable[[str], None] | None = None) -> str:
    """Render a report of ``run_dirs``; write it to ``out`` when given. Returns the text.

    ``embed`` (md): headings two levels down (``#`` → ``###``), for a section of another
    document, as docs/results.md embeds it.

    ``on_note``: told, in one line, when plots were asked for and there is nothing to draw.

    Plots (PNG + PDF) go to ``plots_dir`` (default: ``<out stem>_plots/`` beside ``out``);
    the HTML page embeds them. Without ``out`` and ``plots_dir`` only HTML makes plots
    (in a temporary folder).
    """
    if fmt not in FORMATS:
        raise ReportError(f"unknown format {fmt!r}{did_you_mean(fmt, FORMATS.names())}; "
                          f"choose one of {', '.join(FORMATS.names())}")
    form = FORMATS.get(fmt)
    report = load_report(run_dirs)
    out_path = Path(out) if out else None
    asked = plots_dir is not None or with_plots is True  # plots asked for, not only on by default
    if with_plots is None:
        with_plots = form.plots and (plots_dir is not None or out_path is not None or form.always_plots)
    plots = []
    if with_plots:
        from robust_bench_sc.plots import make_plots

        if plots_dir is None and out_path is not None:
            plots_dir = out_path.parent / f"{out_path.stem}_plots"
        if plots_dir is None:
            import tempfile

            plots_dir = tempfile.mkdtemp(prefix="scbench_plots_")
        plots = make_plots(report, Path(plots_dir))
        if not plots and asked and on_note is not None:
            on_note(NOTHING_TO_PLOT)
    text = form.render(report, paper, plots, out_path.parent if out_path else None)
    if embed and fmt == "md":
        text = "\n".join("##" + ln if ln.startswith("#") else ln for ln in text.split("\n"))
    if out_path is not None:
        from robust_bench_sc.storage import atomic_write_text

        atomic_write_text(out_path, text)
        out_path.chmod(0o644)  # a report is for reading (atomic writes create 0600 files)
    return text


__all__ = ["Report", "ReportError", "ThreatInfo", "DefenseInfo", "RunInfo", "CellValue", "load_report", "load_run",
           "report_from_suite", "to_markdown", "to_csv", "to_latex", "to_html", "to_frame", "render", "latex_escape",
           "cell_value", "paper_cell", "FORMATS", "ReportFormat"]
