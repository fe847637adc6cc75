"""HTML: one self-contained page (sortable tables, plots embedded as PNG, its CSS and JS)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from robust_bench_sc.renderers.text import _blank, _git, _paper_footnote, _text_cell, describe
from robust_bench_sc.report_model import FLAGGED_NOTE, CellValue, Report, cell_value, column_n, paper_cell, threat_settings
from robust_bench_sc.summary import fmt_eps


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.35em .6em;text-align:right;vertical-align:top}
th{background:#f1f3f6}td:first-child,th:first-child{text-align:left}
table.sortable th{cursor:pointer;user-select:none}table.sortable th:after{content:" \\2195";color:#999}
table.sortable th.asc:after{content:" \\2191";color:#333}table.sortable th.desc:after{content:" \\2193";color:#333}
.ci{color:#666;font-size:.85em;display:block}.paper{color:#8a4b00;font-size:.85em;display:block;font-style:italic}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.4em .8em}
.meta td{text-align:left;font-family:monospace;font-size:.85em}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:.9em}
code{background:#f4f4f4;padding:0 .2em}
"""

_JS = r"""
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('thead th').forEach(function(th,i){
    th.addEventListener('click',function(){
      var asc=!th.classList.contains('asc');
      t.querySelectorAll('thead th').forEach(function(h){h.classList.remove('asc','desc')});
      th.classList.add(asc?'asc':'desc');
      var body=t.tBodies[0],rows=Array.prototype.slice.call(body.rows);
      rows.sort(function(a,b){
        var x=a.cells[i].getAttribute('data-v'),y=b.cells[i].getAttribute('data-v');
        var nx=parseFloat(x),ny=parseFloat(y);
        if(!isNaN(nx)&&!isNaN(ny))return asc?nx-ny:ny-nx;
        if(isNaN(nx)!==isNaN(ny))return isNaN(nx)?1:-1;
        return asc?String(x).localeCompare(y):String(y).localeCompare(x);
      });
      rows.forEach(function(r){body.appendChild(r)});
    });
  });
});
// "#sort=K" or "#sort=K,desc" sorts the results table by column K on load (links, tests)
(function(){var m=/^#sort=(\d+)(,desc)?$/.exec(location.hash);if(!m)return;
  var th=document.querySelectorAll('#results thead th')[+m[1]];if(!th)return;th.click();if(m[2])th.click();})();
"""


def _h(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _html_cell(c: CellValue | None, p: CellValue | None, images: str = "") -> str:
    if c is None:
        inner, v = "—", ""
    elif c.minimum_norm:
        sci = f" [{c.success_ci[0]:.1f}, {c.success_ci[1]:.1f}]" if c.success_ci is not None else ""
        sr = "" if c.success_rate is None else f'<span class="ci">{c.success_rate:.0f}% succ.{sci}, n={c.n}</span>'
        if c.flagged:
            sr += f'<span class="ci" title="{_h(FLAGGED_NOTE)}">{c.flagged} flagged</span>'
        interval = f'<span class="ci">[{c.ci[0]:.2f}, {c.ci[1]:.2f}]</span>' if c.ci is not None and not c.missing else ""
        inner = ("no success" if c.missing else f"‖e‖₂ = {c.value:.2f}") + interval + sr
        if c.budget is not None and c.budget_accuracy is not None:
            inner += f'<span class="ci">{c.budget_accuracy:.2f}% robust at ε = {c.budget:g}</span>'
        v = "" if c.missing else f"{c.value:.6g}"
    else:
        inner = "—" if c.missing else f"{c.value:.2f}"
        if c.ci is not None and not c.missing:
            inner += f'<span class="ci">[{c.ci[0]:.1f}, {c.ci[1]:.1f}], n={c.n}</span>'
        v = "" if c.missing else f"{c.value:.6g}"
    if images and c is not None:
        inner += f'<span class="ci">on {_h(images)}</span>'
    if p is not None:
        inner += f'<span class="paper">paper† {_h(_text_cell(p, ci=False))}</span>'
    return f'<td data-v="{_h(v)}">{inner}</td>'


def to_html(report: Report, paper: bool = False, plots: list | None = None) -> str:
    ts = report.threats
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{_h(report.title)}: scbench report</title>", f"<style>{_CSS}</style></head><body>",
             f"<h1>{_h(report.title)}</h1>", f"<p>{_h(describe(report))} Click a column header to sort.</p>"]
    for note in report.notes:
        parts.append(f'<p class="note">{_h(note)}</p>')
    parts.append('<table class="sortable" id="results"><thead><tr><th>defense</th>')
    for t in ts:
        eps = fmt_eps(t.epsilon, t.norm)
        sub = " ".join(x for x in (t.kind, t.norm, f"ε={eps}" if eps else "") if x)
        parts.append(f'<th title="{_h(threat_settings(t))}">{_h(t.label)}<span class="ci">{_h(sub)}</span></th>')
    parts.append("</tr></thead><tbody>")
    any_paper = False
    for d in report.defenses:
        parts.append(f'<tr><td data-v="{_h(d.label)}">{_h(d.label)}'
                     + (f'<span class="paper">paper: {_h(d.paper_row)}</span>' if paper and d.paper_row else "") + "</td>")
        for t in ts:
            r = report.cell(d.label, t.label)
            p = paper_cell(d, t) if paper else None
            any_paper |= p is not None
            parts.append(_html_cell(cell_value(r, t) if r is not None else None, p, report.cell_images(d.label, t.label)))
        parts.append("</tr>")
    parts.append("</tbody><tfoot><tr><td>n images</td>" +
                 "".join(f"<td>{_h(column_n(report, t))}</td>" for t in ts) + "</tr></tfoot></table>")
    if paper:
        parts.append(f"<p>{_h(_paper_footnote(report)) if any_paper else 'No cell matches the paper.'}</p>")
    parts.append('<h2>Threat models</h2><table class="sortable"><thead><tr><th>threat model</th><th>attack</th>'
                 "<th>backend</th><th>norm</th><th>ε</th><th>BPDA</th><th>settings</th></tr></thead><tbody>")
    for t in ts:
        c = t.config
        vals = [t.label, t.kind, c.get("backend", ""), t.norm or "—", fmt_eps(t.epsilon, t.norm), c.get("bpda") or "—",
                threat_settings(t)]
        parts.append("<tr>" + "".join(f'<td data-v="{_h(v)}" style="text-align:left">{_h(v)}</td>' for v in vals) + "</tr>")
    parts.append("</tbody></table>")
    if plots:
        parts.append("<h2>Plots</h2>")
        for p in plots:
            data = base64.b64encode(Path(p.png).read_bytes()).decode("ascii")
            parts.append(f'<figure><img alt="{_h(p.title)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{_h(p.caption)}</figcaption></figure>")
    if report.runs:
        parts.append("<h2>Runs</h2>")
        for run in report.runs:
            m = run.meta
            rows = [("run directory", run.path), ("suite", m.suite), ("suite hash", m.suite_hash),
                    ("subset", run.subset or m.subset), ("data hash", m.data_hash), ("seed", m.seed),
                    ("profile", m.profile or "—"), ("overrides", " ".join(m.overrides) or "—"),
                    ("git commit", _git(m)), ("device", m.device), ("status", m.status),
                    ("started / finished", f"{_blank(m.started_at)} / {_blank(m.finished_at)}"),
                    ("command", " ".join(m.command)),
                    ("versions", ", ".join(f"{k} {v}" for k, v in m.versions.items() if v))]
            parts.append('<table class="meta"><tbody>' + "".join(
                f"<tr><th>{_h(k)}</th><td>{_h(v)}</td></tr>" for k, v in rows) + "</tbody></table>")
    parts.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(parts) + "\n"

