"""The committed results describe the weights this checkout ships.

Every run.json records the weight fingerprint of each defense it evaluated; if someone
replaces a checkpoint (e.g. a new training cycle of T15.pt) without re-running the results
that quote it, these tests fail and name the stale run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from robust_bench_sc.config import DefenseSpec
from robust_bench_sc.paths import REPO_ROOT
from robust_bench_sc.plugins import build_defense

#: every committed run folder: results/NAME/ and one level down (results/audit_1000/DEFENSE/)
RUN_JSONS = sorted([*(REPO_ROOT / "results").glob("*/run.json"), *(REPO_ROOT / "results").glob("*/*/run.json")])
RUNS = [p for p in RUN_JSONS if json.loads(p.read_text()).get("defense_fingerprints")]
_built: dict[str, str] = {}


def _fingerprint(config: dict, label: str) -> str:
    spec = next(s for s in map(DefenseSpec.model_validate, config["defenses"]) if s.label == label)
    key = spec.model_dump_json()
    if key not in _built:
        _built[key] = build_defense(spec.ref, spec.params, name=label).fingerprint()
    return _built[key]


def test_there_are_fingerprinted_runs():
    names = {p.parent.name for p in RUNS}
    assert {"clean", "table1_T15"} <= names, names


@pytest.mark.parametrize("run_json", RUNS, ids=lambda p: p.parent.relative_to(REPO_ROOT / "results").as_posix())
def test_committed_run_matches_shipped_weights(run_json: Path):
    meta = json.loads(run_json.read_text())
    for label, recorded in meta["defense_fingerprints"].items():
        now = _fingerprint(meta["config"], label)
        assert now == recorded, (f"{run_json.parent}: {label} was evaluated with weights {recorded}, "
                                 f"the checkout ships {now}: re-run that result")


def test_shipped_T15_reproduces_committed_clean_predictions(test_split):
    """Per-sample: the shipped T15 weights predict exactly what results/clean recorded."""
    samples = pd.read_csv(REPO_ROOT / "results" / "clean" / "samples.csv")
    rec = samples[samples["defense"] == "sparse_coding_T15"].set_index("index").sort_index()
    defense = build_defense("sparse_coding_T15")
    n = 100
    with torch.no_grad():
        pred = defense(test_split.x[:n]).argmax(1).numpy()
    idx = test_split.idx[:n].numpy()
    assert (rec.loc[idx, "clean_pred"].to_numpy() == pred).all()
    assert 0.7 <= (pred == test_split.y[:n].numpy()).mean() <= 0.95


DIAGNOSTIC_REPORTS = sorted((REPO_ROOT / "results" / "diagnostics").rglob("*.json"))


def test_there_are_committed_diagnostic_reports():
    kinds = {p.name for p in DIAGNOSTIC_REPORTS}
    assert kinds == {"diagnostics.json", "binarization.json"} and len(DIAGNOSTIC_REPORTS) >= 10, kinds


@pytest.mark.parametrize("path", DIAGNOSTIC_REPORTS, ids=lambda p: p.parent.name)
def test_committed_diagnostic_report_renders_as_committed(path: Path):
    """The renderers of ``scbench diagnose`` (passive and --active) turn each committed JSON
    into exactly the committed Markdown next to it: a change of their wording shows here."""
    from robust_bench_sc import binarization
    from robust_bench_sc.diagnostics import DiagnosticsReport, IndicatorResult, report_markdown

    data = json.loads(path.read_text())
    if path.name == "diagnostics.json":
        data["indicators"] = [IndicatorResult(**r) for r in data["indicators"]]
        text = report_markdown(DiagnosticsReport(**data))
    else:
        text = binarization.report_markdown(binarization.BinarizationReport(**data))
    assert text == path.with_suffix(".md").read_text()


@pytest.mark.parametrize("run_json", RUN_JSONS, ids=lambda p: p.parent.relative_to(REPO_ROOT / "results").as_posix())
def test_committed_run_status_rebuilds_its_suite(run_json: Path):
    """`scbench status` rebuilds each committed run's suite from run.json and finds every
    planned job recorded in a complete folder (legacy records without a spec hash too), or says
    how far a partial one is."""
    from robust_bench_sc.run_status import run_status

    meta = json.loads(run_json.read_text())
    st = run_status(run_json.parent)
    done, total = st.jobs
    assert total == meta["n_jobs"] and not st.unusable
    if meta["status"] == "complete":
        assert done == total
        summary = pd.read_csv(run_json.parent / "summary.csv")
        for p in st.pairs:  # robust so far = the summary's robust accuracy (ZOO: over the drawn images)
            row = summary[(summary.defense == p.defense) & (summary.threat_model == p.threat)]
            assert 100 * p.robust / p.scored == pytest.approx(float(row.robust_accuracy.iloc[0]), abs=0.006)
            if p.minimum_norm and p.fooled_l2:  # and its mean ‖e‖₂ is the summary's
                assert sum(p.fooled_l2) / len(p.fooled_l2) == pytest.approx(float(row.mean_l2.iloc[0]), abs=1e-3)
