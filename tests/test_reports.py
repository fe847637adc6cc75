"""`scbench report`: md / csv / latex / html from a real small run, plots, paper numbers."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from robust_bench_sc.cli import app
from robust_bench_sc.report_model import _read_samples
from robust_bench_sc.reports import (ReportError, latex_escape, load_report, render, to_csv, to_frame, to_latex,
                                     to_markdown)
from robust_bench_sc.stats import wilson_interval

TINY_SUITE = """\
name: tiny_report
seed: 0
data: {n_images: 16, chunk_size: 16}
defenses: [madry_pgd_at, trades]
threat_models:
  - clean
  - {name: linf_4, attack: pgd, norm: linf, epsilon: 4/255, steps: 2, restarts: 1}
  - {name: linf_8, attack: pgd, norm: linf, epsilon: 8/255, steps: 2, restarts: 1}
"""

_RUN: dict[str, Path] = {}


def make_small_run(base: Path) -> Path:
    """One real run per test session (shared with test_regression), 16 images, 2-step PGD."""
    if "run" not in _RUN:
        from robust_bench_sc.config import load_suite
        from robust_bench_sc.runner import run_suite

        suite_file = base / "tiny_report.yaml"
        suite_file.write_text(TINY_SUITE)
        out = run_suite(load_suite(suite_file), out=base / "run", show_progress=False)
        _RUN["run"] = out.run_dir
    return _RUN["run"]


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Path:
    return make_small_run(tmp_path_factory.mktemp("small_run"))


@pytest.fixture(scope="session")
def min_norm_run(small_run, tmp_path_factory) -> Path:
    """The small run with linf_4 re-labelled as a (minimum-norm) CW threat model and
    synthetic ‖e‖₂ values: exercises the minimum-norm cells and the norm plots."""
    d = tmp_path_factory.mktemp("mn") / "run"
    shutil.copytree(small_run, d)
    meta = json.loads((d / "run.json").read_text())
    tms = meta["config"]["threat_models"]
    for i, t in enumerate(tms):
        if t["name"] == "linf_4":
            tms[i] = {"name": "cw_l2", "attack": "cw", "backend": "foolbox", "norm": "l2", "steps": 50}
    meta["suite"] = "tiny_cw"
    (d / "run.json").write_text(json.dumps(meta))
    s = pd.read_csv(d / "samples.csv")
    s.loc[s.threat_model == "linf_4", "threat_model"] = "cw_l2"
    m = (s.threat_model == "cw_l2") & s.attacked
    rng = np.random.default_rng(0)
    s.loc[m, "fooled"] = True
    s.loc[m, "robust"] = False
    s.loc[m, "l2"] = rng.uniform(0.2, 1.5, int(m.sum()))
    s.to_csv(d / "samples.csv", index=False)
    t = pd.read_csv(d / "summary.csv")
    for name in ("madry_pgd_at", "trades"):
        part = s[(s.defense == name) & (s.threat_model == "cw_l2")]
        mm = (t.defense == name) & (t.threat_model == "linf_4")
        t.loc[mm, ["threat_model", "attack"]] = ["cw_l2", "cw"]
        t.loc[mm, "mean_l2"] = part[part.attacked].l2.mean()
        t.loc[mm, "success_rate"] = 100.0
        t.loc[mm, "robust_accuracy"] = 100 * part.robust.mean()
    t.to_csv(d / "summary.csv", index=False)
    return d


def _expected(run: Path, defense: str, threat: str) -> tuple[float, tuple[float, float], int]:
    s = pd.read_csv(run / "samples.csv")
    part = s[(s.defense == defense) & (s.threat_model == threat)]
    col = "clean_correct" if threat == "clean" else "robust"
    k, n = int(part[col].sum()), len(part)
    return 100 * k / n, wilson_interval(k, n), n


def test_markdown_real_numbers(small_run):
    md = render([small_run], "md")
    assert "first 16 CIFAR-10 test images" in md
    for d in ("madry_pgd_at", "trades"):
        for t in ("clean", "linf_4", "linf_8"):
            acc, (lo, hi), n = _expected(small_run, d, t)
            assert f"{acc:.2f} [{lo:.1f}, {hi:.1f}]" in md, (d, t)
    assert "| n images | 16 | 16 | 16 |" in md
    # the runner's summary.md is rendered by the same code: same table rows
    summary = (small_run / "summary.md").read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| madry_pgd_at") or ln.startswith("| trades")]
    assert rows and all(r in summary for r in rows)
    assert "| linf_8 | pgd | native | linf | 8/255 |" in md


def test_csv_real_numbers(small_run):
    df = pd.read_csv(io.StringIO(render([small_run], "csv")))
    assert list(df.defense) == ["madry_pgd_at", "trades"]
    acc, (lo, hi), n = _expected(small_run, "trades", "linf_8")
    row = df[df.defense == "trades"].iloc[0]
    assert row["linf_8"] == pytest.approx(acc, abs=1e-3)
    assert row["linf_8_ci_low"] == pytest.approx(lo, abs=1e-3) and row["linf_8_ci_high"] == pytest.approx(hi, abs=1e-3)
    assert row["linf_8_n"] == n == 16
    assert row["subset"] == "first 16 CIFAR-10 test images"


def _check_latex(tex: str) -> None:
    body = tex[tex.index(r"\begin{tabular}"): tex.index(r"\end{tabular}") + len(r"\end{tabular}")]
    assert tex.count(r"\begin{tabular}") == 1 and tex.count(r"\end{tabular}") == 1
    unescaped = re.sub(r"\\[{}%_&$#]", "", body)
    depth = 0
    for ch in unescaped:
        depth += ch == "{"
        depth -= ch == "}"
        assert depth >= 0
    assert depth == 0
    assert unescaped.count("$") % 2 == 0
    assert "%" not in unescaped  # every percent sign escaped (no comments inside the tabular)
    assert "_" not in re.sub(r"\$[^$]*\$", "", unescaped)  # underscores only in math mode
    spec = re.search(r"\\begin\{tabular\}\{([^}]*)\}", body).group(1)
    ncol = len(re.findall(r"[lcr]", spec))
    rows = [r.strip() for r in body.split("\n")[1:-1] if r.strip() not in (r"\hline", "")]
    assert rows
    for r in rows:
        assert r.endswith(r"\\"), r
        mc = re.match(r"\\multicolumn\{(\d+)\}", r)
        cells = int(mc.group(1)) if mc else len(re.findall(r"(?<!\\)&", r)) + 1
        assert cells == ncol, (r, cells, ncol)


def test_latex_structure(small_run, min_norm_run):
    tex = render([small_run], "latex")
    _check_latex(tex)
    assert "linf\\_8" in tex and "\\%" in tex
    acc, (lo, hi), _ = _expected(small_run, "madry_pgd_at", "linf_8")
    assert f"{acc:.2f} {{\\scriptsize [{lo:.1f}, {hi:.1f}]}}" in tex
    tex2 = to_latex(load_report([small_run, min_norm_run]), paper=True)
    _check_latex(tex2)
    assert "\\|e\\|_2" in tex2 and "79.41" in tex2
    assert latex_escape("50% a_b & {x}") == r"50\% a\_b \& \{x\}"


def test_paper_numbers_beside_ours(small_run):
    md = render([small_run], "md", paper=True)
    assert "paper: Adv. Training†" in md and "*79.41*" in md and "*43.27*" in md  # clean, ℓ∞ 8/255 CE
    assert "paper: TRADES†" in md and "*75.17*" in md and "*45.79*" in md
    assert "full CIFAR-10 test set" in md
    assert "paper:" not in render([small_run], "md") and "†" not in render([small_run], "md")
    df = pd.read_csv(io.StringIO(to_csv(load_report([small_run]), paper=True)))
    paper_rows = df[df.source.str.startswith("paper")]
    assert set(paper_rows.subset) == {"full CIFAR-10 test set (10,000 images)"}
    assert paper_rows[paper_rows.defense == "trades"].iloc[0]["linf_8"] == pytest.approx(45.79)


def test_minimum_norm_cells_and_merge(small_run, min_norm_run):
    rep = load_report([small_run, min_norm_run])
    labels = [t.label for t in rep.threats]
    assert labels[:3] == ["clean", "linf_4", "linf_8"] and "cw_l2" in labels
    md = to_markdown(rep)
    s = pd.read_csv(min_norm_run / "samples.csv")
    part = s[(s.defense == "trades") & (s.threat_model == "cw_l2") & s.attacked]
    # mean ‖e‖₂ with its 95 % Student-t interval over the successes, then the success rate
    from scipy import stats

    v = part.l2.to_numpy()
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    from robust_bench_sc.stats import wilson_interval

    lo, hi = wilson_interval(len(v), len(v))  # every attacked image fooled: [lo, 100]
    assert f"‖e‖₂ = {v.mean():.2f} [{v.mean() - half:.2f}, {v.mean() + half:.2f}] (100% succ. [{lo:.1f}, 100.0])" in md
    assert "showing the latter" in md  # the same (defense, threat model) in both runs


def test_plots_written(small_run, min_norm_run, tmp_path):
    from robust_bench_sc.plots import make_plots, sweep_groups

    rep = load_report([small_run, min_norm_run])
    groups = sweep_groups(rep.threats)
    assert [[t.label for t in g] for g in groups] == [["linf_4", "linf_8"]]
    plots = make_plots(rep, tmp_path / "plots")
    names = sorted(p.png.name for p in plots)
    assert any(n.startswith("sweep_pgd_linf") for n in names) and "norms_cw_l2.png" in names
    for p in plots:
        assert p.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.png.stat().st_size > 5000
        assert p.pdf.read_bytes()[:5] == b"%PDF-"
    # md with --out references the plots by relative path
    out = tmp_path / "rep" / "report.md"
    text = render([small_run, min_norm_run], "md", out=out)
    assert "](report_plots/sweep_pgd_linf" in text and (out.parent / "report_plots").is_dir()


def test_html_self_contained(small_run, min_norm_run, tmp_path):
    out = tmp_path / "report.html"
    text = render([small_run, min_norm_run], "html", paper=True, out=out)
    assert text.startswith("<!DOCTYPE html>") and "</html>" in text
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", text) and "<link" not in text
    assert text.count("data:image/png;base64,") == 2
    assert "class=\"sortable\"" in text and "addEventListener('click'" in text
    meta = json.loads((small_run / "run.json").read_text())
    for needle in (meta["suite_hash"], meta["data_hash"], "first 16 CIFAR-10 test images", "torch"):
        assert needle in text
    acc, _, _ = _expected(small_run, "madry_pgd_at", "linf_8")
    assert f"{acc:.2f}" in text


CHROMIUM = Path("/usr/bin/chromium")
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
          "--disable-component-update", "--no-first-run"]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium (/usr/bin/chromium, Debian package "
                    "'chromium') is not installed; apt-get install -y chromium to run this check")
def test_html_renders_in_chromium(small_run, tmp_path):
    import matplotlib.pyplot as plt

    page = tmp_path / "report.html"
    render([small_run], "html", out=page)
    shot = tmp_path / "shot.png"
    subprocess.run([str(CHROMIUM), *_FLAGS, "--window-size=1200,900", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, cwd=tmp_path)
    assert shot.is_file(), "chromium wrote no screenshot"
    img = plt.imread(shot)[..., :3]
    top = img[:450]  # title and results table
    dark = (top.mean(axis=2) < 0.35).mean()
    assert dark > 0.002, "the results table is not visible (page nearly blank)"
    # the sorting script runs: #sort=3,desc orders rows by linf_8 (column 3) descending
    dom = subprocess.run([str(CHROMIUM), *_FLAGS, "--dump-dom", page.as_uri() + "#sort=3,desc"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path).stdout
    table = dom[dom.index('id="results"'):]
    table = table[: table.index("</tbody>")]
    order = re.findall(r'<tr><td data-v="([^"]+)"', table)
    accs = {d: _expected(small_run, d, "linf_8")[0] for d in ("madry_pgd_at", "trades")}
    assert sorted(order) == sorted(accs)
    assert accs[order[0]] >= accs[order[1]]
    assert 'class="desc"' in table


def test_cli_report(small_run, tmp_path):
    r = CliRunner().invoke(app, ["report", str(small_run), "--format", "latex"])
    assert r.exit_code == 0, r.output
    assert r"\begin{tabular}" in r.output
    out = tmp_path / "t.csv"
    r = CliRunner().invoke(app, ["report", str(small_run), "--format", "csv", "--out", str(out)])
    assert r.exit_code == 0 and out.read_text().startswith("defense,source,subset")
    r = CliRunner().invoke(app, ["report", str(tmp_path), "--format", "md"])
    assert r.exit_code == 2 and "not a run directory" in r.output
    r = CliRunner().invoke(app, ["report", str(small_run), "--format", "docx"])
    assert r.exit_code == 2 and "unknown format" in r.output


# -- per-sample worst case (suite field worst_case_over) ---------------------------------

WORST_SUITE = """\
name: tiny_worst
seed: 0
data: {n_images: 16, chunk_size: 16}
defenses: [madry_pgd_at, trades]
threat_models:
  - clean
  - {name: linf_ce, attack: pgd, norm: linf, epsilon: 8/255, steps: 2, restarts: 1}
  - {name: linf_cw, attack: pgd, norm: linf, epsilon: 8/255, steps: 2, restarts: 1, loss: cw}
  - {name: linf_fgsm, attack: pgd, norm: linf, epsilon: 8/255, steps: 1, step_size: epsilon, restarts: 1,
     random_start: false}
worst_case_over: [linf_ce, linf_cw, linf_fgsm]
"""


@pytest.fixture(scope="session")
def worst_run(tmp_path_factory) -> Path:
    from robust_bench_sc.config import load_suite
    from robust_bench_sc.runner import run_suite

    base = tmp_path_factory.mktemp("worst")
    (base / "tiny_worst.yaml").write_text(WORST_SUITE)
    return run_suite(load_suite(base / "tiny_worst.yaml"), out=base / "run", show_progress=False).run_dir


def _expected_worst(run: Path, over: list[str]) -> dict[str, tuple[int, int]]:
    """Robust images under every threat model, from samples.csv alone: defense → (k, n)."""
    s = pd.read_csv(run / "samples.csv")
    s = s[s.threat_model.isin(over)]
    w = s.pivot_table(index=["defense", "index"], columns="threat_model", values="robust", aggfunc="first")
    assert list(w.columns.sort_values()) == sorted(over)
    ok = w.astype(bool).all(axis=1).groupby("defense")
    return {d: (int(g.sum()), len(g)) for d, g in ok}


def test_worst_case_in_summary_and_every_format(worst_run):
    over = ["linf_ce", "linf_cw", "linf_fgsm"]
    exp = _expected_worst(worst_run, over)
    table = pd.read_csv(worst_run / "summary.csv")
    s = pd.read_csv(worst_run / "samples.csv")
    for d, (k, n) in exp.items():
        row = table[(table.defense == d) & (table.threat_model == "worst case")].iloc[0]
        assert n == 16 and row.n_images == 16 and row.robust_accuracy == pytest.approx(100 * k / n, abs=1e-3)
        each = [100 * s[(s.defense == d) & (s.threat_model == t)].robust.mean() for t in over]
        assert row.robust_accuracy <= min(each) + 1e-9
        assert row.subset == "first 16 CIFAR-10 test images" and row.attack == "worst_case"
    md = render([worst_run], "md")
    header = next(ln for ln in md.splitlines() if ln.startswith("| defense |"))
    assert header.endswith("| worst case |")
    for d, (k, n) in exp.items():
        lo, hi = wilson_interval(k, n)
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {d} |"))
        assert line.endswith(f"| {100 * k / n:.2f} [{lo:.1f}, {hi:.1f}] |"), line
    assert 'over=["linf_ce", "linf_cw", "linf_fgsm"]' in md
    assert (worst_run / "summary.md").read_text().count("worst case") >= 2   # the runner's summary.md too
    df = pd.read_csv(io.StringIO(render([worst_run], "csv")))
    for d, (k, n) in exp.items():
        assert df[df.defense == d].iloc[0]["worst case"] == pytest.approx(100 * k / n, abs=1e-3)
        assert df[df.defense == d].iloc[0]["worst case_n"] == 16
    html = render([worst_run], "html", with_plots=False)
    assert ">worst case<" in html and f"{100 * exp['trades'][0] / 16:.2f}" in html
    tex = render([worst_run], "latex")
    _check_latex(tex)
    assert "worst case" in tex
    # the regression baseline gets per-sample bits of the worst case as well
    from robust_bench_sc.regression import baseline_from_run

    e = baseline_from_run(worst_run)["entries"]["madry_pgd_at"]["worst case"]
    assert e["robust_bits"].count("1") == exp["madry_pgd_at"][0] and len(e["robust_bits"]) == 16


def test_worst_case_refuses_different_images(worst_run, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(worst_run, d)
    s = pd.read_csv(d / "samples.csv")
    s = s[~((s.defense == "trades") & (s.threat_model == "linf_cw") & (s["index"] >= 12))]
    s.to_csv(d / "samples.csv", index=False)
    with pytest.raises(ReportError) as exc:
        load_report([d])
    msg = str(exc.value)
    assert "\n" not in msg and "different images" in msg and "linf_cw: first 12 CIFAR-10 test images" in msg
    r = CliRunner().invoke(app, ["report", str(d)])
    assert r.exit_code != 0 and "different images" in r.output and "Traceback" not in r.output


def _suite_error(tmp_path, worst: str, extra_threat: str = "") -> str:
    from robust_bench_sc.config import load_suite
    from robust_bench_sc.yamlio import ConfigError

    f = tmp_path / "s.yaml"
    f.write_text(WORST_SUITE.replace("worst_case_over: [linf_ce, linf_cw, linf_fgsm]", worst)
                 .replace("threat_models:\n", "threat_models:\n" + extra_threat))
    with pytest.raises(ConfigError) as exc:
        load_suite(f)
    return str(exc.value)


def test_worst_case_over_validated_with_file_and_line(tmp_path):
    line = WORST_SUITE.splitlines().index("worst_case_over: [linf_ce, linf_cw, linf_fgsm]") + 1
    msg = _suite_error(tmp_path, "worst_case_over: [linf_ce, linf_cx]")
    assert f"s.yaml, line {line}: worst_case_over: unknown threat model 'linf_cx'" in msg and "did you mean" in msg
    assert "linf_ce, linf_cw, linf_fgsm" in msg
    assert "one norm and ε" in _suite_error(
        tmp_path, "worst_case_over: [linf_ce, l2]", "  - {name: l2, attack: pgd, norm: l2, epsilon: 0.5, steps: 2}\n")
    assert "clean evaluation" in _suite_error(tmp_path, "worst_case_over: [clean, linf_ce]")
    assert "at least two" in _suite_error(tmp_path, "worst_case_over: [linf_ce]")
    assert "different images" in _suite_error(
        tmp_path, "worst_case_over: [linf_ce, part]",
        "  - {name: part, attack: pgd, norm: linf, epsilon: 8/255, steps: 2, max_images: 8}\n")
    assert "may not be named" in _suite_error(
        tmp_path, "worst_case_over: [linf_ce, linf_cw]", "  - {name: worst case, attack: pgd, norm: linf, epsilon: 8/255}\n")
    for msg in (_suite_error(tmp_path, "worst_case_over: [linf_ce, linf_ce]"),):
        assert "repeated linf_ce" in msg and "\n" not in msg


PER_DEFENSE_PROFILE = """\
profiles:
  trades_two:
    defense_threat_models:
      trades: [linf_fgsm, linf_ce]
"""


def test_profile_limits_a_defense_and_its_worst_case_is_over_what_it_runs(worst_run, tmp_path):
    """A profile's defense_threat_models: the records are reused (a defense's threat_models are
    not in its jobs' hashes), and each defense's worst case is over the threat models it runs."""
    import json

    from robust_bench_sc.config import load_suite
    from robust_bench_sc.runner import run_suite

    d = tmp_path / "run"
    shutil.copytree(worst_run, d)
    f = tmp_path / "s.yaml"
    f.write_text(WORST_SUITE + PER_DEFENSE_PROFILE)
    suite = load_suite(f, profile="trades_two")
    assert {x.label: x.threat_models for x in suite.defenses} == {
        "madry_pgd_at": None, "trades": ["linf_ce", "linf_fgsm"]}   # in the suite's order
    out = run_suite(suite, out=d, show_progress=False)
    assert out.computed_chunks == 0 and out.resumed_chunks == 6   # madry 4 threat models, trades 2 (not clean)
    assert json.loads((d / "run.json").read_text())["jobs_computed"] == 0
    table = pd.read_csv(d / "summary.csv")
    assert sorted(table[table.defense == "trades"].threat_model) == ["linf_ce", "linf_fgsm", "worst case"]
    wc = table[table.threat_model == "worst case"].set_index("defense").robust_accuracy
    for defense, over in (("madry_pgd_at", ["linf_ce", "linf_cw", "linf_fgsm"]), ("trades", ["linf_ce", "linf_fgsm"])):
        k, n = _expected_worst(worst_run, over)[defense]
        assert wc[defense] == pytest.approx(100 * k / n, abs=1e-3)
    k2, _ = _expected_worst(worst_run, ["linf_ce", "linf_fgsm"])["trades"]
    line = "worst case of trades is over linf_ce, linf_fgsm only: linf_cw is not run on it."
    assert line in (d / "summary.md").read_text()
    md = render([d], "md")
    assert f"run: {line}" in md and "madry_pgd_at is over" not in md
    trades = next(ln for ln in md.splitlines() if ln.startswith("| trades |"))
    lo, hi = wilson_interval(k2, 16)
    assert trades.endswith(f"| {100 * k2 / 16:.2f} [{lo:.1f}, {hi:.1f}] |"), trades


def test_profile_defense_threat_models_validated(tmp_path):
    from robust_bench_sc.config import load_suite
    from robust_bench_sc.yamlio import ConfigError

    f = tmp_path / "s.yaml"
    line = (WORST_SUITE + PER_DEFENSE_PROFILE).splitlines().index("    defense_threat_models:") + 1
    for body, expect in (("      tradez: [linf_ce]", "'tradez' is not a defense the profile runs (did you mean 'trades'?); "
                                                      "its defenses: madry_pgd_at, trades"),
                         ("      trades: [linf_cx]", "trades: linf_cx not among the profile's threat models (did you mean "
                                                     "'linf_cw', 'linf_ce', 'linf_fgsm'?); its threat models: clean, "
                                                     "linf_ce, linf_cw, linf_fgsm"),
                         ("      trades: []", "trades: an empty list runs nothing; leave the defense out of the "
                                              "profile's defenses instead")):
        f.write_text(WORST_SUITE + PER_DEFENSE_PROFILE.replace("      trades: [linf_fgsm, linf_ce]", body))
        with pytest.raises(ConfigError) as exc:
            load_suite(f, profile="trades_two")
        assert str(exc.value) == f"{f}, line {line}: profile 'trades_two': defense_threat_models: {expect}"


def test_adaptive_suite_declares_its_worst_case():
    from robust_bench_sc.config import load_suite

    full = load_suite("suites/adaptive.yaml")
    assert full.worst_case_over == ["autoattack_apgd", "square_5000", "square_1000_rescaled", "transfer_from_madry",
                                    "transfer_from_trades", "transfer_from_bpda_surrogate", "pgd_strongest"]
    first50 = load_suite("suites/adaptive.yaml", profile="first50")
    assert "square_5000" not in first50.worst_case_over and len(first50.worst_case_over) == 6
    assert {t.name: t.n_queries for t in full.threat_models if t.kind == "square"} == \
        {"square_5000": 5000, "square_1000_rescaled": 1000}
    assert [t.rescale_schedule for t in full.threat_models if t.kind == "square"] == [False, True]


# -- merged runs with other settings: one column and one line ----------------------------

def _subset_copy(src: Path, dst: Path, defense: str, edit=None) -> Path:
    """``src`` restricted to one defense; ``edit(threat_models)`` changes run.json's settings."""
    shutil.copytree(src, dst)
    meta = json.loads((dst / "run.json").read_text())
    meta["config"]["defenses"] = [d for d in meta["config"]["defenses"] if (d.get("name") or d["ref"]) == defense]
    if edit:
        edit(meta["config"]["threat_models"])
    (dst / "run.json").write_text(json.dumps(meta))
    for name in ("samples.csv", "summary.csv"):
        t = pd.read_csv(dst / name)
        t[t.defense == defense].to_csv(dst / name, index=False)
    return dst


def test_merge_with_other_settings_says_why_in_one_line(small_run, tmp_path):
    def more_restarts(tms):
        next(t for t in tms if t["name"] == "linf_8")["restarts"] = 5

    def other_eps(tms):
        next(t for t in tms if t["name"] == "linf_4")["epsilon"] = 2 / 255

    a = _subset_copy(small_run, tmp_path / "a", "madry_pgd_at")
    b = _subset_copy(small_run, tmp_path / "b", "trades", lambda t: (more_restarts(t), other_eps(t)))
    rep = load_report([a, b])
    labels = [t.label for t in rep.threats]
    assert labels.count("linf_8") == 1 and not any(x.startswith("linf_8 (") for x in labels)
    assert "linf_4 (tiny_report)" in labels      # ε differs: another measurement, its own column
    notes = [n for n in rep.notes if "`linf_8`" in n]
    assert notes == ["`linf_8` is one column over runs whose settings differ: restarts=1 in a (madry_pgd_at); "
                     "restarts=5 in b (trades)."]
    assert any(n.startswith("`linf_4` is two columns") and "epsilon" in n for n in rep.notes)
    md = render([a, b], "md", paper=True)
    assert md.count(notes[0]) == 1 and "restarts=1 (a) or 5 (b)" in md
    # each row keeps its own run's number
    acc_m, (lo, hi), _ = _expected(small_run, "madry_pgd_at", "linf_8")
    acc_t, (lo2, hi2), _ = _expected(small_run, "trades", "linf_8")
    row = {ln.split(" | ")[0][2:]: ln for ln in md.splitlines() if ln.startswith("| madry") or ln.startswith("| trades")}
    assert f"{acc_m:.2f} [{lo:.1f}, {hi:.1f}]" in row["madry_pgd_at"]
    assert f"{acc_t:.2f} [{lo2:.1f}, {hi2:.1f}]" in row["trades"]


TABLE1_RUNS = ["results/table1_baselines", "results/table1_baselines_boundary", "results/table1_T15_1000_linf",
               "results/table1_T15_1000_l2_l1", "results/clean", "results/table1_natural", "results/table1_natural_boundary",
               "results/table1_T15_boundary"]


def test_committed_table1_is_one_table(monkeypatch):
    """The committed Table 1 runs (every PGD column on the first 1000 images at one setting, T15
    split over two folders, Boundary on the first 50): one column set, no settings note, the
    sparse-coding row from its two folders."""
    from robust_bench_sc.paths import REPO_ROOT

    monkeypatch.chdir(REPO_ROOT)
    rep = load_report(TABLE1_RUNS)
    assert [t.label for t in rep.threats] == ["clean", "linf_pgd_ce", "linf_pgd_cw", "l2_pgd", "l1_pgd_paper",
                                              "l1_pgd_strong", "boundary"]
    assert not any("settings differ" in n for n in rep.notes), rep.notes
    md = to_markdown(rep, paper=True)
    t15 = next(ln for ln in md.splitlines() if ln.startswith("| sparse_coding_T15 |"))
    madry = next(ln for ln in md.splitlines() if ln.startswith("| madry_pgd_at |"))
    assert t15.split(" | ")[1:7] == ["80.90 [78.3, 83.2]", "46.90 [43.8, 50.0]", "54.00 [50.9, 57.1]", "66.80 [63.8, 69.6]",
                                     "56.00 [52.9, 59.0]", "27.50 [24.8, 30.3]"]
    assert "44.00 [41.0, 47.1]" in madry and "(on first" not in madry.split(" | ")[2]
    # Boundary: 50 images for the baselines, 20 for natural; the cells say so, no settings note
    natural = next(ln for ln in md.splitlines() if ln.startswith("| natural |"))
    assert natural.split(" | ")[7] == "‖e‖₂ = 0.13 [0.08, 0.17] (100% succ. [83.9, 100.0]) (on first 20) |"
    assert madry.split(" | ")[7].endswith("(on first 50) |")
    assert t15.split(" | ")[7] == "‖e‖₂ = 3.37 [1.79, 4.95] (100% succ. [70.1, 100.0]) (on first 10) |"
    # the paper's ℓ1 column is its dense attack: not shown beside the strong one
    paper = next(ln for ln in md.splitlines() if ln.startswith("| *paper: Adv. Training†*"))
    assert paper.split(" | ")[5:7] == ["*19.98*", ""]


@pytest.mark.parametrize("doc", ["docs/results.md", "README.md"])
def test_readme_status_is_the_report_of_the_committed_runs(monkeypatch, doc):
    """docs/results.md (the paper's tables, moved out of the README by issue 36) and the README's
    headline embed, between markers, exactly what the command in each opening marker prints for
    the committed runs: they cannot drift from results/. The first block of docs/results.md is
    Table 1 in the paper's layout; the verdict's tables are blocks as well."""
    import shlex

    from robust_bench_sc.paths import REPO_ROOT

    text = (REPO_ROOT / doc).read_text()
    blocks = list(re.finditer(r"<!-- BEGIN generated: (scbench report [^\n]*?) -->\n(.*?)<!-- END generated -->",
                              text, re.S))
    assert blocks, f"{doc}: no generated section"
    assert text.count("<!-- BEGIN generated") == len(blocks) == text.count("<!-- END generated -->")
    monkeypatch.chdir(REPO_ROOT)
    for i, m in enumerate(blocks):
        argv = shlex.split(m.group(1))[2:]
        first_table1 = i == 0 and doc == "docs/results.md"
        if first_table1:
            assert argv[:len(TABLE1_RUNS)] == TABLE1_RUNS and "--paper" in argv
        r = CliRunner().invoke(app, ["report", *argv])
        assert r.exit_code == 0, r.output
        assert m.group(2) == r.output, (f"{doc} is stale: run `python tools/update_readme.py` (or replace the block "
                                        f"with the output of `{m.group(1)}`)")
        lines = r.output.splitlines()
        body = lines[lines.index(next(ln for ln in lines if ln.startswith("| defense |"))) + 2:]
        body = body[:body.index(next(ln for ln in body if ln.startswith("| n images |")))]
        ours = [ln for ln in body if not ln.startswith("| *paper")]
        if first_table1:
            assert {ln.split(" | ")[0][2:] for ln in ours} >= {"madry_pgd_at", "trades", "sparse_coding_T15", "natural"}
        for line in ours:  # every figure of ours with its 95 % interval (n: in the cell or the n row)
            for c in line.strip("| ").split(" | ")[1:]:
                assert c == "—" or ("[" in c and "]" in c), (line, c)


def test_figures_on_different_image_sets_say_which(small_run, tmp_path):
    """Bad input: runs on different image sets (madry on the first 16, trades on the first 8)
    merged into one report: each cell of a mixed column and each plot curve names its images."""
    from robust_bench_sc.config import load_suite
    from robust_bench_sc.plots import make_plots
    from robust_bench_sc.summary import summarise

    a = _subset_copy(small_run, tmp_path / "a", "madry_pgd_at")
    b = _subset_copy(small_run, tmp_path / "b", "trades")
    s = pd.read_csv(b / "samples.csv")
    s = s[s["index"] < 8]
    s.to_csv(b / "samples.csv", index=False)
    f = tmp_path / "tiny8.yaml"
    f.write_text(TINY_SUITE.replace("n_images: 16, chunk_size: 16", "n_images: 8, chunk_size: 8")
                 .replace("defenses: [madry_pgd_at, trades]", "defenses: [trades]"))
    s2 = _read_samples(b)
    summarise(load_suite(f), s2, {}).to_csv(b / "summary.csv", index=False)
    rep = load_report([a, b])
    md = to_markdown(rep)
    acc8, (lo, hi), n = _expected(b, "trades", "linf_8")
    assert n == 8 and f"{acc8:.2f} [{lo:.1f}, {hi:.1f}] (on first 8)" in md
    acc16, (lo, hi), _ = _expected(small_run, "madry_pgd_at", "linf_8")
    assert f"{acc16:.2f} [{lo:.1f}, {hi:.1f}] (on first 16)" in md
    assert "first 8 or 16 CIFAR-10 test images" in md
    df = to_frame(rep)
    assert list(df["linf_8_images"]) == ["first 16 CIFAR-10 test images", "first 8 CIFAR-10 test images"]
    sweep = next(p for p in make_plots(rep, tmp_path / "plots") if p.png.name.startswith("sweep_"))
    assert "madry_pgd_at: first 16 CIFAR-10 test images; trades: first 8 CIFAR-10 test images" in sweep.caption



def test_paper_rows_by_T():
    from robust_bench_sc.paper_numbers import paper_defense

    assert paper_defense("sparse_coding_T15") == "T = 15 (Ours)"
    assert paper_defense("sparse_coding_T20") == "T = 20"           # a Table 2 row only
    assert paper_defense("sparse_coding_T20", {"T": 15}) == "T = 15 (Ours)"
    assert paper_defense("sparse_coding", {"T": 7}) is None          # a T the paper never ran
    assert paper_defense("madry_pgd_at") == "Adv. Training" and paper_defense("resnet_x") is None


def test_table2_columns_carry_table2_numbers_and_table1_keeps_its_own():
    """The committed Table 2 run: its five white-box columns show the paper's Table 2 numbers for
    T = 15 (46.89 / 44.55 / 57.13 / 38.43 / 37.33), not Table 1's 37.33 five times; the other T
    have their own Table 2 rows. A Table 1 threat model (bpda auto, ε/8) stays Table 1's column,
    and a Table 2 column at other budgets (restarts 2) is not Table 2's."""
    from robust_bench_sc import paper_numbers as pn
    from robust_bench_sc.report_model import load_run

    md = render(["results/table2"], "md", paper=True)
    assert "| *paper: T = 15 (Ours)†* | *85.45* | *46.89* | *44.55* | *57.13* | *38.43* | *37.33* |" in md
    assert "Table 2: also by steps, restarts, step size and the BPDA stand-in" in md
    assert "100 restarts, step ε/8" not in md  # no Table 1 attack column here
    cfg = load_run("results/table1_T15_1000_linf")[2]
    linf = next(t.config for t in cfg if t.name == "linf_pgd_ce")
    assert pn.paper_column(linf).key == "linf_ce"
    base = next(t.config for t in load_run("results/table2")[2] if t.name == "baseline")
    assert pn.paper_column(base).key == "t2_baseline"
    assert pn.paper_column({**base, "restarts": 2}).key == "linf_ce"
    assert pn.paper_column({**base, "bpda": "auto"}).key == "linf_ce"
    assert pn.paper_value("T = 20", pn.paper_column(base)).value == 40.96
    clean = pn.paper_column({"attack": "none"})
    assert pn.paper_value("T = 1", clean).value == 81.81 and pn.paper_value("T = 15 (Ours)", clean).value == 85.45
    tex = render(["results/table2"], "latex", paper=True)
    assert "Appendix A.2" in tex and r"\textit{46.89}" in tex


def test_describe_subset_is_the_one_wording():
    from robust_bench_sc.subsets import describe_subset, short_subset

    assert describe_subset(200) == "first 200 CIFAR-10 test images"
    assert describe_subset(np.int64(50)) == "first 50 CIFAR-10 test images"
    assert describe_subset([1000, 50, 200, 50]) == "first 50 or 200 or 1000 CIFAR-10 test images"
    assert describe_subset(index=np.array([2, 0, 1, 1])) == "first 3 CIFAR-10 test images"
    assert describe_subset(index=[4, 9, 5]) == "3 CIFAR-10 test images (indices 4–9)"
    assert describe_subset(index=[]) == "no images"
    assert describe_subset(index=range(200), drawn=100) == \
        "100 seeded random correctly classified images of the first 200 CIFAR-10 test images"
    assert short_subset("first 200 CIFAR-10 test images") == "first 200"
    assert short_subset("3 CIFAR-10 test images (indices 4–9)") == "3 CIFAR-10 test images (indices 4–9)"
    with pytest.raises(TypeError, match="give n_images or index"):
        describe_subset(5, index=[0])


def test_flagged_minimum_norm_cells_say_how_many_the_attack_failed_on():
    """HopSkipJump on madry (results/table3_hsj): 9 of 45 images came back unmodified (no start
    found). Their cell says "9 flagged" in every format, with one note saying what that means;
    a bounded attack's flags (AutoAttack returns the input where it fails) are not shown."""
    from robust_bench_sc.report_model import FLAGGED_NOTE, DefenseInfo, Report, ThreatInfo
    from robust_bench_sc.renderers.html_page import to_html

    row = dict(defense="madry_pgd_at", threat_model="hsj", n_images=50, clean_accuracy=90.0, robust_accuracy=18.0,
               success_rate=80.0, mean_l2=1.1662, median_l2=0.92, n_flagged=9, subset="first 50 CIFAR-10 test images")
    bounded = dict(row, threat_model="apgd", success_rate=float("nan"), mean_l2=float("nan"), robust_accuracy=34.0,
                   n_flagged=17)
    report = Report("t", [DefenseInfo("madry_pgd_at", "madry_pgd_at")],
                    [ThreatInfo("hsj", "hsj", {"name": "hsj", "attack": "hsj", "norm": "l2"}, True),
                     ThreatInfo("apgd", "apgd", {"name": "apgd", "attack": "autoattack", "norm": "linf",
                                                 "epsilon": 8 / 255}, False)],
                    {("madry_pgd_at", "hsj"): row, ("madry_pgd_at", "apgd"): bounded})
    md = to_markdown(report)
    # 36 of the 45 attacked (90 % of 50) fooled: 80 % [66.2, 89.1] (Wilson)
    assert "‖e‖₂ = 1.17 (80% succ. [66.2, 89.1]; 9 flagged)" in md and "34.00 [22.4, 47.8] |" in md
    assert md.count(FLAGGED_NOTE) == 1
    assert "(80\\% [66.2, 89.1]; 9 flagged)" in to_latex(report) and "N$ flagged" in to_latex(report)
    assert ">9 flagged</span>" in to_html(report)
    report.cells[("madry_pgd_at", "hsj")] = dict(row, n_flagged=0)
    assert "flagged" not in to_markdown(report)


def test_linf_step_sizes_print_on_the_pixel_grid():
    """Table 2's δ = 1/255 and 0.5/255 print as such, not as 0.00392156862745098."""
    from robust_bench_sc.report_model import ThreatInfo, threat_settings

    def settings(step, norm="linf"):
        return threat_settings(ThreatInfo("t", "t", {"name": "t", "attack": "pgd", "norm": norm, "epsilon": 8 / 255,
                                                     "steps": 40, "step_size": step}, False))

    assert settings(1 / 255) == "steps=40, step_size=1/255"
    assert settings(0.5 / 255) == "steps=40, step_size=0.5/255"
    assert settings(0.003) == "steps=40, step_size=0.003"
    assert settings(0.1, "l2") == "steps=40, step_size=0.1"


def test_autoattack_shows_squares_budget_only_where_square_runs():
    """An APGD-only AutoAttack carries Square's n_queries (a field of the threat model) but does
    not run Square: its settings cell must not suggest a 5000-query Square."""
    from robust_bench_sc.report_model import ThreatInfo, threat_settings

    def settings(**c):
        return threat_settings(ThreatInfo("t", "t", {"name": "t", "attack": "autoattack", "norm": "linf",
                                                     "epsilon": 8 / 255, "n_queries": 5000, **c}, False))

    assert settings(version="custom", attacks_to_run=["apgd-ce", "apgd-dlr"]) == \
        'version=custom, attacks_to_run=["apgd-ce", "apgd-dlr"]'
    assert "n_queries=5000" in settings(version="custom", attacks_to_run=["apgd-ce", "square"])
    assert "n_queries=5000" in settings(version="standard")


def test_runs_table_names_the_images_of_the_runs_rows():
    """results/table1_baselines_boundary ran Boundary on the first 50 of a 1000-image suite; its
    run.json predates the subset field's max_images rule and says "first 1000". The runs table
    names the images of the run's own summary rows."""
    from robust_bench_sc.storage import read_json

    assert read_json(Path("results/table1_baselines_boundary/run.json"))["subset"] == "first 1000 CIFAR-10 test images"
    md = render(["results/table1_baselines_boundary", "results/table3_hsj"], "md")
    assert "| `results/table1_baselines_boundary` | table1 | 99c185086788e00c | first 50 CIFAR-10 test images |" in md
    assert "| first 20 or 50 CIFAR-10 test images |" in md  # table3_hsj: T15 on 20, the ResNets on 50
