"""The first run a new user sees (issue 38): a plug-in found where the suite says it is,
a start line that states each threat model's budget, and the seed's dependence on the label
stated where the numbers are."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from robust_bench_sc.config import load_suite
from robust_bench_sc.yamlio import ConfigError

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
    assert d.label == "my_defense.py:make"                        # the label (and seed) as written
    assert d.load_ref == f"{exp.resolve() / 'my_defense.py'}:make"
    out = run_suite(suite, out=tmp_path / "run", show_progress=False)
    summary = (out.run_dir / "summary.csv").read_text()
    assert "my_defense.py:make" in summary
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
