"""A finished run's tables, from its records: ``samples.csv`` (every sample, the documented
record fields first), ``summary.csv`` (``summary.summarise``) and ``summary.md`` (rendered as
``scbench report`` renders it)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from robust_bench_sc.config import SuiteConfig
from robust_bench_sc.plan import Job
from robust_bench_sc.records import column_order, load_samples
from robust_bench_sc.reports import report_from_suite, to_markdown
from robust_bench_sc.storage import RunDir
from robust_bench_sc.summary import summarise


def write_tables(suite: SuiteConfig, run_dir: Path, jobs: list[Job]) -> pd.DataFrame:
    """Write the three tables of ``run_dir`` (every job recorded); returns the summary."""
    samples, seconds = load_samples(run_dir, jobs, suite)
    samples = samples.sort_values(["defense", "threat_model", "index"], kind="stable")
    samples = samples[column_order(samples.columns)]
    layout = RunDir(run_dir)
    layout.write_samples(samples.to_csv(index=False))
    table = summarise(suite, samples, seconds)
    # summary.md: defenses as rows, threat models as columns, rendered as `scbench report` does
    layout.write_summary(table.to_csv(index=False, float_format="%.4f"), to_markdown(report_from_suite(suite, table)))
    return table
