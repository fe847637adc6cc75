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
from robust_bench_sc.reports import latex_escape, load_report, render, to_csv, to_latex, to_markdown
from robust_bench_sc.summary import wilson_interval

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
    assert f"‖e‖₂ = {part.l2.mean():.2f} (100% succ.)" in md
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
    assert r.exit_code == 1 and "not a run directory" in r.output
    r = CliRunner().invoke(app, ["report", str(small_run), "--format", "docx"])
    assert r.exit_code == 1 and "unknown format" in r.output
