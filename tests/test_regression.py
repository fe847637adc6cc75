"""`scbench check`: baselines, planted regressions, unchanged reruns."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from robust_bench_sc.cli import app
from robust_bench_sc.regression import baseline_from_run, compare, from_ranges, to_ranges
from robust_bench_sc.stats import mcnemar_exact, two_proportion
from test_reports import make_small_run, min_norm_run  # noqa: F401 (fixture)


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Path:
    return make_small_run(tmp_path_factory.mktemp("small_run"))


@pytest.fixture()
def baseline(small_run, tmp_path) -> Path:
    path = tmp_path / "baselines" / "tiny.json"
    r = CliRunner().invoke(app, ["check", str(small_run), "--baseline", str(path), "--update"])
    assert r.exit_code == 0, r.output
    assert path.is_file()
    return path


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def _check(run: Path, baseline: Path, *extra: str):
    return CliRunner().invoke(app, ["check", str(run), "--baseline", str(baseline), *extra])


def test_statistics():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 0) == pytest.approx(0.25)
    assert mcnemar_exact(10, 0) == pytest.approx(2 / 1024)
    assert mcnemar_exact(5, 5) == 1.0
    assert two_proportion(50, 100, 50, 100) == pytest.approx(1.0)
    assert two_proportion(60, 100, 40, 100) == pytest.approx(0.00468, abs=2e-4)
    assert to_ranges([5, 0, 1, 2, 7, 6]) == [[0, 3], [5, 8]]
    assert from_ranges([[0, 3], [5, 8]]) == [0, 1, 2, 5, 6, 7]


def test_baseline_contents(small_run, baseline):
    b = json.loads(baseline.read_text())
    s = pd.read_csv(small_run / "samples.csv")
    e = b["entries"]["trades"]["linf_8"]
    part = s[(s.defense == "trades") & (s.threat_model == "linf_8")].sort_values("index")
    assert e["n_images"] == 16 and from_ranges(e["indices"]) == list(range(16))
    assert e["robust_bits"] == "".join("1" if v else "0" for v in part.robust)
    assert e["robust_accuracy"] == pytest.approx(100 * part.robust.mean())
    assert b["suite_hash"] == json.loads((small_run / "run.json").read_text())["suite_hash"]


def test_unchanged_rerun_passes_despite_timing(small_run, baseline, tmp_path):
    run = _copy(small_run, tmp_path / "rerun")
    # everything about timing and the invocation differs
    meta = json.loads((run / "run.json").read_text())
    meta.update(started_at="2030-01-01T00:00:00", finished_at="2030-01-01T01:00:00", wall_seconds_this_invocation=999.0)
    (run / "run.json").write_text(json.dumps(meta))
    for chunk in (run / "records").rglob("chunk_*.json"):
        blob = json.loads(chunk.read_text())
        blob["seconds"] = 123.4
        chunk.write_text(json.dumps(blob))
    t = pd.read_csv(run / "summary.csv")
    t["seconds"] = 42.0
    t.to_csv(run / "summary.csv", index=False)
    r = _check(run, baseline)
    assert r.exit_code == 0, r.output
    assert "OK: 6 (defense, threat model) pairs match the baseline" in r.output


def test_planted_regression_fails_naming_it(small_run, baseline, tmp_path):
    run = _copy(small_run, tmp_path / "regressed")
    s = pd.read_csv(run / "samples.csv")
    hit = s[(s.defense == "trades") & (s.threat_model == "linf_8") & s.robust].index[:2]
    assert len(hit) == 2
    s.loc[hit, "robust"] = False
    s.to_csv(run / "samples.csv", index=False)
    r = _check(run, baseline)
    assert r.exit_code == 1, r.output
    old = 100 * json.loads(baseline.read_text())["entries"]["trades"]["linf_8"]["robust_bits"].count("1") / 16
    assert f"MOVED trades × linf_8: robust accuracy {old:.2f} → {old - 12.5:.2f} %" in r.output
    assert "exact McNemar p = 0.5" in r.output and "2 images lost, 0 gained" in r.output
    assert "madry_pgd_at" not in r.output.split("FAILED")[0].split("MOVED", 1)[1]  # only the planted pair
    # a wide tolerance and no significance: passes, but says what changed
    r = _check(run, baseline, "--tolerance", "20", "--alpha", "0.001")
    assert r.exit_code == 0, r.output
    assert "changed within tolerance: trades × linf_8" in r.output
    # --update accepts the new numbers
    r = _check(run, baseline, "--update")
    assert r.exit_code == 0 and "baseline written" in r.output
    assert _check(run, baseline).exit_code == 0


def test_missing_pair_fails(small_run, baseline, tmp_path):
    run = _copy(small_run, tmp_path / "missing")
    for name in ("samples.csv", "summary.csv"):
        df = pd.read_csv(run / name)
        df = df[~((df.defense == "madry_pgd_at") & (df.threat_model == "linf_4"))]
        df.to_csv(run / name, index=False)
    r = _check(run, baseline)
    assert r.exit_code == 1
    assert "madry_pgd_at × linf_4: in the baseline but missing from the run" in r.output


def test_different_images_use_two_proportion(small_run):
    base = baseline_from_run(small_run)
    cur = json.loads(json.dumps(base))
    e = cur["entries"]["trades"]["linf_8"]
    # 100 other images, all fooled: a large, significant drop on different images
    e.update(indices=[[100, 200]], n_images=100, robust_bits="0" * 100, robust_accuracy=0.0,
             clean_bits="1" * 100, clean_accuracy=100.0)
    res = compare(base, cur)
    moved = [c for c in res.failed if c.metric == "robust accuracy"]
    assert len(moved) == 1 and moved[0].test == "two-proportion z" and moved[0].p_value < 1e-6


def test_minimum_norm_shift_fails(min_norm_run, tmp_path):
    path = tmp_path / "mn.json"
    assert _check(min_norm_run, path, "--update").exit_code == 0
    assert json.loads(path.read_text())["entries"]["trades"]["cw_l2"]["minimum_norm"] is True
    run = _copy(min_norm_run, tmp_path / "bigger")
    s = pd.read_csv(run / "samples.csv")
    m = (s.defense == "madry_pgd_at") & (s.threat_model == "cw_l2")
    s.loc[m, "l2"] *= 1.25
    s.to_csv(run / "samples.csv", index=False)
    r = _check(run, path)
    assert r.exit_code == 1, r.output
    assert "MOVED madry_pgd_at × cw_l2: mean ‖e‖₂" in r.output and "Wilcoxon p =" in r.output
    assert "trades × cw_l2" not in r.output


def test_check_errors(small_run, tmp_path):
    r = _check(small_run, tmp_path / "nope.json")
    assert r.exit_code == 2 and "--update" in r.output
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    r = _check(small_run, bad)
    assert r.exit_code == 2 and "format" in r.output


@pytest.mark.slow
def test_real_rerun_is_identical(small_run, tmp_path):
    """A fresh rerun of the same suite into a new directory passes the check."""
    from robust_bench_sc.config import load_suite
    from robust_bench_sc.runner import run_suite

    path = tmp_path / "b.json"
    assert _check(small_run, path, "--update").exit_code == 0
    suite = small_run.parent / "tiny_report.yaml"
    again = run_suite(load_suite(suite), out=tmp_path / "again", show_progress=False).run_dir
    r = _check(again, path)
    assert r.exit_code == 0, r.output
