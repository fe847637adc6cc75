"""`scbench audit` / `diagnose` / the binarization test on any dataset plug-in, a defense that
hangs (the probes' time limit), and the EOT rule of the AutoAttack backend (an answer counts
only where every EOT draw is fooled)."""

from __future__ import annotations

import textwrap
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from robust_bench_sc.attacks.autoattack import AllDrawsFooled
from robust_bench_sc.audit import BUDGETS, AuditError, audit
from robust_bench_sc.cli import app

TINY = replace(BUDGETS["quick"], apgd_iterations=10, eot=3, recheck=2, square_queries=50, square_eot=2,
               transfer_steps=10, indicators=False, binarization=False)
QUANTISER = "defenses.archetypes:quantised_classifier"


@pytest.fixture(scope="module")
def npz_file(tmp_path_factory, test_split):
    """The first 6 CIFAR-10 test images as a generic npz file (its own dataset)."""
    path = tmp_path_factory.mktemp("data") / "mine.npz"
    x = (test_split.x[:6].permute(0, 2, 3, 1) * 255).round().byte().numpy()
    np.savez(path, x=x, y=test_split.y[:6].numpy(), n_classes=10)
    return path


# --------------------------------------------------------------------------- datasets
def test_audit_reads_a_dataset_plug_in(tmp_path, npz_file):
    card = audit(QUANTISER, n_images=3, out=tmp_path / "npz", budget=TINY, dataset="npz", data_dir=npz_file)
    assert card["subset"] == "first 3 test images of mine.npz"
    assert card["dataset"] == {"name": "npz", "n_classes": 10, "data_dir": str(npz_file)}
    import json

    run = json.loads((tmp_path / "npz" / "run.json").read_text())
    assert run["dataset"]["name"] == "npz"
    # the same images as cifar10_npz's first three: the same audit
    same = audit(QUANTISER, n_images=3, out=tmp_path / "default", budget=TINY)
    assert same["subset"] == "first 3 CIFAR-10 test images" and "dataset" not in same
    assert card["worst_case"] == same["worst_case"] and card["fooled_by"] == same["fooled_by"]


def test_audit_dataset_errors_are_one_line(tmp_path, npz_file):
    with pytest.raises(AuditError, match=r"^--dataset nope: unknown dataset 'nope'"):
        audit(QUANTISER, n_images=2, out=tmp_path / "a", dataset="nope")
    with pytest.raises(AuditError, match=r"^--dataset npz: npz dataset: .*missing.npz not found"):
        audit(QUANTISER, n_images=2, out=tmp_path / "b", dataset="npz", data_dir=tmp_path / "missing.npz")
    with pytest.raises(AuditError, match=r"^--n-images 7: must be in 1..6 \(the npz test split at .*mine.npz holds 6 "):
        audit(QUANTISER, n_images=7, out=tmp_path / "c", dataset="npz", data_dir=npz_file)
    res = CliRunner().invoke(app, ["audit", QUANTISER, "--dataset", "nope", "--out", str(tmp_path / "d")])
    assert res.exit_code == 2 and "--dataset nope: unknown dataset 'nope'" in res.output
    assert "Traceback" not in res.output
    res = CliRunner().invoke(app, ["diagnose", QUANTISER, "--dataset", "npz", "--data-dir", str(npz_file),
                                   "--n-images", "9"])
    assert res.exit_code == 2 and "--n-images 9: must be in 1..6" in res.output


def test_diagnose_and_binarization_read_a_dataset_plug_in(npz_file):
    from robust_bench_sc.binarization import BinarizationConfig, binarization_test
    from robust_bench_sc.config import validate_threat_model
    from robust_bench_sc.diagnostics import DiagnosticsConfig, diagnose
    from robust_bench_sc.plugins import build_defense

    madry = build_defense("defenses.archetypes:madry")
    rep = diagnose(madry, DiagnosticsConfig(n_images=5, steps=1, dataset="npz", data_dir=str(npz_file)),
                   only=["randomness"])
    assert rep.n_images == 5 and rep.config["dataset"] == "npz" and rep.probes["n_images"] == 5
    tm = validate_threat_model({"attack": "pgd", "name": "p", "norm": "linf", "epsilon": 8 / 255, "steps": 5,
                                "restarts": 1, "step_size": "epsilon/4"}, "test")
    cfg = dict(n_samples=2, n_inner=5, fit_iters=20)
    a = binarization_test(madry, tm, BinarizationConfig(**cfg, dataset="npz", data_dir=str(npz_file)))
    b = binarization_test(madry, tm, BinarizationConfig(**cfg))
    assert a.tested_indices == b.tested_indices and a.n_images_scanned == b.n_images_scanned <= 6
    assert [s["target_margin"] for s in a.samples] == [s["target_margin"] for s in b.samples]


# --------------------------------------------------------------------------- a defense that hangs
SLOW_PLUGIN = textwrap.dedent('''
    import time
    from torch import nn
    from robust_bench_sc.defense import Defense


    class Sleeps(nn.Module):
        def forward(self, x):
            time.sleep(60)
            return x.flatten(1)[:, :10]


    def slow():
        return Defense(name="slow", classifier=Sleeps())
''')


def test_cli_probe_timeout_stops_a_defense_that_hangs(tmp_path):
    (tmp_path / "slowdef.py").write_text(SLOW_PLUGIN)
    ref = f"{tmp_path / 'slowdef.py'}:slow"
    for cmd in (["audit", ref, "--n-images", "2", "--out", str(tmp_path / "a")],
                ["diagnose", ref, "--n-images", "2", "--out", str(tmp_path / "b")]):
        t0 = time.perf_counter()
        res = CliRunner().invoke(app, cmd + ["--probe-timeout", "0.5"])
        assert time.perf_counter() - t0 < 20
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert "probe 'randomness' on defense 'slow': no answer within its time limit of 0.5 s (--probe-timeout)" \
            in res.output, res.output
        assert "slowdef.py:9, in forward: time.sleep(60)" in res.output
    suite = tmp_path / "s.yaml"
    suite.write_text(f"name: s\ndata: {{n_images: 2, chunk_size: 2}}\ndefenses:\n  - ref: {ref}\n"
                     "threat_models: [clean]\n")
    res = CliRunner().invoke(app, ["run", str(suite), "--out", str(tmp_path / "r"), "--probe-timeout", "0.5"])
    assert res.exit_code == 2 and "slow': one forward pass on 2 images gave no answer within 0.5 s (--probe-timeout);" \
        " the defense hangs" in res.output, res.output
    assert "slowdef.py:9, in forward: time.sleep(60)" in res.output
    res = CliRunner().invoke(app, ["audit", ref, "--probe-timeout", "0"])
    assert res.exit_code == 2 and "--probe-timeout 0: must be a number of seconds > 0" in res.output


# --------------------------------------------------------------------------- the EOT rule
class Scripted(nn.Module):
    """Two-class logits from a script: call k returns ``script[k]`` (a row per query)."""

    def __init__(self, script):
        super().__init__()
        self.script, self.k = script, 0

    def forward(self, x):
        out = torch.tensor(self.script[self.k], dtype=torch.float32).expand(x.shape[0], 2).clone()
        self.k += 1
        return out + 0 * x.flatten(1)[:, :1]


def test_all_draws_fooled_keeps_only_points_every_draw_misclassifies():
    x = torch.stack([torch.full((3, 4, 4), 0.2), torch.full((3, 4, 4), 0.8)])
    y = torch.tensor([0, 0])
    eps = 0.05
    # query 1: draw 1 wrong, draw 2 right (the mean is wrong: pyautoattack counted it), query 2: both wrong
    # by 1 and 3, query 3: both wrong by 2 and 5 (worst draw 2: better), query 4: both wrong but outside ε
    script = [[0.0, 3.0], [1.0, 0.0], [0.0, 1.0], [0.0, 3.0], [0.0, 2.0], [0.0, 5.0], [0.0, 9.0], [0.0, 9.0]]
    rec = AllDrawsFooled(Scripted(script), 2, x, y, "linf", eps)
    q1 = x[:1] + 0.01
    mean = rec(q1)
    assert torch.allclose(mean, torch.tensor([[0.5, 1.5]]))  # the EOT mean the attack sees
    assert not rec.found.any()
    q2, q3 = x[:1] + 0.02, x[:1] - 0.03
    rec(q2)
    assert rec.found.tolist() == [True, False] and torch.equal(rec.best[0], q2[0])
    rec(q3)
    assert torch.equal(rec.best[0], q3[0]) and float(rec.best_margin[0]) == 2.0
    rec(x[1:] + 0.2)  # image 1's nearest, but outside its ε-ball
    assert rec.found.tolist() == [True, False] and torch.equal(rec.best[1], x[1])


# --------------------------------------------------------------------------- BPDA transfer
def test_source_gradient_is_the_defense_forward_with_the_source_gradient():
    from robust_bench_sc.attacks.transfer import SourceGradient

    g = torch.Generator().manual_seed(0)
    defense, source = nn.Linear(6, 3), nn.Linear(6, 3)
    for p in [*defense.parameters(), *source.parameters()]:
        p.data = torch.randn(p.shape, generator=g)
    hybrid = SourceGradient(nn.Sequential(defense, nn.Identity()), source)
    x = torch.randn(4, 6, generator=g, requires_grad=True)
    out = hybrid(x)
    assert torch.allclose(out, defense(x))  # the defense's logits
    w = torch.randn(4, 3, generator=g)
    (grad,) = torch.autograd.grad((out * w).sum(), x)
    assert torch.allclose(grad, w @ source.weight)  # the source's gradient
    with torch.no_grad():
        assert torch.allclose(hybrid(x), defense(x))


# --------------------------------------------------------------------------- plain nn.Module plug-ins
PLAIN = textwrap.dedent('''
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc = nn.Linear(3 * 32 * 32, 10)

        def forward(self, x):
            return self.fc(x.flatten(1))

    def make():
        return Net()

    instance = Net()

    class Pair(Net):
        def forward(self, x):
            out = super().forward(x)
            return out, out.detach()

    def pair():
        return Pair()

    def logits_of(x):
        return instance(x)
''')


def test_a_plain_module_or_its_factory_is_a_defense_named_by_the_reference(tmp_path):
    """What a user has is often an ``nn.Module`` (or a function returning one), not a Defense:
    it is wrapped (no preprocess declared; the probes measure the rest) and labelled by the
    reference's last name; run and audit take it."""
    from robust_bench_sc.plugins import build_defense
    from robust_bench_sc.registry import RegistryError

    f = tmp_path / "plain.py"
    f.write_text(PLAIN)
    made, inst = build_defense(f"{f}:make"), build_defense(f"{f}:instance")
    assert (made.name, inst.name) == ("make", "instance") and made.preprocess is None
    assert made.fingerprint() == inst.fingerprint()  # the same weights (seed 0)
    assert "Net from" in made.description and "plain nn.Module" in made.description
    with pytest.raises(RegistryError, match=r"is a Net instance; it takes no params \(got \['k'\]\)"):
        build_defense(f"{f}:instance", {"k": 1})
    card = audit(f"{f}:make", n_images=4, out=tmp_path / "run", budget=TINY)
    assert card["defense"] == "make" and card["probes"]["gradient"] == "ok"
    assert card["worst_case"]["n"] == 4 and all(not m.get("error") for m in card["cascade"])


def test_a_function_of_the_images_and_a_tuple_output_get_one_line_saying_what_to_wrap(tmp_path):
    """Two shapes users hand in: ``f(x) -> logits`` (a classifier function, not a factory) and a
    model returning (logits, features)."""
    from robust_bench_sc.plugins import build_defense
    from robust_bench_sc.registry import RegistryError

    f = tmp_path / "plain.py"
    f.write_text(PLAIN)
    with pytest.raises(RegistryError, match=r"is a function that needs arguments \(missing a required argument: "
                                            r"'x'\); .* wrap it in an nn.Module whose forward calls it$"):
        build_defense(f"{f}:logits_of")
    with pytest.raises(AuditError) as err:
        audit(f"{f}:pair", n_images=4, out=tmp_path / "run", budget=TINY)
    assert str(err.value).endswith("returned tuple, expected a tensor of logits of shape (4, 10) (a tuple or list, "
                                   "e.g. logits and features: return the logits alone, or wrap the model in an "
                                   "nn.Module whose forward returns out[0])"), str(err.value)
    assert "\n" not in str(err.value)


def test_a_defense_built_in_training_mode_is_evaluated_in_eval_mode_and_told_so(tmp_path):
    """A factory that returns its model in training mode (dropout on): the tool evaluates it in
    eval mode, as torch models are for inference, and says so with the reason."""
    from robust_bench_sc.adapt import adaptation
    from robust_bench_sc.data import load_test
    from robust_bench_sc.plugins import build_defense
    from robust_bench_sc.probes import probe_defense

    f = tmp_path / "drop.py"
    f.write_text(textwrap.dedent('''
        import torch
        from torch import nn

        def make():
            torch.manual_seed(0)
            return nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(3 * 32 * 32, 10)).train()

        def evaluated():
            return make().eval()
    '''))
    d = build_defense(f"{f}:make")
    assert d.eval_switched == ["Dropout"] and not any(m.training for m in d.classifier.modules())
    s = load_test(8)
    found = probe_defense(d, s.x, s.y)
    assert not found.randomised  # dropout is off
    (warning,) = adaptation("make", d, found, s.x, s.y).warnings
    assert warning.startswith("defense 'make' was built in training mode (Dropout); it is evaluated in eval mode "
                              "(dropout off, batch norm on its running statistics)"), warning
    quiet = build_defense(f"{f}:evaluated")
    assert not hasattr(quiet, "eval_switched")
    assert adaptation("evaluated", quiet, probe_defense(quiet, s.x, s.y), s.x, s.y).warnings == []


SCALED = '''
import torch
from torch import nn


class Scaled(nn.Module):
    def __init__(self, scale):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin = nn.Linear(3 * 32 * 32, 10)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(10, 3 * 32 * 32, generator=g) * 0.05 * scale)
            self.lin.bias.zero_()

    def forward(self, x):
        return self.lin(x.flatten(1))


def make(scale, name="scaled"):
    return Scaled(scale)
'''


def test_audit_and_diagnose_pass_factory_params(tmp_path):
    """``--param KEY=VALUE``: a factory's keyword arguments (what a suite's ``params:`` gives), read
    as YAML; they reach the cascade's suite (so its spec) and the card. Without the required one,
    or malformed, one line."""
    f = tmp_path / "scaled.py"
    f.write_text(SCALED)
    with pytest.raises(AuditError, match=r"is a function that needs arguments \(missing a required argument: "
                                         r"'scale'\)"):
        audit(f"{f}:make", n_images=2, out=tmp_path / "none", budget=TINY)
    card = audit(f"{f}:make", n_images=2, out=tmp_path / "run", budget=TINY, params={"scale": 2.5})
    assert card["params"] == {"scale": 2.5}
    from robust_bench_sc.storage import read_json

    assert read_json(tmp_path / "run" / "run.json")["config"]["defenses"][0]["params"] == {"scale": 2.5}
    # the params are in the spec: other params never reuse these records (here, other weights too)
    from robust_bench_sc.errors import RunError

    with pytest.raises(RunError, match=r"holds records of a different suite configuration"):
        audit(f"{f}:make", n_images=2, out=tmp_path / "run", budget=TINY, params={"scale": 1.0})
    again = audit(f"{f}:make", n_images=2, out=tmp_path / "run", budget=TINY, params={"scale": 2.5})
    assert again["worst_case"] == card["worst_case"]
    res = CliRunner().invoke(app, ["audit", f"{f}:make", "--param", "scale"])
    assert res.exit_code == 2 and "--param 'scale': expected key=value, e.g. T=15 or checkpoint=weights/mine.pt" \
        in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["audit", f"{f}:make", "--param", "scale=1", "--param", "scale=2"])
    assert res.exit_code == 2 and "--param scale: given twice" in res.output
    from robust_bench_sc.diagnostics import INDICATORS

    skip = [a for name in INDICATORS.names() if name not in ("unavailable_gradients", "probability_outputs")
            for a in ("--skip", name)]
    res = CliRunner().invoke(app, ["diagnose", f"{f}:make", "--n-images", "4", *skip, "--out", str(tmp_path / "d0")])
    assert res.exit_code == 2 and "missing a required argument: 'scale'" in res.output
    res = CliRunner().invoke(app, ["diagnose", f"{f}:make", "--param", "scale=2.5", "--n-images", "4", *skip,
                                   "--out", str(tmp_path / "diag")])
    assert res.exit_code == 0 and "unavailable_gradients" in res.output, res.output
