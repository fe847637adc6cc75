"""CSV: the wide table in the paper's layout (one row per defense and per paper row)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from robust_bench_sc import paper_numbers as pn
from robust_bench_sc.report_model import Report, _subset_of, cell_value, paper_cell


def to_frame(report: Report, paper: bool = False) -> pd.DataFrame:
    """Wide table in the paper's layout: one row per defense (and per paper row)."""
    rows = []
    for d in report.defenses:
        out: dict[str, Any] = {"defense": d.label, "source": "ours", "subset": report.subset}
        pout: dict[str, Any] = {"defense": d.label, "source": f"paper ({d.paper_row})", "subset": pn.FULL_TEST_SET}
        has_paper = False
        for t in report.threats:
            r = report.cell(d.label, t.label)
            c = cell_value(r, t) if r is not None else None
            p = paper_cell(d, t) if paper else None
            has_paper |= p is not None
            for target, v in ((out, c), (pout, p)):
                if t.minimum_norm:
                    target[f"{t.label}_mean_l2"] = v.value if v else math.nan
                    target[f"{t.label}_mean_l2_ci_low"] = v.ci[0] if v and v.ci else math.nan
                    target[f"{t.label}_mean_l2_ci_high"] = v.ci[1] if v and v.ci else math.nan
                    target[f"{t.label}_success_rate"] = v.success_rate if v and v.success_rate is not None else math.nan
                    if t.epsilon is not None:
                        target[f"{t.label}_accuracy_at_eps"] = v.budget_accuracy if v and v.budget_accuracy is not None else math.nan
                else:
                    target[t.label] = v.value if v else math.nan
                    target[f"{t.label}_ci_low"] = v.ci[0] if v and v.ci else math.nan
                    target[f"{t.label}_ci_high"] = v.ci[1] if v and v.ci else math.nan
                target[f"{t.label}_n"] = v.n if v else math.nan
            # which images this figure is on (its own subset: merged runs may differ per row)
            out[f"{t.label}_images"] = _subset_of(r) if r is not None else ""
            col = pn.paper_column(t.config) if p is not None else None
            pout[f"{t.label}_images"] = col.subset if col is not None else ""
        rows.append(out)
        if paper and has_paper:
            rows.append(pout)
    return pd.DataFrame(rows)


def to_csv(report: Report, paper: bool = False) -> str:
    return to_frame(report, paper).to_csv(index=False, float_format="%.4f")
