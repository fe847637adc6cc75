"""Issue 36: what `scbench run` prints is readable in an 80-column terminal (the progress bars
and the end-of-run table), and unchanged in a wide one."""

from __future__ import annotations

import io
import re
from collections import Counter
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console, Group

from robust_bench_sc.progress import RunProgress
from robust_bench_sc.renderers.terminal import fit_markdown, fit_table, wrap_cell

REPO_ROOT = Path(__file__).resolve().parents[1]
SUMMARIES = sorted(REPO_ROOT.glob("results/*/summary.md"))
NUMBER = re.compile(r"\d+(?:\.\d+)?")
LONG_THREAT = "ℓ∞ PGD ε=8/255 Nr10 (BPDA auto)"


def _table_numbers(md: str) -> Counter:
    return Counter(n for ln in md.splitlines() if ln.startswith("|") for n in NUMBER.findall(ln))


def _words(text: str) -> set[str]:
    return set(text.split())


@pytest.mark.parametrize("path", SUMMARIES, ids=lambda p: p.parent.name)
def test_committed_summaries_fit_80_columns_with_every_number(path):
    md = path.read_text(encoding="utf-8")
    assert max(cell_len(ln) for ln in md.splitlines()) > 80  # every committed one is wider: the test bites
    out = fit_markdown(md, 80)
    assert max(cell_len(ln) for ln in out.splitlines()) <= 80
    have = Counter(NUMBER.findall(out))
    missing = _table_numbers(md) - have
    assert not missing, missing
    # no word of the prose or of a value cell is cut: each is whole on some line (labels may break after _)
    words = _words(out)
    prose = [ln for ln in md.splitlines() if ln and not ln.startswith(("|", "#"))]
    assert all(w in words for ln in prose for w in ln.split() if cell_len(w) <= 80)


def test_wide_terminal_sees_summary_md_unchanged():
    md = (REPO_ROOT / "results/table2/summary.md").read_text(encoding="utf-8")
    assert fit_markdown(md, 500) == md


def test_table2_transposes_and_keeps_intervals_whole():
    """results/table2 has one defense and six threat models: 190 cells wide as markdown; at 80
    its threat models become rows, one line each, with each value and its interval on it."""
    md = (REPO_ROOT / "results/table2/summary.md").read_text(encoding="utf-8")
    out = fit_markdown(md, 80).splitlines()
    head = next(i for i, ln in enumerate(out) if ln.startswith("threat model"))
    assert out[head].split() == ["threat", "model", "sparse_coding_T15", "n", "images"]
    assert out[head + 2].split() == ["clean", "80.00", "[71.1,", "86.7]", "100"]
    assert out[head + 7].split() == ["u_2t_nr_100", "45.00", "[25.8,", "65.8]", "20"]


def test_long_labels_wrap_between_words_or_split_into_groups():
    """Six long threat-model labels on three defenses: no orientation fits 80 cells on one line
    per row; every label's words stay whole and every number is printed once per cell."""
    threats = [f"{LONG_THREAT} #{i}" for i in range(6)]
    header = ["defense", *threats]
    rows = [[d, *(f"{40 + i + k / 10:.2f} [{30 + i:.1f}, {50 + i:.1f}]" for i in range(6))]
            for k, d in enumerate(["natural", "madry_pgd_at", "sparse_coding_T15"])]
    out = fit_table(header, rows, 80)
    assert max(cell_len(ln) for ln in out) <= 80
    text = "\n".join(out)
    assert all(w in _words(text) for w in LONG_THREAT.split())
    for r in rows:
        for c in r[1:]:
            assert c.split(" [")[0] in text and "[" + c.split(" [")[1] in text  # value and interval whole
    out40 = fit_table(header, rows, 40)  # narrower still: groups of columns, each with the row labels
    assert max(cell_len(ln) for ln in out40) <= 40
    heads = [i for i, ln in enumerate(out40) if ln.startswith("threat ")]  # transposed: threat models are rows
    assert len(heads) == 2 and "sparse_coding_T15" in out40[heads[1]] and "sparse_coding_T15" not in out40[heads[0]]
    assert all(w in _words("\n".join(out40)) for w in LONG_THREAT.split())


def test_wrap_cell_breaks_labels_after_underscores_only_when_needed():
    assert wrap_cell("linf_pgd_nr10_bpda_auto", 30, label=True) == ["linf_pgd_nr10_bpda_auto"]
    assert wrap_cell("linf_pgd_nr10_bpda_auto", 12, label=True) == ["linf_pgd_", "nr10_bpda_", "auto"]
    assert wrap_cell("50.00 [40.4, 59.6]", 12) == ["50.00", "[40.4, 59.6]"]
    assert wrap_cell("ε=8/255 Nr10", 8, label=True) == ["ε=8/255", "Nr10"]


def _render_progress(width: int) -> list[str]:
    buf = io.StringIO()
    console = Console(width=width, file=buf, color_system=None)
    p = RunProgress(console)
    p.add_task(f"sparse_coding_T15 × {LONG_THREAT}", total=1000, completed=200, acc=" 45.0% (n=200)",
               stage="chunk 2: restart 37/100: 54 of 81 attacked images fooled")
    p.add_task("madry_pgd_at × clean", total=1000, completed=1000, acc=" 85.0% (n=1000)", stage="")
    console.print(Group(*p.get_renderables()))
    return buf.getvalue().splitlines()


def test_progress_stacks_in_80_columns():
    lines = _render_progress(80)
    assert max(cell_len(ln) for ln in lines) <= 80
    text = "\n".join(lines)
    assert lines[0] == f"sparse_coding_T15 × {LONG_THREAT}"
    assert " 200/1000 robust  45.0% (n=200) " in lines[1] and "1000/1000 robust  85.0% (n=1000)" in text
    assert lines[2] == "  chunk 2: restart 37/100: 54 of 81 attacked images fooled"
    assert "…" not in text and len(lines) == 5


def test_progress_one_line_per_pair_in_a_wide_terminal():
    lines = [ln for ln in _render_progress(200) if ln.strip()]
    assert len(lines) == 2
    assert lines[0].startswith(f"sparse_coding_T15 × {LONG_THREAT} ") and "200/1000" in lines[0] \
        and lines[0].rstrip().endswith("54 of 81 attacked images fooled")


def test_run_prints_a_table_that_fits_80_columns(tmp_path):
    """`scbench run` at COLUMNS=80 prints the end table within 80 cells, every number of
    summary.md's tables in it."""
    from typer.testing import CliRunner

    from robust_bench_sc.cli import app

    suite = tmp_path / "w.yaml"
    suite.write_text("name: w\nseed: 0\ndata: {n_images: 2, chunk_size: 2}\n"
                     "defenses: [madry_pgd_at, {ref: madry_pgd_at, name: madry_pgd_at_second_copy_with_a_long_label}]\n"
                     "threat_models: [clean, {attack: pgd, name: linf_pgd_two_steps_a_long_name, norm: linf, "
                     "epsilon: 8/255, steps: 2, restarts: 1}, {attack: pgd, name: linf_pgd_one_step_a_long_name, "
                     "norm: linf, epsilon: 8/255, steps: 1, restarts: 1}]\n")
    r = CliRunner().invoke(app, ["run", str(suite), "--out", str(tmp_path / "r"), "--threads", "1", "--no-probes"],
                           env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    md = (tmp_path / "r" / "summary.md").read_text()
    assert max(cell_len(ln) for ln in md.splitlines()) > 80
    printed = r.stdout[:r.stdout.index("results: ")]
    assert max(cell_len(ln) for ln in printed.splitlines()) <= 80
    assert not _table_numbers(md) - Counter(NUMBER.findall(printed))
