"""Issue 36: the docs each have one purpose, and the generated ones cannot drift.

docs/threat-models.md is generated from the threat-model schemas and attack_suites/; the README
stays short and its links lead somewhere. (docs/results.md, the generated paper tables, is checked
against the committed runs in tests/test_reports.py.)"""

from __future__ import annotations

import importlib.util
import re

import pytest

from robust_bench_sc.paths import REPO_ROOT


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "tools" / f"{name}.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_threat_models_doc_is_generated_from_the_schemas():
    tool = _tool("threat_model_docs")
    text = tool.render()
    committed = (REPO_ROOT / "docs" / "threat-models.md").read_text()
    assert committed == text, "docs/threat-models.md is stale: run `python tools/threat_model_docs.py`"
    # it says what the schemas say: every kind, its backends, a field's default and constraint
    from robust_bench_sc.threat_models import THREAT_MODELS

    for kind, cls in THREAT_MODELS.items():
        assert f"\n### {kind}\n" in text
        for backend in cls.backends:
            assert f"`{backend}`" in text
    assert "| `steps` | whole number | `40` | ≥ 1 |" in text          # pgd
    assert "| `norm` | `linf` \\| `l2` \\| `l1` | **required** |" in text
    assert "| `linf_pgd_ce` | pgd | native | linf | 8/255 | restarts=100 |" in text


def test_readme_is_short_and_its_links_exist():
    text = (REPO_ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200, "README.md: keep it under 200 lines; the manual is docs/guide.md"
    for must in ("./run.sh", "./test.sh", "docs/guide.md", "docs/results.md", "docs/threat-models.md",
                 "docs/extending.md"):
        assert must in text, must
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    missing = [p for p in links if not p.startswith("http") and not (REPO_ROOT / p).exists()]
    assert missing == []
    for doc in ("guide", "results", "extending", "threat-models"):
        body = (REPO_ROOT / "docs" / f"{doc}.md").read_text()
        rel = [p for p in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", body) if not p.startswith("http")]
        gone = [p for p in rel if not ((REPO_ROOT / "docs" / p).exists() or (REPO_ROOT / p).exists())]
        assert gone == [], (doc, gone)


def test_status_without_a_profile_says_so():
    """Issue 36, small things: ``scbench status`` on a run made without a profile says so
    (it printed "profile None"); one made with a profile names it."""
    from robust_bench_sc.run_status import run_status, status_lines

    head = status_lines(run_status(REPO_ROOT / "results" / "adaptive_1000"))[1]
    assert "no profile (the suite as declared)" in head and "None" not in head
    head = status_lines(run_status(REPO_ROOT / "results" / "table2"))[1]
    assert "profile T15_row," in head


def test_threat_models_command_shows_budgets_and_eps_on_the_pixel_grid():
    """Issue 36, small things: ``scbench threat-models`` shows steps, restarts and ε as k/255."""
    from typer.testing import CliRunner

    from robust_bench_sc.cli import app

    r = CliRunner().invoke(app, ["threat-models"], env={"COLUMNS": "80"})  # an 80-column terminal
    assert r.exit_code == 0, r.output
    rows = {ln.split("│")[1].strip(): [c.strip() for c in ln.split("│")[2:-1]]
            for ln in r.stdout.splitlines() if ln.startswith("│")}
    assert rows["linf_pgd_ce"] == ["pgd", "native", "linf", "8/255", "40 × 100"]
    assert rows["square_linf_1000"] == ["square", "autoattack", "linf", "8/255", "1000 queries"]
    assert rows["l2_pgd"][3] == "0.6" and rows["boundary"][4] == "25000" and rows["hsj"][4] == "50"
    assert max(len(ln) for ln in r.stdout.splitlines()) <= 80


def test_the_own_defense_example_validates(monkeypatch):
    """README "Evaluate your own defense": examples/my_suite.yaml names my_defense.py beside it
    (a relative plug-in file is resolved from the suite's folder, whatever the current folder);
    it validates and the defense builds and classifies."""
    import torch

    from robust_bench_sc.config import load_suite
    from robust_bench_sc.data import load_test
    from robust_bench_sc.plugins import build_defense

    monkeypatch.chdir(REPO_ROOT / "tests")  # not the suite's folder
    suite = load_suite(REPO_ROOT / "examples" / "my_suite.yaml")
    assert [d.label for d in suite.defenses] == ["quantised_madry", "madry_pgd_at"]
    spec = suite.defenses[0]
    d = build_defense(spec.load_ref, spec.params, name=spec.label)
    assert d.capabilities.differentiable is False and d.preprocess is not None
    split = load_test(20)
    with torch.no_grad():
        acc = (d(split.x).argmax(1) == split.y).float().mean().item()
    assert acc == 1.0  # measured: 20/20 of the first 20 behind round(8x)/8 (the run in the README says so too)
    readme = (REPO_ROOT / "README.md").read_text()
    assert "examples/my_defense.py:make" in readme and "examples/my_suite.yaml" in readme


def test_plots_say_when_there_is_nothing_to_draw(tmp_path, monkeypatch):
    """Issue 36, small things: ``--plots`` on runs with no ε sweep and no minimum-norm attack
    says so in one line (it wrote an empty folder silently); a sweep run draws and says nothing."""
    from typer.testing import CliRunner

    from robust_bench_sc.cli import app
    from robust_bench_sc.reports import NOTHING_TO_PLOT

    monkeypatch.chdir(REPO_ROOT)
    r = CliRunner().invoke(app, ["report", "results/table1_natural", "--plots", str(tmp_path / "none")])
    assert r.exit_code == 0, r.output
    assert r.stderr.count(NOTHING_TO_PLOT[:30]) == 1 and not list((tmp_path / "none").glob("*.png"))
    r = CliRunner().invoke(app, ["report", "results/fig1b", "--plots", str(tmp_path / "sweep")])
    assert r.exit_code == 0 and NOTHING_TO_PLOT[:30] not in r.stderr
    assert [p.name for p in (tmp_path / "sweep").glob("*.png")] == ["sweep_pgd_linf_linf_eps1.png"]


def test_quiet_is_quiet(tmp_path):
    """Issue 36, small things: ``run --quiet`` prints no per-job lines and no table, only where
    the results are (the table is in summary.md); without it the table is printed."""
    from typer.testing import CliRunner

    from robust_bench_sc.cli import app

    suite = tmp_path / "q.yaml"
    suite.write_text("name: q\nseed: 0\ndata: {n_images: 4, chunk_size: 2}\ndefenses: [madry_pgd_at]\n"
                     "threat_models: [clean]\n")
    r = CliRunner().invoke(app, ["run", str(suite), "--out", str(tmp_path / "r"), "--quiet", "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert "chunk 0" not in r.output and "| defense |" not in r.output and f"results: {tmp_path / 'r'}" in r.output
    assert "| madry_pgd_at | 100.00 [51.0, 100.0] |" in (tmp_path / "r" / "summary.md").read_text()
    r = CliRunner().invoke(app, ["run", str(suite), "--out", str(tmp_path / "r"), "--threads", "1"])
    assert r.exit_code == 0 and "| madry_pgd_at | 100.00 [51.0, 100.0] |" in r.output


@pytest.mark.slow
def test_the_readme_tour_output_is_what_the_example_prints(tmp_path, monkeypatch):
    """The results table the README's quick tour shows is what `scbench run examples/my_suite.yaml`
    writes (≈ 2 min on one core): the tour's output is real and stays so."""
    from typer.testing import CliRunner

    from robust_bench_sc.cli import app

    monkeypatch.chdir(REPO_ROOT)
    r = CliRunner().invoke(app, ["run", "examples/my_suite.yaml", "--out", str(tmp_path / "mine"), "--quiet",
                                 "--threads", "1"])
    assert r.exit_code == 0, r.output
    table = [ln for ln in (tmp_path / "mine" / "summary.md").read_text().splitlines() if ln.startswith("| ")]
    table = table[:table.index(next(ln for ln in table if ln.startswith("| n images")))]
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(table) == 3 and all(ln in readme for ln in table), table
