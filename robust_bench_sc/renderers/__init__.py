"""Renderers of a :class:`~robust_bench_sc.report_model.Report`: one module per format.

:data:`FORMATS` is the registry of report formats (``scbench report --format NAME``): a
:class:`ReportFormat` per name. The bundled ones are registered here; other packages add theirs
under the entry-point group ``robust_bench_sc.report_formats`` (a ``ReportFormat`` instance).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robust_bench_sc.registry import Registry
from robust_bench_sc.renderers.frame import to_csv, to_frame
from robust_bench_sc.renderers.html_page import to_html
from robust_bench_sc.renderers.latex import latex_escape, to_latex
from robust_bench_sc.renderers.markdown import to_markdown


@dataclass(frozen=True)
class ReportFormat:
    """One report format: ``render(report, paper, plots, out_dir)`` → the text.

    ``plots``: the format shows plots (made when a file or plot folder is named);
    ``always_plots``: it makes them even when printing (a self-contained HTML page).
    ``out_dir`` is the folder of the output file (None when printing), for relative links."""

    name: str
    render: Callable[[Any, bool, list, "Path | None"], str]
    plots: bool = False
    always_plots: bool = False


FORMATS: Registry[ReportFormat] = Registry("report format", "robust_bench_sc.report_formats", accepts=ReportFormat)
for _fmt in (ReportFormat("md", lambda r, paper, plots, out_dir: to_markdown(r, paper, plots, plots_relative_to=out_dir),
                          plots=True),
             ReportFormat("csv", lambda r, paper, plots, out_dir: to_csv(r, paper)),
             ReportFormat("latex", lambda r, paper, plots, out_dir: to_latex(r, paper)),
             ReportFormat("html", lambda r, paper, plots, out_dir: to_html(r, paper, plots), plots=True,
                          always_plots=True)):
    FORMATS.register(_fmt.name, _fmt)

__all__ = ["FORMATS", "ReportFormat", "to_markdown", "to_csv", "to_frame", "to_latex", "latex_escape", "to_html"]
