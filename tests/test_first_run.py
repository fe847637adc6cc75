"""The first run a new user sees (issue 38): a plug-in found where the suite says it is,
a start line that states each threat model's budget, and the seed's dependence on the label
stated where the numbers are."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from robust_bench_sc.config import load_suite
from robust_bench_sc.paths import REPO_ROOT
from robust_bench_sc.yamlio import ConfigError

TABLE1 = REPO_ROOT / "suites" / "table1.yaml"
PLUGIN = textwrap.dedent("""
    from robust_bench_sc.plugins import build_defense

    def make():
        return build_defense("natural")
""")


def _suite(folder: Path, defenses: str, n: int = 8, threat: str = "clean") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    f = folder / "suite.yaml"
    f.write_text(f"name: mine\nseed: 0\ndata: {{n_images: {n}, chunk_size: {n}}}\n"
                 f"defenses: {defenses}\nthreat_models: [{threat}]\n")
    return f


def test_relative_plugin_file_is_found_beside_the_suite_from_another_folder(tmp_path, monkeypatch):
    from robust_bench_sc.runner import run_suite

    exp = tmp_path / "exp"
    f = _suite(exp, "[my_defense.py:make]")
    (exp / "my_defense.py").write_text(PLUGIN)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    suite = load_suite(f)
    d = suite.defenses[0]
    assert d.label == "my_defense.py:make"                        # no name: until it is built
    assert d.load_ref == f"{exp.resolve() / 'my_defense.py'}:make"
    out = run_suite(suite, out=tmp_path / "run", show_progress=False)
    summary = (out.run_dir / "summary.csv").read_text()
    assert summary.splitlines()[1].startswith("natural,clean,")   # built: its Defense(name="natural") labels it
    import pandas as pd

    row = pd.read_csv(out.run_dir / "summary.csv").iloc[0]
    assert row["clean_accuracy"] == pytest.approx(100.0)          # natural: the first 8 test images all right
    assert not any(elsewhere.iterdir())                           # nothing written where we stood


def test_relative_plugin_file_keeps_its_spec_hash_when_the_suite_folder_moves(tmp_path):
    from robust_bench_sc.plan import job_spec_hash, plan_jobs

    hashes = []
    for where in ("a", "b/c"):
        f = _suite(tmp_path / where, "[my_defense.py:make]")
        (f.parent / "my_defense.py").write_text(PLUGIN)
        s = load_suite(f)
        hashes.append([job_spec_hash(s, j) for j in plan_jobs(s)])
    assert hashes[0] == hashes[1]


def test_missing_relative_plugin_file_says_where_it_looked(tmp_path, monkeypatch):
    f = _suite(tmp_path / "exp", "\n  - natural\n  - my_defense.py:make\n")
    (tmp_path / "my_defense.py").write_text(PLUGIN)  # in the current folder, not beside the suite
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as exc:
        load_suite(f)
    msg = str(exc.value)
    assert "\n" not in msg
    assert "suite.yaml, line 6: defenses[1]" in msg
    assert str((tmp_path / "exp" / "my_defense.py").resolve()) in msg
    assert "resolved from the suite file's folder" in msg


def _console():
    import io

    from rich.console import Console

    buf = io.StringIO()
    return Console(file=buf, width=400, force_terminal=False), buf


def test_start_line_states_each_budget_the_job_count_and_the_hidden_restarts(tmp_path):
    """linf_pgd_ce's 100 restarts show on the start line, with how to run one."""
    from robust_bench_sc.runner import run_suite

    f = _suite(tmp_path / "s", "[natural]", n=4, threat="clean, {use: linf_pgd_ce, steps: 2}")
    console, buf = _console()
    run_suite(load_suite(f), out=tmp_path / "run", console=console, show_progress=False)
    text = buf.getvalue()
    assert "(2 jobs, first 4 CIFAR-10 test images)" in text
    assert "  clean: no attack — 1 job" in text
    assert ("  linf_pgd_ce: 2 steps × 100 restarts, stops restarting an image once fooled — 1 job" in text
            and "[--set linf_pgd_ce.restarts=1 for one restart]" in text)


def test_budget_words_of_the_table1_threat_models():
    from robust_bench_sc.budget import budget

    suite = load_suite(TABLE1, profile="quick")
    words = {t.name: budget(t) for t in suite.threat_models}
    assert words["linf_pgd_ce"] == "20 steps × 1 restart (BPDA auto)"
    assert words["clean"] == "no attack"
    # the quick Boundary column at the budget measured to separate natural from robust (docs/quick-profile.md)
    assert words["boundary"] == "3000 steps, start from the first 5000 train images (first 5 images)"
    full = {t.name: budget(t) for t in load_suite(TABLE1).threat_models}
    assert full["linf_pgd_ce"] == "40 steps × 100 restarts, stops restarting an image once fooled (BPDA auto)"
    assert full["boundary"] == "25000 steps, start from the train images"
    eot = load_suite(TABLE1, overrides=["linf_pgd_ce.eot=8", "linf_pgd_ce.restarts=1"])
    assert budget(eot.threat("linf_pgd_ce")) == "40 steps × 1 restart (EOT 8 passes per gradient; BPDA auto)"


def test_budget_words_name_square_only_where_autoattack_runs_it():
    from robust_bench_sc.budget import budget
    from robust_bench_sc.config import validate_threat_model

    def words(**aa):
        return budget(validate_threat_model({"name": "t", "attack": "autoattack", "norm": "linf",
                                             "epsilon": 8 / 255, **aa}, "test"))
    assert words(version="custom", attacks_to_run=["apgd-ce"]) == "custom (apgd-ce)"
    assert words(version="custom", attacks_to_run=["apgd-ce", "square"], n_queries=300) == \
        "custom (apgd-ce, square), Square 300 queries"
    assert words(version="standard").endswith("Square 5000 queries")


def test_cost_estimate_scales_committed_job_seconds_by_the_budget(tmp_path):
    """From a real run's records (its job seconds): the same settings give its seconds per
    image, twice the steps twice them; a defense without records gets no estimate."""
    import json as _json

    from robust_bench_sc.budget import estimate_seconds, committed_rates, start_lines
    from robust_bench_sc.plan import plan_jobs
    from robust_bench_sc.runner import run_suite

    root = tmp_path / "results"
    f = _suite(tmp_path / "s", "[natural]", n=6, threat="{use: l2_pgd, steps: 3, restarts: 1}")
    out = run_suite(load_suite(f), out=root / "committed", show_progress=False)
    meta = _json.loads((out.run_dir / "run.json").read_text())
    fp = meta["defense_fingerprints"]["natural"]
    blob = _json.loads(next((out.run_dir / "records").rglob("*.json")).read_text())
    per_image = blob["seconds"] / 6
    assert per_image > 0

    rates = committed_rates(root)
    same = load_suite(f)
    est, runs = estimate_seconds(fp, same.threat_models[0], 12, rates)
    assert runs == {"committed"} and est == pytest.approx(12 * per_image)
    double = load_suite(f, overrides=["steps=6"])
    est2, _ = estimate_seconds(fp, double.threat_models[0], 12, rates)
    assert est2 == pytest.approx(2 * est)
    assert estimate_seconds("0" * 16, same.threat_models[0], 12, rates) is None
    lines = start_lines(double, plan_jobs(double), plan_jobs(double), {"natural": fp}, results_root=root)
    assert lines[0].startswith("  l2_pgd: 6 steps × 1 restart — 1 job, ≈ ")
    assert "estimated job time ≈" in lines[-1] and "committed" in lines[-1]


def test_a_rename_is_explained_by_check_and_run_json_states_the_seed_rule(tmp_path):
    """The same weights under two labels get other job seeds (run.json says why); a baseline of
    one label checked against a run of the other is matched by fingerprint, not 'missing', and
    the check names the seed change."""
    import json as _json

    from robust_bench_sc.plan import SEED_RULE
    from robust_bench_sc.regression import baseline_from_run, compare, format_result
    from robust_bench_sc.runner import run_suite

    f = _suite(tmp_path / "s", "[natural, {ref: natural, name: mine}]", n=6,
               threat="{use: l2_pgd, steps: 2, restarts: 1}")
    out = run_suite(load_suite(f), out=tmp_path / "run", show_progress=False)
    meta = _json.loads((out.run_dir / "run.json").read_text())
    assert meta["seed_rule"] == SEED_RULE and "defense label" in SEED_RULE
    both = baseline_from_run(out.run_dir)
    a, b = both["entries"]["natural"]["l2_pgd"], both["entries"]["mine"]["l2_pgd"]
    assert a["fingerprint"] == b["fingerprint"] == meta["defense_fingerprints"]["natural"]
    assert len(a["seeds"]) == len(b["seeds"]) == 1 and a["seeds"] != b["seeds"]
    assert a["clean_bits"] == b["clean_bits"] == "111111"               # the same weights, the same images

    old = _json.loads(_json.dumps(both))
    old["entries"].pop("mine")
    new = _json.loads(_json.dumps(both))
    new["entries"].pop("natural")
    res = compare(old, new)
    text = format_result(res, "run", "base", 0.5, 0.01)
    assert res.n_compared == 1 and not any(c.metric == "missing" for c in res.changes) and not res.new_pairs
    assert "defense 'natural' of the baseline is 'mine' in the run" in text
    assert "other job seeds than the baseline's (defense label 'natural' → 'mine')" in text
    same = compare(old, old)
    assert same.ok and not same.warnings                                    # no seed note without a change of seed
