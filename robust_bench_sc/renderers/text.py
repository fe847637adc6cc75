"""Text shared by the renderers: a cell as text, the description line, paper footnote."""

from __future__ import annotations

from robust_bench_sc import paper_numbers as pn
from robust_bench_sc.report_model import CellValue, DefenseInfo, Report
from robust_bench_sc.storage import RunMeta


def _text_cell(c: CellValue | None, *, ci: bool = True, images: str = "") -> str:
    text = _text_cell_value(c, ci=ci)
    return f"{text} (on {images})" if images and c is not None and text != "—" else text


def _text_cell_value(c: CellValue | None, *, ci: bool = True) -> str:
    if c is None:
        return "—"
    if c.minimum_norm:
        notes = [] if c.success_rate is None else [f"{c.success_rate:.0f}% succ." + (
            f" [{c.success_ci[0]:.1f}, {c.success_ci[1]:.1f}]" if ci and c.success_ci is not None else "")]
        notes += [f"{c.flagged} flagged"] if c.flagged else []
        sr = f" ({'; '.join(notes)})" if notes else ""
        at = "" if c.budget is None or c.budget_accuracy is None else f"; {c.budget_accuracy:.2f} at ε = {c.budget:g}"
        if c.missing:
            return f"no success{sr}{at}"
        interval = f" [{c.ci[0]:.2f}, {c.ci[1]:.2f}]" if ci and c.ci is not None else ""
        return f"‖e‖₂ = {c.value:.2f}{interval}{sr}{at}"
    if c.missing:
        return "—"
    if ci and c.ci is not None:
        return f"{c.value:.2f} [{c.ci[0]:.1f}, {c.ci[1]:.1f}]"
    return f"{c.value:.2f}"


def _paper_label(d: DefenseInfo) -> str:
    return f"paper: {d.paper_row}†"


def _paper_footnote(report: Report) -> str:
    cols = [c for t in report.threats if (c := pn.paper_column(t.config)) is not None]
    tables = pn.tables_shown(cols, [d.paper_row for d in report.defenses])
    zoo = any(c.key == "zoo" for c in cols)
    s = (f"† the paper's published numbers ({', '.join(tables) or 'Table 1'}), measured on the "
         f"{pn.FULL_TEST_SET}, not on our subset, with the paper's attack settings "
         f"({pn.settings_note(cols)}), matched to our columns by attack, norm, ε, loss and ℓ1 step")
    if any(c.table == "Table 2" for c in cols):
        s += " (Table 2: also by steps, restarts, step size and the BPDA stand-in)"
    if zoo:
        s += "; ZOO (Table 4): 100 random correctly classified test images"
    return s + "."


def describe(report: Report) -> str:
    mn = ("; minimum-norm attacks as mean ‖e‖₂ of successful perturbations [95% t-interval of the mean, cut at 0, where the "
          "per-sample records are at hand] and success rate [95% Wilson] of the images attacked")
    return (f"On the {report.subset} (accuracies in % with 95% Wilson intervals in brackets"
            f"{mn if any(t.minimum_norm for t in report.threats) else ''}).")



def _commit(g: dict) -> str:
    c = g.get("commit")
    return c[:10] + (" (dirty)" if g.get("dirty") else "") if c else "unknown"


def _blank(value: object) -> str:
    """A run.json value in a table: nothing for a missing one."""
    return "" if value is None else str(value)


def _git(meta: RunMeta) -> str:
    """The code that computed the run's numbers: the commit of every invocation that recorded
    jobs, in order (an invocation that only reused records and rewrote the tables is left
    out; one from before run.json counted its jobs is kept)."""
    shown: list[str] = []
    for inv in meta.invocations:
        if inv.get("jobs_computed") != 0:
            c = _commit(inv.get("git") or {})
            if c not in shown:
                shown.append(c)
    return ", ".join(shown) or _commit(meta.git)
