"""``auto`` (issue 33): the probes adapt the attacks to what a defense is, every choice with its
reason, in run.json and in the spec hash; a defense with nothing unusual keeps its hashes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robust_bench_sc.adapt import AUTO_EOT, AUTO_RECHECK, NO_GRADIENT, adaptation
from robust_bench_sc.config import load_suite, validate_threat_model
from robust_bench_sc.defense import Capabilities, Defense, resolve_bpda
from robust_bench_sc.plan import job_spec_hash, plan_jobs
from robust_bench_sc.probes import probe_defense
from robust_bench_sc.runner import run_suite
from robust_bench_sc.storage import RunDir

N = 8


class RandomResizePad(nn.Module):
    """Xie et al. 2018: resize to a random r in [26, 32), pad randomly back to 32 (differentiable)."""

    def forward(self, x):
        r = int(torch.randint(26, 32, (1,)))
        small = F.interpolate(x, size=(r, r), mode="nearest")
        left, top = (int(v) for v in torch.randint(0, 32 - r + 1, (2,)))
        return F.pad(small, (left, 32 - r - left, top, 32 - r - top))


class Blur(nn.Module):
    def forward(self, x):
        return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class Quantise(nn.Module):
    def forward(self, x):
        return torch.round(x * 8) / 8


class Detached(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).detach()


class Scaled(nn.Module):
    def __init__(self, inner, k):
        super().__init__()
        self.inner, self.k = inner, k

    def forward(self, x):
        return self.inner(x) * self.k


PGD = validate_threat_model({"attack": "pgd", "name": "pgd", "norm": "linf", "epsilon": "8/255", "steps": 2}, "t")
PGD_AUTO = validate_threat_model({"attack": "pgd", "name": "pgd_auto", "norm": "linf", "epsilon": "8/255",
                                  "steps": 2, "bpda": "auto"}, "t")
PGD_EOT1 = validate_threat_model({"attack": "pgd", "name": "pgd_eot1", "norm": "linf", "epsilon": "8/255",
                                  "steps": 2, "eot": 1}, "t")
RS = validate_threat_model({"attack": "random_search", "name": "rs", "epsilon": "8/255", "n_queries": 5}, "t")


@pytest.fixture(scope="module")
def images(test_split):
    return test_split.x[:N], test_split.y[:N]


def adapt(defense, images):
    return adaptation(defense.name, defense, probe_defense(defense, *images), *images)


def test_honest_model_gets_no_choice(madry, images):
    a = adapt(madry, images)
    for t in (PGD, PGD_AUTO, PGD_EOT1, RS):
        assert a.threat(t) == (t, []) and a.key(t) == {} and a.warnings_for(t) == []
    assert a.warnings == [] and a.capabilities(madry.capabilities) == madry.capabilities


def test_randomised_undeclared_gets_eot_recheck_and_a_warning(madry, images):
    d = Defense(name="rrp", classifier=madry.classifier, preprocess=RandomResizePad())
    a = adapt(d, images)
    assert a.randomised and len(a.warnings) == 1 and "does not declare it (randomised=True)" in a.warnings[0]
    t, choices = a.threat(PGD)
    assert (t.eot, t.recheck, t.bpda) == (AUTO_EOT, AUTO_RECHECK, None)  # exact gradient fine: no BPDA
    assert [c.setting for c in choices] == ["recheck", "eot"]
    assert choices[1].line() == f"eot {AUTO_EOT}: randomised (observed, not declared): EOT over {AUTO_EOT} passes per gradient"
    assert a.key(PGD) == {"recheck": AUTO_RECHECK, "eot": AUTO_EOT, "randomised": True}
    # eot: 1 set by the user is kept, with a warning; recheck still adapts
    t1, _ = a.threat(PGD_EOT1)
    assert t1.eot == 1 and "sets eot: 1 on 'rrp', which is randomised" in a.warnings_for(PGD_EOT1)[0]
    # gradient-free: recheck only
    assert [c.setting for c in a.threat(RS)[1]] == ["recheck"]
    assert a.apply(d).capabilities.randomised


def test_differentiable_preprocess_keeps_exact_gradients_under_bpda_auto(madry, images):
    d = Defense(name="blur", classifier=madry.classifier, preprocess=Blur())
    assert resolve_bpda(d, "auto") == "identity"  # before: auto always meant the identity
    a = adapt(d, images)
    assert a.exact_preprocess and a.threat(PGD_AUTO)[1][0].value == "auto (exact)"
    a.apply(d)
    assert resolve_bpda(d, "auto") is None and d.attack_model(bpda=resolve_bpda(d, "auto")).stand_in_module is None
    # a declared default stand-in wins over the probe
    d2 = Defense(name="blur2", classifier=madry.classifier, preprocess=Blur(), bpda={"id2": nn.Identity()},
                 capabilities=Capabilities(default_bpda="id2"))
    a2 = adapt(d2, images)
    assert a2.threat(PGD_AUTO)[1] == [] and resolve_bpda(a2.apply(d2), "auto") == "id2"


def test_non_differentiable_preprocess_gets_bpda(madry, images):
    d = Defense(name="jpeg", classifier=madry.classifier, preprocess=Quantise())
    a = adapt(d, images)
    t, choices = a.threat(PGD)
    assert t.bpda == "auto" and choices[0].value == "auto (identity)" and not a.no_gradient
    assert "the exact gradient is zero and the preprocess is not differentiable" in choices[0].reason


@pytest.mark.parametrize("classifier", ["detached", "quantised"])
def test_a_break_inside_the_classifier_makes_gradient_columns_not_applicable(madry, images, classifier):
    inner = Detached(madry.classifier) if classifier == "detached" else nn.Sequential(Quantise(), madry.classifier)
    a = adapt(Defense(name="broken", classifier=inner), images)
    assert a.no_gradient and NO_GRADIENT in a.warnings[0]
    assert a.threat(PGD)[1][0].setting == "gradient" and a.key(PGD) == {"gradient": NO_GRADIENT}
    assert a.threat(RS) == (RS, [])


def test_saturated_logits_switch_pgd_to_the_margin_loss(madry, images):
    a = adapt(Defense(name="sat", classifier=Scaled(madry.classifier, 1e4)), images)
    t, choices = a.threat(PGD)
    assert t.loss == "cw" and choices[0].setting == "loss" and "saturated (8/8 images)" in choices[0].reason



def test_outputs_that_are_probabilities_switch_pgd_to_the_margin_loss(madry, images):
    a = adapt(Defense(name="softmax", classifier=nn.Sequential(madry.classifier, nn.Softmax(1))), images)
    t, choices = a.threat(PGD)
    assert t.loss == "cw" and [c.setting for c in choices] == ["loss"]
    assert "outputs are probabilities, not logits (8/8 images)" in choices[0].reason
    assert a.key(PGD) == {"loss": "cw"}

SUITE = """name: auto
seed: 0
data: {{n_images: 4, chunk_size: 4}}
defenses:
  - ref: madry_pgd_at
  - ref: defenses.archetypes:detached_logits   # logits detached: no input gradient
    name: detached
threat_models:
  - clean
  - attack: pgd
    name: pgd
    norm: linf
    epsilon: 8/255
    steps: 1
"""


def test_run_probes_records_findings_and_says_no_gradient_in_one_line(tmp_path, capsys):
    """Issue 34 item 7: detached logits no longer give PGD robust = clean silently; the honest
    model's records keep the spec hashes they had before probes."""
    from rich.console import Console

    (tmp_path / "s.yaml").write_text(SUITE.format())
    suite = load_suite(tmp_path / "s.yaml")
    console = Console(stderr=True, width=300)
    out = run_suite(suite, out=tmp_path / "run", show_progress=False, console=console)
    err = capsys.readouterr().err
    assert "probes madry_pgd_at (4 images" in err and "deterministic: 4 passes" in err
    warn = [line for line in err.splitlines() if line.startswith("warning:") and "detached" in line]
    assert len(warn) == 1 and "gradient attacks not applicable (no gradient)" in warn[0]
    rd = RunDir(out.run_dir)
    meta = rd.read_meta()
    assert meta["probes"]["madry_pgd_at"]["probes"]["gradient"] == "ok"
    assert meta["probes"]["detached"]["threat_models"]["pgd"][0]["value"] == NO_GRADIENT
    # madry: same hashes as without probes (committed results stay valid); detached: the choice is in its hash
    for j in plan_jobs(suite):
        blob = rd.read_chunk(j.defense, j.threat, j.chunk)
        same = blob["spec_hash"] == job_spec_hash(suite, j)
        assert same == (j.defense == "madry_pgd_at" or j.threat == "clean"), j.key
    rows = {(r["defense"], r["threat_model"]): r for r in out.summary.to_dict("records")}
    assert math.isnan(rows[("detached", "pgd")]["robust_accuracy"])
    assert rows[("detached", "pgd")]["error"].startswith("not applicable (no gradient): the defense's gradient is missing")
    assert not math.isnan(rows[("madry_pgd_at", "pgd")]["robust_accuracy"])
    flags = rd.read_chunk("detached", "pgd", 0)["records"]
    assert all("no_gradient" in r["flags"] for r in flags if r["attacked"])
    # scbench status counts every record (it reads what entered the hashes from run.json)
    from robust_bench_sc.run_status import run_status

    assert run_status(out.run_dir).unusable == []
    # resuming with the same probes reuses every record
    again = run_suite(load_suite(tmp_path / "s.yaml"), out=tmp_path / "run", show_progress=False, console=console)
    assert again.computed_chunks == 0
