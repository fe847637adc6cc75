"""The native attack engine, BPDA plumbing, the re-check, resume and reproducibility."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from robust_bench_sc.attacks.base import ATTACKS, Attack, AttackContext, AttackOutput
from robust_bench_sc.attacks.pgd import project_l1_box
from robust_bench_sc.cli import app
from robust_bench_sc.config import load_suite, validate_threat_model
from robust_bench_sc.defense import Capabilities, Defense, bpda_apply
from robust_bench_sc.evaluate import evaluate_threat
from robust_bench_sc.runner import run_suite

DEV = torch.device("cpu")


def tm(**kw):
    return validate_threat_model(kw, "test")


def run_threat(defense, threat, split, n, seed=0):
    x, y, idx = split.x[:n], split.y[:n], split.idx[:n]
    return pd.DataFrame(evaluate_threat(defense, threat, x, y, idx, AttackContext(defense, DEV, seed)))


# -- PGD ------------------------------------------------------------------------------

@pytest.mark.parametrize("norm,eps,col", [("linf", 8 / 255, "linf"), ("l2", 0.6, "l2"), ("l1", 10.0, "l1")])
def test_pgd_respects_budget_and_lowers_accuracy(madry, test_split, norm, eps, col):
    df = run_threat(madry, tm(attack="pgd", norm=norm, epsilon=eps, steps=10, restarts=1, step_size="epsilon/4"), test_split, 40)
    clean = df["clean_correct"].mean()
    robust = df["robust"].mean()
    assert robust < clean - 0.1, (clean, robust)
    attacked = df[df["attacked"]]
    assert (attacked[col] <= eps * (1 + 1e-4) + 1e-5).all()
    # the budget is actually used (not a do-nothing attack)
    assert attacked[col].median() > 0.5 * eps
    assert df["flags"].fillna("").eq("").all()


def test_unconstrained_linf_pgd_reaches_zero(madry, test_split):
    df = run_threat(madry, tm(attack="pgd", norm="linf", epsilon=1.0, steps=10, step_size=0.1), test_split, 20)
    assert df["robust"].sum() == 0


def test_paper_dense_l1_is_weaker_than_sparse(madry, test_split):
    dense = run_threat(madry, tm(attack="pgd", norm="l1", epsilon=30, steps=10, l1_step="dense"), test_split, 30)
    sparse = run_threat(madry, tm(attack="pgd", norm="l1", epsilon=30, steps=10, l1_step="sparse"), test_split, 30)
    assert sparse["robust"].mean() < dense["robust"].mean()
    assert (dense.loc[dense["attacked"], "l1"] <= 30 + 1e-3).all()


def test_early_stop_skips_fooled_samples(madry, test_split):
    df = run_threat(madry, tm(attack="pgd", norm="linf", epsilon=8 / 255, steps=3, restarts=4, step_size=2 / 255), test_split, 30)
    att = df[df["attacked"]]
    fooled_first = att[att["fooled"] & (att["restarts_used"] == 1)]
    assert len(fooled_first) > 0  # these got no further restarts
    assert (att.loc[~att["fooled"], "restarts_used"] == 4).all()
    assert att["image_steps"].sum() < len(att) * 4 * 3


def test_adversarial_iterate_is_kept(madry, test_split):
    # step = ε from the corner of the ball makes PGD oscillate: some iterates are adversarial
    # while the last one is not. Plain (last-iterate) PGD loses those; the default keeps them.
    kw = dict(attack="pgd", norm="linf", epsilon=8 / 255, steps=6, restarts=1, step_size=8 / 255)
    last = run_threat(madry, tm(keep_adversarial_iterate=False, **kw), test_split, 30)
    kept = run_threat(madry, tm(**kw), test_split, 30)
    silent = last[last["attacked"] & ~last["fooled"] & (last["iterate_fooled"] > 0)]
    assert len(silent) > 0
    assert not (kept["attacked"] & ~kept["fooled"] & (kept["iterate_fooled"] > 0)).any()
    assert kept["robust"].sum() == last["robust"].sum() - len(silent)  # same seed, same iterates
    assert (kept.loc[kept["attacked"], "linf"] <= 8 / 255 + 1e-6).all()


def test_same_seed_same_numbers_different_seed_runs(madry, test_split):
    t = tm(attack="pgd", norm="linf", epsilon=4 / 255, steps=3, restarts=1)
    a = run_threat(madry, t, test_split, 20, seed=1)
    b = run_threat(madry, t, test_split, 20, seed=1)
    pd.testing.assert_frame_equal(a, b)


def test_l1_box_projection_is_exact():
    torch.manual_seed(0)
    x = torch.rand(5, 3, 4, 4)
    v = torch.randn(5, 3, 4, 4) * 2
    eps = 3.0
    d = project_l1_box(v, x, eps)
    assert (d.flatten(1).abs().sum(1) <= eps + 1e-4).all()
    assert ((x + d) >= -1e-7).all() and ((x + d) <= 1 + 1e-7).all()
    # KKT check against random feasible points: no feasible point is closer to v
    for _ in range(200):
        z = project_l1_box(d + 0.05 * torch.randn_like(d), x, eps)
        assert ((z - v).flatten(1).norm(dim=1) >= (d - v).flatten(1).norm(dim=1) - 1e-4).all()


# -- BPDA and gradient masking -------------------------------------------------------

class Quantise(nn.Module):
    """Non-differentiable preprocess: 4-level colour quantisation (zero gradient a.e.)."""

    def forward(self, x):
        return torch.round(x * 3) / 3


def masked_defense(madry) -> Defense:
    return Defense("quantised", madry.classifier, preprocess=Quantise(),
                   capabilities=Capabilities(differentiable=False)).eval()


def test_bpda_forward_is_exact_backward_is_stand_in():
    x = torch.rand(2, 3, 4, 4, requires_grad=True)
    out = bpda_apply(x, Quantise(), nn.Identity())
    assert torch.equal(out, Quantise()(x.detach()))
    (out * 3).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 3.0))
    # without BPDA the exact preprocess gives no gradient at all
    x2 = x.detach().requires_grad_(True)
    Quantise()(x2).sum().backward()
    assert x2.grad.abs().sum() == 0


def test_masking_defense_fools_plain_pgd_but_not_bpda(madry, test_split):
    d = masked_defense(madry)
    kw = dict(attack="pgd", norm="linf", epsilon=32 / 255, steps=10, step_size=8 / 255, random_start=False)
    plain = run_threat(d, tm(**kw), test_split, 30)
    bpda = run_threat(d, tm(**kw, bpda="identity"), test_split, 30)
    # gradients are zero: the plain attack returns the input and "robust" = clean
    assert plain["robust"].sum() == plain["clean_correct"].sum() > 20
    assert plain.loc[plain["attacked"], "flags"].str.contains("unchanged").all()
    assert bpda["robust"].mean() < 0.1


# -- the re-check ----------------------------------------------------------------------

class OverBudget(Attack):
    """A 'toolkit' that claims success with a point far outside the ε-ball."""

    def run(self, ctx, x, y):
        return AttackOutput(x_adv=(1 - x), claimed=torch.ones(x.shape[0], dtype=torch.bool))


def test_out_of_budget_points_are_flagged_not_counted(madry, test_split, monkeypatch):
    monkeypatch.setitem(ATTACKS._entries, "pgd:native", OverBudget)
    df = run_threat(madry, tm(attack="pgd", norm="linf", epsilon=8 / 255, steps=1), test_split, 20)
    att = df[df["attacked"]]
    assert att["flags"].str.contains("norm_exceeded").all()
    assert att["flags"].str.contains("claim_mismatch").all()
    assert df["robust"].sum() == df["clean_correct"].sum()  # nothing counted as fooled


# -- runner: out-of-tree defense, resume after kill --------------------------------------

SUITE = """
name: resume_check
seed: 3
data: {{n_images: {n}, chunk_size: {chunk}}}
defenses:
  - madry_pgd_at
  - ref: {plugin}:make
    name: mine
threat_models:
  - clean
  - name: linf
    attack: pgd
    norm: linf
    epsilon: 8/255
    steps: {steps}
    restarts: 2
"""

PLUGIN = """
from robust_bench_sc import Defense
from robust_bench_sc.models import load_resnet32
from robust_bench_sc.paths import reference_dir

def make():
    return Defense(name="mine", classifier=load_resnet32(reference_dir() / "resnet32_trades.pt"),
                   description="TRADES checkpoint loaded from an out-of-tree file")
"""


def _suite(tmp_path, n=16, chunk=4, steps=3):
    plugin = tmp_path / "elsewhere" / "my_defense.py"
    plugin.parent.mkdir(exist_ok=True)
    plugin.write_text(PLUGIN)
    p = tmp_path / "suite.yaml"
    p.write_text(SUITE.format(n=n, chunk=chunk, plugin=plugin, steps=steps))
    return p


def _no_time(df):
    return df.drop(columns=["seconds"])


def test_out_of_tree_defense_runs_next_to_bundled(tmp_path):
    suite = _suite(tmp_path, n=8, chunk=8, steps=1)
    res = CliRunner().invoke(app, ["run", str(suite), "--out", str(tmp_path / "run"), "--quiet"])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(tmp_path / "run" / "summary.csv")
    assert set(table["defense"]) == {"madry_pgd_at", "mine"}
    assert (table["subset"] == "first 8 CIFAR-10 test images").all()
    samples = pd.read_csv(tmp_path / "run" / "samples.csv")
    assert len(samples) == 2 * 2 * 8
    assert {"index", "label", "clean_pred", "adv_pred", "linf", "l2", "l1"} <= set(samples.columns)


def test_killed_run_resumes_to_identical_summary(tmp_path):
    suite = _suite(tmp_path, n=16, chunk=4, steps=6)
    ref = run_suite(load_suite(suite), out=tmp_path / "ref", show_progress=False)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "robust_bench_sc.cli", "run", str(suite), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        done = list((out / "records").rglob("chunk_*.json")) if (out / "records").exists() else []
        if len(done) >= 6:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    n_done = len(list((out / "records").rglob("chunk_*.json")))
    assert 0 < n_done < 16, "kill the run part-way"
    assert not (out / "summary.csv").exists()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "resuming" in res.stderr
    resumed = pd.read_csv(out / "summary.csv")
    assert ref.computed_chunks == 16
    pd.testing.assert_frame_equal(_no_time(resumed), _no_time(pd.read_csv(tmp_path / "ref" / "summary.csv")))
    pd.testing.assert_frame_equal(pd.read_csv(out / "samples.csv"), pd.read_csv(tmp_path / "ref" / "samples.csv"))


def test_run_dir_of_another_suite_is_refused(tmp_path):
    suite = _suite(tmp_path, n=4, chunk=4, steps=1)
    run_suite(load_suite(suite), out=tmp_path / "r", show_progress=False)
    res = CliRunner().invoke(app, ["run", str(suite), "--out", str(tmp_path / "r"), "--set", "steps=2", "--quiet"])
    assert res.exit_code == 1
    assert "different suite configuration" in res.output


def test_run_grows_to_more_images_without_recomputing(tmp_path):
    """A finished run on 3 images grows to 6: the full chunk is reused, the partial last
    chunk (same settings, fewer images) is recomputed, and the records equal a fresh run."""
    small = run_suite(load_suite(_suite(tmp_path, n=3, chunk=2, steps=2)), out=tmp_path / "grow", show_progress=False)
    assert small.computed_chunks == 2 * 2 * 2
    grown = run_suite(load_suite(_suite(tmp_path, n=6, chunk=2, steps=2)), out=tmp_path / "grow", show_progress=False)
    assert (grown.resumed_chunks, grown.computed_chunks) == (2 * 2 * 1, 2 * 2 * 2)
    fresh = run_suite(load_suite(_suite(tmp_path, n=6, chunk=2, steps=2)), out=tmp_path / "fresh", show_progress=False)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "grow" / "samples.csv"),
                                  pd.read_csv(tmp_path / "fresh" / "samples.csv"))
    meta = json.loads((tmp_path / "grow" / "run.json").read_text())
    assert len(meta["history"]) == 1 and meta["history"][0]["status"] == "complete"
    assert set(meta["defense_fingerprints"]) == {"madry_pgd_at", "mine"}


def test_resume_refuses_records_of_other_weights(tmp_path):
    """Same defense name and settings, other weights behind it: the run stops with the
    fingerprints instead of mixing numbers of two models."""
    run_suite(load_suite(_suite(tmp_path, n=2, chunk=2, steps=1)), out=tmp_path / "r", show_progress=False)
    plugin = tmp_path / "elsewhere" / "my_defense.py"
    suite = _suite(tmp_path, n=4, chunk=2, steps=1)
    plugin.write_text(PLUGIN.replace("resnet32_trades.pt", "resnet32_natural.pt"))
    cmd = [sys.executable, "-m", "robust_bench_sc.cli", "run", str(suite), "--out", str(tmp_path / "r"), "--quiet"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # a new process imports the new file
    assert res.returncode == 1
    assert "'mine' loads other weights" in res.stderr + res.stdout
