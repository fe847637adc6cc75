"""Renderers of a :class:`~robust_bench_sc.report_model.Report`: one module per format."""

from __future__ import annotations

from robust_bench_sc.renderers.frame import to_csv, to_frame
from robust_bench_sc.renderers.html_page import to_html
from robust_bench_sc.renderers.latex import latex_escape, to_latex
from robust_bench_sc.renderers.markdown import to_markdown

FORMATS = ("md", "csv", "latex", "html")

__all__ = ["FORMATS", "to_markdown", "to_csv", "to_frame", "to_latex", "latex_escape", "to_html"]
